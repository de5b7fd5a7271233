"""Durable files, one implementation each: sha256 of a file or bytes, fsync, atomic writes.

Every file a reader may trust (shard, manifest, checkpoint, report, metrics log) is written to a
temporary name beside it, flushed and fsynced, renamed into place, and its directory fsynced: a
reader, or a machine that lost power, sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO

HASH_CHUNK_BYTES = 8 << 20  # bounded memory when hashing a large shard or checkpoint
TEMP_SUFFIX = ".tmp"


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path | str) -> str:
    """Hex sha256 of a file, read in bounded chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def sync_open_file(file: IO[bytes]) -> None:
    """Flush an open file's buffer and fsync it: its bytes are on the disk when this returns."""
    file.flush()
    os.fsync(file.fileno())


def fsync_path(path: Path | str) -> None:
    """Flush a file's or a directory's data and metadata to the disk (errors raise)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_directory(directory: Path | str) -> None:
    """Make renames inside ``directory`` durable; a no-op where directories cannot be opened or
    synced (some file systems refuse), since the rename itself has already happened."""
    with contextlib.suppress(OSError):
        fsync_path(directory)


def temp_path(path: Path, hidden: bool = False) -> Path:
    """The temporary name ``path`` is written under before its rename: ``NAME.tmp`` beside it,
    or ``.NAME.tmp`` (``hidden``) where other tools list the directory."""
    return path.with_name(f".{path.name}{TEMP_SUFFIX}" if hidden else path.name + TEMP_SUFFIX)


def atomic_write(
    path: Path | str, write: Callable[[IO[bytes]], None], hidden: bool = False
) -> None:
    """Write ``path`` through ``write(file)`` on a temporary file in the same directory, fsync
    it, rename it into place and fsync the directory. On any failure the temporary file is
    removed and ``path`` is left as it was."""
    path = Path(path)
    temp = temp_path(path, hidden)
    try:
        with open(temp, "wb") as file:
            write(file)
            sync_open_file(file)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def atomic_write_bytes(path: Path | str, data: bytes, hidden: bool = False) -> None:
    """``data`` to ``path`` atomically (see ``atomic_write``)."""
    atomic_write(path, lambda file: file.write(data), hidden)


def atomic_write_text(path: Path | str, text: str, hidden: bool = False) -> None:
    """``text`` (UTF-8) to ``path`` atomically (see ``atomic_write``)."""
    atomic_write_bytes(path, text.encode("utf-8"), hidden)


def write_synced(path: Path | str, data: bytes) -> None:
    """Write a new file and fsync it, without a rename: for files inside a directory that is
    itself made visible by one rename later (a corpus version, a checkpoint)."""
    with open(path, "wb") as file:
        file.write(data)
        sync_open_file(file)

"""Versioned corpus directories: every build in a directory of its own, one atomic pointer.

A corpus directory ``OUT`` written by ``longnet tokenize`` (DESIGN.md, "Data on disk"):

    versions/000003/    one complete build: manifest.json, tokenizer.model, documents.parquet,
                        shard-NNNNN.bin, and .readers.lock (the readers' shared lock)
    manifest.json       -> versions/000003/manifest.json: THE pointer, one relative symlink
                        replaced by rename; the current version is the directory it points into
    tokenizer.model, documents.parquet, shard-NNNNN.bin
                        -> versions/000003/...: links for people and tools that open these
                        paths; a reader of the corpus (``TokenizedCorpus``) never uses them
    .lock               the writer's lock: one ``longnet tokenize`` at a time

A flat directory (every file directly in ``OUT``: written before versions existed, built by
hand, or copied with its links dereferenced) reads as a version of its own.

Readers (``open_version``) resolve the pointer once, take a shared flock on that version's
``.readers.lock``, check that the version is still there, and from then on read only that
version's directory, whatever later builds do. The writer, under ``.lock``: ``new_version``
makes ``versions/N+1``; the build writes and fsyncs every file there, its manifest last;
``switch`` renames a new symlink over ``manifest.json`` (the one atomic step: before it the
previous version is current, after it the new one); ``update_links`` re-points the other
links; ``clean`` removes every version but the current one whose lock it can take exclusively
(no reader holds it): failed builds, old versions, leftovers of an interrupted clean and the
``.staging`` directory of longnet before versions. A flat directory being converted keeps its
files until no reader holds its own ``.readers.lock``; until then ``manifest.json`` already
points to the new version while the other top-level names are still the old files.

flock is released by the kernel when a reader exits, however it exits. Where the filesystem
cannot lock, readers go on unprotected and ``clean`` removes old versions regardless (it says
so on stderr). stdlib only (and the corpus's file names and errors, ``format/``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from longnet_cli.core.files import fsync_directory
from longnet_cli.data.format.errors import CorpusError
from longnet_cli.data.format.layout import (
    DOCUMENTS_FILE,
    MANIFEST_FILE,
    SHARD_NAME,
    TOKENIZER_FILE,
)

VERSIONS_DIR = "versions"
READERS_LOCK = ".readers.lock"
POINTER = MANIFEST_FILE  # the pointer is the manifest's own name
LINKED = (TOKENIZER_FILE, DOCUMENTS_FILE)  # linked at the top, with the shards
TRASH_PREFIX = ".trash-"  # a version being removed: renamed first, so no reader can enter it
LEGACY_STAGING = ".staging"  # where longnet before versions built; removed by ``clean``
LINK_SUFFIX = ".link.tmp"  # a new symlink before it is renamed into place
_NO_LOCKING = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)
_CANNOT_CREATE = (errno.EACCES, errno.EPERM, errno.EROFS)
_OPEN_ATTEMPTS = 50  # a reader that loses this many races with pruning gives up
_MAX_LINKS = 8  # manifest.json links followed to find the version


class ReaderLock:
    """A shared flock on a version's ``.readers.lock``, held until ``release`` (or garbage
    collection): while it is held, ``clean`` leaves the version alone. ``fd`` None: unlocked
    (a read-only directory, or a filesystem without locks)."""

    def __init__(self, fd: int | None = None, path: Path | None = None) -> None:
        self.fd = fd
        self.path = path

    @property
    def held(self) -> bool:
        return self.fd is not None

    def release(self) -> None:
        """Close the descriptor; the kernel drops the lock with its last descriptor (a forked
        child's copy keeps it for the parent: never LOCK_UN)."""
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)

    def still_linked(self) -> bool:
        """The lock file is still the one at its path (not pruned or replaced meanwhile)."""
        return self.fd is None or _same_file(self.fd, self.path)

    def __del__(self) -> None:
        with contextlib.suppress(OSError, TypeError):  # TypeError: interpreter shutdown
            self.release()


@dataclass
class OpenedVersion:
    """What ``open_version`` found: the version's directory, its manifest, and the reader's
    lock on it (keep it as long as files of the version may still be opened)."""

    directory: Path
    manifest_path: Path
    manifest_bytes: bytes
    lock: ReaderLock


def resolve(directory: Path) -> Path:
    """The directory holding the corpus ``directory`` now: the one its ``manifest.json``
    symlink points into (followed link by link), else ``directory`` itself (flat)."""
    current = Path(directory)
    for _ in range(_MAX_LINKS):
        try:
            target = os.readlink(current / POINTER)
        except OSError:  # not a link (a flat directory's file, or none)
            return current
        current = Path(os.path.join(current, target)).parent
    return current


def version_name(directory: Path, version: Path) -> str | None:
    """``versions/000003`` for a version of ``directory``; None when it is flat."""
    if version == directory:
        return None
    return os.path.relpath(version, directory)


def open_version(directory: Path) -> OpenedVersion:
    """Resolve ``directory``'s current version once, take its reader lock, read its manifest.

    Raises CorpusError when there is no manifest (one line naming the path), or when pruning
    won every race for ``_OPEN_ATTEMPTS`` tries (not seen in practice)."""
    directory = Path(directory)
    for attempt in range(_OPEN_ATTEMPTS):
        time.sleep(0.001 * attempt)  # only after a lost race
        version = resolve(directory)
        manifest = version / POINTER
        try:
            # never through a link: a flat manifest.json replaced by the pointer meanwhile
            # must not be read as this flat directory's manifest
            fd = os.open(manifest, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            if version == directory:
                raise CorpusError(f"{directory}: not a tokenized corpus (no {POINTER})") from None
            if resolve(directory) == version:
                raise CorpusError(
                    f"{directory / POINTER} points to {manifest}, which does not exist"
                ) from None
            continue  # pruned between resolving and opening: resolve again
        except OSError as err:
            if err.errno == errno.ELOOP:
                continue  # became the pointer meanwhile (a flat directory converted)
            raise CorpusError(f"{manifest}: cannot read: {err.strerror}") from None
        try:
            lock = _shared_lock(version)
            if lock is None:
                continue  # the version was pruned meanwhile
            if not (_same_file(fd, manifest) and lock.still_linked()):
                lock.release()
                continue
            try:
                data = _read_fd(fd)
            except OSError as err:
                lock.release()
                raise CorpusError(f"{manifest}: cannot read: {err.strerror}") from None
            return OpenedVersion(version, manifest, data, lock)
        finally:
            os.close(fd)
    raise CorpusError(
        f"{directory}: its version changed {_OPEN_ATTEMPTS} times while it was being opened; "
        "try again"
    )


def reattach(version: Path) -> ReaderLock:
    """A new shared lock on ``version`` for a copy of a reader (a pickled corpus in another
    process); best effort: unlocked when the lock file cannot be opened."""
    path = Path(version) / READERS_LOCK
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return ReaderLock()
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
    except OSError:
        os.close(fd)
        return ReaderLock()
    return ReaderLock(fd, path)


def _shared_lock(version: Path) -> ReaderLock | None:
    """A shared flock on ``version/.readers.lock`` (created when missing and the directory is
    writable); None when the version's directory is gone."""
    path = version / READERS_LOCK
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except FileNotFoundError:
            return None
        except OSError as err:
            if err.errno in _CANNOT_CREATE:
                return ReaderLock()  # read-only: nobody rebuilds it under us from here
            raise
    except PermissionError:
        return ReaderLock()
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)  # waits only while ``clean`` renames a version away
    except OSError as err:
        os.close(fd)
        if err.errno in _NO_LOCKING:
            return ReaderLock()
        raise
    return ReaderLock(fd, path)


def _same_file(fd: int, path: Path) -> bool:
    """``path`` (not followed) is the file open as ``fd``."""
    try:
        named = os.lstat(path)
    except OSError:
        return False
    opened = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)


def _read_fd(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


# -- writing (``longnet tokenize``, under the output's exclusive lock) ---------------------------


def new_version(out: Path) -> Path:
    """Create ``out/versions/N`` (N one above every version there) with its reader lock file."""
    root = Path(out) / VERSIONS_DIR
    root.mkdir(parents=True, exist_ok=True)
    numbers = [_number(name) for name in os.listdir(root)]
    current = resolve(out)
    if current.parent == root:
        numbers.append(_number(current.name))
    path = root / f"{max((n for n in numbers if n is not None), default=0) + 1:06d}"
    path.mkdir()
    os.close(os.open(path / READERS_LOCK, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o666))
    fsync_directory(root)
    return path


def _number(name: str) -> int | None:
    name = name.removeprefix(TRASH_PREFIX)
    return int(name) if name.isdigit() else None


def is_current(out: Path, version: Path) -> bool:
    """``out``'s pointer names ``version`` now."""
    return _same_directory(resolve(out), version)


def switch(out: Path, version: Path) -> None:
    """Make ``version`` (complete, every file fsynced) the current version of ``out``: one
    rename of a new symlink over ``out/manifest.json``, then the directory fsynced."""
    fsync_directory(version)
    fsync_directory(version.parent)
    _link(Path(out) / POINTER, os.path.relpath(version / POINTER, out))
    fsync_directory(out)


def update_links(out: Path) -> bool:
    """Point ``out``'s tokenizer.model, documents.parquet and shard-NNNNN.bin at the current
    version's, removing shard names it lacks. A flat directory's own files are replaced only
    once no reader holds its ``.readers.lock``; False when one still does (the next ``clean``
    finishes the job)."""
    out = Path(out)
    version = resolve(out)
    if version == out:
        return True  # flat: its files are the corpus
    names = [*LINKED, *sorted(n for n in os.listdir(version) if SHARD_NAME.fullmatch(n))]
    top = {entry.name: entry.is_symlink() for entry in os.scandir(out)}
    flat_files = any(
        not is_link for name, is_link in top.items() if name in LINKED or SHARD_NAME.fullmatch(name)
    )
    lock_fd = None
    if flat_files or READERS_LOCK in top:
        lock_fd = _exclusive(out / READERS_LOCK)
        if lock_fd is None:
            return False
    try:
        for name in names:
            target = os.path.relpath(version / name, out)
            if not (top.get(name) and os.readlink(out / name) == target):
                _link(out / name, target)
        for name in top:
            if SHARD_NAME.fullmatch(name) and name not in names:
                (out / name).unlink(missing_ok=True)
        if lock_fd is not None:
            (out / READERS_LOCK).unlink(missing_ok=True)
    finally:
        if lock_fd is not None:
            os.close(lock_fd)
    fsync_directory(out)
    return True


def clean(out: Path) -> list[str]:
    """Remove what no reader needs: every version but the current one whose reader lock can be
    taken exclusively (failed builds, old versions), leftovers of an interrupted clean or
    link, and ``.staging``; complete the links (``update_links``). Returns the old versions
    kept because a reader holds them (``"."``: the files directly in ``out``, before versions)."""
    out = Path(out)
    shutil.rmtree(out / LEGACY_STAGING, ignore_errors=True)
    for entry in os.scandir(out):
        if entry.name.endswith(LINK_SUFFIX) or entry.name == POINTER + ".tmp":
            Path(entry.path).unlink(missing_ok=True)
    root = out / VERSIONS_DIR
    if not root.is_dir():
        return []
    current = resolve(out)
    kept = []
    # first: no link may point into a version about to go
    if current.parent == root and not update_links(out):
        kept.append(".")  # the flat files of a converted directory: a reader holds them
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        path = Path(entry.path)
        if entry.name.startswith(TRASH_PREFIX):
            shutil.rmtree(path, ignore_errors=True)
        elif _same_directory(path, current):
            continue
        elif not entry.is_dir(follow_symlinks=False):
            path.unlink(missing_ok=True)
        elif not _remove_unless_read(path):
            kept.append(os.path.relpath(path, out))
    return kept


def _remove_unless_read(version: Path) -> bool:
    """Remove ``version`` unless a reader holds its lock: renamed away under an exclusive lock
    (a reader waiting for the lock then finds it gone), then deleted. False when kept."""
    lock_fd = _exclusive(version / READERS_LOCK)
    if lock_fd is None:
        return False
    try:
        trash = version.with_name(TRASH_PREFIX + version.name)
        shutil.rmtree(trash, ignore_errors=True)
        os.rename(version, trash)
    finally:
        os.close(lock_fd)
    shutil.rmtree(trash, ignore_errors=True)
    return True


_warned_no_locking = False


def _exclusive(path: Path) -> int | None:
    """An exclusive, non-blocking flock on ``path`` (created when missing); None when a reader
    holds it. Where the filesystem cannot lock: the descriptor, unlocked, after one warning."""
    global _warned_no_locking
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except OSError:
        return None  # cannot even be created: leave the directory as it is
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except OSError as err:
        if err.errno not in _NO_LOCKING:
            os.close(fd)
            raise
        if not _warned_no_locking:
            _warned_no_locking = True
            print(
                f"warning: {path}: this filesystem cannot lock ({err.strerror}); old corpus "
                "versions are removed even if a reader still uses them",
                file=sys.stderr,
            )
    return fd


def _link(path: Path, target: str) -> None:
    """Make ``path`` a symlink to ``target`` in one rename (whatever ``path`` was before)."""
    temp = path.with_name(path.name + LINK_SUFFIX)
    temp.unlink(missing_ok=True)
    os.symlink(target, temp)
    try:
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def _same_directory(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False

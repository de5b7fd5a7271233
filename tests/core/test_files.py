"""``core.files``: the one sha256, fsync and atomic-write implementation every writer uses."""

from __future__ import annotations

import hashlib
import os

import pytest

from longnet_cli.core import files


def test_sha256_of_bytes_and_of_a_file_read_in_chunks(tmp_path, monkeypatch):
    data = os.urandom(10_000)
    path = tmp_path / "blob"
    path.write_bytes(data)
    monkeypatch.setattr(files, "HASH_CHUNK_BYTES", 4096)  # several chunks, a partial last one
    assert files.sha256_file(path) == hashlib.sha256(data).hexdigest()
    assert files.sha256_bytes(data) == hashlib.sha256(data).hexdigest()


def test_atomic_write_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "report.json"
    path.write_text("old\n")
    files.atomic_write_text(path, "new ✓\n")
    assert path.read_text(encoding="utf-8") == "new ✓\n"
    files.atomic_write_bytes(path, b"\x00\x01", hidden=True)
    assert path.read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    path = tmp_path / "manifest.json"
    path.write_text("intact\n")

    def write(handle):
        handle.write(b"half a fil")
        raise KeyboardInterrupt  # interrupted mid-write: a BaseException, not only Exception

    with pytest.raises(KeyboardInterrupt):
        files.atomic_write(path, write)
    assert path.read_text() == "intact\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]


def test_temporary_names_beside_the_file(tmp_path):
    assert files.temp_path(tmp_path / "a.bin") == tmp_path / "a.bin.tmp"
    assert files.temp_path(tmp_path / "a.bin", hidden=True) == tmp_path / ".a.bin.tmp"


def test_fsync_path_is_strict_and_fsync_directory_tolerant(tmp_path):
    written = tmp_path / "shard.bin"
    files.write_synced(written, b"tokens")
    assert written.read_bytes() == b"tokens"
    files.fsync_path(written)
    files.fsync_path(tmp_path)
    with pytest.raises(FileNotFoundError):
        files.fsync_path(tmp_path / "missing")
    files.fsync_directory(tmp_path / "missing")  # nothing to sync: no error

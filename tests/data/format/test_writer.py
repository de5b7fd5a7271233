"""Writing a corpus version: shard byte layout, temporary names, discarded documents, the
documents table and the manifest written atomically."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from longnet_cli.data.format.manifest import read_manifest
from longnet_cli.data.format.writer import (
    DocumentPlacement,
    DocumentsWriter,
    ShardWriter,
    write_documents_table,
    write_manifest,
)

REQUIRED_KEYS = {
    "format", "tokenizer_sha256", "vocab_size", "dtype", "eos_id", "bos_id", "documents",
    "tokens", "bytes", "shards", "skipped",
}  # fmt: skip


def test_uint16_byte_layout(tmp_path, small_corpus):
    with ShardWriter(tmp_path, "uint16", shard_tokens=100, eos_id=0) as writer:
        writer.begin_document()
        writer.write(np.array([1, 258, 65535]))
        writer.end_document()
        writer.close()
    raw = (tmp_path / "shard-00000.bin").read_bytes()
    assert raw == b"\x01\x00\x02\x01\xff\xff\x00\x00"  # little-endian, then EOS 0
    assert np.frombuffer(raw, dtype="<u2").tolist() == [1, 258, 65535, 0]


def test_uint32_byte_layout(tmp_path):
    with ShardWriter(tmp_path, "uint32", shard_tokens=3, eos_id=70_001) as writer:
        writer.begin_document()
        writer.write(np.array([5, 70_000], dtype=np.int32))
        writer.end_document()
        writer.begin_document()
        writer.write([65_536])
        writer.end_document()
        writer.close()
    first = (tmp_path / "shard-00000.bin").read_bytes()
    second = (tmp_path / "shard-00001.bin").read_bytes()
    assert first == b"".join(value.to_bytes(4, "little") for value in (5, 70_000, 70_001))
    assert np.frombuffer(second, dtype="<u4").tolist() == [65_536, 70_001]


def test_writer_refuses_ids_that_do_not_fit(tmp_path):
    with ShardWriter(tmp_path, "uint16", shard_tokens=10, eos_id=1) as writer:
        writer.begin_document()
        with pytest.raises(ValueError, match="70000"):
            writer.write(np.array([3, 70_000]))
        with pytest.raises(ValueError, match="-1"):
            writer.write(np.array([-1]))
        writer.abort()


def test_temporary_names_until_close(tmp_path):
    writer = ShardWriter(tmp_path, "uint16", shard_tokens=10, eos_id=1)
    writer.begin_document()
    writer.write(np.arange(2, 37))
    writer.end_document()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [f"shard-{i:05d}.bin.tmp" for i in range(4)]  # 36 tokens, none final yet
    shards = writer.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"shard-{i:05d}.bin" for i in range(4)]
    assert [entry["tokens"] for entry in shards] == [10, 10, 10, 6]
    assert [entry["bytes"] for entry in shards] == [20, 20, 20, 12]
    for entry in shards:
        digest = hashlib.sha256((tmp_path / entry["file"]).read_bytes()).hexdigest()
        assert entry["sha256"] == digest


def test_abort_leaves_nothing(tmp_path):
    writer = ShardWriter(tmp_path, "uint16", shard_tokens=10, eos_id=1)
    writer.begin_document()
    writer.write(np.arange(2, 30))
    writer.abort()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError, match="boom"), ShardWriter(tmp_path, "uint16", 10, 1) as w:
        w.begin_document()
        w.write(np.arange(2, 30))
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("discard_length", [0, 3, 7, 8, 9, 30])
@pytest.mark.parametrize("start_offset", [0, 5, 7])
def test_discarded_document_leaves_no_trace(tmp_path, start_offset, discard_length, small_corpus):
    """A document dropped midway (it changed while it was read) leaves the shards, their
    hashes and the following placements exactly as if it had never been begun, also when it
    filled shards meanwhile."""
    shard_tokens = 8
    before = [list(range(2, 2 + start_offset - 1))] if start_offset else []  # with EOS: offset
    after = [[5, 6, 7], list(range(2, 20))]

    def write_all(directory: Path, dropped: list[int] | None) -> tuple[list, list]:
        placements = []
        with ShardWriter(directory, "uint16", shard_tokens, small_corpus.eos) as writer:
            for doc in before:
                writer.begin_document()
                writer.write(np.array(doc))
                placements.append(writer.end_document())
            if dropped is not None:
                writer.begin_document()
                for low in range(0, len(dropped), 4):
                    writer.write(np.array(dropped[low : low + 4]))
                writer.discard_document()
            for doc in after:
                writer.begin_document()
                writer.write(np.array(doc))
                placements.append(writer.end_document())
            return placements, writer.close()

    dropped = [int(t) for t in np.arange(discard_length) % 50 + 2]
    expected = write_all(tmp_path / "clean", None)
    assert write_all(tmp_path / "dropped", dropped) == expected
    clean = sorted(p.name for p in (tmp_path / "clean").iterdir())
    assert sorted(p.name for p in (tmp_path / "dropped").iterdir()) == clean
    for name in clean:
        assert (tmp_path / "dropped" / name).read_bytes() == (
            tmp_path / "clean" / name
        ).read_bytes()


def test_documents_table_schema(tmp_path, small_corpus):
    small_corpus.write(tmp_path, [[2, 3], [], [4]], shard_tokens=2)
    table = pq.read_table(tmp_path / "documents.parquet")
    assert table.schema.names == [
        "doc_id",
        "source",
        "shard",
        "offset",
        "tokens",
        "bytes",
        "sha256",
        "split",
    ]
    assert [str(t) for t in table.schema.types] == [
        "int64", "string", "int32", "int64", "int64", "int64", "string", "string",
    ]  # fmt: skip
    # stream: 2 3 | EOS EOS | 4 EOS  -> documents start at (0, 0), (1, 1), (2, 0)
    assert table.column("shard").to_pylist() == [0, 1, 2]
    assert table.column("offset").to_pylist() == [0, 1, 0]
    assert table.column("tokens").to_pylist() == [2, 0, 1]
    assert table.column("sha256").to_pylist()[0] == hashlib.sha256(b"2 3").hexdigest()
    assert not list(tmp_path.glob("*.tmp"))


def test_manifest_written_sorted_and_atomically(tmp_path, monkeypatch, small_corpus):
    small_corpus.write(tmp_path, [[2, 3, 4]], shard_tokens=8)
    path = tmp_path / "manifest.json"
    manifest = json.loads(path.read_text())
    assert set(manifest) == REQUIRED_KEYS | {"fingerprint"}
    assert path.read_text() == json.dumps(manifest, sort_keys=True, indent=2) + "\n"
    assert manifest["tokens"] == 4 and manifest["documents"] == 1 and manifest["bytes"] == 5
    assert manifest["shards"] == [
        {
            "file": "shard-00000.bin",
            "tokens": 4,
            "bytes": 8,
            "sha256": hashlib.sha256(bytes([2, 0, 3, 0, 4, 0, 1, 0])).hexdigest(),
        }
    ]
    assert read_manifest(tmp_path) == manifest

    before = path.read_bytes()

    def failing_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="disk full"):
        write_manifest(tmp_path, {**manifest, "tokens": 999})
    assert path.read_bytes() == before  # the old manifest is intact
    assert not list(tmp_path.glob("*.tmp"))
    monkeypatch.undo()

    incomplete = {key: value for key, value in manifest.items() if key != "eos_id"}
    with pytest.raises(ValueError, match="eos_id"):
        write_manifest(tmp_path, incomplete)


def test_documents_writer_row_groups_and_hold_out(tmp_path, monkeypatch):
    """Rows go out in groups of ROW_GROUP as they come; ``hold_out`` rewrites the split of every
    row with the given content hash, keeping the row groups and every other value."""
    monkeypatch.setattr(DocumentsWriter, "ROW_GROUP", 2)
    path = tmp_path / "documents.parquet"
    table = DocumentsWriter(path)
    hashes = ["b" * 64, "a" * 64, "c" * 64, "a" * 64, "d" * 64]
    for index, sha in enumerate(hashes):
        table.add(f"doc{index}", DocumentPlacement(0, 3 * index, 2), 10 + index, sha, "train")
    assert table.rows == 5
    table.close()
    before = pq.read_table(path)
    assert pq.ParquetFile(path).num_row_groups == 3
    assert before.column("doc_id").to_pylist() == [0, 1, 2, 3, 4]
    assert before.column("offset").to_pylist() == [0, 3, 6, 9, 12]
    table.hold_out("a" * 64)
    after = pq.read_table(path)
    assert pq.ParquetFile(path).num_row_groups == 3
    assert after.column("split").to_pylist() == ["train", "heldout", "train", "heldout", "train"]
    assert after.drop(["split"]).equals(before.drop(["split"]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["documents.parquet"]


def test_documents_table_from_a_table_without_split(tmp_path):
    """``write_documents_table`` takes a pyarrow table too; rows without a split are "train"."""
    rows = {
        "doc_id": [0, 1], "source": ["a", "b"], "shard": [0, 0], "offset": [0, 2],
        "tokens": [1, 1], "bytes": [1, 1], "sha256": ["0" * 64, "1" * 64],
    }  # fmt: skip
    write_documents_table(tmp_path, pa.table(rows))
    table = pq.read_table(tmp_path / "documents.parquet")
    assert table.column("split").to_pylist() == ["train", "train"]
    assert str(table.schema.field("shard").type) == "int32"
    with pytest.raises(ValueError, match="missing"):
        write_documents_table(tmp_path, {key: rows[key] for key in list(rows)[:-1]})

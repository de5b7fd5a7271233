"""Token shards on disk: writer/reader round trip, byte layout, atomic files, verification."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from longnet_cli.core.errors import InputError
from longnet_cli.data.shards import (
    FORMAT_VERSION,
    CorpusError,
    ShardWriter,
    TokenizedCorpus,
    read_manifest,
    token_dtype,
    write_documents_table,
    write_manifest,
)

EOS = 1
VOCAB = 300
TOKENIZER_BYTES = b"not a real sentencepiece model, only hashed here"
REQUIRED_KEYS = {
    "format", "tokenizer_sha256", "vocab_size", "dtype", "eos_id", "bos_id", "documents",
    "tokens", "bytes", "shards", "skipped",
}  # fmt: skip


def _random_documents(rng: np.random.Generator, shard_tokens: int) -> list[list[int]]:
    """Random ids in [2, VOCAB - 2] (never EOS) with the awkward lengths placed on purpose."""
    lengths = [
        shard_tokens - 1,  # with its EOS it fills shard 0 exactly
        shard_tokens,  # starts at a shard boundary, its EOS spills into the next shard
        0,  # empty
        3 * shard_tokens + 2,  # longer than a shard: spans four
        0,
        0,  # two empty documents in a row
        1,
    ]
    lengths += [int(n) for n in rng.integers(0, 2 * shard_tokens, size=12)]
    return [[int(t) for t in rng.integers(2, VOCAB - 1, size=n)] for n in lengths]


def _write_corpus(
    directory: Path,
    documents: list[list[int]],
    shard_tokens: int,
    vocab_size: int = VOCAB,
    rng: np.random.Generator | None = None,
) -> list:
    """Write a complete corpus directory the way the tokenize stage does; returns placements."""
    rng = rng or np.random.default_rng(1)
    dtype = token_dtype(vocab_size)
    placements = []
    with ShardWriter(directory, dtype, shard_tokens, EOS) as writer:
        for doc in documents:
            writer.begin_document()
            # the document arrives in random pieces (empty pieces included)
            cuts = sorted(int(c) for c in rng.integers(0, len(doc) + 1, size=3))
            for low, high in zip([0, *cuts], [*cuts, len(doc)]):
                writer.write(np.array(doc[low:high], dtype=np.int64))
            placements.append(writer.end_document())
        shards = writer.close()
    texts = [" ".join(map(str, doc)).encode() for doc in documents]
    write_documents_table(
        directory,
        {
            "doc_id": list(range(len(documents))),
            "source": [f"doc{i}.txt" for i in range(len(documents))],
            "shard": [p.shard for p in placements],
            "offset": [p.offset for p in placements],
            "tokens": [p.tokens for p in placements],
            "bytes": [len(text) for text in texts],
            "sha256": [hashlib.sha256(text).hexdigest() for text in texts],
        },
    )
    (directory / "tokenizer.model").write_bytes(TOKENIZER_BYTES)
    write_manifest(
        directory,
        {
            "format": FORMAT_VERSION,
            "tokenizer_sha256": hashlib.sha256(TOKENIZER_BYTES).hexdigest(),
            "vocab_size": vocab_size,
            "dtype": dtype,
            "eos_id": EOS,
            "bos_id": -1,
            "documents": len(documents),
            "tokens": sum(len(doc) + 1 for doc in documents),
            "bytes": sum(len(text) for text in texts),
            "shards": shards,
            "skipped": {"counts": {}, "examples": []},
            "fingerprint": "test",
        },
    )
    return placements


def _stream(documents: list[list[int]]) -> list[int]:
    stream: list[int] = []
    for doc in documents:
        stream += [*doc, EOS]
    return stream


@pytest.mark.parametrize("shard_tokens", [7, 50])
def test_round_trip(tmp_path, shard_tokens):
    rng = np.random.default_rng(shard_tokens)
    documents = _random_documents(rng, shard_tokens)
    placements = _write_corpus(tmp_path, documents, shard_tokens)
    stream = _stream(documents)

    # placements: every shard but the last is full, so a stream position p is (p // S, p % S)
    position = 0
    for doc, placement in zip(documents, placements):
        assert (placement.shard, placement.offset, placement.tokens) == (
            position // shard_tokens,
            position % shard_tokens,
            len(doc),
        )
        position += len(doc) + 1
    assert (placements[1].shard, placements[1].offset) == (1, 0)  # the first filled shard 0

    n_shards = -(-len(stream) // shard_tokens)
    files = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("shard-"))
    assert files == [f"shard-{i:05d}.bin" for i in range(n_shards)]
    for i, name in enumerate(files):
        expected = min(shard_tokens, len(stream) - i * shard_tokens) * 2
        assert (tmp_path / name).stat().st_size == expected

    corpus = TokenizedCorpus.open(tmp_path, verify="full")
    assert corpus.verify(full=True) == []
    assert corpus.num_tokens == len(stream) and corpus.num_documents == len(documents)
    assert corpus.shard_starts.tolist() == [i * shard_tokens for i in range(n_shards)]
    for i, doc in enumerate(documents):
        assert corpus.document(i).tolist() == doc
    starts = np.cumsum([0] + [len(doc) + 1 for doc in documents])[:-1]
    assert corpus.document_starts().tolist() == starts.tolist()
    assert corpus.document_lengths().tolist() == [len(doc) for doc in documents]
    assert corpus.tokens(0, len(stream)).tolist() == stream
    windows = [
        (0, 0),
        (len(stream), 0),
        (shard_tokens - 1, 2),
        (shard_tokens - 2, 2 * shard_tokens),
    ]
    for start in rng.integers(0, len(stream), size=200):
        windows.append((int(start), int(rng.integers(0, len(stream) - start + 1))))
    spanning = 0
    for start, length in windows:
        assert corpus.tokens(start, length).tolist() == stream[start : start + length]
        spanning += (start + length - 1) // shard_tokens - start // shard_tokens >= 2
    assert spanning > 0, "no window spanned three shards"


def test_window_inside_one_shard_is_a_read_only_view(tmp_path):
    documents = [list(range(2, 40)), list(range(5, 90))]
    _write_corpus(tmp_path, documents, shard_tokens=50)
    corpus = TokenizedCorpus.open(tmp_path)
    window = corpus.tokens(3, 20)
    assert isinstance(window, np.memmap) and not window.flags.writeable
    assert window.tolist() == list(range(5, 25))
    spanning = corpus.tokens(45, 10)
    assert spanning.tolist() == _stream(documents)[45:55]
    for start, length in [(-1, 2), (0, 126), (125, 2), (10, -1)]:
        with pytest.raises(IndexError, match="outside"):
            corpus.tokens(start, length)
    with pytest.raises(IndexError):
        corpus.document(2)


def test_pickling_drops_memory_maps(tmp_path):
    documents = [list(range(2, 100))] * 5
    _write_corpus(tmp_path, documents, shard_tokens=64)
    fresh = TokenizedCorpus.open(tmp_path)
    fresh_size = len(pickle.dumps(fresh))
    used = TokenizedCorpus.open(tmp_path)
    used.tokens(0, used.num_tokens)
    used.document(4)
    assert len(pickle.dumps(used)) == fresh_size  # no memmaps, no cached table in the pickle
    copy = pickle.loads(pickle.dumps(used))
    assert copy.tokens(0, copy.num_tokens).tolist() == _stream(documents)
    assert copy.document(3).tolist() == documents[3]


def test_token_dtype_selection():
    assert token_dtype(300) == "uint16"
    assert token_dtype(65536) == "uint16"
    assert token_dtype(65537) == "uint32"
    assert token_dtype(200_000) == "uint32"


def test_uint16_byte_layout(tmp_path):
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


def test_documents_table_schema(tmp_path):
    _write_corpus(tmp_path, [[2, 3], [], [4]], shard_tokens=2)
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


def test_manifest_written_sorted_and_atomically(tmp_path, monkeypatch):
    _write_corpus(tmp_path, [[2, 3, 4]], shard_tokens=8)
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


# -- verification: each corruption is caught, by the right level, naming the file ----------------


@pytest.fixture
def corpus_dir(tmp_path) -> Path:
    documents = [[int(t) for t in range(2 + i, 30 + 3 * i)] for i in range(8)]
    _write_corpus(tmp_path, documents, shard_tokens=32)
    assert TokenizedCorpus.open(tmp_path, verify="full").verify(full=True) == []
    return tmp_path


def _edit_manifest(directory: Path, **changes) -> None:
    path = directory / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest.update(changes)
    path.write_text(json.dumps(manifest))


def test_flipped_byte_found_only_by_full(corpus_dir):
    path = corpus_dir / "shard-00001.bin"
    raw = bytearray(path.read_bytes())
    raw[4] ^= 1  # token 2 of shard 1: a document token (ids >= 2, so never EOS), stays < VOCAB
    path.write_bytes(bytes(raw))
    assert TokenizedCorpus.open(corpus_dir, verify="sizes").verify(full=False) == []
    with pytest.raises(CorpusError, match=r"shard-00001\.bin.*sha256"):
        TokenizedCorpus.open(corpus_dir, verify="full")


def test_truncated_shard_found_by_sizes(corpus_dir):
    path = corpus_dir / "shard-00000.bin"
    path.write_bytes(path.read_bytes()[:-2])
    with pytest.raises(CorpusError, match=r"shard-00000\.bin: 62 bytes, manifest says 64"):
        TokenizedCorpus.open(corpus_dir, verify="sizes")
    TokenizedCorpus.open(corpus_dir, verify="none")  # "none" opens anyway


def test_missing_shard(corpus_dir):
    (corpus_dir / "shard-00002.bin").unlink()
    with pytest.raises(CorpusError, match=r"shard-00002\.bin: missing"):
        TokenizedCorpus.open(corpus_dir)


def test_token_id_beyond_vocabulary(tmp_path):
    _write_corpus(tmp_path, [[2, 3], [4, VOCAB, 5]], shard_tokens=4)
    assert TokenizedCorpus.open(tmp_path, verify="sizes").verify(full=False) == []
    problems = TokenizedCorpus.open(tmp_path, verify="none").verify(full=True)
    assert len(problems) == 1
    assert "shard-00001.bin" in problems[0] and f"token id {VOCAB}" in problems[0]
    assert "vocab_size" in problems[0]


def test_wrong_tokenizer(corpus_dir):
    (corpus_dir / "tokenizer.model").write_bytes(b"another model")
    TokenizedCorpus.open(corpus_dir, verify="sizes")
    with pytest.raises(CorpusError, match=r"tokenizer\.model: sha256"):
        TokenizedCorpus.open(corpus_dir, verify="full")


def test_documents_table_inconsistent(corpus_dir):
    table = pq.read_table(corpus_dir / "documents.parquet")
    offsets = table.column("offset").to_pylist()
    offsets[3] += 1
    table = table.set_column(3, "offset", pa.array(offsets, pa.int64()))
    write_documents_table(corpus_dir, table)
    problems = TokenizedCorpus.open(corpus_dir, verify="sizes").verify(full=True)
    assert any("documents.parquet" in p and "document 3" in p for p in problems), problems


def test_missing_eos(corpus_dir):
    # document 0 has 28 tokens: its EOS is token 28 of shard 0 (bytes 56..57)
    path = corpus_dir / "shard-00000.bin"
    raw = bytearray(path.read_bytes())
    assert raw[56:58] == bytes([EOS, 0])
    raw[56] = 7
    path.write_bytes(bytes(raw))
    problems = TokenizedCorpus.open(corpus_dir, verify="none").verify(full=True)
    assert any("not followed by EOS" in p and "document 0" in p for p in problems), problems
    assert any("shard-00000.bin" in p and "sha256" in p for p in problems), problems


def test_documents_row_count(corpus_dir):
    _edit_manifest(corpus_dir, documents=9)
    with pytest.raises(CorpusError, match=r"documents\.parquet: 8 rows, manifest says 9"):
        TokenizedCorpus.open(corpus_dir)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": 99}, r"manifest\.json: unknown format version 99"),
        ({"vocab_size": "300"}, r"manifest\.json: key 'vocab_size'"),
        ({"dtype": "int8"}, r"manifest\.json: key 'dtype'"),
        ({"eos_id": VOCAB}, r"manifest\.json: key 'eos_id'"),
        ({"shards": [{"file": "../x.bin", "tokens": 1, "bytes": 2, "sha256": ""}]}, r"'file'"),
    ],
)
def test_bad_manifest_values(corpus_dir, change, message):
    _edit_manifest(corpus_dir, **change)
    with pytest.raises(CorpusError, match=message):
        read_manifest(corpus_dir)


def test_manifest_missing_key_or_file(corpus_dir, tmp_path):
    manifest = json.loads((corpus_dir / "manifest.json").read_text())
    del manifest["tokenizer_sha256"]
    (corpus_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CorpusError, match=r"manifest\.json: missing key 'tokenizer_sha256'"):
        TokenizedCorpus.open(corpus_dir)
    (corpus_dir / "manifest.json").write_text("{not json")
    with pytest.raises(CorpusError, match=r"manifest\.json: invalid JSON"):
        TokenizedCorpus.open(corpus_dir)
    (corpus_dir / "manifest.json").unlink()
    with pytest.raises(CorpusError, match=r"no manifest\.json") as info:
        TokenizedCorpus.open(corpus_dir)
    assert isinstance(info.value, InputError) and info.value.exit_code == 2
    with pytest.raises(CorpusError, match="no such corpus directory"):
        TokenizedCorpus.open(tmp_path / "nowhere")


@pytest.mark.parametrize("discard_length", [0, 3, 7, 8, 9, 30])
@pytest.mark.parametrize("start_offset", [0, 5, 7])
def test_discarded_document_leaves_no_trace(tmp_path, start_offset, discard_length):
    """A document dropped midway (it changed while it was read) leaves the shards, their
    hashes and the following placements exactly as if it had never been begun, also when it
    filled shards meanwhile."""
    shard_tokens = 8
    before = [list(range(2, 2 + start_offset - 1))] if start_offset else []  # with EOS: offset
    after = [[5, 6, 7], list(range(2, 20))]

    def write_all(directory: Path, dropped: list[int] | None) -> tuple[list, list]:
        placements = []
        with ShardWriter(directory, "uint16", shard_tokens, EOS) as writer:
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


def test_training_index_reads_only_the_columns_it_needs(tmp_path):
    """document_starts / document_lengths / heldout_mask hold shard, offset, tokens and split
    only: a rank never holds the sources and hashes (here 20 MB of long source names)."""
    import pyarrow as pa

    count = 10_000
    documents = [[2, 3]] * count
    _write_corpus(tmp_path, documents, shard_tokens=4096)
    table = pq.read_table(tmp_path / "documents.parquet")
    long_names = pa.array([f"{'deep/' * 400}doc{i}.txt" for i in range(count)])
    split = pa.array(["heldout" if i % 7 == 0 else "train" for i in range(count)])
    table = table.set_column(1, "source", long_names).set_column(7, "split", split)
    write_documents_table(tmp_path, table)
    corpus = TokenizedCorpus.open(tmp_path)
    before = pa.total_allocated_bytes()
    starts, lengths = corpus.document_starts(), corpus.document_lengths()
    heldout = corpus.heldout_mask()
    held = pa.total_allocated_bytes() - before
    assert held < 1 << 20, f"{held >> 20} MiB held by the index"
    assert np.array_equal(starts, np.arange(count) * 3)
    assert np.array_equal(lengths, np.full(count, 2))
    assert np.array_equal(heldout, np.arange(count) % 7 == 0)
    assert corpus.split_documents("heldout").size == len(range(0, count, 7))

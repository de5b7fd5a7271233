"""Reading a corpus version: the reader's round trip, token windows, pickling, column reads."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from longnet_cli.core.errors import InputError
from longnet_cli.data.format.errors import CorpusError
from longnet_cli.data.format.reader import TokenizedCorpus
from longnet_cli.data.format.writer import write_documents_table


@pytest.mark.parametrize("shard_tokens", [7, 50])
def test_round_trip(tmp_path, shard_tokens, small_corpus):
    rng = np.random.default_rng(shard_tokens)
    documents = small_corpus.random_documents(rng, shard_tokens)
    placements = small_corpus.write(tmp_path, documents, shard_tokens)
    stream = small_corpus.stream(documents)

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


def test_window_inside_one_shard_is_a_read_only_view(tmp_path, small_corpus):
    documents = [list(range(2, 40)), list(range(5, 90))]
    small_corpus.write(tmp_path, documents, shard_tokens=50)
    corpus = TokenizedCorpus.open(tmp_path)
    window = corpus.tokens(3, 20)
    assert isinstance(window, np.memmap) and not window.flags.writeable
    assert window.tolist() == list(range(5, 25))
    spanning = corpus.tokens(45, 10)
    assert spanning.tolist() == small_corpus.stream(documents)[45:55]
    for start, length in [(-1, 2), (0, 126), (125, 2), (10, -1)]:
        with pytest.raises(IndexError, match="outside"):
            corpus.tokens(start, length)
    with pytest.raises(IndexError):
        corpus.document(2)


def test_pickling_drops_memory_maps(tmp_path, small_corpus):
    documents = [list(range(2, 100))] * 5
    small_corpus.write(tmp_path, documents, shard_tokens=64)
    fresh = TokenizedCorpus.open(tmp_path)
    fresh_size = len(pickle.dumps(fresh))
    used = TokenizedCorpus.open(tmp_path)
    used.tokens(0, used.num_tokens)
    used.document(4)
    assert len(pickle.dumps(used)) == fresh_size  # no memmaps, no cached table in the pickle
    copy = pickle.loads(pickle.dumps(used))
    assert copy.tokens(0, copy.num_tokens).tolist() == small_corpus.stream(documents)
    assert copy.document(3).tolist() == documents[3]


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


def test_training_index_reads_only_the_columns_it_needs(tmp_path, small_corpus):
    """document_starts / document_lengths / heldout_mask hold shard, offset, tokens and split
    only: a rank never holds the sources and hashes (here 20 MB of long source names)."""

    count = 10_000
    documents = [[2, 3]] * count
    small_corpus.write(tmp_path, documents, shard_tokens=4096)
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

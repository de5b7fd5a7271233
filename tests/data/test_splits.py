"""Held-out splits in training windows: no window of any run reads a held-out token.

The corpora here give held-out documents token ids that training documents never use, so a
single held-out token in any window, on any rank or sequence-parallel chunk, is visible.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from longnet_cli.data.format.reader import TokenizedCorpus
from longnet_cli.data.format.schema import LEGACY_DOCUMENTS_NAMES, token_dtype
from longnet_cli.data.format.writer import ShardWriter, write_documents_table, write_manifest
from longnet_cli.data.splits import SplitTally, document_split, heldout_threshold
from longnet_cli.data.windows import TrainingWindows

EOS = 1
VOCAB = 60_000
HELDOUT_BASE = 40_000  # held-out documents use ids from here; training documents stay below
SEQ_LEN = 16
# (length, held out?): held-out documents first, last, back to back, empty, between long ones
DOCUMENTS = [
    (12, True), (30, False), (0, False), (7, True), (50, False), (3, True), (9, True),
    (100, False), (1, False), (0, True), (45, False), (64, True), (13, False), (220, False),
    (2, False), (90, True), (40, False), (25, True),
]  # fmt: skip


def _write_corpus(directory: Path, documents, shard_tokens: int, splits: bool = True):
    """Write the corpus; return (corpus stream, training stream) as int64 arrays.

    A training token is its corpus stream position + 2 (unique, so a window that is not an
    exact slice of the training stream cannot compare equal by accident); a held-out token is
    HELDOUT_BASE + its position.
    """
    stream: list[int] = []
    train: list[int] = []
    for length, heldout in documents:
        base = HELDOUT_BASE if heldout else 2
        ids = [base + len(stream) + i for i in range(length)] + [EOS]
        stream += ids
        if not heldout:
            train += ids
    assert HELDOUT_BASE + len(stream) < VOCAB and len(stream) + 2 < HELDOUT_BASE
    dtype = token_dtype(VOCAB)
    placements, position = [], 0
    with ShardWriter(directory, dtype, shard_tokens, EOS) as writer:
        for length, _ in documents:
            writer.begin_document()
            writer.write(np.array(stream[position : position + length], dtype=np.int64))
            placements.append(writer.end_document())
            position += length + 1
        shards = writer.close()
    columns = {
        "doc_id": list(range(len(documents))),
        "source": [f"doc{i}.txt" for i in range(len(documents))],
        "shard": [p.shard for p in placements],
        "offset": [p.offset for p in placements],
        "tokens": [p.tokens for p in placements],
        "bytes": [length for length, _ in documents],
        "sha256": [hashlib.sha256(b"%d" % i).hexdigest() for i in range(len(documents))],
    }
    if splits:
        columns["split"] = ["heldout" if held else "train" for _, held in documents]
    write_documents_table(directory, columns)
    tokenizer = b"tokenizer"
    (directory / "tokenizer.model").write_bytes(tokenizer)
    manifest = {
        "tokenizer_sha256": hashlib.sha256(tokenizer).hexdigest(),
        "vocab_size": VOCAB,
        "dtype": dtype,
        "eos_id": EOS,
        "bos_id": -1,
        "documents": len(documents),
        "tokens": len(stream),
        "bytes": sum(length for length, _ in documents),
        "shards": shards,
        "skipped": {"counts": {}, "examples": []},
    }
    if splits:
        held = [length + 1 for length, h in documents if h]
        manifest["splits"] = {
            "holdout": 0.3,
            "train": {"documents": len(documents) - len(held), "tokens": len(train)},
            "heldout": {"documents": len(held), "tokens": sum(held)},
        }
    write_manifest(directory, manifest)
    return np.array(stream, dtype=np.int64), np.array(train, dtype=np.int64)


@pytest.fixture(params=[7, 4096], ids=["small-shards", "one-shard"])
def split_corpus(request, tmp_path):
    stream, train = _write_corpus(tmp_path, DOCUMENTS, shard_tokens=request.param)
    return TokenizedCorpus.open(tmp_path, verify="full"), stream, train


def _training_document_starts(seq_len: int, num_tokens: int) -> list[int]:
    """Reference for document sampling on the training stream, written plainly."""
    starts, position = [], 0
    for length, heldout in DOCUMENTS:
        if heldout:
            continue
        for offset in range(0, length, seq_len):
            if position + offset + seq_len + 1 <= num_tokens:
                starts.append(position + offset)
        position += length + 1
    return starts


@pytest.mark.parametrize("sampling", ["stream", "document"])
def test_every_window_of_every_rank_and_chunk_avoids_held_out_tokens(split_corpus, sampling):
    """All windows of several epochs, as each data-parallel rank and each sequence-parallel
    chunk (sliced as train.LanguageModelLoss slices them) reads them."""
    corpus, stream, train = split_corpus
    assert corpus.has_splits and corpus.heldout_mask().sum() == 8
    windows = TrainingWindows(corpus, SEQ_LEN, seed=5, sampling=sampling)
    assert windows.num_tokens == train.size
    epochs = 4
    # every sample of `epochs` epochs, exactly a slice of the training stream
    for index in range(epochs * windows.num_windows):
        start = windows.start(index)
        window = windows.window(index)
        np.testing.assert_array_equal(window, train[start : start + SEQ_LEN + 1])
        assert window.max() < HELDOUT_BASE
        pieces = windows.pieces(start)
        assert sum(length for _, length in pieces) == SEQ_LEN + 1
        gathered = np.concatenate([stream[p : p + n] for p, n in pieces])
        np.testing.assert_array_equal(gathered, window)
    # the batches of a run, per layout: data-parallel ranks, grad accumulation, micro-batches
    micro_batch_size, grad_accum = 2, 2
    for dp_size in (1, 2, 3):
        samples_per_step = dp_size * grad_accum * micro_batch_size
        steps = -(-epochs * windows.num_windows // samples_per_step)
        seen = set()
        for step in range(steps):
            for micro in range(grad_accum):
                for dp_rank in range(dp_size):
                    batch = windows.batch(
                        step,
                        micro,
                        grad_accum=grad_accum,
                        micro_batch_size=micro_batch_size,
                        dp_rank=dp_rank,
                        dp_size=dp_size,
                    )
                    assert batch.shape == (micro_batch_size, SEQ_LEN + 1)
                    assert batch.max() < HELDOUT_BASE
                    for row in range(micro_batch_size):
                        seen.add(
                            windows.sample_index(
                                step,
                                micro,
                                row,
                                grad_accum=grad_accum,
                                micro_batch_size=micro_batch_size,
                                dp_rank=dp_rank,
                                dp_size=dp_size,
                            )
                        )
                    for sequence_size in (2, 4):  # each rank of a sequence group
                        n = SEQ_LEN // sequence_size
                        for sequence_rank in range(sequence_size):
                            first = sequence_rank * n
                            inputs = batch[:, first : first + n]
                            targets = batch[:, first + 1 : first + n + 1]
                            assert inputs.max() < HELDOUT_BASE and targets.max() < HELDOUT_BASE
        assert seen >= set(range(epochs * windows.num_windows))  # every sample was read


def test_windows_cross_held_out_gaps_into_the_next_training_document(split_corpus):
    corpus, stream, train = split_corpus
    windows = TrainingWindows(corpus, SEQ_LEN, seed=5, sampling="document")
    starts = [windows.start(i) for i in range(windows.num_windows)]
    assert sorted(starts) == _training_document_starts(SEQ_LEN, train.size)
    crossing = [s for s in starts if len(windows.pieces(s)) > 1]
    assert crossing  # some windows run on past a held-out document
    for start in crossing:
        (first, first_length), (second, _), *_ = windows.pieces(start)
        assert stream[first + first_length - 1] == EOS  # a gap opens only after an EOS
        assert stream[second - 1] == EOS  # and closes at a document start
        assert stream[second] < HELDOUT_BASE or stream[second] == EOS


@pytest.mark.parametrize("sampling", ["stream", "document"])
def test_resume_and_pickled_copies_read_the_same_windows(split_corpus, sampling):
    corpus, _, _ = split_corpus
    running = TrainingWindows(corpus, SEQ_LEN, seed=2, sampling=sampling)
    layout = {"grad_accum": 2, "micro_batch_size": 3, "dp_rank": 1, "dp_size": 2}
    expected = [running.batch(s, m, **layout) for s in range(6) for m in range(2)]
    resumed = pickle.loads(
        pickle.dumps(TrainingWindows(corpus, SEQ_LEN, seed=2, sampling=sampling))
    )
    got = [resumed.batch(s, m, **layout) for s in range(3, 6) for m in range(2)]
    for a, b in zip(expected[6:], got):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("sampling", ["stream", "document"])
def test_without_held_out_documents_windows_are_unchanged(tmp_path, sampling):
    """Old corpora (no split column, no "splits") and split="all" read the whole stream, as
    before splits existed: the same windows, with or without ``end``."""
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    stream, _ = _write_corpus(legacy, DOCUMENTS, shard_tokens=50, splits=False)
    table = pq.read_table(legacy / "documents.parquet").drop_columns(["split"])
    pq.write_table(table, legacy / "documents.parquet")
    assert pq.read_table(legacy / "documents.parquet").column_names == LEGACY_DOCUMENTS_NAMES
    assert "splits" not in json.loads((legacy / "manifest.json").read_text())
    old = TokenizedCorpus.open(legacy, verify="full")
    assert not old.has_splits and not old.heldout_mask().any()
    assert old.split_documents("train").tolist() == list(range(len(DOCUMENTS)))

    split = tmp_path / "split"
    split.mkdir()
    _write_corpus(split, DOCUMENTS, shard_tokens=50)
    new = TokenizedCorpus.open(split, verify="full")
    for end in (None, 300):
        reference = TrainingWindows(old, SEQ_LEN, seed=9, sampling=sampling, end=end)
        for windows in (
            TrainingWindows(old, SEQ_LEN, seed=9, sampling=sampling, split="all", end=end),
            TrainingWindows(new, SEQ_LEN, seed=9, sampling=sampling, split="all", end=end),
        ):
            assert windows.num_windows == reference.num_windows
            for index in range(3 * reference.num_windows):
                start = reference.start(index)
                assert windows.start(index) == start
                assert start + SEQ_LEN + 1 <= (end or stream.size)
                np.testing.assert_array_equal(
                    windows.window(index), stream[start : start + SEQ_LEN + 1]
                )
    # the held-out scheme differs on the corpus that has held-out documents
    assert TrainingWindows(new, SEQ_LEN, seed=9, sampling=sampling).num_tokens < stream.size


def test_training_stream_too_small_names_the_training_documents(tmp_path):
    _write_corpus(tmp_path, [(40, True), (5, False), (60, True)], shard_tokens=100)
    corpus = TokenizedCorpus.open(tmp_path)
    TrainingWindows(corpus, 16, seed=0, split="all")  # the whole stream would fit
    with pytest.raises(ValueError, match="6 tokens"):
        TrainingWindows(corpus, 16, seed=0)


# -- the split rule: by content hash, with the smallest-hash fallback ---------------------------


def test_split_by_the_first_16_hex_digits_of_the_content_hash():
    assert heldout_threshold(0.25) == 2**62
    assert document_split("3" + "f" * 63, 0.25) == "heldout"  # 0x3fff... < 2**62
    assert document_split("4" + "0" * 63, 0.25) == "train"  # exactly 2**62
    assert document_split("0" * 64, 0.0) == "train"  # --holdout 0 holds none out


def test_tally_counts_each_split_with_its_eos():
    tally = SplitTally(0.25)
    assert [tally.add(sha, tokens) for sha, tokens in (("0" * 64, 3), ("f" * 64, 5))] == [
        "heldout",
        "train",
    ]
    assert tally.finish() == {
        "holdout": 0.25,
        "train": {"documents": 1, "tokens": 5},
        "heldout": {"documents": 1, "tokens": 3},
        "fallback": False,
    }
    assert not tally.fallback


def test_fraction_selecting_none_holds_out_every_copy_of_the_smallest_hash():
    tally = SplitTally(1e-9)
    for sha, tokens in (("c" * 64, 2), ("a" * 64, 3), ("b" * 64, 4), ("a" * 64, 3)):
        assert tally.add(sha, tokens) == "train"
    splits = tally.finish()
    assert tally.fallback and tally.smallest == "a" * 64
    assert splits["heldout"] == {"documents": 2, "tokens": 6}
    assert splits["train"] == {"documents": 2, "tokens": 6} and splits["fallback"] is True


@pytest.mark.parametrize(
    "hashes", [["a" * 64], ["a" * 64, "a" * 64]], ids=["one-document", "all-one-content"]
)
def test_no_fallback_that_would_leave_nothing_to_train_on(hashes):
    tally = SplitTally(1e-9)
    for sha in hashes:
        tally.add(sha, 2)
    splits = tally.finish()
    assert not tally.fallback and splits["heldout"] == {"documents": 0, "tokens": 0}


def test_no_fallback_with_holdout_zero():
    tally = SplitTally(0.0)
    for sha in ("a" * 64, "b" * 64):
        tally.add(sha, 2)
    assert tally.finish()["fallback"] is False

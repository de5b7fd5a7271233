"""Training windows: exact stream slices, epochs, documents, determinism, ranks, resume."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import pytest

from longnet_cli.core.errors import InputError
from longnet_cli.data.format.reader import TokenizedCorpus
from longnet_cli.data.format.schema import token_dtype
from longnet_cli.data.format.writer import ShardWriter, write_documents_table, write_manifest
from longnet_cli.data.windows import TrainingWindows

EOS = 1
VOCAB = 60_000
# documents of awkward lengths: empty ones, one shorter than seq_len, several longer
DOC_LENGTHS = [30, 0, 7, 100, 1, 0, 45, 64, 13, 220, 2, 90]
SEQ_LEN = 16


def _write_corpus(directory: Path, lengths: list[int], shard_tokens: int) -> np.ndarray:
    """A corpus whose token at stream position p is p + 2 (EOS between documents); the stream.

    Every non-EOS token names its own position, so a window that is not an exact slice of the
    stream cannot compare equal by accident.
    """
    stream = []
    for length in lengths:
        stream += [len(stream) + 2 + i for i in range(length)] + [EOS]
    assert len(stream) + 2 < VOCAB
    dtype = token_dtype(VOCAB)
    placements = []
    with ShardWriter(directory, dtype, shard_tokens, EOS) as writer:
        position = 0
        for length in lengths:
            writer.begin_document()
            writer.write(np.array(stream[position : position + length], dtype=np.int64))
            placements.append(writer.end_document())
            position += length + 1
        shards = writer.close()
    write_documents_table(
        directory,
        {
            "doc_id": list(range(len(lengths))),
            "source": [f"doc{i}.txt" for i in range(len(lengths))],
            "shard": [p.shard for p in placements],
            "offset": [p.offset for p in placements],
            "tokens": [p.tokens for p in placements],
            "bytes": list(lengths),
            "sha256": [hashlib.sha256(b"%d" % i).hexdigest() for i in range(len(lengths))],
        },
    )
    tokenizer = b"tokenizer"
    (directory / "tokenizer.model").write_bytes(tokenizer)
    write_manifest(
        directory,
        {
            "tokenizer_sha256": hashlib.sha256(tokenizer).hexdigest(),
            "vocab_size": VOCAB,
            "dtype": dtype,
            "eos_id": EOS,
            "bos_id": -1,
            "documents": len(lengths),
            "tokens": len(stream),
            "bytes": sum(lengths),
            "shards": shards,
            "skipped": {"counts": {}, "examples": []},
        },
    )
    return np.array(stream, dtype=np.int64)


@pytest.fixture(params=[5, 4096], ids=["small-shards", "one-shard"])
def corpus(request, tmp_path) -> tuple[TokenizedCorpus, np.ndarray]:
    stream = _write_corpus(tmp_path, DOC_LENGTHS, shard_tokens=request.param)
    return TokenizedCorpus.open(tmp_path, verify="full"), stream


def _epoch_starts(windows: TrainingWindows, epoch: int) -> list[int]:
    first = epoch * windows.num_windows
    return [windows.start(i) for i in range(first, first + windows.num_windows)]


def _batches(windows: TrainingWindows, steps: range, **layout) -> list[np.ndarray]:
    grad_accum = layout["grad_accum"]
    return [windows.batch(s, m, **layout) for s in steps for m in range(grad_accum)]


def _document_candidates(seq_len: int, num_tokens: int) -> list[int]:
    """Reference for document sampling, written as plainly as possible."""
    starts, position = [], 0
    for length in DOC_LENGTHS:
        offset = 0
        while offset < length:
            if position + offset + seq_len + 1 <= num_tokens:
                starts.append(position + offset)
            offset += seq_len
        position += length + 1
    return starts


@pytest.mark.parametrize("sampling", ["stream", "document"])
def test_windows_are_exact_stream_slices(corpus, sampling):
    corpus, stream = corpus
    windows = TrainingWindows(corpus, SEQ_LEN, seed=3, sampling=sampling)
    for index in range(3 * windows.num_windows):
        start = windows.start(index)
        window = windows.window(index)
        assert window.dtype == np.int64
        np.testing.assert_array_equal(window, stream[start : start + SEQ_LEN + 1])

    batch = windows.batch(2, 1, grad_accum=2, micro_batch_size=3, dp_rank=1, dp_size=2)
    assert batch.shape == (3, SEQ_LEN + 1)
    assert batch.dtype == np.int64
    assert batch.flags.writeable and batch.flags.c_contiguous
    for row in range(3):
        index = windows.sample_index(
            2, 1, row, grad_accum=2, micro_batch_size=3, dp_rank=1, dp_size=2
        )
        assert index == ((2 * 2 + 1) * 2 + 1) * 3 + row
        start = windows.start(index)
        np.testing.assert_array_equal(batch[row], stream[start : start + SEQ_LEN + 1])


@pytest.mark.parametrize("sampling", ["stream", "document"])
def test_batch_into_a_given_array_is_the_same_batch(corpus, sampling):
    """``out``: the loop hands a pinned buffer's numpy view on CUDA; the values are the same."""
    corpus, _ = corpus
    windows = TrainingWindows(corpus, SEQ_LEN, seed=5, sampling=sampling)
    layout = {"grad_accum": 2, "micro_batch_size": 3, "dp_rank": 1, "dp_size": 2}
    out = np.full((3, SEQ_LEN + 1), -1, dtype=np.int64)
    assert windows.batch(4, 1, out=out, **layout) is out
    np.testing.assert_array_equal(out, windows.batch(4, 1, **layout))
    for wrong in (np.empty((2, SEQ_LEN + 1), np.int64), np.empty((3, SEQ_LEN + 1), np.int32)):
        with pytest.raises(ValueError, match="out must be int64"):
            windows.batch(4, 1, out=wrong, **layout)


def test_stream_epoch_is_a_shifted_tiling(corpus):
    corpus, stream = corpus
    n = stream.size
    windows = TrainingWindows(corpus, SEQ_LEN, seed=11)
    assert windows.num_windows == (n - SEQ_LEN) // SEQ_LEN
    shifts = set()
    for epoch in range(8):
        starts = _epoch_starts(windows, epoch)
        assert len(set(starts)) == len(starts) == windows.num_windows
        assert all(s >= 0 and s + SEQ_LEN + 1 <= n for s in starts)
        ordered = sorted(starts)
        shift = ordered[0]
        shifts.add(shift)
        assert 0 <= shift < SEQ_LEN  # the prefix left out is shorter than seq_len
        assert np.all(np.diff(ordered) == SEQ_LEN)  # back to back: every token in between is read
        covered = np.zeros(n, dtype=bool)
        for start in starts:
            covered[start : start + SEQ_LEN + 1] = True
        end = ordered[-1] + SEQ_LEN + 1
        assert covered[shift:end].all() and not covered[:shift].any()
        assert n - end < 2 * SEQ_LEN  # the tail left out is short
        assert starts != ordered  # shuffled, not in stream order
    assert len(shifts) > 1  # window boundaries move between epochs


def test_stream_tiny_corpus_has_one_window_that_always_fits(tmp_path):
    stream = _write_corpus(tmp_path, [20], shard_tokens=4)  # 21 tokens, seq_len 16: one window
    windows = TrainingWindows(TokenizedCorpus.open(tmp_path), SEQ_LEN, seed=0)
    assert windows.num_windows == 1
    starts = {windows.start(i) for i in range(50)}
    assert starts <= set(range(stream.size - SEQ_LEN))
    assert len(starts) > 1
    for index in range(50):
        start = windows.start(index)
        np.testing.assert_array_equal(windows.window(index), stream[start : start + SEQ_LEN + 1])


@pytest.mark.parametrize("seq_len", [4, 16, 64])
def test_document_windows_start_at_documents_and_continue_inside_long_ones(corpus, seq_len):
    corpus, stream = corpus
    windows = TrainingWindows(corpus, seq_len, seed=5, sampling="document")
    expected = _document_candidates(seq_len, stream.size)
    assert windows.num_windows == len(expected)
    for epoch in range(3):
        starts = _epoch_starts(windows, epoch)
        assert sorted(starts) == expected  # each candidate once per epoch
        assert starts != expected
    # every start is a document start or a continuation inside a longer document
    doc_starts = np.cumsum([0, *(length + 1 for length in DOC_LENGTHS)])[:-1]
    for start in expected:
        doc = int(np.searchsorted(doc_starts, start, side="right")) - 1
        offset = start - int(doc_starts[doc])
        assert offset % seq_len == 0 and offset < DOC_LENGTHS[doc]
        assert offset == 0 or stream[start - 1] != EOS


def test_document_windows_may_run_past_the_document_end(corpus):
    corpus, stream = corpus
    windows = TrainingWindows(corpus, 64, seed=0, sampling="document")
    crossing = [s for s in _epoch_starts(windows, 0) if EOS in stream[s : s + 64]]
    assert crossing  # e.g. the 30-token first document runs into the next ones


def test_same_seed_same_windows_other_seed_other_order(corpus):
    corpus, _ = corpus
    for sampling in ("stream", "document"):
        first = TrainingWindows(corpus, SEQ_LEN, seed=7, sampling=sampling)
        again = TrainingWindows(corpus, SEQ_LEN, seed=7, sampling=sampling)
        other = TrainingWindows(corpus, SEQ_LEN, seed=8, sampling=sampling)
        count = 3 * first.num_windows
        starts = [first.start(i) for i in range(count)]
        assert starts == [again.start(i) for i in range(count)]
        assert starts != [other.start(i) for i in range(count)]
        # epochs are in different orders
        epochs = [tuple(_epoch_starts(first, epoch)) for epoch in range(3)]
        assert len(set(epochs)) == 3


def test_order_is_pinned(tmp_path):
    """Golden values: the order must not change with numpy versions, or resumed runs diverge."""
    _write_corpus(tmp_path, [500], shard_tokens=64)
    windows = TrainingWindows(TokenizedCorpus.open(tmp_path), 50, seed=1234)
    assert windows.num_windows == 9
    assert [windows.start(i) for i in range(12)] == [
        240, 290, 140, 440, 340, 190, 40, 90, 390,  # epoch 0, shift 40
        431, 81, 331,  # epoch 1, shift 31
    ]  # fmt: skip
    windows = TrainingWindows(TokenizedCorpus.open(tmp_path), 50, seed=1234, sampling="document")
    assert windows.num_windows == 10
    assert [windows.start(i) for i in range(12)] == [
        200, 250, 100, 400, 300, 150, 0, 450, 50, 350,  # epoch 0
        400, 50,  # epoch 1
    ]  # fmt: skip


def test_data_parallel_ranks_are_disjoint_and_cover_the_single_rank_sequence(corpus):
    corpus, _ = corpus
    windows = TrainingWindows(corpus, SEQ_LEN, seed=2)
    steps, grad_accum, micro_batch_size = 4, 2, 3

    def indices(dp_rank, dp_size, accum):
        return [
            windows.sample_index(
                step, micro, row, grad_accum=accum, micro_batch_size=micro_batch_size,
                dp_rank=dp_rank, dp_size=dp_size,
            )
            for step in range(steps) for micro in range(accum) for row in range(micro_batch_size)
        ]  # fmt: skip

    rank0, rank1 = indices(0, 2, grad_accum), indices(1, 2, grad_accum)
    assert not set(rank0) & set(rank1)
    single = indices(0, 1, 2 * grad_accum)  # one rank, the same global batch per step
    assert sorted(rank0 + rank1) == single == list(range(len(single)))
    # the windows read: same multiset, and the ranks' batches hold those windows
    layout = {"grad_accum": grad_accum, "micro_batch_size": micro_batch_size, "dp_size": 2}
    for rank, rank_indices in ((0, rank0), (1, rank1)):
        batches = np.concatenate(_batches(windows, range(steps), dp_rank=rank, **layout))
        starts = [windows.start(i) for i in rank_indices]
        np.testing.assert_array_equal(batches, np.stack([windows.window(i) for i in rank_indices]))
        assert len(set(starts)) == len(starts)  # fewer samples than an epoch: no repeats


@pytest.mark.parametrize("sampling", ["stream", "document"])
def test_resume_continues_exactly(corpus, sampling):
    corpus, _ = corpus
    layout = {"grad_accum": 3, "micro_batch_size": 2, "dp_rank": 1, "dp_size": 2}
    running = TrainingWindows(corpus, SEQ_LEN, seed=9, sampling=sampling)
    _batches(running, range(5), **layout)  # steps 0..4 already trained; crosses epochs
    continued = _batches(running, range(5, 12), **layout)
    resumed = TrainingWindows(corpus, SEQ_LEN, seed=9, sampling=sampling)
    for expected, got in zip(continued, _batches(resumed, range(5, 12), **layout), strict=True):
        np.testing.assert_array_equal(got, expected)
    # a pickled copy (a DataLoader worker, another process) continues the same way
    copy = pickle.loads(pickle.dumps(running))
    for expected, got in zip(continued, _batches(copy, range(5, 12), **layout), strict=True):
        np.testing.assert_array_equal(got, expected)


def test_corpus_too_small_raises(tmp_path):
    _write_corpus(tmp_path, [10], shard_tokens=4)  # 11 tokens
    corpus = TokenizedCorpus.open(tmp_path)
    TrainingWindows(corpus, 10, seed=0)  # exactly one window of 11 tokens fits
    with pytest.raises(ValueError, match=r"11 tokens.*seq_len \+ 1 = 12") as raised:
        TrainingWindows(corpus, 11, seed=0)
    assert isinstance(raised.value, InputError)  # the CLI reports it as bad input


def test_document_sampling_without_a_fitting_document_start_raises(tmp_path):
    # the stream fits one window at 0, but position 0 is an empty document's EOS
    _write_corpus(tmp_path, [0, 5], shard_tokens=3)  # 7 tokens
    corpus = TokenizedCorpus.open(tmp_path)
    TrainingWindows(corpus, 6, seed=0, sampling="stream")
    with pytest.raises(ValueError, match="document start"):
        TrainingWindows(corpus, 6, seed=0, sampling="document")


def test_bad_arguments(corpus):
    corpus, _ = corpus
    with pytest.raises(ValueError, match="sampling"):
        TrainingWindows(corpus, SEQ_LEN, seed=0, sampling="random")
    with pytest.raises(ValueError, match="seq_len"):
        TrainingWindows(corpus, 0, seed=0)
    with pytest.raises(ValueError, match="seed"):
        TrainingWindows(corpus, SEQ_LEN, seed=-1)
    windows = TrainingWindows(corpus, SEQ_LEN, seed=0)
    with pytest.raises(ValueError, match="dp_rank"):
        windows.batch(0, 0, grad_accum=1, micro_batch_size=1, dp_rank=2, dp_size=2)
    with pytest.raises(ValueError, match="sample_index"):
        windows.start(-1)


@pytest.mark.parametrize("sampling", ["stream", "document"])
def test_end_keeps_windows_before_the_held_out_part(tmp_path, sampling):
    """Windows never read at or after ``end`` (evaluation documents lie there)."""
    _write_corpus(tmp_path, [40, 33, 25, 60, 12, 31], shard_tokens=1000)
    corpus = TokenizedCorpus.open(tmp_path)
    end = 110
    windows = TrainingWindows(corpus, 16, seed=3, sampling=sampling, end=end)
    assert windows.num_windows >= 1
    for index in range(3 * windows.num_windows):
        assert windows.start(index) + 17 <= end

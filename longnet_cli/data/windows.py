"""Training windows: which ``seq_len + 1`` tokens of the corpus stream each sample reads.

Windows are drawn from the *training stream*: the concatenation of the corpus's training
documents, each followed by its EOS, with held-out documents cut out (documents.parquet's
``split`` column; see ``longnet tokenize --holdout``). The gaps are invisible to a window: one
that crosses a held-out document reads the training document before it, its EOS, then the next
training document, gathered from the corpus stream in pieces. So no window ever holds a
held-out token, in either sampling mode, on any rank. A corpus without held-out documents has
one piece, the whole stream, and gives the same windows as before splits existed.

A sample is a window of ``seq_len + 1`` consecutive tokens of the training stream (inputs are
the first ``seq_len``, targets the last ``seq_len``). Samples are numbered 0, 1, 2, ... over the
whole run; epoch ``e`` holds samples ``[e * num_windows, (e + 1) * num_windows)`` in an order
drawn from ``(seed, e)``. A training step maps to sample numbers arithmetically, so:

- the same seed gives the same windows on any machine (the order is built from the raw output of
  the PCG64 bit generator, whose stream is fixed; no global RNG, no numpy version dependence);
- data-parallel ranks read disjoint samples;
- a run resumed at step ``s`` reads exactly what an uninterrupted run reads at step ``s``;
  nothing but the step needs to be checkpointed.

Sequence parallelism: the ranks of one sequence group pass the same ``dp_rank`` and so read the
same window; each takes its own chunk of it. numpy only.
"""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING, Any

import numpy as np

from longnet_cli.core.errors import InputError

if TYPE_CHECKING:
    from longnet_cli.data.format.reader import TokenizedCorpus

SAMPLING_MODES = ("stream", "document")
WINDOW_SPLITS = ("train", "all")  # the documents windows read: training ones, or every one


class CorpusTooSmallError(InputError, ValueError):
    """The corpus cannot give a single training window of the requested length."""


class TrainingWindows:
    """Deterministic, resumable, rank-aware windows of ``seq_len + 1`` tokens.

    ``sampling``:

    - ``"stream"``: epoch ``e`` reads the training stream cut into back-to-back windows
      ``shift + k * seq_len`` (k = 0 .. num_windows - 1; neighbours share one token, the last
      target of one being the first input of the next), ``shift`` drawn from ``(seed, e)`` so
      window boundaries move between epochs. Every epoch has the same ``num_windows``:
      ``max(1, (num_tokens - seq_len) // seq_len)``, the count that fits whatever the shift; at
      shifts where one more would fit, that last window is left out (tokens near the end of the
      stream are read a little less often). When the stream holds fewer than ``2 * seq_len``
      tokens the shift is limited so that the single window fits.
    - ``"document"``: windows start at training document starts; a document longer than
      ``seq_len`` also gives ``doc_start + j * seq_len`` (j >= 1) while that is inside the
      document. A window may run past its document's EOS into the next training document (never
      into a held-out one); windows that would run past the end of the training stream are
      dropped, and so are empty documents. The windows are the same every epoch, only their
      order changes.

    Positions (``start``, ``num_tokens``) count tokens of the training stream; ``pieces`` maps a
    window to the corpus stream.
    """

    def __init__(
        self,
        corpus: TokenizedCorpus,
        seq_len: int,
        *,
        seed: int,
        sampling: str = "stream",
        split: str = "train",
        end: int | None = None,
    ) -> None:
        """``split``: "train" reads the training documents only (held-out ones cut out), "all"
        the whole stream (the scheme of runs started before held-out splits existed).
        ``end``: use only the corpus stream before this position."""
        seq_len, seed = operator.index(seq_len), operator.index(seed)
        if seq_len < 1:
            raise ValueError(f"seq_len must be positive, got {seq_len}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if sampling not in SAMPLING_MODES:
            raise ValueError(f"sampling must be one of {SAMPLING_MODES}, got {sampling!r}")
        if split not in WINDOW_SPLITS:
            raise ValueError(f"split must be one of {WINDOW_SPLITS}, got {split!r}")
        self.corpus = corpus
        self.seq_len = seq_len
        self.seed = seed
        self.sampling = sampling
        self.split = split
        self.window_tokens = seq_len + 1
        # the training stream as pieces of the corpus stream: piece k is corpus tokens
        # [piece_starts[k], piece_starts[k] + piece_lengths[k]) at training-stream position
        # piece_offsets[k]
        self.piece_starts, self.piece_lengths = _training_pieces(corpus, split, end)
        self.piece_offsets = np.cumsum(self.piece_lengths) - self.piece_lengths
        self.num_tokens = int(self.piece_lengths.sum())
        if self.num_tokens < self.window_tokens:
            held = split == "train" and bool(corpus.heldout_mask().any())
            raise CorpusTooSmallError(
                f"corpus {corpus.directory} holds {self.num_tokens} tokens to train on"
                f"{' (held-out documents excluded)' if held else ''}, too few for one training "
                f"window of seq_len + 1 = {self.window_tokens} tokens; lower seq_len or tokenize "
                "more data"
            )
        self._document_starts: np.ndarray | None = None  # "document": candidate starts, sorted
        self._epoch: int | None = None  # the epoch whose order is cached
        self._order: np.ndarray | None = None  # its permutation of candidate indices
        self._shift = 0  # its stream shift ("stream" only)
        if sampling == "stream":
            self.num_windows = max(1, (self.num_tokens - seq_len) // seq_len)
            # the largest shift at which num_windows windows still fit
            self._max_shift = min(
                seq_len - 1,
                self.num_tokens - self.window_tokens - (self.num_windows - 1) * seq_len,
            )
        else:
            self.num_windows = int(self._candidates().size)
            self._max_shift = 0
            if self.num_windows == 0:
                raise CorpusTooSmallError(
                    f"corpus {corpus.directory}: no window of seq_len + 1 = {self.window_tokens} "
                    f"tokens starting at a document start fits in its {self.num_tokens} tokens; "
                    "lower seq_len or use stream sampling"
                )

    # -- sample numbers -----------------------------------------------------------------------

    @staticmethod
    def sample_index(
        step: int,
        micro_step: int,
        row: int,
        *,
        grad_accum: int,
        micro_batch_size: int,
        dp_rank: int,
        dp_size: int,
    ) -> int:
        """The global sample number read by ``row`` of micro-batch ``micro_step`` of ``step``.

        Ordered step, micro-step, data-parallel rank, row: every combination gets its own number,
        and the samples of steps ``0 .. s-1`` are exactly the numbers below
        ``s * grad_accum * dp_size * micro_batch_size``.
        """
        return ((step * grad_accum + micro_step) * dp_size + dp_rank) * micro_batch_size + row

    def start(self, sample_index: int) -> int:
        """Stream position of the first token of sample ``sample_index`` (0, 1, ... over epochs)."""
        sample_index = operator.index(sample_index)
        if sample_index < 0:
            raise ValueError(f"sample_index must be >= 0, got {sample_index}")
        epoch, position = divmod(sample_index, self.num_windows)
        order = self._epoch_order(epoch)
        window = int(order[position])
        if self.sampling == "stream":
            return self._shift + window * self.seq_len
        return int(self._candidates()[window])

    def window(self, sample_index: int) -> np.ndarray:
        """The ``seq_len + 1`` tokens of sample ``sample_index`` as int64 (a copy)."""
        return self._read(self.start(sample_index)).astype(np.int64)

    def pieces(self, start: int) -> list[tuple[int, int]]:
        """Where the window at training-stream position ``start`` lies in the corpus stream:
        ``(corpus position, length)`` pieces, in order (one unless it crosses held-out data)."""
        out = []
        length = self.window_tokens
        piece = int(np.searchsorted(self.piece_offsets, start, side="right")) - 1
        offset = start - int(self.piece_offsets[piece])
        while length > 0:
            take = min(length, int(self.piece_lengths[piece]) - offset)
            out.append((int(self.piece_starts[piece]) + offset, take))
            length -= take
            piece, offset = piece + 1, 0
        return out

    def batch(
        self,
        step: int,
        micro_step: int,
        *,
        grad_accum: int,
        micro_batch_size: int,
        dp_rank: int = 0,
        dp_size: int = 1,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        """This rank's micro-batch: int64 (micro_batch_size, seq_len + 1), copied from disk
        into ``out`` when given (e.g. the numpy view of a pinned tensor the loop copies to the
        GPU without waiting), else into a new array."""
        if not 0 <= dp_rank < dp_size:
            raise ValueError(f"dp_rank must be in [0, {dp_size}), got {dp_rank}")
        if not 0 <= micro_step < grad_accum:
            raise ValueError(f"micro_step must be in [0, {grad_accum}), got {micro_step}")
        shape = (micro_batch_size, self.window_tokens)
        if out is None:
            out = np.empty(shape, dtype=np.int64)
        elif out.shape != shape or out.dtype != np.int64:
            raise ValueError(f"out must be int64 of shape {shape}, got {out.dtype} {out.shape}")
        for row in range(micro_batch_size):
            index = self.sample_index(
                step,
                micro_step,
                row,
                grad_accum=grad_accum,
                micro_batch_size=micro_batch_size,
                dp_rank=dp_rank,
                dp_size=dp_size,
            )
            out[row] = self._read(self.start(index))
        return out

    # -- internals ----------------------------------------------------------------------------

    def _read(self, start: int) -> np.ndarray:
        """The window at training-stream position ``start``, in the corpus dtype."""
        if self.piece_starts.size == 1:  # no gap: a zero-copy view where the shards allow
            return self.corpus.tokens(int(self.piece_starts[0]) + start, self.window_tokens)
        parts = [self.corpus.tokens(position, length) for position, length in self.pieces(start)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _epoch_order(self, epoch: int) -> np.ndarray:
        """Permutation of the epoch's windows (and, for "stream", its shift); one epoch cached."""
        if self._epoch != epoch or self._order is None:
            bits = np.random.PCG64(np.random.SeedSequence([self.seed, epoch]))
            self._shift = int(bits.random_raw() % (self._max_shift + 1))
            # sorting random 64-bit keys is a uniform permutation (ties: negligible, broken
            # stably); unlike Generator.permutation it depends only on the PCG64 stream
            keys = bits.random_raw(self.num_windows)
            self._order = np.argsort(keys, kind="stable")
            self._epoch = epoch
        return self._order

    def _candidates(self) -> np.ndarray:
        """Document mode: sorted int64 starts of every window, in training-stream positions
        (computed once, vectorized)."""
        if self._document_starts is None:
            doc_starts = self.corpus.document_starts().astype(np.int64)
            lengths = self.corpus.document_lengths().astype(np.int64)
            if self.piece_starts.size > 1 or self.piece_starts[0] != 0:
                doc_starts, lengths = self._training_documents(doc_starts, lengths)
            per_document = -(-lengths // self.seq_len)  # ceil: starts inside the document
            total = int(per_document.sum())
            first_of_document = np.repeat(np.cumsum(per_document) - per_document, per_document)
            j = np.arange(total, dtype=np.int64) - first_of_document
            starts = np.repeat(doc_starts, per_document) + j * self.seq_len
            self._document_starts = starts[starts + self.window_tokens <= self.num_tokens]
        return self._document_starts

    def _training_documents(
        self, doc_starts: np.ndarray, lengths: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """The documents that start inside the training stream, at their training-stream
        positions, with their lengths."""
        piece = np.searchsorted(self.piece_starts, doc_starts, side="right") - 1
        inside = piece >= 0
        piece = np.maximum(piece, 0)
        local = doc_starts - self.piece_starts[piece]
        inside &= local < self.piece_lengths[piece]
        positions = self.piece_offsets[piece] + local
        return positions[inside], lengths[inside]

    def __getstate__(self) -> dict[str, Any]:
        """Pickle without the cached epoch order and document starts (rebuilt on first use)."""
        state = self.__dict__.copy()
        state.update(_document_starts=None, _epoch=None, _order=None, _shift=0)
        return state


def _training_pieces(corpus: TokenizedCorpus, split: str, end: int | None):
    """(starts, lengths), int64: the runs of consecutive documents that windows read, as ranges
    of the corpus stream, cut at ``end``. One range, the whole stream, when nothing is held
    out (then the documents table is not needed for stream sampling)."""
    total = corpus.num_tokens if end is None else max(min(int(end), corpus.num_tokens), 0)
    heldout = corpus.heldout_mask() if split == "train" else None
    if heldout is None or not heldout.any():
        return np.array([0], dtype=np.int64), np.array([total], dtype=np.int64)
    kept = ~heldout
    first = kept & ~np.concatenate([[False], kept[:-1]])  # a run of kept documents begins
    last = kept & ~np.concatenate([kept[1:], [False]])  # ... and ends
    doc_starts = corpus.document_starts().astype(np.int64)
    stream_lengths = corpus.document_lengths().astype(np.int64) + 1  # with EOS
    starts = doc_starts[first]
    ends = np.minimum(doc_starts[last] + stream_lengths[last], total)
    keep = ends > starts
    if not keep.any():
        return np.array([0], dtype=np.int64), np.array([0], dtype=np.int64)
    return starts[keep], ends[keep] - starts[keep]

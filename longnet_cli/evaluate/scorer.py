"""Scoring: token sequences at several contexts -> summed figures per position bucket.

The scorer behind ``longnet eval``, the copy probe and evaluation during training: each
document's span is scored once per context with the model's chunked per-token loss, and the
negative log-likelihood, targets and bytes are summed per bucket (``Stats``). Sums, not ratios,
are what this module hands out, so that figures of several ranks or document groups add up.
The stage (``stage.py``) chooses runs, documents and contexts; this module only scores.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from longnet_cli.core.errors import reading
from longnet_cli.runtime import PRECISION_NAMES, autocast_context

if TYPE_CHECKING:
    from longnet_cli.data.format.reader import TokenizedCorpus
    from longnet_cli.model.transformer import LongNetTransformer

LN2 = math.log(2)
FIRST_BUCKET = 1024  # default buckets: [0, 1K), then doubling


@dataclass
class Stats:
    """Summed figures of a group of scored targets."""

    tokens: int = 0
    nll: float = 0.0  # summed, nats
    bytes: int = 0

    @property
    def loss(self) -> float | None:
        return self.nll / self.tokens if self.tokens else None

    @property
    def ppl(self) -> float | None:
        loss = self.loss
        return None if loss is None else (math.exp(loss) if loss < 700 else math.inf)

    @property
    def bpb(self) -> float | None:
        return self.nll / LN2 / self.bytes if self.bytes else None

    def to_json(self) -> dict[str, Any]:
        return {"tokens": self.tokens, "loss": self.loss, "ppl": self.ppl, "bpb": self.bpb}


@dataclass
class Bucket:
    """Positions ``[start, end)`` of one context's window and their figures."""

    start: int
    end: int
    stats: Stats

    def to_json(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, **self.stats.to_json()}


@dataclass
class ContextReport:
    """The figures of one context: by bucket, overall, and over the shared final targets."""

    context: int
    buckets: list[Bucket]
    final: Stats
    sequences: int

    @property
    def overall(self) -> Stats:
        return Stats(
            sum(b.stats.tokens for b in self.buckets),
            sum(b.stats.nll for b in self.buckets),
            sum(b.stats.bytes for b in self.buckets),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "context": self.context,
            "overall": self.overall.to_json(),
            "buckets": [bucket.to_json() for bucket in self.buckets],
            "final": self.final.to_json(),
        }


def evaluate_model(
    model: LongNetTransformer,
    corpus: TokenizedCorpus,
    contexts: Sequence[int],
    docs: int | None,
    *,
    token_bytes: np.ndarray | None = None,
    chunk_size: int = 1024,
    doc_ids: Sequence[int] | None = None,
    windows: bool = False,
    precision: str = "fp32",
) -> dict[str, Any]:
    """Evaluation during training: the same scoring as ``longnet eval``, on a model in memory.

    Scores ``doc_ids`` (default: the first ``docs`` documents with at least 2 tokens) at each
    context and returns ``{"contexts": {"1024": {"loss", "ppl", "bpb", "tokens"}, ...}}``: each
    context's overall figures over its own window (``score_contexts``'s sums as ratios).
    """
    if doc_ids is None:
        doc_ids = scorable_documents(corpus, docs)
    overall = score_contexts(
        model,
        corpus,
        contexts,
        doc_ids,
        token_bytes=token_bytes,
        chunk_size=chunk_size,
        windows=windows,
        precision=precision,
    )
    return {"contexts": {str(context): _summary(stats) for context, stats in overall.items()}}


def score_contexts(
    model: LongNetTransformer,
    corpus: TokenizedCorpus,
    contexts: Sequence[int],
    doc_ids: Sequence[int],
    *,
    token_bytes: np.ndarray | None = None,
    chunk_size: int = 1024,
    windows: bool = False,
    precision: str = "fp32",
) -> dict[int, Stats]:
    """Each context's overall ``Stats`` (summed NLL, targets, bytes) over ``doc_ids``, ascending.

    Sums, so that several ranks' or document groups' figures add up exactly. The model is put
    in eval mode and given back in the mode it came in; nothing is loaded from disk except
    ``corpus``'s tokenizer (pass ``token_bytes`` from ``token_byte_lengths`` to skip even that).
    ``precision`` is the recipe's ``train.precision``: "bf16" and "fp16" score under autocast
    (see ``resolve_precision``), the loss reduced in float32.
    """
    contexts = sorted(set(int(c) for c in contexts))
    if not contexts or contexts[0] < 2:
        raise ValueError(f"contexts must be lengths of at least 2 tokens, got {contexts}")
    if token_bytes is None:
        token_bytes = token_byte_lengths(corpus)
    if precision not in PRECISION_NAMES:
        raise ValueError(f"precision must be one of {PRECISION_NAMES}, got {precision!r}")
    device = next(model.parameters()).device
    backend = getattr(getattr(model, "config", None), "backend", "auto")
    precision = resolve_precision(precision, backend, device.type)
    was_training = model.training
    model.eval()
    try:
        scorer = Scorer(model, contexts, None, token_bytes, chunk_size, precision)
        reports = scorer.run(checked_documents(corpus, doc_ids), windows)
    finally:
        model.train(was_training)
    return {report.context: report.overall for report in reports}


def _summary(stats: Stats) -> dict[str, Any]:
    return {"loss": stats.loss, "ppl": stats.ppl, "bpb": stats.bpb, "tokens": stats.tokens}


def resolve_precision(precision: str, backend: str, device_type: str) -> str:
    """The precision a model is scored in, from the recipe's ``train.precision``.

    bf16 stays bf16 (autocast, on a GPU and on a CPU alike); fp16 needs a GPU (float32 on a
    CPU); fp32 stays fp32, except that a flash-attn model on a GPU is scored in bf16 (flash-attn
    takes half precision only, as its training did under autocast).
    """
    if precision == "fp16" and device_type != "cuda":
        return "fp32"
    if precision == "fp32" and backend == "flash-attn" and device_type == "cuda":
        return "bf16"
    return precision


def runnable_backend(backend: str, device_type: str) -> str:
    """``backend``, or "auto" where it cannot run (flash-attn off CUDA or not installed)."""
    from longnet_cli.model.kernels import flash_attn_available

    if backend == "flash-attn" and (device_type != "cuda" or not flash_attn_available()):
        return "auto"
    return backend


def use_backend(model: LongNetTransformer, backend: str) -> None:
    """Switch every attention layer of ``model`` to ``backend`` (weights untouched)."""
    model.config.backend = backend
    for block in model.blocks:
        block.attn.backend = backend


class Scorer:
    """Scores token sequences at several contexts and sums the figures per bucket."""

    def __init__(
        self,
        model: LongNetTransformer,
        contexts: list[int],
        boundaries: list[int] | None,
        token_bytes: np.ndarray,
        chunk_size: int,
        precision: str = "fp32",
    ) -> None:
        self.model = model
        self.precision = precision
        self.device = next(model.parameters()).device
        self.contexts = contexts  # ascending
        self.token_bytes = np.asarray(token_bytes, dtype=np.int64)
        self.chunk_size = chunk_size
        self.starts = {c: bucket_starts(c, boundaries) for c in contexts}
        self.tokens = {c: np.zeros(len(s), dtype=np.int64) for c, s in self.starts.items()}
        self.nll = {c: np.zeros(len(s), dtype=np.float64) for c, s in self.starts.items()}
        self.bytes = {c: np.zeros(len(s), dtype=np.int64) for c, s in self.starts.items()}
        self.final = {c: Stats() for c in contexts}
        self.sequences = dict.fromkeys(contexts, 0)
        self.model_seconds = 0.0

    def autocast(self):
        """The autocast context the model runs in (none for fp32)."""
        return autocast_context(self.precision, self.device.type)

    def run(self, documents: Iterator[np.ndarray], windows: bool) -> list[ContextReport]:
        """Score every span of every document; the reports, ascending by context."""
        import torch

        span_length = self.contexts[-1]
        with torch.inference_mode():
            for tokens in documents:
                ends = range(span_length, len(tokens) + span_length, span_length)
                for end in ends if windows else ends[:1]:
                    self._score_span(tokens[end - span_length : min(end, len(tokens))])
        return [self._report(c) for c in self.contexts]

    def _score_span(self, span: np.ndarray) -> None:
        if len(span) < 2:
            return
        final_targets = min(self.contexts[0], len(span)) - 1  # the same for every context
        for context in self.contexts:
            nll = self.token_nll(span[-context:])  # (n-1,) float64; target p at index p-1
            targets = np.asarray(span[-len(nll) :], dtype=np.int64)
            target_bytes = self.token_bytes[targets]
            self._add(context, nll, target_bytes)
            final = self.final[context]
            final.tokens += final_targets
            final.nll += float(nll[-final_targets:].sum())
            final.bytes += int(target_bytes[-final_targets:].sum())
            self.sequences[context] += 1

    def token_nll(self, sequence: np.ndarray) -> np.ndarray:
        """Per-target NLL (n-1,) of one sequence of n tokens, timed."""
        import torch

        device = self.device
        ids = torch.from_numpy(np.asarray(sequence, dtype=np.int64)).to(device)[None]  # (1, n)
        started = time.perf_counter()
        with self.autocast():  # the head's logits and the NLL are float32 (token_nll)
            nll = self.model.token_nll(ids, chunk_size=self.chunk_size)  # (1, n) -> (1, n-1)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        self.model_seconds += time.perf_counter() - started
        return nll[0].double().cpu().numpy()

    def _add(self, context: int, nll: np.ndarray, target_bytes: np.ndarray) -> None:
        starts = self.starts[context]
        positions = np.arange(1, len(nll) + 1)
        index = np.searchsorted(starts, positions, side="right") - 1
        size = len(starts)
        self.tokens[context] += np.bincount(index, minlength=size)
        self.nll[context] += np.bincount(index, weights=nll, minlength=size)
        self.bytes[context] += np.bincount(index, weights=target_bytes, minlength=size).astype(
            np.int64
        )

    def _report(self, context: int) -> ContextReport:
        starts = self.starts[context]
        ends = [*starts[1:], context]
        tokens, nll, size = self.tokens[context], self.nll[context], self.bytes[context]
        buckets = [
            Bucket(start, end, Stats(int(tokens[i]), float(nll[i]), int(size[i])))
            for i, (start, end) in enumerate(zip(starts, ends))
        ]
        return ContextReport(context, buckets, self.final[context], self.sequences[context])


def bucket_starts(context: int, boundaries: Sequence[int] | None = None) -> list[int]:
    """Start positions of the buckets of a window of ``context`` tokens, beginning with 0.

    ``boundaries`` None gives powers of two from 1K (0, 1K, 2K, 4K, ...); boundaries at or past
    the context are dropped. The last bucket ends at ``context``.
    """
    if boundaries is None:
        boundaries, bound = [], FIRST_BUCKET
        while bound < context:
            boundaries.append(bound)
            bound *= 2
    return [0, *(b for b in boundaries if 0 < b < context)]


def checked_documents(corpus: TokenizedCorpus, doc_ids: Iterable[int]) -> Iterator[np.ndarray]:
    """The tokens of each document, checked below the corpus's vocab_size: a corrupted shard
    stops scoring with a CorpusError naming it, not with an index error deep in the model."""
    from longnet_cli.data.format.errors import CorpusError

    for doc_id in doc_ids:
        tokens = corpus.document(doc_id)
        if tokens.size and int(tokens.max()) >= corpus.vocab_size:
            where = int(np.argmax(tokens >= corpus.vocab_size))
            position = int(corpus.document_starts()[doc_id]) + where
            shard = int(np.searchsorted(corpus.shard_starts, position, side="right")) - 1
            raise CorpusError(
                f"{corpus.shard_path(shard)}: token id {int(tokens[where])} (document {doc_id}, "
                f"stream position {position}) is >= vocab_size {corpus.vocab_size}: the shard "
                f"is corrupted; longnet inspect {corpus.directory} checks every shard"
            )
        yield tokens


def scorable_documents(corpus: TokenizedCorpus, docs: int | None, min_tokens: int = 2) -> list[int]:
    """Ids of the first ``docs`` documents (all when None) with at least ``min_tokens`` tokens
    (and at least 2), in order."""
    ids = np.flatnonzero(corpus.document_lengths() >= max(min_tokens, 2))
    return [int(i) for i in (ids if docs is None else ids[:docs])]


def token_byte_lengths(corpus_or_model: TokenizedCorpus | Path | str) -> np.ndarray:
    """int64 table: the UTF-8 byte length of the text each token id stands for.

    Byte-fallback pieces ``<0xNN>`` are 1 byte; ordinary pieces the UTF-8 length of their text
    (U+2581 decodes as a space, 1 byte); control and unknown pieces 0 (EOS, <unk>: no source
    text). Over a whole document the table sums to the document's source bytes. Takes a corpus
    (its ``tokenizer.model``, first checked against the manifest's sha256) or the path of a
    SentencePiece model. A damaged model raises a LongnetError naming the file.
    """
    from longnet_cli.data.token_bytes import TokenBytes
    from longnet_cli.data.tokenizer import load_tokenizer

    path = getattr(corpus_or_model, "tokenizer_path", corpus_or_model)
    manifest = getattr(corpus_or_model, "manifest", None)
    if manifest is not None:
        _verify_tokenizer(Path(path), manifest.get("tokenizer_sha256"))
    with reading(path, "SentencePiece model"):
        processor = load_tokenizer(path)
    size = processor.get_piece_size()
    vocab_size = max(size, int(getattr(corpus_or_model, "vocab_size", size)))
    table = np.zeros(vocab_size, dtype=np.int64)
    table[:size] = TokenBytes(processor).lengths()
    return table


def _verify_tokenizer(path: Path, expected: object) -> None:
    """A corpus's tokenizer.model against the sha256 its manifest records."""
    from longnet_cli.core.files import sha256_file
    from longnet_cli.data.format.errors import CorpusError

    with reading(path, "tokenizer"):
        digest = sha256_file(path)
    if digest != expected:
        raise CorpusError(
            f"{path}: sha256 {digest} does not match the manifest's tokenizer_sha256 "
            f"{expected} (corrupted or replaced); longnet inspect {path.parent} checks the corpus"
        )

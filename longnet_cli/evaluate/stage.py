"""Stage: checkpoints and a tokenized corpus -> perplexity by position (``longnet eval``).

Each document is read as ONE sequence of up to ``context`` tokens and scored with the model's
chunked per-token loss (``LongNetTransformer.token_nll``), under ``torch.inference_mode``.

Positions. A sequence of n tokens gives n - 1 scored targets: token ``p`` is predicted from tokens
``0 .. p-1``, and its position is ``p`` (1 .. n-1; position 0 is never scored). Positions restart
at 0 in every sequence (every ``--windows`` window, every context's window). Buckets are
half-open position ranges ``[start, end)``: powers of two by default (``[0,1K) [1K,2K) [2K,4K)
...``), the last one ending at the context.

Figures, per bucket and overall, all token-weighted: ``tokens`` (scored targets), ``loss`` (mean
NLL in nats), ``ppl = exp(loss)``, ``bpb = sum NLL / ln 2 / bytes``, where ``bytes`` is the UTF-8
size of the text the scored targets stand for (``token_byte_lengths``: a byte-fallback piece
``<0xNN>`` is 1 byte, an ordinary piece the UTF-8 length of its text with U+2581 read as a space,
a control or unknown piece 0), so that the bytes of a whole document sum to its source size.

Several contexts (``contexts=[4K, 64K, 1M]``), the LongNet paper's prompt-length experiment:
the same final tokens scored with different amounts of preceding context. Each document's span is
its first ``max(contexts)`` tokens (with ``windows``, each window of ``max(contexts)`` tokens);
context ``c`` scores the last ``c`` tokens of the span as its own sequence. Each context reports
the bucket table of its own window and ``final``: the figures over the last
``min(contexts) - 1`` targets of the span, the same tokens for every context. Documents shorter
than ``min_tokens`` (by default the largest context, when there are several) are skipped and
counted, never scored with less context.

Documents: the corpus's held-out split by default (``split``: "heldout", "train" or "all"); a
corpus without held-out documents (tokenized before splits existed, or with ``--holdout 0``) is
scored on its training documents, with a warning that the figures are training-set figures.

Reach: a model's longest segment length. Segments start at multiples of their length and the
shorter ones divide the longest, so a token reads only inside its own block of ``reach`` tokens,
through every layer; figures at a context beyond the reach are those of independent blocks.

Precision: each run is scored under its recipe's ``train.precision`` (bf16 or fp16: autocast,
the model's weights stay float32; fp16 on a CPU: float32), or ``precision`` when given; the loss
is reduced in float32 either way. A run whose recipe asks for the flash-attn backend is scored in
bf16 when its precision is fp32 (flash-attn takes half precision only), and with the automatic
kernel choice where flash-attn cannot run (a CPU, or not installed).

Several runs: every run is scored on the same documents at the same contexts, so each context's
``final`` figures cover the same tokens for every run (the LongNet paper's Table 2). The copy
probe (``probe.py``) runs on the same documents.
"""

from __future__ import annotations

import contextlib
import math
import resource
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from longnet_cli.core.errors import DamagedFileError, InputError, one_line, reading
from longnet_cli.core.lengths import format_length
from longnet_cli.evaluate.probe import DEFAULT_DISTANCES, PROBES, CopyFigure, copy_probe

if TYPE_CHECKING:
    import torch

    from longnet_cli.artifacts.checkpoints import Checkpoint
    from longnet_cli.config.recipe import Recipe
    from longnet_cli.data.shards import TokenizedCorpus
    from longnet_cli.model.transformer import LongNetTransformer

DEFAULT_RUNS = Path("runs")
FIRST_BUCKET = 1024  # default buckets: [0, 1K), then doubling
LN2 = math.log(2)
WEIGHTS_FILE = "model.safetensors"
EVAL_SPLITS = ("heldout", "train", "all")
EVAL_PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass
class EvalOptions:
    """What ``evaluate`` scores. ``None`` and ``[]`` mean "choose a default" (see ``evaluate``)."""

    checkpoints: list[Path] = field(default_factory=list)  # runs or checkpoints; []: latest run
    data: Path | None = None  # a tokenized corpus; None: the first run's recipe's eval data
    split: str = "heldout"  # "heldout", "train" or "all" documents of the corpus
    contexts: list[int] = field(default_factory=list)  # []: the runs' (common) train.seq_len
    docs: int | None = None  # the first N documents of the split long enough; None: all
    min_tokens: int | None = None  # None: the largest context when several, else 2
    windows: bool = False  # score long documents whole, in non-overlapping windows
    buckets: list[int] | None = None  # bucket boundaries; None: 1K, 2K, 4K, ...
    probe: str | None = None  # "copy": the copy probe (probe.py) at ``distances``
    distances: list[int] = field(default_factory=lambda: list(DEFAULT_DISTANCES))
    runs_dir: Path = DEFAULT_RUNS
    device: str | None = None  # None: cuda when available, else cpu
    precision: str | None = None  # "fp32", "bf16", "fp16"; None: each run's train.precision
    chunk_size: int = 1024  # positions per head + cross-entropy chunk
    progress: bool = False  # a tqdm bar over documents on stderr


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


@dataclass
class RunResult:
    """One run's figures: a report per context (ascending) and, when asked, the copy probe."""

    run: str  # the run directory (the checkpoint itself when it lies in no run's checkpoints/)
    checkpoint: str
    recipe: str | None  # the recipe's name, when the checkpoint records where it came from
    step: int
    tokens_trained: int | None
    seq_len: int  # train.seq_len
    reach: int  # the longest segment: a token reads only inside its block of this many tokens
    reports: list[ContextReport]
    probe: list[CopyFigure] | None
    tokens_per_s: float
    model_seconds: float
    precision: str = "fp32"  # what the model was scored in (see the module docstring)

    @property
    def main(self) -> ContextReport:
        """The report of the largest context."""
        return self.reports[-1]

    @property
    def label(self) -> str:
        """The run directory and, when known, its recipe's name: ``runs/a (dense_2k)``."""
        return self.run if self.recipe is None else f"{self.run} ({self.recipe})"

    def to_json(self) -> dict[str, Any]:
        return {
            "run": self.run,
            "checkpoint": self.checkpoint,
            "recipe": self.recipe,
            "step": self.step,
            "tokens_trained": self.tokens_trained,
            "seq_len": self.seq_len,
            "reach": self.reach,
            "contexts": [report.to_json() for report in self.reports],
            "probe": None if self.probe is None else [f.to_json() for f in self.probe],
            "tokens_per_s": self.tokens_per_s,
            "model_seconds": self.model_seconds,
            "precision": self.precision,
        }


@dataclass
class EvalResult:
    """What ``evaluate`` measured: every run on the same documents of one corpus."""

    data: str
    split: str  # the split scored: "heldout", "train" or "all"
    documents: int  # documents scored
    skipped: int  # documents of the split passed over: shorter than ``min_tokens``
    min_tokens: int
    runs: list[RunResult]
    peak_memory_bytes: int
    chosen: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    # the first run's figures: the whole result when one run was scored
    @property
    def checkpoint(self) -> str:
        return self.runs[0].checkpoint

    @property
    def step(self) -> int:
        return self.runs[0].step

    @property
    def reports(self) -> list[ContextReport]:
        return self.runs[0].reports

    @property
    def main(self) -> ContextReport:
        return self.runs[0].main

    @property
    def contexts(self) -> list[int]:
        return [report.context for report in self.runs[0].reports]

    def to_json(self) -> dict[str, Any]:
        """One run: the single-run report (``checkpoint``, ``context``, ``overall``, ``buckets``,
        ``contexts`` when several, ``probe`` when asked ...). Several: the shared keys only. Both
        carry ``runs``, one object per run (``RunResult.to_json``)."""
        shared = {
            "data": self.data,
            "split": self.split,
            "documents": self.documents,
            "skipped": self.skipped,
            "min_tokens": self.min_tokens,
            "peak_memory_bytes": self.peak_memory_bytes,
            "chosen": list(self.chosen),
            "warnings": list(self.warnings),
        }
        runs = [run.to_json() for run in self.runs]
        if len(self.runs) > 1:
            probe = self.runs[0].probe
            distances = None if probe is None else [figure.distance for figure in probe]
            return {**shared, "context_lengths": self.contexts, "distances": distances,
                    "runs": runs}  # fmt: skip
        run, main = self.runs[0], self.main
        out = {
            "checkpoint": run.checkpoint,
            "data": self.data,
            "context": main.context,
            "overall": main.overall.to_json(),
            "buckets": [bucket.to_json() for bucket in main.buckets],
            "tokens_per_s": run.tokens_per_s,
            **shared,
            "step": run.step,
            "reach": run.reach,
        }
        if len(run.reports) > 1:
            out["contexts"] = runs[0]["contexts"]
        if run.probe is not None:
            out["probe"] = runs[0]["probe"]
        out["runs"] = runs
        return out


@dataclass
class _Run:
    """A run resolved for scoring: its checkpoint, recipe and where it is shown."""

    checkpoint: Checkpoint
    recipe: Recipe
    name: str

    @property
    def reach(self) -> int:
        return max(self.recipe.model.segment_lengths)


# -- the stage ------------------------------------------------------------------------------------


def evaluate(
    options: EvalOptions,
    on_choice: Callable[[str], None] | None = None,
    on_note: Callable[[str], None] | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> EvalResult:
    """Score the documents of a corpus with one or several checkpoints; see the module docstring.

    Defaults, each reported in ``EvalResult.chosen`` (and to ``on_choice`` as soon as it is
    made): no checkpoint -> the latest checkpoint of the most recent run under ``runs_dir`` (the
    run whose latest checkpoint is newest); no data -> the first run's recipe ``eval.data``, else
    ``data.eval_shards``, else ``data.shards``; no contexts -> the runs' ``train.seq_len``; no
    ``min_tokens`` -> the largest context when several (shorter documents are skipped and
    counted), else 2. On a CPU the first run's ``train.threads``, when set, is applied.

    ``on_note`` hears what is scored (data, split, documents, skips); ``on_warning`` hears what
    makes the figures mean less than they seem (training-set figures, contexts beyond a model's
    reach); warnings are also kept in ``EvalResult.warnings``. Raises InputError (exit 2) for a
    missing checkpoint, runs with different tokenizers or (without ``contexts``) different
    ``train.seq_len``, a corpus failing verification or made with another tokenizer, and bad
    numbers.
    """
    import torch

    from longnet_cli.data.shards import TokenizedCorpus
    from longnet_cli.runtime import keep_freed_memory

    _check_options(options)
    chosen = _Choices(on_choice)
    warnings = _Choices(on_warning)
    note = on_note or (lambda message: None)
    runs = _resolve_runs(options.checkpoints, Path(options.runs_dir), chosen)
    _check_same_tokenizer(runs)
    data = _resolve_data(options.data, runs[0].recipe, chosen)
    corpus = TokenizedCorpus.open(data, verify="sizes")
    for run in runs:
        _check_tokenizer(run.checkpoint, corpus)
    contexts = _resolve_contexts(options.contexts, runs, chosen)
    min_tokens = options.min_tokens
    if min_tokens is None:
        min_tokens = contexts[-1] if len(contexts) > 1 else 2
        if len(contexts) > 1:
            chosen.append(
                f"min tokens: {format_length(min_tokens)} (the largest context; shorter "
                "documents are skipped)"
            )
    boundaries = _check_boundaries(options.buckets)
    device = _resolve_device(options.device)

    selection = select_documents(corpus, options.split, options.docs, min_tokens)
    if selection.fallback:
        warnings.append(
            f"{data} has no held-out documents (tokenized before held-out splits existed, or "
            "with --holdout 0): scoring its training documents; these are training-set figures"
        )
    if not selection.doc_ids:
        longest = int(corpus.document_lengths()[selection.candidates].max(initial=0))
        raise InputError(
            f"{data}: no {selection.split} document has at least {min_tokens:,} tokens "
            f"(--min-tokens); the longest has {longest:,}"
        )
    note(
        f"eval: data {data}, split {selection.split} "
        f"({_count(len(selection.doc_ids), 'document')})"
        + (" (training-set figures)" if selection.split == "train" else "")
    )
    if selection.skipped:
        note(
            f"eval: skipped {_count(selection.skipped, 'document')} shorter than "
            f"{format_length(min_tokens)} tokens (--min-tokens)"
        )
    for run in runs:
        if contexts[-1] > run.reach:
            warnings.append(
                f"{run.name}: --context {format_length(contexts[-1])} exceeds its reach "
                f"{format_length(run.reach)} (its longest segment): figures beyond "
                f"{format_length(run.reach)} are those of independent blocks of "
                f"{format_length(run.reach)} tokens"
            )

    if device.type == "cpu" and runs[0].recipe.train.threads:
        torch.set_num_threads(runs[0].recipe.train.threads)
    keep_freed_memory()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    token_bytes = token_byte_lengths(corpus)
    results = []
    for run in runs:
        model = _load_model(run, corpus, device)
        precision = resolve_precision(
            options.precision or run.recipe.train.precision, model.config.backend, device.type
        )
        if precision != "fp32":
            note(f"eval: {run.name}: scored in {precision} (autocast; the loss in float32)")
        backend = _runnable_backend(model.config.backend, device.type)
        if backend != model.config.backend:
            note(f"eval: {run.name}: backend {backend} ({model.config.backend} does not run here)")
            use_backend(model, backend)
        scorer = _Scorer(model, contexts, boundaries, token_bytes, options.chunk_size, precision)
        results.append(_score_run(run, scorer, corpus, selection.doc_ids, options, len(runs) > 1))
        del scorer, model
    if device.type == "cuda":
        peak = int(torch.cuda.max_memory_allocated(device))
    else:
        peak = _peak_rss_bytes()
    return EvalResult(
        data=str(data),
        split=selection.split,
        documents=len(selection.doc_ids),
        skipped=selection.skipped,
        min_tokens=min_tokens,
        runs=results,
        peak_memory_bytes=peak,
        chosen=list(chosen),
        warnings=list(warnings),
    )


def _score_run(
    run: _Run,
    scorer: _Scorer,
    corpus: TokenizedCorpus,
    doc_ids: list[int],
    options: EvalOptions,
    named: bool,
) -> RunResult:
    """Score the documents with one run's model, then (when asked) probe it."""
    import torch

    label = run.name if named else "eval"
    documents = _progress(doc_ids, options.progress, label)
    reports = scorer.run(checked_documents(corpus, documents), options.windows)
    scored = sum(report.overall.tokens for report in reports)
    seconds = scorer.model_seconds
    probe = None
    if options.probe == "copy":
        documents = _progress(doc_ids, options.progress, f"{label}: copy probe")
        with torch.inference_mode():
            probe = copy_probe(
                scorer.token_nll, checked_documents(corpus, documents), options.distances,
                run.reach,
            )  # fmt: skip
    return RunResult(
        run=run.name,
        checkpoint=str(run.checkpoint.path),
        recipe=_recipe_name(run.checkpoint.state),
        step=run.checkpoint.step,
        tokens_trained=_int_or_none(run.checkpoint.state.get("tokens")),
        seq_len=run.recipe.train.seq_len,
        reach=run.reach,
        reports=reports,
        probe=probe,
        tokens_per_s=scored / seconds if seconds > 0 else 0.0,
        model_seconds=seconds,
        precision=scorer.precision,
    )


@dataclass
class DocumentSelection:
    """The documents ``select_documents`` chose to score."""

    split: str  # the split scored (may be "train" where "heldout" was asked: ``fallback``)
    doc_ids: list[int]
    skipped: int  # documents of the split passed over for being shorter than ``min_tokens``
    candidates: np.ndarray  # every document id of the split
    fallback: bool = False  # held-out asked, none in the corpus: the training documents instead


def select_documents(
    corpus: TokenizedCorpus, split: str, docs: int | None, min_tokens: int = 2
) -> DocumentSelection:
    """The first ``docs`` documents (all when None) of ``split`` with at least ``min_tokens``
    tokens (and at least 2), in order, and how many shorter ones were passed over on the way.

    ``split`` "heldout" on a corpus without held-out documents (tokenized before splits existed,
    or with ``--holdout 0``) selects the training documents (``fallback``)."""
    if split not in EVAL_SPLITS:
        raise InputError(f"split must be one of {', '.join(EVAL_SPLITS)}, got {split!r}")
    fallback = False
    candidates = corpus.split_documents(split)
    if split == "heldout" and (not corpus.has_splits or len(candidates) == 0):
        split, fallback = "train", True
        candidates = corpus.split_documents("train" if corpus.has_splits else "all")
    lengths = corpus.document_lengths()[candidates]
    long_enough = np.flatnonzero(lengths >= max(min_tokens, 2))
    chosen = long_enough if docs is None else long_enough[:docs]
    considered = len(candidates) if docs is None or len(chosen) < docs else int(chosen[-1]) + 1
    return DocumentSelection(
        split=split,
        doc_ids=[int(i) for i in candidates[chosen]],
        skipped=considered - len(chosen),
        candidates=candidates,
        fallback=fallback,
    )


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
    context's overall figures over its own window. The model is put in eval mode and given back
    in the mode it came in; nothing is loaded from disk except ``corpus``'s tokenizer (pass
    ``token_bytes`` from ``token_byte_lengths`` to skip even that). ``precision`` is the
    recipe's ``train.precision``: "bf16" and "fp16" score under autocast (see
    ``resolve_precision``), the loss reduced in float32.
    """
    contexts = sorted(set(int(c) for c in contexts))
    if not contexts or contexts[0] < 2:
        raise ValueError(f"contexts must be lengths of at least 2 tokens, got {contexts}")
    if token_bytes is None:
        token_bytes = token_byte_lengths(corpus)
    if doc_ids is None:
        doc_ids = scorable_documents(corpus, docs)
    if precision not in EVAL_PRECISIONS:
        raise ValueError(f"precision must be one of {EVAL_PRECISIONS}, got {precision!r}")
    device = next(model.parameters()).device
    backend = getattr(getattr(model, "config", None), "backend", "auto")
    precision = resolve_precision(precision, backend, device.type)
    was_training = model.training
    model.eval()
    try:
        scorer = _Scorer(model, contexts, None, token_bytes, chunk_size, precision)
        reports = scorer.run(checked_documents(corpus, doc_ids), windows)
    finally:
        model.train(was_training)
    return {"contexts": {str(r.context): _summary(r.overall) for r in reports}}


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


def autocast_context(precision: str, device_type: str):
    """torch autocast for "bf16" / "fp16" on the device type; a no-op context for "fp32"."""
    import torch

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=dtype)


def _runnable_backend(backend: str, device_type: str) -> str:
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


# -- scoring --------------------------------------------------------------------------------------


class _Scorer:
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
    from longnet_cli.data.shards import CorpusError

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


def _verify_tokenizer(path: Path, expected: object) -> None:
    """A corpus's tokenizer.model against the sha256 its manifest records."""
    from longnet_cli.data.shards import CorpusError, sha256_file

    with reading(path, "tokenizer"):
        digest = sha256_file(path)
    if digest != expected:
        raise CorpusError(
            f"{path}: sha256 {digest} does not match the manifest's tokenizer_sha256 "
            f"{expected} (corrupted or replaced); longnet inspect {path.parent} checks the corpus"
        )


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
    from longnet_cli.data.tokenizer import SPACE_SYMBOL, load_tokenizer

    path = getattr(corpus_or_model, "tokenizer_path", corpus_or_model)
    manifest = getattr(corpus_or_model, "manifest", None)
    if manifest is not None:
        _verify_tokenizer(Path(path), manifest.get("tokenizer_sha256"))
    with reading(path, "SentencePiece model"):
        processor = load_tokenizer(path)
    size = processor.get_piece_size()
    vocab_size = max(size, int(getattr(corpus_or_model, "vocab_size", size)))
    table = np.zeros(vocab_size, dtype=np.int64)
    for token in range(size):
        if processor.is_byte(token):
            table[token] = 1
        elif not (processor.is_control(token) or processor.is_unknown(token)):
            piece = processor.id_to_piece(token)
            table[token] = len(piece.replace(SPACE_SYMBOL, " ").encode("utf-8"))
    return table


# -- defaults and checks --------------------------------------------------------------------------


class _Choices(list):
    """The defaults chosen, each also passed to a callback as soon as it is made."""

    def __init__(self, callback: Callable[[str], None] | None) -> None:
        super().__init__()
        self.callback = callback

    def append(self, message: str) -> None:
        super().append(message)
        if self.callback is not None:
            self.callback(message)


def _check_options(options: EvalOptions) -> None:
    if options.docs is not None and options.docs < 1:
        raise InputError(f"--docs must be at least 1, got {options.docs}")
    if options.min_tokens is not None and options.min_tokens < 2:
        raise InputError(f"--min-tokens must be at least 2, got {options.min_tokens}")
    if any(c < 2 for c in options.contexts):
        raise InputError(f"contexts must be at least 2 tokens, got {options.contexts}")
    if options.chunk_size < 1:
        raise InputError(f"chunk_size must be positive, got {options.chunk_size}")
    if options.precision is not None and options.precision not in EVAL_PRECISIONS:
        raise InputError(
            f"--precision must be one of {', '.join(EVAL_PRECISIONS)}, got {options.precision!r}"
        )
    if options.split not in EVAL_SPLITS:
        raise InputError(f"--split must be one of {', '.join(EVAL_SPLITS)}, got {options.split!r}")
    if options.probe is not None and options.probe not in PROBES:
        raise InputError(f"--probe must be one of {', '.join(PROBES)}, got {options.probe!r}")
    if options.probe is not None and (not options.distances or min(options.distances) < 2):
        raise InputError(f"--distances must be lengths of at least 2, got {options.distances}")


def _resolve_runs(paths: Sequence[Path], runs_dir: Path, chosen: list[str]) -> list[_Run]:
    """Each checkpoint or run directory (the most recent run when none), with its recipe."""
    from longnet_cli.config.recipe import Recipe

    checkpoints = [_resolve_checkpoint(Path(p), runs_dir, chosen) for p in paths] or [
        _resolve_checkpoint(None, runs_dir, chosen)
    ]
    runs = []
    for checkpoint in checkpoints:
        path = checkpoint.path
        run_dir = path.parent.parent if path.parent.name == "checkpoints" else path
        state_file = path / "state.json"
        saved = checkpoint.state.get("recipe")
        if not isinstance(saved, Mapping):
            raise DamagedFileError(f"{state_file}: 'recipe' is not a recipe, got {saved!r:.60}")
        recipe = Recipe.from_saved(saved, source=str(state_file))
        try:
            verify_weights(checkpoint)  # before the corpus is opened: fail fast
        except DamagedFileError as err:
            raise DamagedFileError(f"{err}{_intact_hint(run_dir, path)}") from None
        runs.append(_Run(checkpoint, recipe, str(run_dir)))
    return runs


def _intact_hint(run_dir: Path, damaged: Path) -> str:
    """A hint naming the newest intact checkpoint of the run (the one resume would fall back
    to) when it is another than ``damaged``, else ""."""
    from longnet_cli.artifacts.checkpoints import newest_intact_checkpoint

    if damaged.parent.name != "checkpoints":
        return ""
    intact = newest_intact_checkpoint(run_dir)[0]  # (checkpoint, skipped paths, reasons)
    if intact is None or intact.path == damaged:
        return ""
    return f"; the newest intact checkpoint of {run_dir} is {intact.path} (evaluate it by name)"


def _check_same_tokenizer(runs: list[_Run]) -> None:
    first = next((run for run in runs if run.checkpoint.state.get("tokenizer_sha256")), None)
    if first is None:
        return
    expected = first.checkpoint.state["tokenizer_sha256"]
    for run in runs:
        other = run.checkpoint.state.get("tokenizer_sha256")
        if other is not None and other != expected:
            raise InputError(
                f"tokenizers differ: {first.name} was trained with tokenizer sha256 {expected}, "
                f"{run.name} with {other}; runs compared side by side must share a tokenizer"
            )


def _resolve_contexts(contexts: list[int], runs: list[_Run], chosen: list[str]) -> list[int]:
    if contexts:
        return sorted(set(contexts))
    seq_lens = {run.name: run.recipe.train.seq_len for run in runs}
    if len(set(seq_lens.values())) > 1:
        shown = ", ".join(f"{name} {format_length(n)}" for name, n in seq_lens.items())
        raise InputError(
            f"--context is required: the runs' train.seq_len differ ({shown}); give the "
            "contexts to compare them at, e.g. --context 2K,8K,32K"
        )
    seq_len = runs[0].recipe.train.seq_len
    whose = "the run's" if len(runs) == 1 else "the runs'"
    chosen.append(f"context: {format_length(seq_len)} ({whose} train.seq_len)")
    return [seq_len]


def _load_model(run: _Run, corpus: TokenizedCorpus, device: torch.device) -> LongNetTransformer:
    from longnet_cli.artifacts.checkpoints import load_model_weights

    model = run.recipe.model.build(corpus.vocab_size)  # weights verified by _resolve_runs
    weights = run.checkpoint.path / WEIGHTS_FILE
    try:
        with reading(weights, "model weights"):
            load_model_weights(run.checkpoint.path, model)
    except DamagedFileError as err:  # intact weights that do not fit: state.json's recipe?
        raise DamagedFileError(
            f"{weights}: cannot load the weights into the model that "
            f"{run.checkpoint.path / 'state.json'} describes: {one_line(err.__cause__)}"
        ) from err
    return model.to(device).eval()


def verify_weights(checkpoint: Checkpoint) -> None:
    """A checkpoint's model.safetensors against the size and sha256 its state.json records
    (``files``), before anything reads it: a flipped bit in a tensor loads without complaint.
    Checkpoints written before hashes were recorded have nothing to compare: not checked."""
    from longnet_cli.artifacts.checkpoints import sha256_file

    weights = checkpoint.path / WEIGHTS_FILE
    files = checkpoint.state.get("files")
    if files is None:
        return
    entry = files.get(WEIGHTS_FILE) if isinstance(files, dict) else None
    if not isinstance(entry, dict):
        raise DamagedFileError(
            f"{checkpoint.path / 'state.json'}: 'files' records no sha256 of {WEIGHTS_FILE}"
        )
    with reading(weights, "model weights"):
        size = weights.stat().st_size
        digest = sha256_file(weights) if size == entry.get("bytes") else None
    if digest is None:
        raise DamagedFileError(
            f"{weights}: {size} bytes, state.json records {entry.get('bytes')} (truncated or "
            "replaced)"
        )
    if digest != entry.get("sha256"):
        raise DamagedFileError(
            f"{weights}: sha256 {digest[:16]}... does not match the {str(entry.get('sha256'))[:16]}"
            "... state.json records (corrupted)"
        )


def _recipe_name(state: dict[str, Any]) -> str | None:
    """The recipe's name (its file's stem) when the checkpoint records its source file."""
    for key in ("recipe_name", "recipe_source", "recipe_path"):
        value = state.get(key)
        if isinstance(value, str) and value and not value.startswith("<"):
            return Path(value).stem if key != "recipe_name" else value
    return None


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _resolve_checkpoint(path: Path | None, runs_dir: Path, chosen: list[str]) -> Checkpoint:
    from longnet_cli.artifacts.checkpoints import (
        list_checkpoints,
        read_checkpoint,
        resolve_checkpoint,
    )

    if path is not None:
        if not Path(path).exists():
            raise InputError(f"{path}: no such checkpoint or run directory")
        try:
            return resolve_checkpoint(Path(path))
        except FileNotFoundError:
            raise InputError(
                f"no checkpoint found in {path} (looked for {path}/state.json and "
                f"{path}/checkpoints/step-*/)"
            ) from None
        except ValueError as err:  # checkpoints.DamagedCheckpoint: names the file
            hint = "" if (Path(path) / "state.json").exists() else _damaged_hint(Path(path))
            raise DamagedFileError(f"{one_line(err)}{hint}") from None
    runs = []  # runs_dir itself may be a run; else its subdirectories are
    if runs_dir.is_dir():
        runs = [runs_dir, *sorted(p for p in runs_dir.iterdir() if p.is_dir())]
    latest = [paths[-1] for run in runs if (paths := list_checkpoints(run))]
    if not latest:
        raise InputError(
            f"no checkpoint found under {runs_dir}/ (looked for {runs_dir}/*/checkpoints/step-*/); "
            "pass a run directory or checkpoint, or --runs-dir"
        )
    newest = max(latest, key=_mtime)
    try:
        checkpoint = read_checkpoint(newest)
    except ValueError as err:  # checkpoints.DamagedCheckpoint: names the file
        raise DamagedFileError(f"{one_line(err)}{_damaged_hint(newest.parent.parent)}") from None
    chosen.append(
        f"checkpoint: {newest} (step {checkpoint.step}, the most recent run under {runs_dir}/)"
    )
    return checkpoint


def _damaged_hint(run_dir: Path) -> str:
    """The intact-checkpoint hint for a run whose latest checkpoint's state.json is damaged."""
    from longnet_cli.artifacts.checkpoints import list_checkpoints

    paths = list_checkpoints(run_dir)
    return _intact_hint(run_dir, paths[-1]) if paths else ""


def _mtime(checkpoint_path: Path) -> float:
    state = checkpoint_path / "state.json"
    return (state if state.exists() else checkpoint_path).stat().st_mtime


def _resolve_data(data: Path | None, recipe, chosen: list[str]) -> Path:
    if data is not None:
        return Path(data)
    for key in ("eval.data", "data.eval_shards", "data.shards"):
        value = recipe.get(key)
        if value:
            chosen.append(f"data: {value} (the run's recipe {key})")
            return Path(value)
    raise AssertionError("data.shards is a required recipe key")


def _check_tokenizer(checkpoint: Checkpoint, corpus: TokenizedCorpus) -> None:
    trained = checkpoint.state.get("tokenizer_sha256")
    data = corpus.manifest["tokenizer_sha256"]
    if trained is not None and trained != data:
        raise InputError(
            f"tokenizers differ: the checkpoint {checkpoint.path} was trained with tokenizer "
            f"sha256 {trained}, the corpus {corpus.directory} uses {data}; evaluate on data "
            "tokenized with the run's tokenizer (longnet tokenize --tokenizer "
            "<the run's corpus>/tokenizer.model)"
        )


def _check_boundaries(boundaries: list[int] | None) -> list[int] | None:
    if boundaries is None:
        return None
    if not boundaries or any(b < 1 for b in boundaries):
        raise InputError(f"bucket boundaries must be positive lengths, got {boundaries}")
    if any(b >= a for a, b in zip(boundaries[1:], boundaries)):
        shown = ",".join(format_length(b) for b in boundaries)
        raise InputError(f"bucket boundaries must increase, got {shown}")
    return list(boundaries)


def _resolve_device(name: str | None) -> torch.device:
    import torch

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise InputError(f"--device {name!r} is not a device (cpu, cuda, cuda:1)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {name}: CUDA is not available on this machine")
    return device


def _peak_rss_bytes() -> int:
    """This process's peak resident set size (Linux reports ru_maxrss in KiB, macOS in bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def _progress(doc_ids: list[int], enabled: bool, label: str = "eval") -> Iterator[int]:
    if not enabled:
        return iter(doc_ids)
    from tqdm import tqdm

    return iter(tqdm(doc_ids, desc=label, unit="doc", file=sys.stderr, dynamic_ncols=True))


# -- output helpers (the report itself: eval_report.py) -------------------------------------------


def plot_available() -> bool:
    """Whether matplotlib (the ``plot`` extra) can be imported."""
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def _count(number: int, noun: str) -> str:
    return f"{number:,} {noun}{'' if number == 1 else 's'}"

"""Stage: a checkpoint and a tokenized corpus -> perplexity by position (``longnet eval``).

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
``min(contexts) - 1`` targets of the span, the same tokens for every context.
"""

from __future__ import annotations

import json
import math
import os
import resource
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from longnet_cli.errors import InputError, LongnetError
from longnet_cli.lengths import format_length

if TYPE_CHECKING:
    import torch

    from longnet_cli.checkpoints import Checkpoint
    from longnet_cli.data.shards import TokenizedCorpus
    from longnet_cli.model.transformer import LongNetTransformer

DEFAULT_RUNS = Path("runs")
FIRST_BUCKET = 1024  # default buckets: [0, 1K), then doubling
LN2 = math.log(2)


@dataclass
class EvalOptions:
    """What ``evaluate`` scores. ``None`` and ``[]`` mean "choose a default" (see ``evaluate``)."""

    checkpoint: Path | None = None  # a checkpoint or run directory; None: the most recent run
    data: Path | None = None  # a tokenized corpus; None: the run's recipe's eval data
    contexts: list[int] = field(default_factory=list)  # []: the run's train.seq_len
    docs: int | None = None  # the first N documents with at least 2 tokens; None: all
    min_tokens: int = 2  # only documents of at least this many tokens (EOS not counted)
    windows: bool = False  # score long documents whole, in non-overlapping windows
    buckets: list[int] | None = None  # bucket boundaries; None: 1K, 2K, 4K, ...
    runs_dir: Path = DEFAULT_RUNS
    device: str | None = None  # None: cuda when available, else cpu
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
class EvalResult:
    """What ``evaluate`` measured; ``reports`` in ascending context order."""

    checkpoint: str
    data: str
    step: int
    documents: int
    reports: list[ContextReport]
    tokens_per_s: float
    model_seconds: float
    peak_memory_bytes: int
    chosen: list[str] = field(default_factory=list)

    @property
    def main(self) -> ContextReport:
        """The report of the largest context (the top level of the JSON)."""
        return self.reports[-1]

    def to_json(self) -> dict[str, Any]:
        main = self.main
        out = {
            "checkpoint": self.checkpoint,
            "data": self.data,
            "context": main.context,
            "overall": main.overall.to_json(),
            "buckets": [bucket.to_json() for bucket in main.buckets],
            "tokens_per_s": self.tokens_per_s,
            "peak_memory_bytes": self.peak_memory_bytes,
            "documents": self.documents,
            "step": self.step,
            "chosen": list(self.chosen),
        }
        if len(self.reports) > 1:
            out["contexts"] = [report.to_json() for report in self.reports]
        return out


# -- the stage ------------------------------------------------------------------------------------


def evaluate(options: EvalOptions, on_choice: Callable[[str], None] | None = None) -> EvalResult:
    """Score the documents of a corpus with a checkpoint; see the module docstring.

    Defaults, each reported in ``EvalResult.chosen`` (and to ``on_choice`` as soon as it is
    made): no checkpoint -> the latest checkpoint of the most recent run under ``runs_dir`` (the
    run whose latest checkpoint is newest); no data -> the run's recipe ``eval.data``, else
    ``data.eval_shards``, else ``data.shards``; no contexts -> the run's ``train.seq_len``. On a
    CPU the run's ``train.threads``, when set, is applied. Raises InputError (exit 2) for a
    missing checkpoint, a corpus failing verification or made with another tokenizer, and bad
    numbers.
    """
    import torch

    from longnet_cli.checkpoints import load_model_weights
    from longnet_cli.data.shards import TokenizedCorpus
    from longnet_cli.recipes import Recipe
    from longnet_cli.runtime import keep_freed_memory

    if options.docs is not None and options.docs < 1:
        raise InputError(f"--docs must be at least 1, got {options.docs}")
    if options.min_tokens < 2:
        raise InputError(f"--min-tokens must be at least 2, got {options.min_tokens}")
    if any(c < 2 for c in options.contexts):
        raise InputError(f"contexts must be at least 2 tokens, got {options.contexts}")
    if options.chunk_size < 1:
        raise InputError(f"chunk_size must be positive, got {options.chunk_size}")
    chosen = _Choices(on_choice)
    checkpoint = _resolve_checkpoint(options.checkpoint, Path(options.runs_dir), chosen)
    recipe = Recipe.from_saved(checkpoint.state["recipe"], source=str(checkpoint.path))
    data = _resolve_data(options.data, recipe, chosen)
    corpus = TokenizedCorpus.open(data, verify="sizes")
    _check_tokenizer(checkpoint, corpus)
    contexts = sorted(set(options.contexts))
    if not contexts:
        contexts = [recipe.train.seq_len]
        chosen.append(f"context: {format_length(contexts[0])} (the run's train.seq_len)")
    boundaries = _check_boundaries(options.buckets)
    device = _resolve_device(options.device)

    if device.type == "cpu" and recipe.train.threads:
        torch.set_num_threads(recipe.train.threads)
    keep_freed_memory()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model = recipe.model.build(corpus.vocab_size)
    try:
        load_model_weights(checkpoint.path, model)
    except Exception as err:  # a truncated or foreign file: name it
        weights = checkpoint.path / "model.safetensors"
        raise LongnetError(f"{weights}: cannot load the model weights: {err}") from err
    model.to(device).eval()
    token_bytes = token_byte_lengths(corpus)
    doc_ids = scorable_documents(corpus, options.docs, options.min_tokens)
    if not doc_ids:
        raise InputError(
            f"{data}: no document has at least {options.min_tokens:,} tokens "
            f"(--min-tokens); the longest has {int(corpus.document_lengths().max(initial=0)):,}"
        )
    scorer = _Scorer(model, contexts, boundaries, token_bytes, options.chunk_size)
    documents = _progress(doc_ids, options.progress)
    reports = scorer.run((corpus.document(i) for i in documents), options.windows)
    if device.type == "cuda":
        peak = int(torch.cuda.max_memory_allocated(device))
    else:
        peak = _peak_rss_bytes()
    scored = sum(report.overall.tokens for report in reports)
    seconds = scorer.model_seconds
    return EvalResult(
        checkpoint=str(checkpoint.path),
        data=str(data),
        step=checkpoint.step,
        documents=len(doc_ids),
        reports=reports,
        tokens_per_s=scored / seconds if seconds > 0 else 0.0,
        model_seconds=seconds,
        peak_memory_bytes=peak,
        chosen=list(chosen),
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
) -> dict[str, Any]:
    """Evaluation during training: the same scoring as ``longnet eval``, on a model in memory.

    Scores ``doc_ids`` (default: the first ``docs`` documents with at least 2 tokens) at each
    context and returns ``{"contexts": {"1024": {"loss", "ppl", "bpb", "tokens"}, ...}}``: each
    context's overall figures over its own window. The model is put in eval mode and given back
    in the mode it came in; nothing is loaded from disk except ``corpus``'s tokenizer (pass
    ``token_bytes`` from ``token_byte_lengths`` to skip even that).
    """
    contexts = sorted(set(int(c) for c in contexts))
    if not contexts or contexts[0] < 2:
        raise ValueError(f"contexts must be lengths of at least 2 tokens, got {contexts}")
    if token_bytes is None:
        token_bytes = token_byte_lengths(corpus)
    if doc_ids is None:
        doc_ids = scorable_documents(corpus, docs)
    was_training = model.training
    model.eval()
    try:
        scorer = _Scorer(model, contexts, None, token_bytes, chunk_size)
        reports = scorer.run((corpus.document(i) for i in doc_ids), windows)
    finally:
        model.train(was_training)
    return {"contexts": {str(r.context): _summary(r.overall) for r in reports}}


def _summary(stats: Stats) -> dict[str, Any]:
    return {"loss": stats.loss, "ppl": stats.ppl, "bpb": stats.bpb, "tokens": stats.tokens}


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
    ) -> None:
        self.model = model
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
            nll = self._token_nll(span[-context:])  # (n-1,) float64; target p at index p-1
            targets = np.asarray(span[-len(nll) :], dtype=np.int64)
            target_bytes = self.token_bytes[targets]
            self._add(context, nll, target_bytes)
            final = self.final[context]
            final.tokens += final_targets
            final.nll += float(nll[-final_targets:].sum())
            final.bytes += int(target_bytes[-final_targets:].sum())
            self.sequences[context] += 1

    def _token_nll(self, sequence: np.ndarray) -> np.ndarray:
        """Per-target NLL (n-1,) of one sequence of n tokens, timed."""
        import torch

        device = next(self.model.parameters()).device
        ids = torch.from_numpy(np.asarray(sequence, dtype=np.int64)).to(device)[None]  # (1, n)
        started = time.perf_counter()
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
    (its ``tokenizer.model``) or the path of a SentencePiece model.
    """
    from longnet_cli.data.tokenizer import SPACE_SYMBOL, load_tokenizer

    path = getattr(corpus_or_model, "tokenizer_path", corpus_or_model)
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


def _resolve_checkpoint(path: Path | None, runs_dir: Path, chosen: list[str]) -> Checkpoint:
    from longnet_cli.checkpoints import list_checkpoints, read_checkpoint, resolve_checkpoint

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
        except ValueError as err:
            raise InputError(str(err)) from None
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
    except ValueError as err:
        raise InputError(str(err)) from None
    chosen.append(
        f"checkpoint: {newest} (step {checkpoint.step}, the most recent run under {runs_dir}/)"
    )
    return checkpoint


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


def _progress(doc_ids: list[int], enabled: bool) -> Iterator[int]:
    if not enabled:
        return iter(doc_ids)
    from tqdm import tqdm

    return iter(tqdm(doc_ids, desc="eval", unit="doc", file=sys.stderr, dynamic_ncols=True))


# -- output ---------------------------------------------------------------------------------------


def write_json(result: EvalResult, path: Path) -> None:
    """``result.to_json()`` to ``path`` atomically (a temporary file renamed into place)."""
    path = Path(path)
    temp = path.with_name(f".{path.name}.tmp")
    try:
        temp.write_text(json.dumps(result.to_json(), indent=2) + "\n")
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def plot_available() -> bool:
    """Whether matplotlib (the ``plot`` extra) can be imported."""
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def plot(result: EvalResult, path: Path) -> None:
    """Perplexity against position (bucket midpoints, log axis), one line per context, as PNG."""
    if not plot_available():
        raise InputError("--plot needs matplotlib: pip install 'longnet-cli[plot]'")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    try:
        for report in result.reports:
            points = [
                ((b.start + b.end) / 2, b.stats.ppl) for b in report.buckets if b.stats.tokens
            ]
            if points:
                xs, ys = zip(*points)
                axes.plot(xs, ys, marker="o", label=f"context {format_length(report.context)}")
        axes.set_xscale("log")
        axes.set_xlabel("position in the sequence (tokens, bucket midpoint)")
        axes.set_ylabel("perplexity")
        axes.set_title(f"{Path(result.checkpoint).name} on {Path(result.data).name}")
        axes.grid(True, which="both", alpha=0.3)
        axes.legend()
        figure.tight_layout()
        figure.savefig(path, dpi=120)
    finally:
        plt.close(figure)


def table_lines(result: EvalResult) -> list[str]:
    """The stdout report: a bucket table per context, then the final-tokens comparison."""
    lines: list[str] = []
    header = f"{'positions':<14}{'tokens':>12}{'loss':>9}{'ppl':>11}{'bpb':>8}"
    for report in result.reports:
        overall = report.overall
        lines.append(
            f"context {format_length(report.context)}: {_count(result.documents, 'document')}, "
            f"{_count(report.sequences, 'sequence')}, {overall.tokens:,} tokens scored"
        )
        lines.append(header)
        for bucket in report.buckets:
            span = f"{format_length(bucket.start)}-{format_length(bucket.end)}"
            lines.append(_row(span, bucket.stats))
        lines.append(_row("overall", overall))
        lines.append("")
    if len(result.reports) > 1:
        last = result.reports[0].context - 1
        lines.append(
            f"final tokens: the same last {last:,} positions of each span, scored with more and "
            "more preceding context"
        )
        lines.append(f"{'context':<14}{'tokens':>12}{'loss':>9}{'ppl':>11}{'bpb':>8}")
        for report in result.reports:
            lines.append(_row(format_length(report.context), report.final))
        lines.append("")
    lines.append(
        f"{result.tokens_per_s:,.0f} tokens/s ({result.model_seconds:.1f} s in the model), "
        f"peak memory {result.peak_memory_bytes / 2**30:.2f} GiB"
    )
    return lines


def _count(number: int, noun: str) -> str:
    return f"{number:,} {noun}{'' if number == 1 else 's'}"


def _row(label: str, stats: Stats) -> str:
    def number(value: float | None, width: int, digits: int) -> str:
        return f"{'-':>{width}}" if value is None else f"{value:>{width}.{digits}f}"

    return (
        f"{label:<14}{stats.tokens:>12,}{number(stats.loss, 9, 4)}{number(stats.ppl, 11, 2)}"
        f"{number(stats.bpb, 8, 4)}"
    )

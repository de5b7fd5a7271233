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

import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from longnet_cli.artifacts.layout import STATE_FILE, TOKENIZER_FILE, run_of_checkpoint
from longnet_cli.core.errors import DamagedFileError, InputError
from longnet_cli.core.lengths import format_length
from longnet_cli.core.memory import peak_rss_bytes
from longnet_cli.data.splits import EVAL_SPLITS, select_documents
from longnet_cli.evaluate.probe import DEFAULT_DISTANCES, PROBES, CopyFigure, copy_probe
from longnet_cli.evaluate.scorer import (
    ContextReport,
    Scorer,
    checked_documents,
    resolve_precision,
    runnable_backend,
    token_byte_lengths,
    use_backend,
)
from longnet_cli.runtime import PRECISION_NAMES, resolve_device

if TYPE_CHECKING:
    from longnet_cli.artifacts.checkpoints import Checkpoint
    from longnet_cli.config import Recipe
    from longnet_cli.data.format.reader import TokenizedCorpus

DEFAULT_RUNS = Path("runs")


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
    compile: bool = False  # torch.compile each block (train.compiled.compile_blocks)
    progress: bool = False  # a tqdm bar over documents on stderr


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

    from longnet_cli.artifacts.loading import load_checkpoint_model
    from longnet_cli.data.format.reader import TokenizedCorpus
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
    device = resolve_device(options.device)

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
        model = load_checkpoint_model(  # weights verified by _resolve_runs
            run.checkpoint, run.recipe, vocab_size=corpus.vocab_size, device=device, verify=False
        )
        precision = resolve_precision(
            options.precision or run.recipe.train.precision, model.config.backend, device.type
        )
        if precision != "fp32":
            note(f"eval: {run.name}: scored in {precision} (autocast; the loss in float32)")
        backend = runnable_backend(model.config.backend, device.type)
        if backend != model.config.backend:
            note(f"eval: {run.name}: backend {backend} ({model.config.backend} does not run here)")
            use_backend(model, backend)
        if options.compile:
            from longnet_cli.train.compiled import compile_blocks, eager_instead

            warning = eager_instead(device, "--compile")
            if warning is None:
                compile_blocks(model)
            elif (line := warning.removeprefix("warning: ")) not in warnings:
                warnings.append(line)  # once for all runs
        scorer = Scorer(model, contexts, boundaries, token_bytes, options.chunk_size, precision)
        results.append(_score_run(run, scorer, corpus, selection.doc_ids, options, len(runs) > 1))
        del scorer, model
    if device.type == "cuda":
        peak = int(torch.cuda.max_memory_allocated(device))
    else:
        peak = peak_rss_bytes()
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
    scorer: Scorer,
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
    if options.precision is not None and options.precision not in PRECISION_NAMES:
        raise InputError(
            f"--precision must be one of {', '.join(PRECISION_NAMES)}, got {options.precision!r}"
        )
    if options.split not in EVAL_SPLITS:
        raise InputError(f"--split must be one of {', '.join(EVAL_SPLITS)}, got {options.split!r}")
    if options.probe is not None and options.probe not in PROBES:
        raise InputError(f"--probe must be one of {', '.join(PROBES)}, got {options.probe!r}")
    if options.probe is not None and (not options.distances or min(options.distances) < 2):
        raise InputError(f"--distances must be lengths of at least 2, got {options.distances}")


def _resolve_runs(paths: Sequence[Path], runs_dir: Path, chosen: list[str]) -> list[_Run]:
    """Each checkpoint or run directory (the most recent run when none), with its recipe."""
    from longnet_cli.artifacts.loading import verify_weights
    from longnet_cli.artifacts.resolve import intact_hint, resolve_argument
    from longnet_cli.config import Recipe

    checkpoints = [resolve_argument(Path(p), runs_dir, chosen) for p in paths] or [
        resolve_argument(None, runs_dir, chosen)
    ]
    runs = []
    for checkpoint in checkpoints:
        path = checkpoint.path
        run_dir = run_of_checkpoint(path) or path
        state_file = path / STATE_FILE
        saved = checkpoint.state.get("recipe")
        if not isinstance(saved, Mapping):
            raise DamagedFileError(f"{state_file}: 'recipe' is not a recipe, got {saved!r:.60}")
        recipe = Recipe.from_saved(saved, source=str(state_file))
        try:
            verify_weights(checkpoint)  # before the corpus is opened: fail fast
        except DamagedFileError as err:
            raise DamagedFileError(f"{err}{intact_hint(run_dir, path)}") from None
        runs.append(_Run(checkpoint, recipe, str(run_dir)))
    return runs


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


def _recipe_name(state: dict[str, Any]) -> str | None:
    """The recipe's name (its file's stem) when the checkpoint records its source file."""
    for key in ("recipe_name", "recipe_source", "recipe_path"):
        value = state.get(key)
        if isinstance(value, str) and value and not value.startswith("<"):
            return Path(value).stem if key != "recipe_name" else value
    return None


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


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
            f"<the run's corpus>/{TOKENIZER_FILE})"
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

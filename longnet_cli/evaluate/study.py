"""Stage: the context study's report (``longnet study-report``, ``pipelines/context_study.sh``).

Input: the JSON of ``longnet eval RUN_A RUN_B ... --context 2K,8K,32K --probe copy`` (several
runs scored on the same held-out documents and the same final tokens). Output: one row per run
with its perplexity on those final tokens at each context (the LongNet paper's Table 2), its
reach, the copy probe, and what its training cost (tokens, tokens/s and wall time, read from the
run's ``metrics.jsonl``), as markdown (``study.md``) and JSON (``study.json``). Where the study's
two models are present, the report also lists the claims the study exists to test, each with the
figure measured and whether it holds: a claim is shown or not shown, never assumed.

The two models are told apart by what they are, never by their names: each run's recipe (saved in
the state.json of the checkpoint the evaluation names, else of its run's latest checkpoint) says
its attention, the evaluation says its training length (``seq_len``). The LongNet model has dilated
attention (a branch at a rate above 1; ``longnet_8k``); the dense baseline has full causal attention
(one branch at rate 1; ``dense_2k``), and of several such runs it is the one trained on the
shortest sequences (``dense_8k``, the costly upper bound, is not the baseline). A run whose recipe
cannot be read has no role.

The corpus: the report names the corpus the models trained on (``stdlib``, ``site-packages`` or
the paths it was tokenized from) and its training tokens, from the manifest of the evaluation's
data, so that a figure is never read without the number of tokens behind it.

The curve (``curve``: the JSONs of ``longnet eval CHECKPOINT ... --probe copy``, one per
checkpoint kept along a run, or one side-by-side file): each checkpoint's copy ratios and
perplexities against the tokens it had trained on, per model, and the first budget at which the
LongNet model's copy ratio at the shortest context's distance (d = 2K) falls below
``COPY_TARGET`` (the budget the long scale of ``pipelines/context_study.sh`` trains toward).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from longnet_cli.artifacts.layout import metrics_path
from longnet_cli.core.errors import InputError
from longnet_cli.core.files import atomic_write
from longnet_cli.core.lengths import format_length

LONGNET, DENSE = "longnet", "dense"  # the study's two roles (see the module docstring)
COPY_TARGET = 0.7  # a copy ratio below this: the model reads the span back (the claims' target)
PAPER_TABLE_2 = {  # LongNet paper, Table 2: perplexity with 2K / 8K / 32K tokens of context
    "LongNet, trained on 8K": (4.23, 3.24, 3.36),
    "Transformer, trained on 2K": (4.24, 5.07, 11.29),
}


@dataclass
class Claim:
    """One thing the study should show: ``measured`` compared with ``target`` by ``holds``."""

    text: str
    measured: float | None
    target: str
    holds: bool | None  # None: the figure was not measured (a context or distance missing)

    def to_json(self) -> dict[str, Any]:
        return {
            "claim": self.text,
            "measured": self.measured,
            "target": self.target,
            "holds": self.holds,
        }


def study_report(eval_json: Path, curve: Sequence[Path] = ()) -> dict[str, Any]:
    """The study's figures from a side-by-side ``longnet eval`` JSON file (see module docstring),
    with the copy-ratio curve of the evaluations ``curve`` names (files or directories of them).

    Raises InputError (exit 2) when a file is missing, not JSON, or not an evaluation (the main
    one: a several-run evaluation with contexts).
    """
    report = read_eval_json(Path(eval_json))
    runs = report["runs"]
    contexts = sorted({c["context"] for run in runs for c in run.get("contexts", [])})
    if not contexts:
        raise InputError(f"{eval_json}: the runs have no contexts")
    rows = [_row(run) for run in runs]
    roles = [run_role(run) for run in runs]
    distances = sorted({p["distance"] for row in rows for p in row["probe"]})
    return {
        "source": str(eval_json),
        "data": report.get("data"),
        "corpus": corpus_summary(report.get("data")),
        "split": report.get("split"),
        "documents": report.get("documents"),
        "skipped": report.get("skipped"),
        "min_tokens": report.get("min_tokens"),
        "contexts": contexts,
        "distances": distances,
        "final_tokens": _final_tokens(runs),
        "runs": rows,
        "claims": [claim.to_json() for claim in study_claims(rows, contexts, roles)],
        "paper_table_2": {
            name: dict(zip(("2K", "8K", "32K"), figures)) for name, figures in PAPER_TABLE_2.items()
        },
        "curve": study_curve(curve) if curve else None,
    }


def read_eval_json(path: Path) -> dict[str, Any]:
    """The JSON ``longnet eval --json`` wrote at ``path``; InputError (exit 2) naming the file
    when it is missing, does not parse, or has no ``runs`` list."""
    try:
        report = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: no such file (write it with longnet eval --json)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: cannot read the evaluation JSON: {err}") from None
    runs = report.get("runs") if isinstance(report, dict) else None
    if not runs or not isinstance(runs, list):
        raise InputError(f"{path}: no 'runs' list: not the JSON of longnet eval --json")
    return report


# -- the corpus -----------------------------------------------------------------------------------


def corpus_summary(data: str | None) -> dict[str, Any] | None:
    """What the models trained on, from the manifest of the tokenized corpus ``data``: its
    name (``corpus_name``), documents and tokens per split. None when it cannot be read (the
    corpus moved or was deleted since the evaluation)."""
    from longnet_cli.data.format.errors import CorpusError
    from longnet_cli.data.format.manifest import read_manifest

    if not data:
        return None
    try:
        manifest = read_manifest(Path(data))
    except CorpusError:
        return None
    splits = manifest.get("splits") if isinstance(manifest.get("splits"), dict) else {}
    train = splits.get("train") or {}
    heldout = splits.get("heldout") or {}
    return {
        "name": corpus_name(manifest),
        "path": str(data),
        "documents": manifest.get("documents"),
        "tokens": manifest.get("tokens"),
        "vocab_size": manifest.get("vocab_size"),
        "train_documents": train.get("documents"),
        "train_tokens": train.get("tokens", manifest.get("tokens") if not splits else None),
        "heldout_documents": heldout.get("documents"),
        "heldout_tokens": heldout.get("tokens"),
    }


def corpus_name(manifest: dict[str, Any]) -> str:
    """``stdlib`` (``longnet tokenize --stdlib``: one ``lib/python3.X`` tree, site-packages left
    out), ``site-packages`` (``--site-packages``: every path a site-packages or dist-packages
    directory) or the paths tokenized; with the ``--include`` patterns when they narrow it to
    less than its Python files."""
    options = manifest.get("options") if isinstance(manifest.get("options"), dict) else {}
    paths = [str(p) for p in options.get("paths") or []]
    names = [Path(p).name for p in paths]
    if names and all(name in ("site-packages", "dist-packages") for name in names):
        name = "site-packages"
    elif (
        len(names) == 1
        and re.fullmatch(r"python3\.\d+", names[0])
        and "site-packages" in (options.get("exclude") or [])
    ):
        name = "stdlib"
    else:
        name = ", ".join(paths) or "?"
    include = [str(pattern) for pattern in options.get("include") or []]
    if include and include != ["*.py"]:
        name += f" (--include {' '.join(include)})"
    return name


def _row(run: dict[str, Any]) -> dict[str, Any]:
    """A run's row: perplexity on the shared final tokens per context, probe, training cost."""
    training = training_figures(Path(run["run"]))
    return {
        "run": run["run"],
        "name": run.get("recipe") or Path(run["run"]).name,
        "seq_len": run.get("seq_len"),
        "reach": run.get("reach"),
        "step": run.get("step"),
        "target_steps": _target_steps(run),
        "ppl": {str(c["context"]): c["final"]["ppl"] for c in run.get("contexts", [])},
        "loss": {str(c["context"]): c["final"]["loss"] for c in run.get("contexts", [])},
        "probe": [
            {
                "distance": p["distance"],
                "ratio": p["ratio"],
                "documents": p["documents"],
                "within_reach": p["within_reach"],
            }
            for p in run.get("probe") or []
        ],
        **training,
    }


def run_role(run: dict[str, Any]) -> str | None:
    """A run's role in the study from its saved recipe: ``LONGNET`` (dilated attention),
    ``DENSE`` (one branch at rate 1: full causal attention), or None (another model, or no
    recipe to read)."""
    recipe = _saved_recipe(run)
    model = recipe.get("model") if recipe else None
    rates = model.get("dilation_rates") if isinstance(model, dict) else None
    if not isinstance(rates, list) or not rates:
        return None
    if any(isinstance(rate, int) and rate > 1 for rate in rates):
        return LONGNET
    return DENSE if rates == [1] else None


def _saved_recipe(run: dict[str, Any]) -> dict[str, Any] | None:
    """The recipe saved in the state.json of the checkpoint the evaluation names, else of its
    run's latest checkpoint; None when neither reads."""
    from longnet_cli.artifacts.runs import saved_recipe

    for place in (run.get("checkpoint"), run.get("run")):
        if isinstance(place, str) and place and (recipe := saved_recipe(Path(place))):
            return recipe
    return None


def _target_steps(run: dict[str, Any]) -> int | None:
    """The ``train.steps`` the run was to reach (from its saved recipe), when known."""
    recipe = _saved_recipe(run)
    train = recipe.get("train") if recipe else None
    steps = train.get("steps") if isinstance(train, dict) else None
    return steps if isinstance(steps, int) and not isinstance(steps, bool) else None


def _final_tokens(runs: list[dict[str, Any]]) -> int | None:
    """Targets behind each final-token figure (the same for every run and context)."""
    for run in runs:
        for context in run.get("contexts", []):
            return context["final"]["tokens"]
    return None


def training_figures(run_dir: Path) -> dict[str, Any]:
    """Tokens trained, wall seconds and tokens/s of a run, from the last line of its
    ``metrics.jsonl`` (``elapsed_s`` adds up across resumes); None where it cannot be read."""
    from longnet_cli.artifacts.runs import read_metrics

    figures: dict[str, Any] = {
        "train_tokens": None,
        "train_seconds": None,
        "train_tokens_per_s": None,
    }
    timed = [r for r in read_metrics(metrics_path(run_dir)) if "tokens" in r and "elapsed_s" in r]
    if timed:
        tokens, seconds = int(timed[-1]["tokens"]), float(timed[-1]["elapsed_s"])
        figures.update(
            train_tokens=tokens,
            train_seconds=seconds,
            train_tokens_per_s=tokens / seconds if seconds > 0 else None,
        )
    return figures


# -- the claims -----------------------------------------------------------------------------------


def study_claims(
    rows: list[dict[str, Any]], contexts: list[int], roles: list[str | None]
) -> list[Claim]:
    """The study's claims for its LongNet model and its dense baseline (``roles``, one per row:
    see the module docstring); other runs get none. Each model is named by its training length
    (``LongNet-8K``, ``dense-2K``).

    Stated for the study's three contexts ``short < middle < long`` (2K, 8K, 32K: the dense
    baseline's training length, the LongNet model's, and the LongNet model's reach), the copy
    distances derived from them (``short / 4``, ``short``, ``middle``, ``long / 2``: 512, 2K, 8K,
    16K), so that a scaled-down study checks the same shape:

    - LongNet: ppl at middle / at short <= 0.97 (it uses context) and long / middle <= 1.05 (it
      reads past its training length); copy ratio < 0.7 at d = short and d = middle, < 0.9 at
      d = long / 2;
    - dense: ppl at long / at short >= 1.10 (it breaks past its training length); copy ratio
      < 0.7 at d = short / 4 (it copies within its training length), >= 0.95 at d = middle.

    A claim whose figure was not measured (fewer contexts, a distance missing) says so.
    """
    short, middle, long = contexts if len(contexts) == 3 else (None, None, None)
    longnet = next((row for row, role in zip(rows, roles) if role == LONGNET), None)
    dense_rows = [row for row, role in zip(rows, roles) if role == DENSE]
    # the dense run trained on the shortest sequences (the first of equals) is the baseline
    dense = min(dense_rows, key=lambda row: row["seq_len"] or math.inf, default=None)
    claims: list[Claim] = []
    if longnet is not None:
        name = f"LongNet-{_length(longnet['seq_len'])}"
        times = f"{long // middle}x" if long and middle else "far"
        claims += [
            _ppl_ratio(longnet, middle, short, f"{name} uses context", "<=", 0.97),
            _ppl_ratio(
                longnet, long, middle, f"{name} reads {times} past its training length", "<=", 1.05
            ),
        ]
        claims += [
            _copy(longnet, distance, f"{name} {text}", "<", target)
            for distance, text, target in (
                (short, "copies from its short branches' reach", COPY_TARGET),
                (middle, "copies from its training length back", COPY_TARGET),
                (_half(long), "copies through its sparse long branches", 0.9),
            )
        ]
    if dense is not None:
        name = f"dense-{_length(dense['seq_len'])}"
        claims.append(
            _ppl_ratio(dense, long, short, f"{name} breaks past its training length", ">=", 1.10)
        )
        claims += [
            _copy(dense, distance, f"{name} {text}", op, target)
            for distance, text, op, target in (
                (short and short // 4, "copies within its training length", "<", COPY_TARGET),
                (middle, "does not copy from beyond its training length", ">=", 0.95),
            )
        ]
    return claims


def _half(length: int | None) -> int | None:
    return None if length is None else length // 2


_COMPARE: dict[str, Callable[[float, float], bool]] = {
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">=": lambda a, b: a >= b,
}


def _claim(text: str, measured: float | None, op: str, target: float) -> Claim:
    holds = None if measured is None else _COMPARE[op](measured, target)
    return Claim(text, measured, f"{op} {target:g}", holds)


def _ppl_ratio(
    row: dict, top: int | None, bottom: int | None, text: str, op: str, target: float
) -> Claim:
    """Perplexity on the shared final tokens with ``top`` tokens of context over ``bottom``."""
    upper, lower = row["ppl"].get(str(top)), row["ppl"].get(str(bottom))
    measured = upper / lower if upper is not None and lower else None
    shown = f"ppl at {_length(top)} / at {_length(bottom)}"
    return _claim(f"{text}: {shown}", measured, op, target)


def _copy(row: dict, distance: int | None, text: str, op: str, target: float) -> Claim:
    """The copy-probe ratio at ``distance``."""
    figures = [p["ratio"] for p in row["probe"] if p["distance"] == distance]
    return _claim(
        f"{text}: copy-probe ratio at d = {_length(distance)}",
        figures[0] if figures else None,
        op,
        target,
    )


# -- the curve: copy ratio against training tokens ------------------------------------------------


def curve_files(paths: Sequence[Path]) -> list[Path]:
    """The evaluation JSONs ``paths`` name: files, and the ``*.json`` files of directories (in
    name order); InputError (exit 2) for a path that does not exist."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files += sorted(path.glob("*.json"))
        elif path.exists():
            files.append(path)
        else:
            raise InputError(f"{path}: no such file or directory (--curve)")
    return files


def study_curve(paths: Sequence[Path]) -> dict[str, Any]:
    """Each checkpoint's figures against the tokens it had trained on, from the evaluations
    ``paths`` name (``curve_files``): a point per run entry (a checkpoint evaluated twice: its
    last evaluation), sorted by model and tokens; and ``onset``, where the LongNet model's copy
    ratio at d = the shortest context first falls below ``COPY_TARGET``."""
    entries: dict[str, dict[str, Any]] = {}
    files = curve_files(paths)
    for file in files:
        for index, run in enumerate(read_eval_json(file)["runs"]):
            entries[str(run.get("checkpoint") or f"{file}#{index}")] = run
    points = [
        {
            "name": run.get("recipe") or Path(str(run.get("run"))).name,
            "role": run_role(run),
            "run": run.get("run"),
            "checkpoint": run.get("checkpoint"),
            "step": run.get("step"),
            "train_tokens": run.get("tokens_trained"),
            "seq_len": run.get("seq_len"),
            "ppl": {str(c["context"]): c["final"]["ppl"] for c in run.get("contexts") or []},
            "copy": {str(p["distance"]): p["ratio"] for p in run.get("probe") or []},
        }
        for run in entries.values()
    ]
    points.sort(key=lambda p: (p["name"], p["train_tokens"] or 0, p["step"] or 0))
    contexts = sorted({int(c) for point in points for c in point["ppl"]})
    distances = sorted({int(d) for point in points for d in point["copy"]})
    return {
        "files": [str(file) for file in files],
        "contexts": contexts,
        "distances": distances,
        "points": points,
        "onset": copy_onset(points, contexts[0] if contexts else None),
    }


def copy_onset(points: list[dict[str, Any]], distance: int | None) -> dict[str, Any] | None:
    """Where the LongNet model's copy ratio at ``distance`` first falls below ``COPY_TARGET``
    (``reached``, with its tokens and step), else the lowest ratio measured and the tokens of
    its last point (``reached`` False). None without a LongNet point measured at ``distance``."""
    measured = [
        point
        for point in points
        if point["role"] == LONGNET and point["copy"].get(str(distance)) is not None
    ]
    if distance is None or not measured:
        return None
    below = [point for point in measured if point["copy"][str(distance)] < COPY_TARGET]
    lowest = min(measured, key=lambda point: point["copy"][str(distance)])
    first = below[0] if below else None
    return {
        "model": measured[0]["name"],
        "distance": distance,
        "target": COPY_TARGET,
        "reached": first is not None,
        "train_tokens": (first or measured[-1])["train_tokens"],
        "step": (first or measured[-1])["step"],
        "lowest": lowest["copy"][str(distance)],
        "lowest_train_tokens": lowest["train_tokens"],
    }


def curve_markdown(curve: dict[str, Any]) -> list[str]:
    """The curve as a table: a row per checkpoint, ppl at each context, the copy ratios."""
    contexts, distances = curve["contexts"], curve["distances"]
    ratio = (
        f" | {format_length(contexts[1])} / {format_length(contexts[0])}" if contexts[1:] else ""
    )
    lines = [
        "## Copy ratio against training tokens",
        "",
        "Each kept checkpoint, evaluated on the same held-out documents: perplexity on the same "
        "final tokens with each context, and the copy ratio at each distance.",
        "",
        "| model | step | train tokens | "
        + " | ".join(f"ppl {format_length(c)}" for c in contexts)
        + ratio
        + "".join(f" | d = {format_length(d)}" for d in distances)
        + " |",
        "|---|---|---|" + "---|" * (len(contexts) + bool(contexts[1:]) + len(distances)),
    ]
    for point in curve["points"]:
        ppl = [point["ppl"].get(str(c)) for c in contexts]
        cells = [f"`{point['name']}`", _number(point["step"], 0), _millions(point["train_tokens"])]
        cells += [_number(value, 2) for value in ppl]
        if contexts[1:]:
            cells.append(_number(ppl[1] / ppl[0] if ppl[0] and ppl[1] else None, 3))
        cells += [_number(point["copy"].get(str(d)), 3) for d in distances]
        lines.append("| " + " | ".join(cells) + " |")
    onset = curve["onset"]
    if onset is not None:
        where = f"copy ratio at d = {format_length(onset['distance'])}"
        if onset["reached"]:
            line = (
                f"`{onset['model']}`'s {where} fell below {onset['target']:g} at "
                f"{_millions(onset['train_tokens'])} training tokens (step {onset['step']:,})."
            )
        else:
            line = (
                f"`{onset['model']}`'s {where} stayed at or above {onset['target']:g} through "
                f"{_millions(onset['train_tokens'])} training tokens (lowest "
                f"{onset['lowest']:.3f}, at {_millions(onset['lowest_train_tokens'])})."
            )
        lines += ["", line]
    return [*lines, ""]


_CURVE_STYLES = {LONGNET: "-", DENSE: "--"}  # a line style per role; other models dotted


def plot_curve(curve: dict[str, Any], path: Path) -> None:
    """A PNG of the copy ratio against training tokens (log axis): a colour per distance, a
    line style per model, the target dotted; written atomically."""
    from longnet_cli.evaluate.stage import plot_available

    if not plot_available():
        raise InputError("--curve-plot needs matplotlib: pip install 'longnet-cli[plot]'")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(point["name"] for point in curve["points"]))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    figure, axes = plt.subplots(figsize=(8, 5))
    try:
        for name in names:
            points = [p for p in curve["points"] if p["name"] == name and p["train_tokens"]]
            style = _CURVE_STYLES.get(points[0]["role"] if points else None, ":")
            for index, distance in enumerate(curve["distances"]):
                shown = [p for p in points if p["copy"].get(str(distance)) is not None]
                xs = [p["train_tokens"] for p in shown]
                ys = [p["copy"][str(distance)] for p in shown]
                if xs:
                    width = 2.5 if distance == (curve["onset"] or {}).get("distance") else 1.2
                    axes.plot(xs, ys, marker="o", color=colors[index % len(colors)],
                              linestyle=style, linewidth=width,
                              label=f"{name}, d = {format_length(distance)}")  # fmt: skip
        axes.axhline(COPY_TARGET, color="gray", linestyle=":", linewidth=1)
        axes.set_xscale("log")
        axes.set_xlabel("training tokens")
        axes.set_ylabel("copy ratio: loss on the second copy / on the first")
        axes.set_title("copy probe against training tokens (held-out documents)")
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(fontsize="small")
        figure.tight_layout()
        atomic_write(path, lambda file: figure.savefig(file, format="png", dpi=120), hidden=True)
    finally:
        plt.close(figure)


# -- rendering ------------------------------------------------------------------------------------


def markdown(study: dict[str, Any]) -> str:
    """``study.md``: the corpus, the table, the copy probe, training cost, the claims beside the
    paper's Table 2, and the curve when there is one."""
    contexts = study["contexts"]
    lines = [
        "# Context study: perplexity on held-out documents by context length",
        "",
        _corpus_line(study.get("corpus"), study["runs"]),
        "",
        f"Data: `{study['data']}`, split **{study['split']}** (documents the models never "
        f"trained on): {_plural(study['documents'], 'document')} of at least "
        f"{_length(study['min_tokens'])} tokens ({study['skipped']} shorter ones skipped). "
        f"Every figure scores the same final {study['final_tokens']:,} tokens of each document, "
        "with more or less context before them.",
        "",
        "| model | trained on | reach | "
        + " | ".join(f"ppl {format_length(c)}" for c in contexts)
        + " | train tokens | tokens/s | wall |",
        "|---|---|---|" + "---|" * len(contexts) + "---|---|---|",
    ]
    for row in study["runs"]:
        cells = [f"`{row['name']}`", _length(row["seq_len"]), _length(row["reach"])]
        cells += [_number(row["ppl"].get(str(c)), 2) for c in contexts]
        cells += [
            _millions(row["train_tokens"]),
            _number(row["train_tokens_per_s"], 0),
            _minutes(row["train_seconds"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    for row in study["runs"]:
        if row["step"] is not None and row["target_steps"] and row["step"] < row["target_steps"]:
            lines += [
                "",
                f"`{row['name']}` stopped at step {row['step']:,} of {row['target_steps']:,} "
                "(interrupted, or at its time cap): its figures are that checkpoint's.",
            ]
    if any(row["reach"] and row["reach"] < contexts[-1] for row in study["runs"]):
        lines += [
            "",
            "A context beyond a model's reach (its longest segment) is read as "
            "independent blocks of the reach.",
        ]
    if study["distances"]:
        lines += [
            "",
            "Copy probe: loss on the second copy of a d-token span over the loss on "
            "the first (1.00: no gain from having read it d tokens earlier; `*`: 2d is "
            "beyond the model's reach, so the copies are not in one block; `†`: 2d is past "
            "the model's training length, so the second copy is read where it never trained "
            "and the ratio also carries that cost).",
            "",
            "| model | " + " | ".join(f"d = {format_length(d)}" for d in study["distances"]) + " |",
            "|---|" + "---|" * len(study["distances"]),
        ]
        for row in study["runs"]:
            probe = {p["distance"]: p for p in row["probe"]}
            cells = [f"`{row['name']}`"]
            for distance in study["distances"]:
                figure = probe.get(distance)
                if figure is None:
                    cells.append("-")
                else:
                    cells.append(_number(figure["ratio"], 3) + _probe_mark(row, distance))
            lines.append("| " + " | ".join(cells) + " |")
    if study["claims"]:
        lines += [
            "",
            "The claims, from the figures above:",
            "",
            "| claim | target | measured | result |",
            "|---|---|---|---|",
        ]
        for claim in study["claims"]:
            result = {True: "holds", False: "does not hold", None: "not measured"}
            lines.append(
                f"| {claim['claim']} | {claim['target']} | "
                f"{_number(claim['measured'], 3)} | {result[claim['holds']]} |"
            )
    lines += [
        "",
        "Beside the paper's Table 2 (its own data and model scale, the same shape of experiment):",
        "",
        "| paper | ppl 2K | ppl 8K | ppl 32K |",
        "|---|---|---|---|",
    ]
    for name, figures in study["paper_table_2"].items():
        lines.append(f"| {name} | " + " | ".join(f"{v:.2f}" for v in figures.values()) + " |")
    lines.append("")
    if study.get("curve"):
        lines += ["", *curve_markdown(study["curve"])]
    return "\n".join(lines)


def _probe_mark(row: dict[str, Any], distance: int) -> str:
    """The copy-probe cell's marker: ``*`` when the two copies are not in one block of the
    model's reach, ``†`` when the second copy lies past its training length (2d > seq_len)."""
    figure = next(p for p in row["probe"] if p["distance"] == distance)
    if not figure["within_reach"]:
        return "*"
    return "†" if row["seq_len"] and 2 * distance > row["seq_len"] else ""


def _corpus_line(corpus: dict[str, Any] | None, rows: list[dict[str, Any]]) -> str:
    """What the models trained on: the corpus, its training tokens, the passes over them."""
    if corpus is None:
        return "Corpus: not found (its manifest no longer reads at the evaluation's data path)."
    line = (
        f"Corpus: **{corpus['name']}**, {_plural(corpus['documents'], 'document')}: "
        f"{_millions(corpus['train_tokens'])} training tokens"
    )
    if corpus.get("heldout_tokens"):
        line += (
            f", {_millions(corpus['heldout_tokens'])} held out "
            f"({_plural(corpus['heldout_documents'], 'document')})"
        )
    trained = max((row["train_tokens"] or 0 for row in rows), default=0)
    if trained and corpus["train_tokens"]:
        line += (
            f"; the models trained on up to {_millions(trained)} tokens, "
            f"{trained / corpus['train_tokens']:.2f} passes over the training tokens"
        )
    return line + "."


def _plural(count: int | None, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _number(value: float | None, digits: int) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-" if value is None else str(value)
    return f"{value:,.{digits}f}"


def _length(value: int | None) -> str:
    return "-" if value is None else format_length(value)


def _millions(value: int | None) -> str:
    if value is None:
        return "-"
    if value >= 1_000_000:
        return f"{value / 1e6:.1f}M"
    return f"{value / 1e6:.2f}M" if value >= 100_000 else f"{value:,}"


def _minutes(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds / 60:.1f} min"

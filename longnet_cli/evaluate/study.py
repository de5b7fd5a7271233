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
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from longnet_cli.artifacts.layout import metrics_path
from longnet_cli.core.errors import InputError
from longnet_cli.core.lengths import format_length

LONGNET, DENSE = "longnet", "dense"  # the study's two roles (see the module docstring)
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


def study_report(eval_json: Path) -> dict[str, Any]:
    """The study's figures from a side-by-side ``longnet eval`` JSON file (see module docstring).

    Raises InputError (exit 2) when the file is missing, not JSON, or not a several-run
    evaluation with contexts.
    """
    eval_json = Path(eval_json)
    try:
        report = json.loads(eval_json.read_text())
    except FileNotFoundError:
        raise InputError(f"{eval_json}: no such file (write it with longnet eval --json)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{eval_json}: cannot read the evaluation JSON: {err}") from None
    runs = report.get("runs") if isinstance(report, dict) else None
    if not runs or not isinstance(runs, list):
        raise InputError(f"{eval_json}: no 'runs' list: not the JSON of longnet eval --json")
    contexts = sorted({c["context"] for run in runs for c in run.get("contexts", [])})
    if not contexts:
        raise InputError(f"{eval_json}: the runs have no contexts")
    rows = [_row(run) for run in runs]
    roles = [run_role(run) for run in runs]
    distances = sorted({p["distance"] for row in rows for p in row["probe"]})
    return {
        "source": str(eval_json),
        "data": report.get("data"),
        "split": report.get("split"),
        "documents": report.get("documents"),
        "skipped": report.get("skipped"),
        "min_tokens": report.get("min_tokens"),
        "contexts": contexts,
        "distances": distances,
        "final_tokens": _final_tokens(runs),
        "runs": rows,
        "claims": [claim.to_json() for claim in study_claims(rows, contexts, distances, roles)],
        "paper_table_2": {
            name: dict(zip(("2K", "8K", "32K"), figures)) for name, figures in PAPER_TABLE_2.items()
        },
    }


def _row(run: dict[str, Any]) -> dict[str, Any]:
    """A run's row: perplexity on the shared final tokens per context, probe, training cost."""
    training = training_figures(Path(run["run"]))
    return {
        "run": run["run"],
        "name": run.get("recipe") or Path(run["run"]).name,
        "seq_len": run.get("seq_len"),
        "reach": run.get("reach"),
        "step": run.get("step"),
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
    from longnet_cli.artifacts.runs import saved_recipe

    recipe = None
    for place in (run.get("checkpoint"), run.get("run")):
        if isinstance(place, str) and place and (recipe := saved_recipe(Path(place))):
            break
    model = recipe.get("model") if recipe else None
    rates = model.get("dilation_rates") if isinstance(model, dict) else None
    if not isinstance(rates, list) or not rates:
        return None
    if any(isinstance(rate, int) and rate > 1 for rate in rates):
        return LONGNET
    return DENSE if rates == [1] else None


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
    rows: list[dict[str, Any]],
    contexts: list[int],
    distances: list[int],
    roles: list[str | None],
) -> list[Claim]:
    """The study's claims for its LongNet model and its dense baseline (``roles``, one per row:
    see the module docstring); other runs get none. Each model is named by its training length
    (``LongNet-8K``, ``dense-2K``).

    Stated for the study's three contexts ``short < middle < long`` (2K, 8K, 32K: the dense
    baseline's training length, the LongNet model's, and the LongNet model's reach) and four copy
    distances ``d0 < d1 < d2 < d3`` (512, 2K, 8K, 16K), so that a scaled-down study checks the
    same shape. A claim whose figure was not measured (fewer contexts or distances) says so.
    """
    short, middle, long = (contexts + [None] * 3)[:3] if len(contexts) == 3 else (None,) * 3
    d0, d1, d2, d3 = (distances + [None] * 4)[:4] if len(distances) == 4 else (None,) * 4
    longnet = next((row for row, role in zip(rows, roles) if role == LONGNET), None)
    dense_rows = [row for row, role in zip(rows, roles) if role == DENSE]
    # the dense run trained on the shortest sequences (the first of equals) is the baseline
    dense = min(dense_rows, key=lambda row: row["seq_len"] or math.inf, default=None)
    claims: list[Claim] = []
    if longnet is not None:
        name = f"LongNet-{_length(longnet['seq_len'])}"
        claims += [
            _ppl_ratio(longnet, middle, short, f"{name} uses context", "<=", 0.97),
            _ppl_ratio(
                longnet, long, middle, f"{name} reads 4x past its training length", "<=", 1.05
            ),
            _copy(longnet, d1, f"{name} copies from its short branches' reach", "<", 0.7),
            _copy(longnet, d2, f"{name} copies from its training length back", "<", 0.7),
            _copy(longnet, d3, f"{name} copies through its sparse long branches", "<", 0.9),
        ]
    if dense is not None:
        name = f"dense-{_length(dense['seq_len'])}"
        claims += [
            _ppl_ratio(dense, long, short, f"{name} breaks past its training length", ">=", 1.10),
            _copy(dense, d0, f"{name} copies within its training length", "<", 0.7),
            _copy(dense, d2, f"{name} does not copy from beyond its training length", ">=", 0.95),
        ]
    return claims


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


# -- rendering ------------------------------------------------------------------------------------


def markdown(study: dict[str, Any]) -> str:
    """``study.md``: the table, the copy probe, training cost, and the claims."""
    contexts = study["contexts"]
    lines = [
        "# Context study: perplexity on held-out documents by context length",
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
            "beyond the model's reach, so the copies are not in one block).",
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
                    mark = "" if figure["within_reach"] else "*"
                    cells.append(_number(figure["ratio"], 3) + mark)
            lines.append("| " + " | ".join(cells) + " |")
    if study["claims"]:
        lines += [
            "",
            "What the study should show, and what it measured:",
            "",
            "| claim | target | measured | shown |",
            "|---|---|---|---|",
        ]
        for claim in study["claims"]:
            shown = {True: "yes", False: "no", None: "not measured"}[claim["holds"]]
            lines.append(
                f"| {claim['claim']} | {claim['target']} | "
                f"{_number(claim['measured'], 3)} | {shown} |"
            )
    paper = ", ".join(
        f"{name}: {' / '.join(f'{v:.2f}' for v in figures.values())}"
        for name, figures in study["paper_table_2"].items()
    )
    lines += ["", f"The paper's Table 2 (2K / 8K / 32K, its own data and scale): {paper}.", ""]
    return "\n".join(lines)


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
    return f"{value / 1e6:.1f}M" if value >= 100_000 else f"{value:,}"


def _minutes(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds / 60:.1f} min"

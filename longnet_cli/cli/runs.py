"""``longnet runs``: the training runs under a directory, with step, loss and latest eval."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from longnet_cli.cli.common import CONTEXT, json_flag, runs_dir_option

SPLIT_LABELS = {  # which documents an evaluation scored (runs.EvalSummary.split)
    "heldout": "held-out",
    "train": "train-set",
    "tail": "last docs",
    "all": "all docs",
    None: "unknown split",
}


@click.command("runs", context_settings=CONTEXT)
@runs_dir_option("Where to look for runs (searched 3 levels down: runs/quickstart/run is found).")
@json_flag("the runs")
@click.pass_context
def runs(ctx: click.Context, runs_dir: Path, as_json: bool) -> None:
    """List the training runs under --runs-dir: step, last loss, latest eval, last change.

    A run is a directory with checkpoints/ or metrics.jsonl. STEP is the latest checkpoint's
    step over the recipe's train.steps; LOSS the last logged training loss (metrics.jsonl);
    EVAL the evaluation of the latest step: the last metrics.jsonl line with an "eval" key
    (evaluation during training) or an eval.json written by `longnet eval --json` in the run
    directory or beside it, whichever is of a later step (held-out figures, then eval.json, on
    a tie); perplexity and bits per byte at its largest context, and which documents it scored:
    held-out (never trained on), train-set, last docs (cut from training by position, runs
    started before held-out splits), all docs, or unknown split (written before splits were
    recorded). A run with damaged files (a checkpoint whose state does not read, a recorded file
    missing, unreadable lines in metrics.jsonl) is listed with what could be read and one
    indented "note:" line below it saying what is damaged.
    """
    from longnet_cli.artifacts.runs import list_runs
    from longnet_cli.core.errors import InputError

    explicit = ctx.get_parameter_source("runs_dir") is not click.core.ParameterSource.DEFAULT
    if explicit and not runs_dir.is_dir():
        raise InputError(f"--runs-dir {runs_dir}: no such directory")
    found = list_runs(runs_dir)
    if as_json:
        report = {"runs_dir": str(runs_dir), "runs": [run.to_dict() for run in found]}
        click.echo(json.dumps(report, indent=2))
        return
    if not found:
        click.echo(
            f"no runs under {runs_dir}/ yet (a run is a directory with checkpoints/ or "
            "metrics.jsonl): start one with pipelines/quickstart.sh or longnet train RECIPE"
        )
        return
    rows = [("RUN", "STEP", "LOSS", "EVAL", "MODIFIED")]
    rows += [(run.name, _step(run), _loss(run), _eval(run), _time(run.modified)) for run in found]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    notes = [None, *(run.note for run in found)]
    for row, note in zip(rows, notes):
        cells = [cell.ljust(width) for cell, width in zip(row, widths)]
        click.echo("  ".join([*cells, row[-1]]))
        if note:
            click.echo(f"  note: {note}")


def _step(run) -> str:
    if run.step is None:
        return "-"
    target = "?" if run.target_steps is None else str(run.target_steps)
    return f"{run.step}/{target}" + (" done" if run.finished else "")


def _loss(run) -> str:
    return "-" if run.loss is None else f"{run.loss:.4f}"


def _eval(run) -> str:
    from longnet_cli.artifacts.layout import EVAL_FILE, METRICS_FILE
    from longnet_cli.core.lengths import format_length

    summary = run.eval
    if summary is None:
        return "-"
    parts = []
    if summary.ppl is not None:
        parts.append(f"ppl {summary.ppl:.2f}")
    if summary.bpb is not None:
        parts.append(f"bpb {summary.bpb:.3f}")
    if summary.context is not None:
        parts.append(f"@{format_length(summary.context)}")
    origin = EVAL_FILE if summary.source != METRICS_FILE else "training"
    step = "" if summary.step is None else f"step {summary.step}, "
    split = SPLIT_LABELS.get(summary.split, f"{summary.split} split")
    return f"{' '.join(parts) or '?'} ({step}{origin}, {split})"


def _time(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(seconds))

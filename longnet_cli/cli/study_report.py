"""``longnet study-report``: the context study's table from a side-by-side ``longnet eval``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from longnet_cli.cli.common import CONTEXT, file_path, quiet_flag


@click.command("study-report", context_settings=CONTEXT)
@click.argument("eval_json", type=file_path())
@click.option(
    "--curve",
    "curve",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Evaluations of checkpoints kept along the runs (longnet eval CHECKPOINT --probe copy "
    "--json FILE): a file, or a directory of *.json files; repeatable. Adds the copy ratio "
    "against training tokens.",
)
@click.option(
    "--curve-plot",
    "curve_plot",
    type=file_path(),
    help="Also write the curve as a PNG (needs --curve and the plot extra: matplotlib).",
)
@click.option(
    "--markdown",
    "markdown_path",
    type=file_path(),
    help="Also write the report as markdown to this file (study.md).",
)
@click.option(
    "--json",
    "json_path",
    type=file_path(),
    help="Also write the report's figures as JSON to this file (study.json).",
)
@quiet_flag("Print nothing on stdout (the files only).", short=False)
def study_report(
    eval_json: Path,
    curve: tuple[Path, ...],
    curve_plot: Path | None,
    markdown_path: Path | None,
    json_path: Path | None,
    quiet: bool,
) -> None:
    """Render the context study from EVAL_JSON, written by

        longnet eval RUN_A RUN_B ... --context 2K,8K,32K --probe copy --json EVAL_JSON

    First the corpus the models trained on (its name and training tokens, from its manifest).
    One row per run: perplexity on the same final tokens of the same held-out documents with
    each amount of context (the LongNet paper's Table 2, shown beside), the run's reach
    (longest segment), the copy probe, and training tokens, tokens/s and wall time (from each
    run's metrics.jsonl). The study's LongNet model and dense baseline, told apart by their
    recipes (pipelines/context_study.sh: longnet_8k, dense_2k), also get the study's claims,
    each marked holds or does not hold by the figures measured. With --curve: each kept
    checkpoint's copy ratios and perplexities against its training tokens, and the budget at
    which LongNet's copy ratio at d = 2K first falls below 0.7.
    """
    from longnet_cli.core.errors import InputError
    from longnet_cli.evaluate.report import write_text_atomically
    from longnet_cli.evaluate.stage import plot_available
    from longnet_cli.evaluate.study import markdown, plot_curve, study_report

    if curve_plot is not None and not curve:
        raise InputError("--curve-plot needs --curve (the evaluations the curve is drawn from)")
    if curve_plot is not None and not plot_available():
        raise InputError("--curve-plot needs matplotlib: pip install 'longnet-cli[plot]'")
    study = study_report(eval_json, curve)
    text = markdown(study)
    if json_path is not None:
        write_text_atomically(json_path, json.dumps(study, indent=2) + "\n")
    if markdown_path is not None:
        write_text_atomically(markdown_path, text)
    if curve_plot is not None:
        plot_curve(study["curve"], curve_plot)
    if not quiet:
        click.echo(text, nl=False)

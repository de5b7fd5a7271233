"""What ``longnet eval`` shows: the stdout tables, the JSON file and the plot of an EvalResult.

One run: a bucket table per context, the final-tokens comparison when there are several
contexts, the model's reach. Several runs: first one table with a row per run and a column per
context (perplexity over the same final tokens, the shape of the LongNet paper's Table 2),
then each run's bucket tables. The copy probe, when asked, is one more table: a row per run, a
column per distance.
"""

from __future__ import annotations

import json
from pathlib import Path

from longnet_cli.core.errors import InputError, LongnetError, one_line
from longnet_cli.core.files import atomic_write_text
from longnet_cli.core.lengths import format_length
from longnet_cli.evaluate.scorer import Stats
from longnet_cli.evaluate.stage import EvalResult, RunResult, plot_available

LINE_STYLES = ("-", "--", ":", "-.")  # several runs: a colour per run, a line style per context
SPLIT_WORDS = {"heldout": "held-out", "train": "training", "all": "all"}


def write_json(result: EvalResult, path: Path) -> None:
    """``result.to_json()`` to ``path`` atomically (a temporary file renamed into place)."""
    write_text_atomically(path, json.dumps(result.to_json(), indent=2) + "\n")


def write_text_atomically(path: Path, text: str) -> None:
    """``text`` to ``path`` atomically (``core.files.atomic_write_text``, under the hidden
    temporary name ``.NAME.tmp``): a reader, or a machine that lost power, sees the old file or
    the new one, never half of one. A failure to write raises LongnetError naming ``path``."""
    path = Path(path)
    try:
        atomic_write_text(path, text, hidden=True)
    except OSError as err:
        raise LongnetError(f"{path}: cannot write: {err.strerror or one_line(err)}") from err


def plot(result: EvalResult, path: Path) -> None:
    """Perplexity against position (bucket midpoints, log axis), one line per (run, context)."""
    if not plot_available():
        raise InputError("--plot needs matplotlib: pip install 'longnet-cli[plot]'")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    several = len(result.runs) > 1
    figure, axes = plt.subplots(figsize=(8, 5) if several else (7, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    try:
        for index, run in enumerate(result.runs):
            for order, report in enumerate(run.reports):
                points = [
                    ((b.start + b.end) / 2, b.stats.ppl) for b in report.buckets if b.stats.tokens
                ]
                if not points:
                    continue
                context = f"context {format_length(report.context)}"
                label = f"{run.label}, {context}" if several else context
                xs, ys = zip(*points)
                style = {}
                if several:
                    style["color"] = colors[index % len(colors)]
                    style["linestyle"] = LINE_STYLES[order % len(LINE_STYLES)]
                axes.plot(xs, ys, marker="o", label=label, **style)
        axes.set_xscale("log")
        axes.set_xlabel("position in the sequence (tokens, bucket midpoint)")
        axes.set_ylabel("perplexity")
        split = SPLIT_WORDS[result.split]
        if several:
            title = f"{len(result.runs)} runs on {Path(result.data).name} ({split} documents)"
        else:
            title = f"{Path(result.checkpoint).name} on {Path(result.data).name} ({split})"
        axes.set_title(title)
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(fontsize="small" if several else None)
        figure.tight_layout()
        figure.savefig(path, dpi=120)
    finally:
        plt.close(figure)


def table_lines(result: EvalResult) -> list[str]:
    """The stdout report (see the module docstring)."""
    lines: list[str] = []
    if len(result.runs) == 1:
        run = result.runs[0]
        lines += _bucket_tables(result, run)
        if len(run.reports) > 1:
            lines += _final_table(run)
        lines.append(_reach_line(run))
        lines.append("")
    else:
        lines += _comparison(result)
        for run in result.runs:
            lines.append(f"== {run.label}, step {run.step:,}, reach {format_length(run.reach)}")
            lines += _bucket_tables(result, run)
    if result.runs[0].probe is not None:
        lines += _probe_table(result)
    for run in result.runs:
        who = f"{run.run}: " if len(result.runs) > 1 else ""
        lines.append(
            f"{who}{run.tokens_per_s:,.0f} tokens/s ({run.model_seconds:.1f} s in the model)"
        )
    lines.append(f"peak memory {result.peak_memory_bytes / 2**30:.2f} GiB")
    return lines


def _bucket_tables(result: EvalResult, run: RunResult) -> list[str]:
    lines = []
    documents = _count(result.documents, f"{SPLIT_WORDS[result.split]} document")
    for report in run.reports:
        overall = report.overall
        lines.append(
            f"context {format_length(report.context)}: {documents}, "
            f"{_count(report.sequences, 'sequence')}, {overall.tokens:,} tokens scored"
        )
        lines.append(_HEADER)
        for bucket in report.buckets:
            span = f"{format_length(bucket.start)}-{format_length(bucket.end)}"
            lines.append(_row(span, bucket.stats))
        lines.append(_row("overall", overall))
        lines.append("")
    return lines


def _final_table(run: RunResult) -> list[str]:
    last = run.reports[0].context - 1
    lines = [
        f"final tokens: the same last {last:,} positions of each span, scored with more and "
        "more preceding context",
        _HEADER.replace("positions", "context  "),
    ]
    for report in run.reports:
        marker = "*" if report.context > run.reach else ""
        lines.append(_row(format_length(report.context) + marker, report.final))
    if any(report.context > run.reach for report in run.reports):
        lines.append(_beyond_reach_note())
    lines.append("")
    return lines


def _reach_line(run: RunResult) -> str:
    reach = format_length(run.reach)
    return (
        f"reach: {reach} tokens (the longest segment: a token reads only inside its block of "
        f"{reach} tokens)"
    )


def _comparison(result: EvalResult) -> list[str]:
    """A row per run, a column per context: perplexity over the same final tokens."""
    first = result.runs[0].reports[0]
    documents = _count(result.documents, SPLIT_WORDS[result.split] + " document")
    lines = [
        f"perplexity on the same final tokens (the last {first.context - 1:,} positions of each "
        f"span: {first.final.tokens:,} tokens of {documents} of {result.data}) with more and "
        "more preceding context"
    ]
    header = ["run", "recipe", "step", "reach"] + [format_length(c) for c in result.contexts]
    rows = [header]
    beyond = False
    for run in result.runs:
        cells = [run.run, run.recipe or "-", f"{run.step:,}", format_length(run.reach)]
        for report in run.reports:
            marker = "*" if report.context > run.reach else ""
            beyond = beyond or bool(marker)
            cells.append(_number(report.final.ppl, 2) + marker)
        rows.append(cells)
    lines += _aligned(rows, left=2)
    if beyond:
        lines.append(_beyond_reach_note())
    lines.append("")
    return lines


def _probe_table(result: EvalResult) -> list[str]:
    """A row per run, a column per distance: the copy ratio, then the document counts."""
    distances = [figure.distance for figure in result.runs[0].probe]
    lines = [
        "copy probe: loss on the second copy of a span / loss on the first, the copies d tokens "
        "apart (1.00: no gain from having read it d tokens earlier)"
    ]
    rows = [["run", *(f"d={format_length(d)}" for d in distances)]]
    beyond = False
    for run in result.runs:
        cells = [run.run]
        for figure in run.probe:
            marker = "" if figure.within_reach else "*"
            beyond = beyond or bool(marker)
            cells.append(_number(figure.ratio, 3) + marker)
        rows.append(cells)
    rows.append(["documents", *(f"{figure.documents:,}" for figure in result.runs[0].probe)])
    lines += _aligned(rows, left=1)
    if beyond:
        lines.append(
            "* 2d > the model's reach: the two copies are not in one block of its reach, so the "
            "figure cannot show reading back"
        )
    lines.append("")
    return lines


def _beyond_reach_note() -> str:
    return (
        "* context beyond the model's reach: figures of independent blocks of its reach, "
        "not of reading that far back"
    )


def _aligned(rows: list[list[str]], left: int) -> list[str]:
    """Rows as columns: the first ``left`` left-aligned, the others right-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(
            cell.ljust(width) if i < left else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths))
        ).rstrip()
        for row in rows
    ]


_HEADER = f"{'positions':<14}{'tokens':>12}{'loss':>9}{'ppl':>11}{'bpb':>8}"


def _count(number: int, noun: str) -> str:
    return f"{number:,} {noun}{'' if number == 1 else 's'}"


def _number(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _row(label: str, stats: Stats) -> str:
    def number(value: float | None, width: int, digits: int) -> str:
        return f"{'-':>{width}}" if value is None else f"{value:>{width}.{digits}f}"

    return (
        f"{label:<14}{stats.tokens:>12,}{number(stats.loss, 9, 4)}{number(stats.ppl, 11, 2)}"
        f"{number(stats.bpb, 8, 4)}"
    )

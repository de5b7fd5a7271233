"""``longnet eval``: perplexity by position over whole documents, at one or several contexts."""

from __future__ import annotations

import json
from pathlib import Path

import click

from longnet_cli.cli.common import (
    CONTEXT,
    LengthParam,
    data_option,
    device_option,
    file_path,
    json_file_option,
    precision_option,
    quiet_flag,
    runs_dir_option,
)


class LengthsParam(click.ParamType):
    """A comma list of lengths with K/M suffixes: 4K,64K,1M."""

    name = "LENGTHS"

    def convert(self, value, param, ctx):
        from longnet_cli.core.lengths import parse_lengths

        if isinstance(value, list):
            return value
        try:
            lengths = parse_lengths(value)
        except ValueError as err:
            self.fail(str(err), param, ctx)
        if not lengths:
            self.fail(f"expected lengths such as 4K,64K,1M, got {value!r}", param, ctx)
        return lengths


@click.command("eval", context_settings=CONTEXT)
@click.argument(
    "checkpoints", nargs=-1, type=click.Path(path_type=Path), metavar="[RUN_DIR|CHECKPOINT]..."
)
@data_option(
    "Tokenized corpus to score (default: the first run's recipe eval.data, "
    "data.eval_shards, else data.shards)."
)
@click.option(
    "--split",
    type=click.Choice(["heldout", "train", "all"]),
    default="heldout",
    show_default=True,
    help="Which documents of the corpus to score. A corpus without held-out documents is "
    "scored on its training documents, with a warning.",
)
@click.option(
    "--context",
    "contexts",
    type=LengthsParam(),
    help="Tokens per sequence, e.g. 1M; several (4K,64K,1M) score the same final tokens with "
    "more and more preceding context. Default: the runs' train.seq_len (required when it "
    "differs between runs).",
)
@click.option(
    "--docs", type=click.IntRange(min=1), help="Score only the first N documents of the split."
)
@click.option(
    "--min-tokens",
    type=LengthParam(),
    help="Score only documents of at least this many tokens, e.g. 8K; shorter ones are skipped "
    "and counted. Default: the largest context when several are given, else 2.",
)
@click.option(
    "--windows",
    is_flag=True,
    help="Score documents longer than the context whole, in consecutive non-overlapping "
    "windows (default: only their first window).",
)
@click.option(
    "--buckets",
    type=LengthsParam(),
    help="Position bucket boundaries, e.g. 1K,2K,8K (default: powers of two from 1K).",
)
@click.option(
    "--probe",
    type=click.Choice(["copy"]),
    help="Also run a probe. copy: feed the first d tokens of each document twice in a row and "
    "report loss(second copy) / loss(first copy) for each of --distances.",
)
@click.option(
    "--distances",
    type=LengthsParam(),
    default="128,512,2K,8K,16K",  # evaluate.probe.DEFAULT_DISTANCES
    show_default=True,
    help="Span lengths d of the copy probe (the copies are d tokens apart).",
)
@json_file_option("Write the report as JSON to FILE; '-' prints it on stdout instead of the table.")
@click.option(
    "--plot",
    "plot_file",
    type=file_path(),
    help="Write a PNG of perplexity against position, one line per run and context (needs the "
    "plot extra: matplotlib).",
)
@runs_dir_option()
@device_option("Torch device, e.g. cpu or cuda:0 (default: cuda when available).")
@precision_option(
    "Score under this precision (bf16/fp16: autocast, the loss in float32). Default: each "
    "run's train.precision (fp16 on a CPU: fp32)."
)
@click.option(
    "--compile",
    "compile_blocks",
    is_flag=True,
    help="torch.compile each block first (as train.compile; the first documents of each "
    "length pay for compiling).",
)
@quiet_flag("No progress bar and no notes on stderr (warnings stay).")
def eval_command(
    checkpoints, data, split, contexts, docs, min_tokens, windows, buckets, probe, distances,
    json_file, plot_file, runs_dir, device, precision, compile_blocks, quiet,
) -> None:  # fmt: skip
    """Score documents as single long sequences and report the loss by position.

    Each document is ONE sequence of up to --context tokens (K = 1024, M = 1024^2), scored
    with the model's chunked loss under inference mode. Position p is the index of the
    predicted token in its sequence (1 .. context-1). Per position bucket and overall: scored
    tokens, mean loss (nats), perplexity and bits per byte of source text; token-weighted.
    Held-out documents by default (--split).

    Several runs (RUN_A RUN_B ...) are scored on the same documents and the same final tokens
    and shown side by side: a row per run, a column per context. A model reads only inside
    blocks of its reach (its longest segment); a warning says when a context exceeds it.

    With no RUN_DIR|CHECKPOINT: the latest checkpoint of the most recent run under --runs-dir.
    Exit code 2 for a missing checkpoint, runs with different tokenizers or (without
    --context) different train.seq_len, a corpus failing verification or tokenized with
    another tokenizer, and bad option values.
    """
    from longnet_cli.core.errors import InputError
    from longnet_cli.evaluate.report import plot, table_lines, write_json
    from longnet_cli.evaluate.stage import EvalOptions, evaluate, plot_available

    if plot_file is not None and not plot_available():
        raise InputError("--plot needs matplotlib: pip install 'longnet-cli[plot]'")
    options = EvalOptions(
        checkpoints=list(checkpoints),
        data=data,
        split=split,
        contexts=contexts or [],
        docs=docs,
        min_tokens=min_tokens,
        windows=windows,
        buckets=buckets,
        probe=probe,
        distances=distances,
        runs_dir=runs_dir,
        device=device,
        precision=precision,
        compile=compile_blocks,
        progress=not quiet,
    )
    result = evaluate(
        options,
        on_choice=None if quiet else _choice,
        on_note=None if quiet else _note,
        on_warning=_warning,
    )
    if json_file == "-":
        click.echo(json.dumps(result.to_json(), indent=2))
    else:
        click.echo("\n".join(table_lines(result)))
        if json_file:
            write_json(result, Path(json_file))
    if plot_file is not None:
        plot(result, plot_file)


def _choice(message: str) -> None:
    click.echo(f"using {message}", err=True)


def _note(message: str) -> None:
    click.echo(message, err=True)


def _warning(message: str) -> None:
    click.echo(f"warning: {message}", err=True)

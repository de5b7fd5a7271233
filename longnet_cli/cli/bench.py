"""``longnet bench``: measure speed on this machine (numbers, not tests)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from longnet_cli.cli.common import (
    CONTEXT,
    branch_options,
    device_option,
    dtype_option,
    exclude_option,
    existing_tokenizer_option,
    file_path,
    head_options,
    int_list,
    json_flag,
    recipe_argument,
    repeats_option,
    set_option,
    shown_option,
    workers_option,
)
from longnet_cli.core.errors import InputError
from longnet_cli.core.lengths import format_length, parse_lengths
from longnet_cli.model.config import BACKENDS


@click.group(context_settings=CONTEXT)
def bench() -> None:
    """Measure speed on this machine (prints numbers; tests live elsewhere)."""


@bench.command("attention", context_settings=CONTEXT)
@shown_option(
    "--lengths",
    default="4K..1M",
    help="Sequence lengths: a doubling range LOW..HIGH or a comma list (4K,64K,1M).",
)
@head_options()
@branch_options(
    "2048,4096,8192,16384",
    "1,2,4,8",
    segments_help="Segment lengths w_i, comma-separated.",
    rates_help="Dilation rates r_i, comma-separated (one per segment length).",
)
@click.option("--causal/--no-causal", default=True, show_default=True)
@dtype_option()
@shown_option(
    "--backend",
    type=click.Choice(BACKENDS),
    default="auto",
    help="Attention kernel for dilated attention.",
)
@device_option()
@shown_option(
    "--mode",
    "modes",
    type=click.Choice(["fwd", "fwd+bwd", "both"]),
    default="both",
    help="Forward only, forward+backward, or both.",
)
@shown_option(
    "--dense-max",
    default="32K",
    help="Longest length at which dense SDPA also runs (its time grows as N^2).",
)
@repeats_option(3, help="Timed runs per measurement (best is kept), after one warm-up.")
@json_flag()
def bench_attention_command(lengths, heads, dim_head, segments, rates, causal, dtype, backend,
                            device, modes, dense_max, repeats, as_json) -> None:  # fmt: skip
    """Tokens/s and attained GFLOP/s of dilated attention beside dense SDPA.

    Stops before a length whose memory would not fit. The summary gives dilated/dense GFLOP/s
    where both ran, and time per token relative to the first length >= the longest segment
    (1.0 means perfectly linear cost).
    """
    import torch

    from longnet_cli.bench.attention import AttentionBenchConfig, bench_attention, summarize
    from longnet_cli.runtime import keep_freed_memory, resolve_device

    try:
        lengths_list = parse_lengths(lengths)
        dense_limit = parse_lengths(dense_max)[0]
    except ValueError as err:
        raise click.BadParameter(str(err)) from None
    segment_list, rate_list = int_list(segments, "--segments"), int_list(rates, "--rates")
    if len(segment_list) != len(rate_list):
        raise click.BadParameter("--segments and --rates need the same number of values")
    device = device or str(resolve_device(None))
    keep_freed_memory()
    cfg = AttentionBenchConfig(
        lengths=lengths_list, heads=heads, dim_head=dim_head, segment_lengths=segment_list,
        dilation_rates=rate_list, causal=causal, dtype=dtype, backend=backend, device=device,
        modes=["fwd", "fwd+bwd"] if modes == "both" else [modes], dense_max=dense_limit,
        repeats=repeats,
    )  # fmt: skip
    header = f"{'N':>6} {'impl':>8} {'mode':>8} {'ms':>10} {'tokens/s':>12} {'GFLOP/s':>9}"
    click.echo(
        f"# {device} {dtype} H={heads} D={dim_head} w={segment_list} r={rate_list} "
        f"causal={causal} threads={torch.get_num_threads()}",
        err=as_json,
    )
    click.echo(header, err=as_json)

    def show(row):
        click.echo(
            f"{format_length(row.n):>6} {row.impl:>8} {row.mode:>8} {row.seconds * 1e3:>10.1f} "
            f"{row.tokens_per_s:>12.0f} {row.gflops:>9.1f}",
            err=as_json,
        )

    try:
        rows = bench_attention(cfg, on_row=show)
    except ValueError as err:
        raise InputError(str(err)) from None
    summary = summarize(rows, cfg)
    if as_json:
        config = {k: list(v) if isinstance(v, list | tuple) else v for k, v in vars(cfg).items()}
        click.echo(json.dumps({"config": config, "rows": [r.to_dict() for r in rows],
                               "summary": summary}, indent=2))  # fmt: skip
        return
    for key, value in summary["dilated_over_dense_gflops"].items():
        click.echo(f"dilated/dense GFLOP/s {key}: {value:.2f}")
    reference = summary["reference_length"]
    for key, value in summary["time_per_token_vs_reference"].items():
        click.echo(f"time/token {key} vs {format_length(reference)}: {value:.2f}x")


@bench.command("tokenize", context_settings=CONTEXT)
@click.argument("paths", nargs=-1, type=click.Path(exists=True, path_type=Path))
@existing_tokenizer_option("Existing SentencePiece model (default: train one first, not timed).")
@workers_option(2)
@exclude_option("Passed to longnet tokenize.", default=("site-packages",))
@repeats_option(2)
@json_flag()
def bench_tokenize_command(paths, tokenizer, workers, exclude, repeats, as_json) -> None:
    """Wall time of `longnet tokenize` beside a plain single-threaded encode loop.

    PATHS default to this interpreter's standard library source tree (about 30 MB of code).
    Target: ratio <= 1.0 (parallel encoding pays for reading, hashing and writing).
    """
    from longnet_cli.bench.tokenize import bench_tokenize
    from longnet_cli.data.sources import stdlib_path

    corpus = list(paths) or [stdlib_path()]
    result = bench_tokenize(corpus, tokenizer=tokenizer, workers=workers, exclude=list(exclude),
                            repeats=repeats)  # fmt: skip
    report = result.to_dict()
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(f"corpus: {', '.join(report['paths'])}: {result.documents:,} documents, "
               f"{result.bytes / 1e6:.1f} MB; workers {workers}")  # fmt: skip
    click.echo(f"longnet tokenize: {result.command_seconds:6.2f} s  "
               f"{report['command_mb_per_s']:6.2f} MB/s  "
               f"{report['command_tokens_per_s']:>12,.0f} tokens/s  "
               f"peak RSS {result.command_peak_rss_bytes / 2**20:,.0f} MiB")  # fmt: skip
    click.echo(f"plain encode loop: {result.baseline_seconds:5.2f} s  "
               f"{report['baseline_mb_per_s']:6.2f} MB/s  "
               f"{report['baseline_tokens_per_s']:>12,.0f} tokens/s")  # fmt: skip
    click.echo(f"ratio (command / loop): {result.ratio:.2f}x")


@bench.command("train", context_settings=CONTEXT)
@recipe_argument()
@set_option("Override recipe keys, as for longnet train.")
@click.option(
    "--vocab-size",
    type=click.IntRange(min=2),
    help="Vocabulary (default: model.vocab_size, else the recipe's corpus, else 8192).",
)
@shown_option(
    "--steps",
    default=3,
    type=click.IntRange(min=1),
    help="Timed optimizer steps (best is kept), after one warm-up step.",
)
@click.option(
    "--compare",
    is_flag=True,
    help="Eager and compiled, fp32 and bf16 autocast, side by side in one run, with the loss "
    "each reaches after the same steps (the recipe's corpus windows where it exists).",
)
@click.option(
    "--all-settings", "every", is_flag=True,
    help="With --compare: train bf16 too where its matmul peak is below fp32's (it is skipped "
    "there by default: it can only be slower, often by far).",
)  # fmt: skip
@json_flag()
def bench_train_command(recipe, overrides, vocab_size, steps, compare, every, as_json) -> None:
    """Tokens/s of RECIPE's training step and its fraction of this machine's matmul peak.

    Model FLOPs per token (6 per weight a token passes through, plus the dilated attention's
    own FLOPs) times tokens/s, over the fp32 or bf16 matmul peak measured in the same run.
    Uses random tokens: no corpus needed. With --compare: every setting (eager fp32, compiled
    fp32, bf16 eager and compiled), interleaved step by step, and which to choose here.
    """
    from longnet_cli.bench.train import bench_compare, bench_train
    from longnet_cli.config import load_recipe

    loaded = load_recipe(recipe, list(overrides))
    vocab_size = vocab_size or loaded.model.vocab_size or _corpus_vocab(loaded) or 8192
    if compare:
        compared = bench_compare(loaded, vocab_size, steps=steps, every=every)
        if as_json:
            click.echo(json.dumps(compared.to_dict(), indent=2))
        else:
            _show_comparison(recipe, compared, vocab_size)
        return
    result = bench_train(loaded, vocab_size, steps=steps)
    for warning in result.warnings:
        click.echo(warning, err=True)
    report = result.to_dict()
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    peaks = ", ".join(f"{k} {v:.0f}" for k, v in result.matmul_peak_gflops.items())
    click.echo(
        f"{recipe}: {result.parameters / 1e6:.2f}M parameters, seq_len {result.seq_len}, "
        f"{result.precision}{' compiled' if result.compiled else ''}, {result.device}, "
        f"{result.threads} threads, vocab {vocab_size}\n"
        f"step {result.seconds_per_step:.2f} s: {result.tokens_per_s:,.0f} tokens/s, "
        f"{result.flops_per_token / 1e6:.1f} MFLOP/token -> {result.model_gflops:.1f} GFLOP/s\n"
        f"matmul peak (GFLOP/s): {peaks}\n"
        f"fraction of {result.precision} peak: {result.fraction_of_peak:.2f}; "
        f"peak RSS {result.peak_rss_bytes / 2**20:,.0f} MiB"
    )


def _show_comparison(recipe, result, vocab_size: int) -> None:
    """``bench train --compare``'s table: one row per setting, then the choice."""
    peaks = ", ".join(f"{k} {v:,.0f}" for k, v in result.matmul_peak_gflops.items())
    click.echo(
        f"{recipe}: {result.parameters / 1e6:.2f}M parameters, seq_len {result.seq_len}, "
        f"{result.device}, {result.threads} threads, vocab {vocab_size}, {result.steps} steps "
        f"on {result.data} (the first untimed)\nmatmul peak (GFLOP/s): {peaks}"
    )
    click.echo(f"{'setting':<14} {'tokens/s':>9} {'vs fp32':>7} {'GFLOP/s':>8} "
               f"{'of peak':>7} {'loss':>8} {'1st step':>8}")  # fmt: skip
    for s in result.settings:
        click.echo(
            f"{s.name:<14} {s.tokens_per_s:>9,.0f} {s.speedup:>6.2f}x {s.model_gflops:>8.1f} "
            f"{s.fraction_of_peak:>7.3f} {s.loss:>8.4f} {s.first_step_s:>7.1f}s"
        )
    for line in result.skipped:
        click.echo(line)
    chosen = result.chosen
    click.echo(
        f"fastest within 1% of eager fp32's loss: {chosen.name} "
        f"(train.precision: {chosen.precision}, train.compile: {str(chosen.compiled).lower()})"
    )


def _corpus_vocab(recipe) -> int | None:
    """The vocabulary of the recipe's corpus, when it exists."""
    from longnet_cli.data.format.errors import CorpusError
    from longnet_cli.data.format.manifest import read_manifest

    try:
        return read_manifest(Path(recipe.data.shards))["vocab_size"]
    except CorpusError:
        return None


@bench.command("parallel", context_settings=CONTEXT)
@shown_option(
    "--measure/--no-measure",
    default=True,
    help="Run real gloo process groups on this CPU.",
)
@shown_option(
    "--processes",
    default="1,2,4",
    help="World sizes to measure, comma-separated.",
)
@shown_option(
    "--length",
    "seq_len",
    default="64K",
    help="Sequence length of the measured layer.",
)
@head_options()
@branch_options(
    "2048,8192,32768,65536",
    "1,4,16,32",
    segments_help="Segment lengths of the measured layer (the longest spans all ranks).",
)
@shown_option(
    "--table/--no-table",
    default=True,
    help="Print planned per-GPU memory and communication for --recipe.",
)
@shown_option(
    "--recipe",
    type=file_path(exists=True),
    default=Path("recipes/paper_base.yaml"),
)
@json_flag()
def bench_parallel_command(
    measure, processes, seq_len, heads, dim_head, segments, rates, table, recipe, as_json
) -> None:
    """Sequence parallelism: measured per-rank memory, traffic and speed; planned GPU costs.

    The table covers 1M, 16M, 256M and 1B-token sequences on 8 ... 1024 GPUs (bf16), for the
    recipe's model as it is, and with its segments extended geometrically up to the whole
    sequence (the LongNet paper's setting, where every branch keeps w/r = 2048 tokens). A
    second table gives per-GPU memory with and without parallel.shard: fsdp for the recipe's
    model and 1.3B and 2.7B ones at 32K, 256K and 1M tokens on 8, 64 and 256 GPUs.
    """
    report: dict = {}
    if measure:
        from longnet_cli.bench.parallel import measure as run_measure

        worlds = int_list(processes, "--processes")
        try:
            length = parse_lengths(seq_len)[0]
        except ValueError as err:
            raise click.BadParameter(str(err), param_hint="--length") from None
        rows = run_measure(
            length,
            worlds,
            heads=heads,
            dim_head=dim_head,
            segment_lengths=int_list(segments, "--segments"),
            dilation_rates=int_list(rates, "--rates"),
        )
        report["measured"] = [r.to_dict() for r in rows]
        if not as_json:
            click.echo(
                f"# one layer, fwd+bwd, N={format_length(length)}, H={heads}, "
                f"D={dim_head}, causal, gloo, 1 thread per process"
            )
            click.echo(
                f"{'P':>3} {'rank':>4} {'seconds':>8} {'tokens/s':>10} "
                f"{'peak RSS MiB':>12} {'sent MiB':>9} {'recv MiB':>9}"
            )
            for r in rows:
                click.echo(
                    f"{r.world:>3} {r.rank:>4} {r.seconds:>8.2f} "
                    f"{r.seq_len / r.seconds:>10,.0f} {r.peak_rss_bytes / 2**20:>12,.0f} "
                    f"{r.sent_bytes / 2**20:>9.2f} {r.received_bytes / 2**20:>9.2f}"
                )
    if table:
        report["planned"] = _planned_table(recipe, as_json)
        report["sharding"] = _sharding_table(recipe, as_json)
    if as_json:
        click.echo(json.dumps(report, indent=2))


def _planned_table(recipe_path: Path, quiet: bool) -> list[dict]:
    """Per-GPU memory and communication of the recipe's model on 8 ... 1024 GPUs, printed
    unless ``quiet``; the rows for the JSON report."""
    from longnet_cli.bench.parallel import plan_recipe

    parameters, tables = plan_recipe(recipe_path)
    rows = []
    for label, costs in tables.items():
        if not quiet:
            click.echo(
                f"\n# {recipe_path.name} ({parameters / 1e6:.0f}M parameters), "
                f"segments {label}; bf16, activation checkpointing; per GPU, worst rank"
            )
            click.echo(
                f"{'N':>5} {'GPUs':>5} {'tokens/GPU':>10} {'memory GB':>10} "
                f"{'comm MB/layer':>13} {'fits 80 GB':>10}"
            )
        for cost in costs:
            rows.append({"segments": label, **cost.to_dict()})
            if not quiet:
                click.echo(
                    f"{format_length(cost.seq_len):>5} {cost.world:>5} "
                    f"{format_length(cost.chunk):>10} {cost.memory_bytes / 1e9:>10.1f} "
                    f"{cost.communication_bytes / 1e6:>13.1f} "
                    f"{'yes' if cost.fits() else 'no':>10}"
                )
    return rows


def _sharding_table(recipe_path: Path, quiet: bool) -> list[dict]:
    """Per-GPU memory with and without ``parallel.shard: fsdp`` of the recipe's model and two
    larger ones, printed unless ``quiet``; the rows for the JSON report."""
    from longnet_cli.bench.parallel import plan_sharding

    costs = plan_sharding(recipe_path)
    if not quiet:
        click.echo(
            "\n# parallel.shard none vs fsdp: per-GPU memory GB, one sequence over all GPUs; "
            "bf16, activation checkpointing; worst rank"
        )
        click.echo(f"{'model':>10} {'params':>7} {'N':>5} {'GPUs':>5} {'none GB':>8} "
                   f"{'fsdp GB':>8} {'fits 80 GB':>10}")  # fmt: skip
    for cost in costs:
        if not quiet:
            row = cost.to_dict()
            fits = "/".join("yes" if row[k] else "no"
                            for k in ("fits_80gb_unsharded", "fits_80gb_sharded"))  # fmt: skip
            click.echo(
                f"{cost.model:>10} {cost.parameters / 1e9:>6.2f}B {format_length(cost.seq_len):>5}"
                f" {cost.world:>5} {cost.unsharded_bytes / 1e9:>8.1f} "
                f"{cost.sharded_bytes / 1e9:>8.1f} {fits:>10}"
            )
    return [cost.to_dict() for cost in costs]


@bench.command("generate", context_settings=CONTEXT)
@shown_option(
    "--lengths",
    default="9192,66536,1047576",
    help="Prompt lengths (default 8K + 1000, 64K + 1000, 1M - 1000), comma-separated.",
)
@click.option(
    "--new-tokens", default=64, show_default=True, type=click.IntRange(min=1),
    help="Tokens decoded (greedy) after each prompt.",
)  # fmt: skip
@device_option()
@json_flag()
def bench_generate_command(lengths, new_tokens, device, as_json) -> None:
    """Decoding speed after prompts of 8K to 1M tokens, with the branch-bounded cache.

    A quickstart-shaped model (random weights) whose branches reach 1M tokens with 2,048 keys
    each; per prompt: prefill and decode tokens/s, the cache's bytes and what a dense model's
    cache would hold. Decode speed after the 1M prompt should be within 15% of after 8K.
    """
    from longnet_cli.bench.generate import MODEL, bench_generate
    from longnet_cli.core.memory import peak_rss_bytes

    try:
        prompt_lengths = tuple(parse_lengths(lengths))
    except ValueError as err:
        raise InputError(f"--lengths: {err}") from None
    rows = bench_generate(prompt_lengths, new_tokens, device, progress=not as_json)
    base = rows[0].decode_tokens_per_s
    if as_json:
        payload = {
            "model": {k: list(v) if isinstance(v, tuple) else v for k, v in MODEL.items()},
            "rows": [row.to_json() for row in rows],
            "decode_vs_first": [row.decode_tokens_per_s / base for row in rows],
            "peak_rss_bytes": peak_rss_bytes(),
        }
        click.echo(json.dumps(payload, indent=2))
        return
    segments = ", ".join(
        f"({format_length(w)}, {r})"
        for w, r in zip(MODEL["segment_lengths"], MODEL["dilation_rates"])
    )
    click.echo(
        f"# dim {MODEL['dim']}, {MODEL['depth']} blocks, {MODEL['heads']} heads of "
        f"{MODEL['dim_head']}; branches {segments}"
    )
    click.echo(
        f"{'prompt':>9} {'prefilled':>9} {'prefill tok/s':>13} {'decode tok/s':>12} "
        f"{'vs first':>8} {'cache MiB':>9} {'dense MiB':>9}"
    )
    for row in rows:
        click.echo(
            f"{row.prompt_tokens:>9,} {row.prefill_tokens:>9,} {row.prefill_tokens_per_s:>13,.0f} "
            f"{row.decode_tokens_per_s:>12,.1f} {row.decode_tokens_per_s / base:>8.2f} "
            f"{row.cache_bytes / 2**20:>9.1f} {row.dense_cache_bytes / 2**20:>9.1f}"
        )

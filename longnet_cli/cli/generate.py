"""``longnet generate``: continue a prompt with a trained model, streaming the text."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from longnet_cli.cli.common import (
    CONTEXT,
    LengthParam,
    checkpoint_tokenizer_option,
    data_option,
    device_option,
    file_path,
    json_file_option,
    quiet_flag,
    runs_dir_option,
)


@click.command("generate", context_settings=CONTEXT)
@click.argument(
    "checkpoint", required=False, type=click.Path(path_type=Path), metavar="[RUN_DIR|CHECKPOINT]"
)
@click.option("--prompt", metavar="TEXT", help="The text to continue.")
@click.option("--prompt-file", type=file_path(), help="Continue the text of FILE (UTF-8).")
@click.option(
    "--doc",
    metavar="ID",
    help="Continue a corpus document: its id, 'heldout' (the first held-out document) or "
    "'heldout:K' (the K-th, from 0).",
)
@data_option("The tokenized corpus of --doc (default: the run's data.shards).")
@click.option(
    "--prompt-tokens",
    type=LengthParam(),
    help="Keep only the first N tokens of the prompt, e.g. 1500 or 64K.",
)
@click.option("--max-new-tokens", type=LengthParam(), default="256", show_default=True)
@click.option(
    "--temperature",
    type=float,
    default=0.8,
    show_default=True,
    help="Sampling temperature; 0 is greedy.",
)
@click.option(
    "--top-k", type=int, default=0, show_default=True, help="Sample among the K likeliest (0: off)."
)
@click.option(
    "--top-p",
    type=float,
    default=1.0,
    show_default=True,
    help="Sample among the likeliest tokens holding probability P (1: off).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Sampling seed.")
@click.option("--stop", metavar="TEXT", help="Stop before TEXT once it is generated.")
@device_option(
    "auto (CUDA with bf16 autocast when available, else CPU), cpu, cuda, cuda:1.", default="auto"
)
@checkpoint_tokenizer_option("use")
@json_file_option(
    "Also write the result (text, token ids, figures) as JSON to FILE; '-' prints it on "
    "stdout instead of the streamed text."
)
@runs_dir_option()
@click.option(
    "--compile",
    "compile_model",
    is_flag=True,
    help="torch.compile what decoding runs per layer as modules (norms, feed-forward; the "
    "attention over the cache stays eager); the first tokens pay for compiling.",
)
@quiet_flag("No notes and figures on stderr.")
def generate_command(
    checkpoint, prompt, prompt_file, doc, data, prompt_tokens, max_new_tokens, temperature,
    top_k, top_p, seed, stop, device, tokenizer, json_file, runs_dir, compile_model, quiet,
) -> None:  # fmt: skip
    """Continue a prompt with a trained model and stream the continuation to stdout.

    The model decodes with a key/value cache bounded by its branches: per layer only the
    current segment's selected keys of each branch (at most sum_i heads * ceil(w_i / r_i)),
    whatever the prompt's length; the prompt is prefilled from the block of its last token on.
    The output is exactly the bytes the tokens encode (a partial UTF-8 character waits for its
    end). Stops at the end-of-document token, at --stop, or after --max-new-tokens. Greedy at
    --temperature 0; the same --seed gives the same text. Figures on stderr: prefill and
    decode tokens/s, cache bytes, peak memory.

    With no RUN_DIR|CHECKPOINT: the latest checkpoint of the most recent run under --runs-dir.
    Exit code 2 for a missing or empty prompt, an unknown document, a tokenizer that cannot be
    found or does not match the checkpoint, and bad option values.
    """
    from longnet_cli.generate import GenerateOptions, generate

    options = GenerateOptions(
        checkpoint=checkpoint, prompt=prompt, prompt_file=prompt_file, doc=doc, data=data,
        prompt_tokens=prompt_tokens, max_new_tokens=max_new_tokens, temperature=temperature,
        top_k=top_k, top_p=top_p, seed=seed, stop=stop, device=device, tokenizer=tokenizer,
        runs_dir=runs_dir, compile=compile_model,
    )  # fmt: skip
    to_stdout = json_file != "-"
    out = sys.stdout.buffer

    def write(data: bytes) -> None:
        if to_stdout and data:
            out.write(data)
            out.flush()

    def note(message: str) -> None:
        if not quiet or message.startswith("warning:"):
            click.echo(message, err=True)

    result = generate(options, on_bytes=write, on_note=note)
    if to_stdout:
        out.write(b"\n")
        out.flush()
    if not quiet:
        click.echo(
            f"prefill: {result.prefill_tokens:,} of {result.prompt_tokens:,} prompt tokens, "
            f"{result.prefill_tokens_per_s:,.0f} tokens/s; decode: {len(result.tokens):,} "
            f"tokens, {result.decode_tokens_per_s:,.1f} tokens/s ({result.stop_reason}); cache "
            f"{_bytes(result.cache_bytes)} ({result.cache_keys_per_layer:,} keys per layer, at "
            f"most {result.cache_bound_per_layer:,}; a dense model's: "
            f"{_bytes(result.dense_cache_bytes)}); peak memory {_bytes(result.peak_memory_bytes)}",
            err=True,
        )
    if json_file:
        payload = json.dumps(result.to_json(), indent=2)
        if json_file == "-":
            click.echo(payload)
        else:
            Path(json_file).write_text(payload + "\n")


def _bytes(count: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count} B"

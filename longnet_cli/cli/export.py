"""``longnet export``: a checkpoint as a Hugging Face-style model directory."""

from __future__ import annotations

import json
from pathlib import Path

import click

from longnet_cli.cli.common import (
    CONTEXT,
    checkpoint_tokenizer_option,
    force_flag,
    json_flag,
    quiet_flag,
)


@click.command("export", context_settings=CONTEXT)
@click.argument("checkpoint", type=click.Path(path_type=Path), metavar="RUN_DIR|CHECKPOINT")
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path),
    help="The directory to write (it must not exist or be empty, unless --force).",
)
@force_flag("Replace --out when it exists and is not empty.")
@checkpoint_tokenizer_option("ship")
@json_flag("what was written")
@quiet_flag("No summary on stderr.")
def export_command(
    checkpoint: Path, out: Path, force: bool, tokenizer: Path | None, as_json: bool, quiet: bool
) -> None:
    """Write RUN_DIR's latest checkpoint (or CHECKPOINT) as a Hugging Face-style model directory.

    --out gets config.json (every model key of the recipe, the vocabulary, the reach),
    model.safetensors, the SentencePiece tokenizer.model with tokenizer_config.json,
    generation_config.json, the modeling files and a README.md model card (the recipe, training
    steps and tokens, the corpus's counts, the latest held-out evaluation). With longnet's hf
    extra (pip install 'longnet-cli[hf]'), transformers loads it offline:
    AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True). longnet eval and longnet
    generate read it like a checkpoint.

    The directory is written beside --out and renamed into place when complete. Exit code 2
    when the source is not a checkpoint, its tokenizer cannot be found or does not match, or
    --out exists and is not empty (without --force).
    """
    from longnet_cli.export import export_model

    def note(message: str) -> None:
        if not quiet:
            click.echo(message, err=True)

    result = export_model(checkpoint, out, force=force, tokenizer=tokenizer, on_note=note)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
    if not quiet:
        replaced = " (replaced the old one)" if result.replaced else ""
        click.echo(
            f"exported step {result.step:,} of {result.checkpoint} to {result.out}{replaced}: "
            f"{result.parameters:,} parameters, {len(result.files)} files, "
            f"{result.bytes / (1 << 20):.1f} MiB",
            err=True,
        )

"""``longnet train``: pretrain a LongNet model from a YAML recipe, resumably."""

from __future__ import annotations

import json
from pathlib import Path

import click

from longnet_cli.commands.common import CONTEXT

DEFAULT_RUNS = Path("runs")


@click.command("train", context_settings=CONTEXT)
@click.argument("recipe", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--out",
    "-o",
    "run_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Run directory (default: runs/<recipe name>).",
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a recipe key, e.g. --set model.dim=256 --set train.steps=100 "
    "(values are YAML scalars or lists).",
)
@click.option(
    "--resume/--no-resume",
    default=True,
    show_default=True,
    help="Continue from the run's latest checkpoint; --no-resume starts over.",
)
@click.option("--force", is_flag=True, help="With --no-resume: overwrite an existing run.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
def train(recipe, run_dir, overrides, resume, force, quiet, as_json) -> None:
    """Train the model of RECIPE on its tokenized corpus, writing checkpoints and metrics.

    Running the same command again resumes from the latest complete checkpoint (a finished
    run does nothing). SIGTERM or Ctrl-C saves a checkpoint and stops. Multi-process:
    `accelerate launch --num_processes N -m longnet_cli train RECIPE` (add --cpu on a CPU).
    Writes RUN_DIR/metrics.jsonl (one JSON line per logged step) and
    RUN_DIR/checkpoints/step-NNNNNNN/.
    """
    from longnet_cli.recipes import load_recipe
    from longnet_cli.train import train as train_stage

    loaded = load_recipe(recipe, list(overrides))
    run_dir = run_dir or DEFAULT_RUNS / recipe.stem
    result = train_stage(loaded, run_dir, resume=resume, force=force, progress=not quiet)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
    elif result.status == "already-finished":
        click.echo(
            f"{run_dir}: already finished at step {result.final_step}; nothing to do "
            "(raise train.steps to continue, or --no-resume --force to start over)"
        )
    else:
        resumed = f" (resumed at step {result.start_step})" if result.start_step else ""
        click.echo(
            f"trained {run_dir} to step {result.final_step}{resumed}: loss "
            f"{result.loss:.4f}, {result.tokens_per_s:,.0f} tokens/s, "
            f"{result.seconds:.1f} s; checkpoint {result.checkpoint}"
        )

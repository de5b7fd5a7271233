"""``longnet train``: pretrain a LongNet model from a YAML recipe, resumably."""

from __future__ import annotations

import json
from pathlib import Path

import click

from longnet_cli.cli.common import (
    CONTEXT,
    directory_path,
    force_flag,
    json_flag,
    quiet_flag,
    recipe_argument,
    set_option,
)

DEFAULT_RUNS = Path("runs")


@click.command("train", context_settings=CONTEXT)
@recipe_argument()
@click.option(
    "--out",
    "-o",
    "run_dir",
    type=directory_path(),
    help="Run directory (default: runs/<recipe name>).",
)
@set_option(
    "Override a recipe key, e.g. --set model.dim=256 --set train.steps=100 "
    "(values are YAML scalars or lists)."
)
@click.option(
    "--resume/--no-resume",
    default=True,
    show_default=True,
    help="Continue from the run's latest checkpoint; --no-resume starts over.",
)
@force_flag("With --no-resume: overwrite an existing run.")
@click.option(
    "--strict-data",
    is_flag=True,
    help="Refuse to resume when the corpus content changed since the checkpoint (default: "
    "continue on it with a warning and a data_changed record in metrics.jsonl).",
)
@click.option(
    "--devices",
    default="auto",
    show_default=True,
    envvar="LONGNET_DEVICES",
    metavar="N|auto",
    help="Processes per node, one per device: auto = every visible GPU, or 1 without GPUs; "
    "N on a machine without GPUs starts N CPU (gloo) processes. Env: LONGNET_DEVICES.",
)
@click.option(
    "--nnodes",
    type=click.IntRange(min=1),
    help="Nodes in the run, one `longnet train` per node (default 1, or SLURM's step).",
)
@click.option(
    "--node-rank",
    type=click.IntRange(min=0),
    help="This node's index, 0 .. nnodes-1 (default 0, or SLURM_NODEID).",
)
@click.option(
    "--master-addr",
    metavar="HOST",
    help="Node 0's address, reachable from every node (default: MASTER_ADDR).",
)
@click.option(
    "--master-port",
    type=click.IntRange(min=1, max=65535),
    help="A free port on node 0 for the rendezvous (default: MASTER_PORT, else 29500).",
)
@quiet_flag()
@json_flag("the result")
def train(
    recipe,
    run_dir,
    overrides,
    resume,
    force,
    strict_data,
    devices,
    nnodes,
    node_rank,
    master_addr,
    master_port,
    quiet,
    as_json,
) -> None:
    """Train the model of RECIPE on its tokenized corpus, writing checkpoints and metrics.

    Running the same command again resumes from the latest complete checkpoint (a finished
    run does nothing) that verifies against its recorded hashes, saying which newer ones it
    skipped. A corpus whose content changed since that checkpoint (its shards' sha256s, not
    paths or times) is trained on with a warning and a data_changed record in metrics.jsonl;
    --strict-data refuses instead. SIGTERM or Ctrl-C stops at the next micro-step (a partial
    step is dropped), saves a checkpoint and exits 143 / 130. One process per device: the
    command starts them itself (--devices; world = devices x nodes =
    parallel.sequence x data-parallel degree), or runs as one of them under accelerate launch,
    torchrun or srun. --set parallel.shard=fsdp shards parameters, gradients and optimizer state
    over every process (torch's FSDP2); each process then writes its shards of a checkpoint.
    Several nodes: one `longnet train --nnodes N --node-rank I --master-addr HOST` per node, the
    run directory on a filesystem they share. Writes RUN_DIR/metrics.jsonl (one JSON line per
    logged step) and RUN_DIR/checkpoints/step-NNNNNNN/.
    """
    from longnet_cli.config import load_recipe
    from longnet_cli.train import launch

    loaded = load_recipe(recipe, list(overrides))
    run_dir = run_dir or DEFAULT_RUNS / recipe.stem
    if launch.under_launcher():
        launch.adopt_slurm_ranks()
        launch.worker_setup()
        _train_here(loaded, run_dir, resume, force, strict_data, quiet, as_json, worker=True)
        return
    plan = launch.plan_launch(
        loaded.parallel.sequence,
        launch.parse_devices(devices),
        gpus=launch.visible_gpus(),
        nnodes=nnodes,
        node_rank=node_rank,
        master_addr=master_addr,
        master_port=master_port,
    )
    if plan.in_process:
        _train_here(loaded, run_dir, resume, force, strict_data, quiet, as_json, worker=False)
        return
    from longnet_cli.train.trainer import check_inputs

    check_inputs(loaded)  # a bad corpus exits 2 here, once, before any worker starts
    worker_args = [str(recipe), "--out", str(run_dir)]
    worker_args += [f"--set={override}" for override in overrides]
    worker_args += [] if resume else ["--no-resume"]
    worker_args += ["--force"] * force + ["--strict-data"] * strict_data
    worker_args += ["--quiet"] * quiet + ["--json"] * as_json
    launch.launch(plan, worker_args, run_dir)


def _train_here(
    loaded, run_dir, resume, force, strict_data, quiet, as_json, *, worker: bool
) -> None:
    """Train in this process; only rank 0 shows the result. A worker reports a failure to its
    launcher (one line and the exit code); when that launcher is ``longnet train``, it prints
    the line once for all ranks and the worker only exits with the code."""
    import sys

    from longnet_cli.core.errors import LongnetError
    from longnet_cli.train import launch
    from longnet_cli.train.trainer import train as train_stage

    try:
        result = train_stage(
            loaded,
            run_dir,
            resume=resume,
            force=force,
            progress=not quiet,
            strict_data=strict_data,
        )
    except LongnetError as err:
        if worker:
            launch.report_error(f"error: {err}", err.exit_code)
            if launch.launched_by_longnet():
                sys.exit(err.exit_code)
        raise
    except Exception as err:
        if worker:
            launch.report_error(f"error: {type(err).__name__}: {err}", 1)
        raise
    if launch.global_rank() != 0:
        return
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
    elif result.status == "already-finished":
        click.echo(
            f"{run_dir}: already finished at step {result.final_step}; nothing to do "
            "(raise train.steps to continue, or --no-resume --force to start over)"
        )
    else:
        resumed = f" (resumed at step {result.start_step})" if result.start_step else ""
        compiled = (
            f" (blocks compiled in {result.compile_s:.1f} s, not counted)"
            if result.compile_s is not None
            else ""
        )
        click.echo(
            f"trained {run_dir} to step {result.final_step}{resumed}: loss "
            f"{result.loss:.4f}, {result.tokens_per_s:,.0f} tokens/s{compiled}, "
            f"{result.seconds:.1f} s; checkpoint {result.checkpoint}"
        )

"""``longnet train --devices N``: the command starts its own processes (torch.distributed's
elastic launcher, gloo on a CPU) and behaves as one process does: the losses of the
accelerate-launched equivalent, a layout that does not fit refused before any work, exit codes,
SIGTERM, a crashed worker, the run lock, two nodes on one machine, the shared-directory check,
and evaluation spread over the ranks."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers import (
    accelerate_launch,
    exit_code,
    metrics_of,
    train_recipe,
    wait_for,
    write_train_recipe,
)

from longnet_cli.core.errors import InputError
from longnet_cli.train.launch import LaunchPlan, plan_launch, under_launcher

ROOT = Path(__file__).resolve().parents[2]


def _command(*args: str, env_extra: dict | None = None) -> subprocess.Popen:
    """``longnet train ARGS --quiet`` as a user types it (this process is no launcher)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update({"OMP_NUM_THREADS": "1", **(env_extra or {})})
    return subprocess.Popen(
        [sys.executable, "-m", "longnet_cli", "train", *args, "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _run(*args: str, env_extra: dict | None = None, timeout: float = 300):
    process = _command(*args, env_extra=env_extra)
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------- the plan


def test_plan_auto_is_one_process_per_gpu_or_one_without():
    assert plan_launch(1, None, gpus=0, env={}) == LaunchPlan(1, device="cpu")
    assert plan_launch(2, None, gpus=4, env={}).nproc_per_node == 4
    assert plan_launch(2, 2, gpus=0, env={}) == LaunchPlan(2, device="cpu")
    assert plan_launch(1, 1, gpus=0, env={}).in_process
    two_nodes = plan_launch(4, 2, gpus=0, nnodes=2, node_rank=1, master_addr="n0", env={})
    assert (two_nodes.world_size, two_nodes.node_rank, two_nodes.master_port) == (4, 1, 29500)


def test_plan_refuses_a_layout_that_does_not_fit_naming_overrides_that_do():
    with pytest.raises(InputError) as refusal:
        plan_launch(8, None, gpus=0, env={})
    message = str(refusal.value)
    assert "--devices 8" in message and "--set parallel.sequence=1" in message
    with pytest.raises(InputError, match=r"--devices 2 .*parallel.sequence=1"):
        plan_launch(2, 3, gpus=0, env={})
    with pytest.raises(InputError, match=r"8 GPUs per node .*parallel.sequence=4"):
        plan_launch(8, None, gpus=4, env={})
    with pytest.raises(InputError, match="this machine has 4 GPU"):
        plan_launch(1, 8, gpus=4, env={})
    with pytest.raises(InputError, match="--master-addr"):
        plan_launch(1, 1, gpus=0, nnodes=2, env={})
    with pytest.raises(InputError, match="--node-rank"):
        plan_launch(1, 1, gpus=0, nnodes=2, node_rank=2, master_addr="n0", env={})


def test_launchers_are_recognised_and_srun_with_one_task_per_node_is_not_one():
    assert not under_launcher({})
    assert under_launcher({"LOCAL_RANK": "0", "WORLD_SIZE": "2", "RANK": "1"})  # torchrun
    assert under_launcher({"TORCHELASTIC_RUN_ID": "x"})
    assert under_launcher({"OMPI_COMM_WORLD_SIZE": "4"})
    per_gpu = {"SLURM_PROCID": "3", "SLURM_STEP_NUM_TASKS": "16", "SLURM_STEP_NUM_NODES": "2"}
    assert under_launcher(per_gpu)
    per_node = {**per_gpu, "SLURM_STEP_NUM_TASKS": "2", "SLURM_NODEID": "1", "MASTER_ADDR": "n0"}
    assert not under_launcher(per_node)  # one launcher per node: it starts the processes
    plan = plan_launch(2, 1, gpus=0, env=per_node)
    assert (plan.nnodes, plan.node_rank, plan.master_addr) == (2, 1, "n0")
    assert plan_launch(1, 1, gpus=0, env={"SLURM_PROCID": "0"}).nnodes == 1


def test_book_1m_on_a_cpu_machine_exits_2_before_any_work(tmp_path, capsys):
    run = tmp_path / "run"
    assert exit_code("train", str(ROOT / "recipes" / "book_1m.yaml"), "--out", str(run)) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "parallel.sequence is 8" in line
    assert "--devices 8" in line and "--set parallel.sequence=1" in line
    assert not run.exists()


# --------------------------------------------------------------------------- launched runs


def test_devices_2_gives_the_losses_of_accelerate_launch(corpus, tmp_path):
    """One command, two gloo processes, sequence parallel: the accelerate-launched run's losses."""
    recipe = write_train_recipe(tmp_path, corpus, train__steps=4, checkpoint__every=2)
    code, out, err = _run(
        str(recipe), "--out", str(tmp_path / "own"), "--devices", "2", "--set",
        "parallel.sequence=2",
    )  # fmt: skip
    assert code == 0, err
    assert out.count("trained") == 1 and "step 4" in out  # the summary of rank 0 only
    accelerate_launch(recipe, tmp_path / "accelerate", "--set", "parallel.sequence=2")
    own, accelerate = metrics_of(tmp_path / "own"), metrics_of(tmp_path / "accelerate")
    assert [r["step"] for r in own] == [1, 2, 3, 4]
    for a, b in zip(accelerate, own):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-6)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-5)
    state = json.loads((tmp_path / "own/checkpoints/step-0000004/state.json").read_text())
    assert (state["world_size"], state["sequence_parallel"], state["dp_size"]) == (2, 2, 1)
    assert not list((tmp_path / "own").glob(".shared-check-*"))  # the marker is cleaned up


def test_env_devices_and_a_layout_that_does_not_divide(corpus, tmp_path):
    recipe = write_train_recipe(tmp_path, corpus, train__steps=2)
    code, _, err = _run(
        str(recipe), "--out", str(tmp_path / "run"), "--set", "parallel.sequence=2",
        env_extra={"LONGNET_DEVICES": "3"},
    )  # fmt: skip
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "--devices 3" in err and "--devices 2" in err and "parallel.sequence=1" in err
    assert not (tmp_path / "run").exists()


def test_a_crashed_worker_stops_the_others_and_the_command_names_it(corpus, tmp_path):
    """Rank 1 raises at its third step: the command exits 1 naming rank 1 and its error."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import os\n"
        "if os.environ.get('RANK') == '1' and os.environ.get('LONGNET_LAUNCHER'):\n"
        "    import longnet_cli.train.loss as t\n"
        "    real, calls = t.LanguageModelLoss.forward, []\n"
        "    def forward(self, window):\n"
        "        calls.append(1)\n"
        "        if len(calls) > 4:\n"
        "            raise RuntimeError('boom on rank 1')\n"
        "        return real(self, window)\n"
        "    t.LanguageModelLoss.forward = forward\n"
    )
    recipe = write_train_recipe(tmp_path, corpus, train__steps=6)
    started = time.monotonic()
    code, out, err = _run(
        str(recipe), "--out", str(tmp_path / "run"), "--devices", "2",
        env_extra={"PYTHONPATH": os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")])},
    )  # fmt: skip
    assert code == 1, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: rank 1 failed: RuntimeError: boom on rank 1"), err
    assert time.monotonic() - started < 120 and out == ""
    assert not (tmp_path / "run" / "checkpoints" / "step-0000006").exists()


def test_sigterm_reaches_every_worker_they_save_and_the_command_exits_143(corpus, tmp_path):
    """The launcher holds the lock while its workers train; SIGTERM to it: every worker saves
    (an RNG file per rank), exit 143 with one line; the same command resumes to the end."""
    recipe = write_train_recipe(tmp_path, corpus, train__steps=400, checkpoint__every=1000)
    run = tmp_path / "run"
    process = _command(str(recipe), "--out", str(run), "--devices", "2")
    wait_for(run / "metrics.jsonl", process)
    assert f"pid={process.pid}" in (run / ".train.lock").read_text()  # the launcher holds it
    assert exit_code("train", str(recipe), "--out", str(run), "--quiet", "--devices", "2") == 75
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143, err
    (line,) = err.strip().splitlines()
    assert "stopped by SIGTERM" in line and "resume" in line
    (saved,) = (run / "checkpoints").iterdir()
    assert {"rng-rank0.pt", "rng-rank1.pt"} <= {p.name for p in saved.iterdir()}
    step = json.loads((saved / "state.json").read_text())["step"]
    assert 1 <= step < 400


def test_two_nodes_on_one_machine_match_one_process_and_spread_evaluation(corpus, tmp_path):
    """Two launchers on localhost (--nnodes 2, one process each) train as one process reading
    the same global batch; evaluation during training, spread over both ranks, gives the figures
    of the one process within float tolerance."""
    changes = {"train__steps": 4, "train__grad_accum": 1, "checkpoint__every": 4,
               "eval__every": 2, "eval__data": str(corpus), "eval__docs": 3,
               "eval__contexts": [32, 64]}  # fmt: skip
    one = write_train_recipe(tmp_path, corpus, **changes, train__micro_batch_size=2)
    assert exit_code("train", str(one), "--out", str(tmp_path / "one"), "--quiet") == 0
    two = tmp_path / "two.yaml"
    two.write_text(yaml.safe_dump(train_recipe(corpus, **changes, train__micro_batch_size=1)))
    port = str(_free_port())
    nodes = [
        _command(
            str(two), "--out", str(tmp_path / "two"), "--devices", "1", "--nnodes", "2",
            "--node-rank", str(rank), "--master-addr", "127.0.0.1", "--master-port", port,
        )
        for rank in (0, 1)
    ]  # fmt: skip
    results = [node.communicate(timeout=300) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], results
    assert "trained" in results[0][0] and results[1][0] == ""  # rank 0 (node 0) reports
    single, double = metrics_of(tmp_path / "one"), metrics_of(tmp_path / "two")
    losses = [(r["loss"], r["grad_norm"]) for r in single if "loss" in r]
    assert len(losses) == 4
    for (loss, norm), record in zip(losses, [r for r in double if "loss" in r]):
        assert record["loss"] == pytest.approx(loss, abs=1e-5)
        assert record["grad_norm"] == pytest.approx(norm, rel=1e-4)
    evals = [[r["eval"] for r in run if "eval" in r] for run in (single, double)]
    assert len(evals[0]) == len(evals[1]) == 2
    for a, b in zip(*evals):
        assert (b["split"], b["documents"]) == (a["split"], a["documents"]) == ("all", 3)
        for context in ("32", "64"):
            assert b["contexts"][context]["tokens"] == a["contexts"][context]["tokens"]
            for key in ("loss", "bpb", "ppl"):
                assert b["contexts"][context][key] == pytest.approx(
                    a["contexts"][context][key], rel=1e-4
                )
    state = json.loads((tmp_path / "two/checkpoints/step-0000004/state.json").read_text())
    assert state["world_size"] == 2 and state["dp_size"] == 2


def test_a_run_directory_other_nodes_cannot_see_exits_2(corpus, tmp_path):
    """Node 1 sees another directory at the run's path (as without a shared filesystem)."""
    recipe = write_train_recipe(tmp_path, corpus, train__steps=2)
    port = str(_free_port())
    nodes = [
        _command(
            str(recipe), "--out", str(tmp_path / out), "--devices", "1", "--nnodes", "2",
            "--node-rank", str(rank), "--master-addr", "127.0.0.1", "--master-port", port,
        )
        for rank, out in ((0, "run"), (1, "elsewhere"))
    ]  # fmt: skip
    results = [node.communicate(timeout=300) for node in nodes]
    assert [node.returncode for node in nodes] == [2, 2], results
    for _, err in results:
        (line,) = err.strip().splitlines()
        assert "must be on a filesystem every node shares" in line and "rank 1" in line
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_srun_with_one_task_per_device_gets_torch_ranks():
    from longnet_cli.train.launch import adopt_slurm_ranks

    env = {"SLURM_PROCID": "5", "SLURM_STEP_NUM_TASKS": "8", "SLURM_STEP_NUM_NODES": "2",
           "SLURM_LOCALID": "1", "MASTER_ADDR": "n0"}  # fmt: skip
    adopt_slurm_ranks(env)
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"], env["MASTER_PORT"]) == (
        "5", "8", "1", "29500"
    )  # fmt: skip
    with pytest.raises(InputError, match="MASTER_ADDR"):
        adopt_slurm_ranks({k: v for k, v in env.items() if k not in ("RANK", "MASTER_ADDR")})


def test_the_first_failure_is_the_cause_and_signals_keep_their_codes(tmp_path):
    from types import SimpleNamespace

    from longnet_cli.train.launch import _first_failure

    def failure(line, code, at, exitcode=1):
        data = {"message": line, "longnet": {"time": at, "exit_code": code}}
        return SimpleNamespace(error_file_data=data, exitcode=exitcode, timestamp=int(at))

    crash = _first_failure({
        0: failure("error: RuntimeError: Connection closed by peer", 1, 10.5),
        1: failure("error: RuntimeError: boom", 1, 10.2),
    })  # fmt: skip
    assert crash.exit_code == 1 and str(crash).startswith("rank 1 failed: RuntimeError: boom")
    killed = _first_failure({3: SimpleNamespace(error_file_data={}, exitcode=-9, timestamp=1)})
    assert killed.exit_code == 1 and "rank 3 failed: killed by SIGKILL" in str(killed)
    stopped = _first_failure({0: failure("error: stopped by SIGTERM after step 3", 143, 1.0)})
    assert (stopped.exit_code, str(stopped)) == (143, "stopped by SIGTERM after step 3")
    bad = _first_failure({0: failure("error: data.shards: not found", 2, 1.0)})
    assert (bad.exit_code, str(bad)) == (2, "data.shards: not found")


def test_signal_agreement_answers_one_boundary_later_without_waiting_for_the_device():
    """Several processes agree by an all-reduce on the CPU started at one boundary and read at
    the next (here a gloo group of one stands for the world): a signal recorded before boundary
    b stops every rank at b + 1; one process answers at once."""
    import torch.distributed as dist

    from longnet_cli.train.distributed import SignalAgreement

    alone = SignalAgreement(1)
    assert alone.agreed([]) == 0 and alone.agreed([15]) == 15 and alone.settle() == 0
    store = dist.HashStore()
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        agreement = SignalAgreement(2)  # as a rank of a world of several
        received: list[int] = []
        assert agreement.agreed(received) == 0
        received.append(signal.SIGTERM)
        assert agreement.agreed(received) == 0  # the flag posted before it arrived
        assert agreement.agreed(received) == signal.SIGTERM
        assert agreement.settle() == signal.SIGTERM  # the one in flight
        assert agreement.settle() == 0  # nothing in flight
    finally:
        dist.destroy_process_group()

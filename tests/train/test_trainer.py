"""``longnet train``: the loop, checkpoints, exact resume after SIGKILL, SIGTERM, refusals,
and data parallelism over two real processes (accelerate launch, gloo)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers import (
    MEASURED,
    STEPS,
    accelerate_launch,
    exit_code,
    metrics_of,
    train_recipe,
    wait_for,
    write_train_recipe,
)


def _train_subprocess(*args: str, env_extra: dict | None = None) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "longnet_cli", "train", *args, "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )


def _cpu_seconds(pid: int) -> float:
    """The CPU time a process has used (user + system, all threads): unlike wall time, it says
    how far the process got, however busy the machine is."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_train_logs_checkpoints_and_learns(reference_run):
    records = metrics_of(reference_run)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    for record in records:
        assert {"step", "loss", "lr", "grad_norm", "tokens_per_s", "elapsed_s"} <= set(record)
    assert records[-1]["loss"] < records[0]["loss"] - 0.3
    assert records[0]["lr"] == pytest.approx(3e-3 / 2)  # warm-up step 1 of 2
    assert records[-1]["lr"] == pytest.approx(3e-4)  # cosine down to min_lr_ratio 0.1
    names = sorted(p.name for p in (reference_run / "checkpoints").iterdir())
    assert names == ["step-0000008", "step-0000012"]  # keep_last 2
    final = reference_run / "checkpoints" / "step-0000012"
    files = {p.name for p in final.iterdir()}
    assert {
        "model.safetensors",
        "optimizer.pt",
        "rng-rank0.pt",
        "recipe.yaml",
        "state.json",
    } <= files
    state = json.loads((final / "state.json").read_text())
    assert state["step"] == STEPS and state["world_size"] == 1
    assert state["recipe"]["model"]["dim"] == 32


def test_finished_run_is_a_no_op(reference_run, corpus, tmp_path, capsys):
    recipe = write_train_recipe(tmp_path, corpus)
    before = (reference_run / "metrics.jsonl").read_text()
    assert exit_code("train", str(recipe), "--out", str(reference_run), "--quiet") == 0
    assert "already finished" in capsys.readouterr().out
    assert (reference_run / "metrics.jsonl").read_text() == before


def test_resume_after_sigkill_is_bitwise_exact(reference_run, corpus, tmp_path):
    recipe = write_train_recipe(tmp_path, corpus)
    run = tmp_path / "run"
    process = _train_subprocess(str(recipe), "--out", str(run))
    wait_for(run / "checkpoints" / "step-0000004", process)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert not (run / "checkpoints" / "step-0000012").exists()
    assert f"pid={process.pid}" in (run / ".train.lock").read_text()  # the file stays ...
    assert (
        exit_code("train", str(recipe), "--out", str(run), "--quiet") == 0
    )  # ... the lock does not
    assert metrics_of(run) == [
        {**r, **{key: m.get(key) for key in MEASURED}}
        for r, m in zip(metrics_of(reference_run), metrics_of(run))
    ]  # loss, lr, grad_norm equal to the last bit at every step


def test_sigterm_saves_a_checkpoint_and_resumes(reference_run, corpus, tmp_path):
    recipe = write_train_recipe(tmp_path, corpus, checkpoint__every=100)
    run = tmp_path / "run"
    process = _train_subprocess(str(recipe), "--out", str(run))
    wait_for(run / "metrics.jsonl", process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate()
    assert process.returncode == 143, stderr.decode()
    assert "SIGTERM" in stderr.decode() and "resume" in stderr.decode()
    (saved,) = (run / "checkpoints").iterdir()
    step = json.loads((saved / "state.json").read_text())["step"]
    assert 1 <= step < STEPS
    assert exit_code("train", str(recipe), "--out", str(run), "--quiet") == 0
    losses = [r["loss"] for r in metrics_of(run)]
    assert losses == [r["loss"] for r in metrics_of(reference_run)]


def test_sigterm_stops_at_the_next_micro_step_and_resumes_exactly(corpus, tmp_path):
    """With many micro-steps per step, SIGTERM does not wait for the step to end: the run stops
    at the next micro-step, drops the partial step, saves the state after the last whole step
    (with the RNG state from before the dropped one: dropout draws from it) and resumes bit for
    bit. Under torchrun or SLURM the grace period then needs one micro-step, not one step."""
    import re

    changes = {"train__grad_accum": 32, "train__steps": 3, "checkpoint__every": 100,
               "model__dropout": 0.1}  # fmt: skip
    reference = tmp_path / "reference"
    reference.mkdir()
    recipe = write_train_recipe(reference, corpus, **changes)
    assert exit_code("train", str(recipe), "--out", str(reference / "run"), "--quiet") == 0
    run = tmp_path / "run"
    process = _train_subprocess(str(recipe), "--out", str(run))
    wait_for(run / "metrics.jsonl", process)  # step 1 is logged ...
    started = _cpu_seconds(process.pid)
    while _cpu_seconds(process.pid) < started + 0.05:  # ... and step 2 well begun (a step
        assert process.poll() is None, process.communicate()[1].decode()  # takes ~0.5 s CPU)
        time.sleep(0.002)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate()
    message = stderr.decode()
    assert process.returncode == 143, message
    stopped = re.search(
        r"stopped by SIGTERM during step (\d+) \(after micro-step (\d+) of 32", message
    )
    assert stopped, message
    step, micro = int(stopped[1]), int(stopped[2])
    assert step >= 2 and 1 <= micro < 32 and "the partial step is dropped" in message
    (saved,) = (run / "checkpoints").iterdir()
    assert saved.name == f"step-{step - 1:07d}" and f"checkpoint {saved}" in message
    assert [r["step"] for r in metrics_of(run)] == list(range(1, step))
    assert exit_code("train", str(recipe), "--out", str(run), "--quiet") == 0
    assert metrics_of(run) == [
        {**r, **{key: m.get(key) for key in MEASURED}}
        for r, m in zip(metrics_of(reference / "run"), metrics_of(run))
    ]


def test_no_resume_refuses_to_overwrite_without_force(reference_run, corpus, tmp_path, capsys):
    recipe = write_train_recipe(tmp_path, corpus, train__steps=2)
    run = tmp_path / "run"
    assert exit_code("train", str(recipe), "--out", str(run), "--quiet") == 0
    assert exit_code("train", str(recipe), "--out", str(run), "--no-resume", "--quiet") == 2
    assert "--force" in capsys.readouterr().err
    assert (
        exit_code("train", str(recipe), "--out", str(run), "--no-resume", "--force", "--quiet") == 0
    )
    assert [r["step"] for r in metrics_of(run)] == [1, 2]


def _wait_for_lock(run: Path, process: subprocess.Popen) -> None:
    """Until ``process`` holds ``run``'s training lock (it writes its pid there once held)."""
    lock = run / ".train.lock"
    deadline = time.monotonic() + 120
    while not (lock.exists() and f"pid={process.pid}" in lock.read_text()):
        assert process.poll() is None, process.communicate()[1].decode()
        assert time.monotonic() < deadline, "the run never took its lock"
        time.sleep(0.01)


def test_second_train_on_a_running_run_exits_75(corpus, tmp_path, capsys):
    """While a run trains, a second train on its directory is refused at once (75) and the first
    finishes with the losses it has alone; reading the run (eval) stays free."""
    steps = 40
    recipe = write_train_recipe(tmp_path, corpus, train__steps=steps, checkpoint__every=2)
    alone = tmp_path / "alone"
    assert exit_code("train", str(recipe), "--out", str(alone), "--quiet") == 0
    run = tmp_path / "run"
    first = _train_subprocess(str(recipe), "--out", str(run))
    _wait_for_lock(run, first)
    started = time.monotonic()
    assert exit_code("train", str(recipe), "--out", str(run), "--quiet") == 75
    refused_after = time.monotonic() - started
    err = capsys.readouterr().err
    assert f"pid={first.pid}" in err and str(run) in err and len(err.strip().splitlines()) == 1
    assert exit_code("train", str(recipe), "--out", str(run), "--no-resume", "--force",
                "--quiet") == 75  # fmt: skip
    wait_for(run / "checkpoints" / "step-0000002", first)
    assert exit_code("eval", str(run), "--split", "all", "--docs", "1", "--quiet") == 0
    assert first.poll() is None, "the first run ended before the checks: make it longer"
    _, stderr = first.communicate()
    assert first.returncode == 0, stderr.decode()
    assert refused_after < 10
    steps_logged = [r["step"] for r in metrics_of(run)]
    assert steps_logged == list(range(1, steps + 1))  # one history, strictly increasing
    assert [r["loss"] for r in metrics_of(run)] == [r["loss"] for r in metrics_of(alone)]


def test_no_resume_force_is_refused_while_the_lock_is_held(corpus, tmp_path, capsys):
    import fcntl

    recipe = write_train_recipe(tmp_path, corpus, train__steps=2)
    run = tmp_path / "run"
    assert exit_code("train", str(recipe), "--out", str(run), "--quiet") == 0
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    with open(run / ".train.lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running train holds it
        handle.write("otherhost pid=4242 started=now\n")
        handle.flush()
        code = exit_code(
            "train", str(recipe), "--out", str(run), "--no-resume", "--force", "--quiet"
        )
    assert code == 75
    assert "otherhost pid=4242" in capsys.readouterr().err
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before  # nothing deleted
    assert (
        exit_code("train", str(recipe), "--out", str(run), "--no-resume", "--force", "--quiet") == 0
    )


def test_resume_refuses_an_unsafe_recipe_change_but_takes_more_steps(corpus, tmp_path, capsys):
    run = tmp_path / "run"
    first = write_train_recipe(tmp_path, corpus, train__steps=4)
    assert exit_code("train", str(first), "--out", str(run), "--quiet") == 0
    assert (
        exit_code("train", str(first), "--out", str(run), "--quiet", "--set", "model.dim=48") == 2
    )
    assert "model.dim" in capsys.readouterr().err
    assert (
        exit_code("train", str(first), "--out", str(run), "--quiet", "--set", "train.steps=6") == 0
    )
    assert [r["step"] for r in metrics_of(run)] == [1, 2, 3, 4, 5, 6]


def test_resume_refuses_another_global_batch_and_names_the_grad_accum_that_keeps_it(
    corpus, tmp_path, capsys
):
    """A checkpoint of 2 data-parallel processes (2 x 2 windows each per step) resumed on one:
    refused (the steps would read other windows) until grad_accum doubles; then it resumes."""
    run = tmp_path / "run"
    recipe = write_train_recipe(tmp_path, corpus, train__steps=4, checkpoint__every=2)
    assert (
        exit_code("train", str(recipe), "--out", str(run), "--quiet", "--set", "train.steps=2") == 0
    )
    state_file = run / "checkpoints" / "step-0000002" / "state.json"
    state = json.loads(state_file.read_text())
    state_file.write_text(json.dumps({**state, "dp_size": 2}))
    assert exit_code("train", str(recipe), "--out", str(run), "--quiet") == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "global batches of 8 windows" in line and "2 data-parallel processes" in line
    assert "this run's is 4" in line and "--set train.grad_accum=4" in line
    more = ("--set", "train.grad_accum=4")
    assert exit_code("train", str(recipe), "--out", str(run), "--quiet", *more) == 0
    assert [r["step"] for r in metrics_of(run) if "loss" in r] == [1, 2, 3, 4]


def _nan_loss_from_step(monkeypatch, step: int, micro_steps: int = 2) -> dict[str, int]:
    """Make the training loss NaN from optimizer step ``step`` on (``micro_steps`` per step);
    returns the counter of loss forwards (``calls["n"]``)."""
    from longnet_cli.train import loss as loss_module

    calls = {"n": 0}
    real_forward = loss_module.LanguageModelLoss.forward

    def forward(self, window):
        calls["n"] += 1
        loss = real_forward(self, window)
        return loss * float("nan") if calls["n"] > (step - 1) * micro_steps else loss

    monkeypatch.setattr(loss_module.LanguageModelLoss, "forward", forward)
    return calls


def test_non_finite_loss_stops_with_the_step_and_keeps_the_checkpoint(
    corpus, tmp_path, capsys, monkeypatch
):
    _nan_loss_from_step(monkeypatch, 5)
    recipe = write_train_recipe(tmp_path, corpus)
    run = tmp_path / "run"
    assert exit_code("train", str(recipe), "--out", str(run), "--quiet") == 1
    err = capsys.readouterr().err
    assert "step 5" in err and "nan" in err and "step-0000004" in err
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-0000004"]


def test_logging_less_often_logs_the_same_values_and_resumes_exactly(
    reference_run, corpus, tmp_path
):
    """Losses and gradient norms stay on the device between logging steps: a run logging every
    3 steps logs, at those steps, the very values (to the last bit) of a run logging every step,
    saves the same losses in its checkpoints, and resumes from one of them bit for bit."""
    import shutil

    recipe = write_train_recipe(tmp_path, corpus, log__every=3)
    run = tmp_path / "run"
    assert exit_code("train", str(recipe), "--out", str(run), "--quiet") == 0
    every_step = {r["step"]: r for r in metrics_of(reference_run)}
    logged = metrics_of(run)
    assert [r["step"] for r in logged] == [3, 6, 9, 12]
    for record in logged:
        for key in ("loss", "grad_norm", "lr", "tokens"):
            assert record[key] == every_step[record["step"]][key], (record["step"], key)
    for name in ("step-0000008", "step-0000012"):
        states = [json.loads((r / "checkpoints" / name / "state.json").read_text())
                  for r in (run, reference_run)]  # fmt: skip
        assert states[0]["loss"] == states[1]["loss"] == every_step[int(name[5:])]["loss"]
    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed, ignore=shutil.ignore_patterns(".train.lock"))
    shutil.rmtree(resumed / "checkpoints" / "step-0000012")  # resume from step 8
    assert exit_code("train", str(recipe), "--out", str(resumed), "--quiet") == 0
    assert metrics_of(resumed) == [
        {**r, **{key: m.get(key) for key in MEASURED}} for r, m in zip(logged, metrics_of(resumed))
    ]


def test_non_finite_loss_between_logging_steps_stops_before_the_next_checkpoint(
    corpus, tmp_path, capsys, monkeypatch
):
    """Logging every 5 steps and saving every 4: a NaN from step 6 on is read back before the
    save after step 8, which never happens; the error names step 6 and the step-4 checkpoint."""
    calls = _nan_loss_from_step(monkeypatch, 6)
    recipe = write_train_recipe(tmp_path, corpus, log__every=5)
    run = tmp_path / "run"
    assert exit_code("train", str(recipe), "--out", str(run), "--quiet") == 1
    err = capsys.readouterr().err
    assert "loss is nan at step 6" in err and "step-0000004" in err
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-0000004"]
    assert [r["step"] for r in metrics_of(run)] == [5]
    assert calls["n"] == 8 * 2  # found at the save after step 8, not before


@pytest.mark.gpu
def test_cuda_run_reads_back_on_logging_steps_with_fused_adamw_and_tf32(corpus, tmp_path):
    """On CUDA (fp32): windows through pinned memory, losses read back on logging steps only. A
    run logging every 3 steps logs what one logging every step logs (within CUDA's run-to-run
    noise), saves a fused AdamW that resumes, and runs its matmuls in TF32 unless
    ``train.tf32: false``."""
    import shutil

    import torch

    runs = {}
    for every in (1, 3):
        directory = tmp_path / f"every{every}"
        directory.mkdir()
        recipe = write_train_recipe(directory, corpus, log__every=every)
        assert exit_code("train", str(recipe), "--out", str(directory / "run"), "--quiet") == 0
        runs[every] = {r["step"]: r for r in metrics_of(directory / "run")}
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    assert list(runs[3]) == [3, 6, 9, 12]
    for step, record in runs[3].items():
        assert record["lr"] == runs[1][step]["lr"]
        for key in ("loss", "grad_norm"):
            assert record[key] == pytest.approx(runs[1][step][key], rel=1e-3), (step, key)
    run = tmp_path / "every3" / "run"
    state = torch.load(run / "checkpoints/step-0000012/optimizer.pt", weights_only=True)
    assert all(group["fused"] for group in state["param_groups"])
    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed, ignore=shutil.ignore_patterns(".train.lock"))
    shutil.rmtree(resumed / "checkpoints" / "step-0000012")
    recipe = tmp_path / "every3" / "recipe.yaml"
    assert exit_code("train", str(recipe), "--out", str(resumed), "--quiet") == 0
    for record in metrics_of(resumed):
        assert record["loss"] == pytest.approx(runs[3][record["step"]]["loss"], rel=1e-3)
    try:
        code = exit_code("train", str(recipe), "--out", str(tmp_path / "fp32"), "--quiet",
                         "--set", "train.tf32=false", "--set", "train.steps=2")  # fmt: skip
        assert code == 0
        assert not torch.backends.cuda.matmul.allow_tf32
        assert not torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True


def test_bad_recipe_and_missing_data_exit_2(corpus, tmp_path, capsys):
    recipe = write_train_recipe(tmp_path, corpus, model__dimm=3)
    assert exit_code("train", str(recipe), "--quiet") == 2
    assert "model.dim" in capsys.readouterr().err
    recipe = write_train_recipe(tmp_path, tmp_path / "nowhere")
    assert exit_code("train", str(recipe), "--out", str(tmp_path / "run"), "--quiet") == 2
    recipe = write_train_recipe(tmp_path, corpus, train__seq_len=10**7)
    assert exit_code("train", str(recipe), "--out", str(tmp_path / "run"), "--quiet") == 2
    assert "train.seq_len" in capsys.readouterr().err


def test_two_processes_match_one_process_with_the_same_global_batch(corpus, tmp_path):
    """Data parallel over 2 real processes (gloo): rank r reads samples 2s + r, so the run
    equals one process with micro_batch_size 2."""
    steps = 4
    single = write_train_recipe(tmp_path, corpus, train__steps=steps, train__grad_accum=1)
    assert exit_code("train", str(single), "--out", str(tmp_path / "one"), "--quiet") == 0
    double = tmp_path / "two.yaml"
    double.write_text(
        yaml.safe_dump(
            train_recipe(corpus, train__steps=steps, train__grad_accum=1, train__micro_batch_size=1)
        )
    )
    accelerate_launch(double, tmp_path / "two")
    one, two = metrics_of(tmp_path / "one"), metrics_of(tmp_path / "two")
    assert [r["step"] for r in two] == list(range(1, steps + 1))
    for a, b in zip(one, two):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-5)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
    state = json.loads((tmp_path / "two/checkpoints/step-0000004/state.json").read_text())
    assert state["world_size"] == 2
    assert (tmp_path / "two/checkpoints/step-0000004/rng-rank1.pt").exists()


def _strip_splits(directory: Path) -> None:
    """Make ``directory`` a corpus as tokenized before held-out splits existed."""
    import pyarrow.parquet as pq

    table = pq.read_table(directory / "documents.parquet").drop_columns(["split"])
    pq.write_table(table, directory / "documents.parquet")
    manifest = json.loads((directory / "manifest.json").read_text())
    del manifest["splits"]
    (directory / "manifest.json").write_text(json.dumps(manifest))


def test_a_run_started_before_splits_keeps_its_windows_on_resume(corpus, tmp_path, capsys):
    """A checkpoint without a "windows" record resumes with the pre-split scheme (training
    stops before the last eval.docs documents), bit for bit, even once the corpus has a split."""
    import shutil

    legacy = tmp_path / "legacy"
    shutil.copytree(corpus, legacy)
    _strip_splits(legacy)
    changes = {"train__steps": 4, "checkpoint__every": 2, "eval__every": 2, "eval__docs": 2}
    changes["eval__contexts"] = [32]
    reference = tmp_path / "reference"
    reference.mkdir()
    recipe = write_train_recipe(reference, legacy, **changes)
    assert exit_code("train", str(recipe), "--out", str(reference / "run"), "--quiet") == 0
    assert "no held-out split" in capsys.readouterr().err  # the one-line warning
    state = json.loads((reference / "run/checkpoints/step-0000004/state.json").read_text())
    assert state["windows"] == "before-eval-tail"  # a new run on an old corpus: old scheme
    assert {r["eval"]["split"] for r in metrics_of(reference / "run") if "eval" in r} == {"tail"}

    data = tmp_path / "data"
    shutil.copytree(legacy, data)
    recipe = write_train_recipe(tmp_path, data, **changes)
    run = tmp_path / "run"
    assert (
        exit_code("train", str(recipe), "--out", str(run), "--quiet", "--set", "train.steps=2") == 0
    )
    state_file = run / "checkpoints" / "step-0000002" / "state.json"
    state = json.loads(state_file.read_text())
    del state["windows"]  # as written before window schemes were recorded
    state_file.write_text(json.dumps(state))
    for name in ("documents.parquet", "manifest.json"):  # the corpus now records its split
        shutil.copyfile(corpus / name, data / name)
    capsys.readouterr()
    assert exit_code("train", str(recipe), "--out", str(run), "--quiet") == 0
    assert "keeps its windows" in capsys.readouterr().err
    expected = [r["loss"] for r in metrics_of(reference / "run") if "loss" in r]
    assert [r["loss"] for r in metrics_of(run) if "loss" in r] == expected
    final = json.loads((run / "checkpoints/step-0000004/state.json").read_text())
    assert final["windows"] == "before-eval-tail"


def test_sequence_parallel_training_matches_one_process_and_checkpoints_interchange(
    corpus, tmp_path
):
    """parallel.sequence=2 on 2 processes: each reads half of every window (the 64-token
    segment spans both), the loss curve equals one process's within 1e-4, and checkpoints
    resume across the two layouts in both directions."""
    steps = 5
    recipe = write_train_recipe(tmp_path, corpus, train__steps=steps, checkpoint__every=3)
    assert exit_code("train", str(recipe), "--out", str(tmp_path / "one"), "--quiet") == 0
    accelerate_launch(recipe, tmp_path / "two", "--set", "parallel.sequence=2")
    one, two = metrics_of(tmp_path / "one"), metrics_of(tmp_path / "two")
    assert [r["step"] for r in two] == list(range(1, steps + 1))
    for a, b in zip(one, two):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-4)
    state = json.loads((tmp_path / "two/checkpoints/step-0000005/state.json").read_text())
    assert state["sequence_parallel"] == 2 and state["dp_size"] == 1
    # Both runs cut back to their step-3 checkpoint (a lower train.steps would change the
    # schedule): a sequence-parallel checkpoint resumes in one process ...
    import shutil

    mixed, back = tmp_path / "mixed", tmp_path / "back"
    for source, copy in ((tmp_path / "two", mixed), (tmp_path / "one", back)):
        shutil.copytree(source, copy, ignore=shutil.ignore_patterns(".train.lock"))
        shutil.rmtree(copy / "checkpoints" / "step-0000005")
    assert exit_code("train", str(recipe), "--out", str(mixed), "--quiet") == 0
    # ... and a single-process one in a sequence-parallel run.
    accelerate_launch(recipe, back, "--set", "parallel.sequence=2")
    for run in (mixed, back):
        for a, b in zip(one, metrics_of(run)):
            assert b["loss"] == pytest.approx(a["loss"], abs=1e-4)
        assert [r["step"] for r in metrics_of(run)] == list(range(1, steps + 1))


def test_sequence_parallel_degree_must_divide_the_processes(corpus, tmp_path, capsys):
    recipe = write_train_recipe(tmp_path, corpus, parallel__sequence=2)
    assert exit_code("train", str(recipe), "--out", str(tmp_path / "run"), "--quiet") == 2
    assert "parallel.sequence" in capsys.readouterr().err


def test_deterministic_kernels_switch_on_at_resume_and_keep_the_losses(
    reference_run, corpus, tmp_path
):
    """``train.deterministic`` is safe to change on resume; on a CPU the losses stay bit-exact."""
    import shutil

    import torch

    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    shutil.rmtree(run / "checkpoints" / "step-0000012")  # resume from step 8
    recipe = write_train_recipe(tmp_path, corpus)
    try:
        code = exit_code("train", str(recipe), "--out", str(run), "--quiet", "--set",
                    "train.deterministic=true")  # fmt: skip
        assert code == 0
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)
    assert [r["loss"] for r in metrics_of(run)] == [r["loss"] for r in metrics_of(reference_run)]
    state = json.loads((run / "checkpoints/step-0000012/state.json").read_text())
    assert state["recipe"]["train"]["deterministic"] is True

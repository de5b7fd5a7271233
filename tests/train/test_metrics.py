"""What a run reports: mfu in metrics.jsonl over a matmul peak measured in the run's compute
dtype, and the wandb tracker; real tiny trainings through the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import exit_code, metrics_of, write_train_recipe

from longnet_cli.artifacts.checkpoints import latest_checkpoint
from longnet_cli.config import load_recipe


@pytest.fixture
def stdlib(stdlib_corpus) -> Path:
    return stdlib_corpus


def test_metrics_carry_mfu_over_a_peak_measured_at_start(source_run):
    steps = [r for r in metrics_of(source_run) if "loss" in r]
    assert len(steps) == 3
    peaks = {r["peak_flops"] for r in steps}
    assert len(peaks) == 1 and peaks.pop() > 1e8  # measured once, recorded with every figure
    assert all(0 < r["mfu"] < 1 for r in steps)
    # mfu is the model FLOPs of the logged tokens/s over that peak
    from longnet_cli.model.flops import training_flops_per_token

    recipe = load_recipe(latest_checkpoint(source_run).path / "recipe.yaml")
    per_token = training_flops_per_token(recipe.model.build(600), 64)
    for record in steps:
        expected = record["tokens_per_s"] * per_token / record["peak_flops"]
        assert record["mfu"] == pytest.approx(expected, rel=1e-9)


def test_the_peak_is_measured_in_the_compute_dtype():
    from longnet_cli.runtime import measure_peak_flops

    peak = measure_peak_flops("cpu", torch.bfloat16, size=128, seconds=0.01)
    assert peak.dtype == "float32" and peak.size == 128  # a CPU's floor is fp32
    assert peak.flops_per_s > 0 and peak.to_json()["matmul_size"] == 128


def test_wandb_logs_offline_with_the_run_name_and_recipe(
    stdlib, tmp_path, monkeypatch, tiny_recipe
):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "tracked"
    recipe = tiny_recipe(tmp_path, stdlib, steps=2)
    code = exit_code("train", str(recipe), "--out", str(run), "--quiet", "--set", "log.wandb=true")
    assert code == 0
    offline = sorted((run / "wandb").glob("offline-run-*"))
    assert len(offline) == 1  # offline: written under the run directory, nothing sent
    (log,) = offline[0].glob("*.wandb")
    # the run's record log (protobuf: strings appear as they are): the run's name, the
    # resolved recipe as config, and the logged metrics
    data = log.read_bytes()
    for expected in (b"tracked", b"model.dim", b"train.steps", b"loss", b"mfu", b"tokens_per_s"):
        assert expected in data, expected


def test_tensorboard_tracker_logs_or_warns(corpus, tmp_path, capsys):
    import importlib.util

    recipe = write_train_recipe(tmp_path, corpus, train__steps=2, log__tensorboard=True)
    run = tmp_path / "run"
    assert exit_code("train", str(recipe), "--out", str(run), "--quiet") == 0
    assert [r["step"] for r in metrics_of(run)] == [1, 2]
    if importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX"):
        assert list(run.rglob("events.out.tfevents.*"))
    else:
        assert "tensorboard is not installed" in capsys.readouterr().err


def test_a_resumed_log_drops_later_lines_torn_ones_and_the_resumed_data_change(tmp_path, capsys):
    import json

    from longnet_cli.train.metrics import MetricsLog, Mfu, flat_metrics

    path = tmp_path / "metrics.jsonl"
    lines = [{"step": 1, "loss": 2.0, "elapsed_s": 1.5}, {"step": 2, "data_changed": {}},
             {"step": 2, "loss": 1.0, "elapsed_s": 3.0}, {"step": 3, "loss": 0.5}]  # fmt: skip
    path.write_text("".join(json.dumps(line) + "\n" for line in lines) + '{"step": 4, "lo')
    tracked = []
    log = MetricsLog(path, True, 2, tracker=lambda values, step: tracked.append((step, values)))
    assert "dropped 1 unreadable line(s)" in capsys.readouterr().err
    assert [json.loads(line) for line in path.read_text().splitlines()] == [lines[0], lines[2]]
    assert log.elapsed_before == 3.0 and not (tmp_path / "metrics.jsonl.tmp").exists()
    log.note(step=2, data_changed={"change": "x"})
    log.write(step=3, loss=0.25, eval={"contexts": {"64": {"loss": 1.0}}})
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert records[-1]["elapsed_s"] >= 3.0 and records[-2]["data_changed"] == {"change": "x"}
    assert [step for step, _ in tracked] == [3]  # the note is not tracked
    assert set(tracked[0][1]) == {"loss", "eval/contexts/64/loss", "elapsed_s"}
    assert flat_metrics({"step": 1, "a": {"b": 2}}) == {"a/b": 2}
    MetricsLog(path, False, 0).write(step=9, loss=1.0)  # not the main process: nothing written
    assert len(path.read_text().splitlines()) == 4
    mfu = Mfu(flops_per_token=10.0, peak_flops=1000.0)
    assert mfu.figures(50.0) == {"mfu": 0.5, "peak_flops": 1000.0} and mfu.figures(None) == {}

"""Checkpoint integrity: every file fsynced before the rename, sha256s in state.json, resume
falling back past a damaged checkpoint (and old checkpoints without hashes still resuming),
a torn last line of metrics.jsonl dropped on resume."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from helpers import MEASURED, exit_code, metrics_of, write_train_recipe

from longnet_cli.artifacts import checkpoints as ckpt
from longnet_cli.artifacts.layout import SCALER_FILE
from longnet_cli.config import load_recipe
from longnet_cli.core.files import sha256_file

# metrics that depend on the machine, not on the run: compared runs differ in them


def _copy_run(reference: Path, tmp_path: Path) -> Path:
    """A copy of the finished reference run (checkpoints 8 and 12) to damage."""
    run = tmp_path / "run"
    shutil.copytree(reference, run, ignore=shutil.ignore_patterns(".train.lock"))
    return run


def _flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 0xFF
    path.write_bytes(bytes(data))


def test_every_file_is_hashed_and_fsynced_before_the_rename(reference_run, monkeypatch, tmp_path):
    """state.json records each file's sha256 and size; every file and the staging directory
    are fsynced before the directory is renamed into place."""
    final = reference_run / "checkpoints" / "step-0000012"
    state = json.loads((final / "state.json").read_text())
    names = {p.name for p in final.iterdir()} - {"state.json"}
    assert set(state["files"]) == names and "model.safetensors" in names
    for name, entry in state["files"].items():
        assert entry == {"sha256": sha256_file(final / name),
                         "bytes": (final / name).stat().st_size}  # fmt: skip
    assert ckpt.verify_checkpoint(final).step == 12

    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst) -> None:
        events.append(("replace", str(src)))
        real_replace(src, dst)

    staging = tmp_path / "checkpoints" / ".tmp-step-0000001"
    shutil.copytree(final, staging)
    (staging / "state.json").unlink()
    monkeypatch.setattr(ckpt.os, "fsync", fsync)
    monkeypatch.setattr(ckpt.os, "replace", replace)
    ckpt.finish_checkpoint(staging, tmp_path / "checkpoints" / "step-0000001", {"step": 1})
    renamed = events.index(("replace", str(staging)))
    flushed = {path for kind, path in events[:renamed] if kind == "fsync"}
    assert {str(staging / name) for name in [*names, "state.json"]} <= flushed
    assert str(staging) in flushed  # the directory's entries too
    assert ("fsync", str(tmp_path / "checkpoints")) in events[renamed:]  # and the rename


def test_resume_skips_a_corrupted_checkpoint_and_says_why(reference_run, corpus, tmp_path, capsys):
    """A flipped byte in the newest checkpoint's weights: resume says it skipped it and why,
    resumes from the one before, and reproduces the uninterrupted run bit for bit."""
    run = _copy_run(reference_run, tmp_path)
    _flip_byte(run / "checkpoints" / "step-0000012" / "model.safetensors", 1000)
    recipe = write_train_recipe(tmp_path, corpus)
    assert exit_code("train", str(recipe), "--out", str(run), "--quiet") == 0
    err = capsys.readouterr().err
    assert "skipped damaged checkpoint step-0000012" in err
    assert "model.safetensors" in err and "sha256" in err and "step-0000008" in err
    assert metrics_of(run) == [
        {**r, **{key: m.get(key) for key in MEASURED}}
        for r, m in zip(metrics_of(reference_run), metrics_of(run))
    ]
    assert ckpt.verify_checkpoint(run / "checkpoints" / "step-0000012").step == 12


def test_a_skipped_checkpoint_is_set_aside_out_of_pruning(reference_run, corpus, tmp_path, capsys):
    """The damaged step-12 is renamed step-0000012.damaged: with keep_last 1 it would otherwise
    outrank (and prune) every checkpoint the resumed run writes before step 12."""
    run = _copy_run(reference_run, tmp_path)
    _flip_byte(run / "checkpoints" / "step-0000012" / "optimizer.pt", 5)
    recipe = write_train_recipe(tmp_path, corpus, train__steps=11, checkpoint__every=10,
                           checkpoint__keep_last=1)  # fmt: skip
    assert exit_code("train", str(recipe), "--out", str(run), "--quiet") == 0
    assert "(kept as step-0000012.damaged)" in capsys.readouterr().err
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["step-0000011", "step-0000012.damaged"]
    assert ckpt.newest_intact_checkpoint(run)[0].step == 11


@pytest.mark.parametrize(
    "damage",
    ["missing-file", "truncated-state", "not-json", "missing-rng"],
)
def test_damage_of_each_kind_is_skipped(reference_run, corpus, tmp_path, capsys, damage):
    run = _copy_run(reference_run, tmp_path)
    newest = run / "checkpoints" / "step-0000012"
    if damage == "missing-file":
        (newest / "optimizer.pt").unlink()
    elif damage == "truncated-state":
        text = (newest / "state.json").read_text()
        (newest / "state.json").write_text(text[: len(text) // 2])
    elif damage == "not-json":
        (newest / "state.json").write_bytes(b"\xff\xfe\x00garbage")
    else:
        (newest / "rng-rank0.pt").unlink()
    recipe = write_train_recipe(tmp_path, corpus)
    assert exit_code("train", str(recipe), "--out", str(run), "--quiet") == 0
    err = capsys.readouterr().err
    assert "skipped damaged checkpoint step-0000012" in err, err
    assert "Traceback" not in err
    assert [r["loss"] for r in metrics_of(run)] == [r["loss"] for r in metrics_of(reference_run)]


def test_no_intact_checkpoint_exits_2_naming_each(reference_run, corpus, tmp_path, capsys):
    run = _copy_run(reference_run, tmp_path)
    for name in ("step-0000008", "step-0000012"):
        _flip_byte(run / "checkpoints" / name / "optimizer.pt", 77)
    before = (run / "metrics.jsonl").read_text()
    recipe = write_train_recipe(tmp_path, corpus)
    assert exit_code("train", str(recipe), "--out", str(run), "--quiet") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no intact checkpoint" in err
    assert "step-0000008" in err and "step-0000012" in err and "--no-resume --force" in err
    assert (run / "metrics.jsonl").read_text() == before  # nothing touched


def test_checkpoint_without_hashes_still_resumes(reference_run, corpus, tmp_path, capsys):
    """A checkpoint written before hashes were recorded resumes (bit for bit)."""
    run = _copy_run(reference_run, tmp_path)
    shutil.rmtree(run / "checkpoints" / "step-0000012")
    state_file = run / "checkpoints" / "step-0000008" / "state.json"
    state = json.loads(state_file.read_text())
    del state["files"]
    state_file.write_text(json.dumps(state))
    recipe = write_train_recipe(tmp_path, corpus)
    assert exit_code("train", str(recipe), "--out", str(run), "--quiet") == 0
    assert "skipped" not in capsys.readouterr().err
    assert [r["loss"] for r in metrics_of(run)] == [r["loss"] for r in metrics_of(reference_run)]
    assert "files" in json.loads((run / "checkpoints/step-0000012/state.json").read_text())


def test_torn_last_metrics_line_is_dropped_on_resume(reference_run, corpus, tmp_path, capsys):
    """SIGKILL mid-write leaves half a line: resume drops it (with a warning) instead of crashing
    or gluing the next record onto it; the log then equals the uninterrupted run's."""
    run = _copy_run(reference_run, tmp_path)
    shutil.rmtree(run / "checkpoints" / "step-0000012")
    lines = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
    (run / "metrics.jsonl").write_text("".join(lines[:9]) + lines[9][:25])  # step 10, torn
    recipe = write_train_recipe(tmp_path, corpus)
    assert exit_code("train", str(recipe), "--out", str(run), "--quiet") == 0
    err = capsys.readouterr().err
    assert "dropped 1 unreadable line" in err and "Traceback" not in err
    assert metrics_of(run) == [
        {**r, **{key: m.get(key) for key in MEASURED}}
        for r, m in zip(metrics_of(reference_run), metrics_of(run))
    ]


def _scaled_steps(model, optimizer, scaler, overflow_at: set[int], steps: range) -> None:
    """Plain fp16-style steps through a real GradScaler: an infinite loss at ``overflow_at``."""
    import torch

    for step in steps:
        loss = model(torch.ones(2, 3)).sum()
        if step in overflow_at:
            loss = loss * float("inf")
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)


def test_grad_scaler_state_round_trips_through_a_checkpoint(tmp_path):
    """fp16's loss scale and growth tracker are saved (hashed like every file) and restored: a
    restored scaler continues exactly like the one that never stopped; a fresh one does not."""
    import copy

    import torch

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu", growth_interval=3)
    _scaled_steps(model, optimizer, scaler, {1, 2}, range(5))  # backs off twice, then grows
    assert scaler.state_dict()["scale"] == 2.0**14 and scaler.state_dict()["_growth_tracker"] == 2

    staging = tmp_path / "checkpoints" / ".tmp-step-0000005"
    staging.mkdir(parents=True)
    ckpt.write_scaler_file(staging, scaler)
    final = tmp_path / "checkpoints" / "step-0000005"
    recipe = load_recipe(Path(__file__).resolve().parents[2] / "recipes" / "quickstart.yaml")
    ckpt.finish_checkpoint(staging, final, {"step": 5, "recipe": recipe.to_dict()})
    assert SCALER_FILE in ckpt.verify_checkpoint(final).state["files"]

    restored = torch.amp.GradScaler("cpu", growth_interval=3)
    assert ckpt.load_scaler_state(final, restored)
    assert restored.state_dict() == scaler.state_dict()
    fresh = torch.amp.GradScaler("cpu", growth_interval=3)
    runs = {}
    for name, which in (("kept", scaler), ("restored", restored), ("fresh", fresh)):
        twin, twin_optimizer = copy.deepcopy(model), copy.deepcopy(optimizer)
        twin_optimizer.param_groups[0]["params"] = list(twin.parameters())
        _scaled_steps(twin, twin_optimizer, which, {6}, range(5, 9))
        runs[name] = (which.state_dict(), [p.detach().clone() for p in twin.parameters()])
    assert runs["restored"][0] == runs["kept"][0]
    assert all(torch.equal(a, b) for a, b in zip(runs["restored"][1], runs["kept"][1]))
    assert runs["fresh"][0]["scale"] != runs["kept"][0]["scale"]
    assert not ckpt.load_scaler_state(tmp_path, torch.amp.GradScaler("cpu"))  # none saved


@pytest.mark.gpu
def test_fp16_resume_restores_the_loss_scale(reference_run, corpus, tmp_path):
    """On CUDA with fp16: resumed from step 8, the run's scaler at step 12 is the uninterrupted
    run's (its growth tracker counts from step 0, not from the resume)."""
    import torch

    def scaler_at(run: Path, step: int) -> dict:
        path = run / "checkpoints" / f"step-{step:07d}" / SCALER_FILE
        return torch.load(path, weights_only=True)

    recipe = write_train_recipe(tmp_path, corpus, train__precision="fp16")
    whole = tmp_path / "whole"
    assert exit_code("train", str(recipe), "--out", str(whole), "--quiet") == 0
    run = _copy_run(whole, tmp_path)
    shutil.rmtree(run / "checkpoints" / "step-0000012")
    assert exit_code("train", str(recipe), "--out", str(run), "--quiet") == 0
    assert scaler_at(run, 12) == scaler_at(whole, 12)
    assert scaler_at(whole, 12)["_growth_tracker"] != scaler_at(whole, 8)["_growth_tracker"]
    for a, b in zip(metrics_of(whole), metrics_of(run)):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-3)

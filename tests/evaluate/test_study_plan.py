"""longnet_cli.evaluate.study_plan: the gpu scale's steps from gpu_check's figure (the row the
tool itself writes), from a previous study's measured speeds, or from the default; the same
tokens for every model; FLOPs per token of the real recipes."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from longnet_cli.config.load import load_recipe
from longnet_cli.evaluate import study_plan
from longnet_cli.evaluate.study_plan import (
    DEFAULT_ATTAINED_FLOPS,
    SMALL_MODEL_EFFICIENCY,
    STEP_OVERHEAD_S,
    gpu_check_flops,
    plan_gpu_scale,
)
from longnet_cli.model.flops import training_flops_per_token

ROOT = Path(__file__).resolve().parents[2]
GPU_SCALE = {"dense_2k": 32, "longnet_8k": 8, "dense_8k": 8}  # micro batches: 64K tokens a step


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "tools" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _recipes(micro_batches: dict[str, int] = GPU_SCALE) -> dict:
    return {
        name: load_recipe(
            ROOT / "recipes" / "study" / f"{name}.yaml",
            ["data.shards=unused", f"train.micro_batch_size={micro}", "train.precision=bf16"],
        )
        for name, micro in micro_batches.items()
    }


def _gpu_check_json(tmp_path: Path, monkeypatch, model_gflops: float, status_ok=True) -> Path:
    """The JSON gpu_check writes (``main``: its rows' ``__dict__``), its train row made by the
    tool's own ``check_train`` from a ``longnet bench train --json`` report."""
    gpu_check = _gpu_check()
    report = {"tokens_per_s": 123456.0, "model_gflops": model_gflops,
              "matmul_peak_gflops": {"bf16": 990e3},
              "fraction_of_peak": model_gflops / 990e3}  # fmt: skip

    def bench(args, log, deadline=None):
        return subprocess.CompletedProcess(args, 0, json.dumps(report), "")

    monkeypatch.setattr(gpu_check, "_run", bench)
    rows = gpu_check.check_train(tmp_path, tmp_path / "log")
    if not status_ok:
        rows[0].status = "FAILED"
    path = tmp_path / "gpu_check.json"
    path.write_text(json.dumps([row.__dict__ for row in rows], indent=2))
    return path


def test_reads_the_model_flops_of_gpu_checks_train_row(tmp_path, monkeypatch):
    path = _gpu_check_json(tmp_path, monkeypatch, model_gflops=312_400.0)
    flops, source = gpu_check_flops(path)
    assert flops == 312e12  # the row shows whole TFLOP/s
    assert source == f"{path}: paper_base train, 10 steps"


def test_no_figure_says_why(tmp_path, monkeypatch):
    assert gpu_check_flops(None) == (None, "no gpu_check JSON given")
    flops, source = gpu_check_flops(tmp_path / "missing.json")
    assert flops is None and "missing.json: no such file" in source
    (tmp_path / "bad.json").write_text("[{")
    assert "cannot read" in gpu_check_flops(tmp_path / "bad.json")[1]
    (tmp_path / "other.json").write_text(json.dumps([{"check": "attention 32K fwd+bwd"}]))
    assert "no 'paper_base train' row" in gpu_check_flops(tmp_path / "other.json")[1]
    failed = _gpu_check_json(tmp_path, monkeypatch, 300_000.0, status_ok=False)
    flops, source = gpu_check_flops(failed)
    assert flops is None and "FAILED" in source


def test_steps_fit_the_budget_with_the_same_tokens_for_every_model(tmp_path, monkeypatch):
    path = _gpu_check_json(tmp_path, monkeypatch, model_gflops=300_000.0)
    recipes = _recipes()
    plan = plan_gpu_scale(recipes, vocab_size=2048, budget_s=150.0, gpu_check=path)
    models = plan["models"]
    effective = 300e12 * SMALL_MODEL_EFFICIENCY
    for name, recipe in recipes.items():
        model = models[name]
        assert model["tokens_per_step"] == 65536
        real = training_flops_per_token(recipe.model.build(2048), recipe.train.seq_len)
        assert model["flops_per_token"] == pytest.approx(real)  # the meta build: the same count
        assert model["seconds_per_step"] == pytest.approx(
            STEP_OVERHEAD_S + 65536 * real / effective
        )
    per_token = sum(m["seconds_per_step"] / 65536 for m in models.values())
    steps = math.floor(150.0 / per_token / 65536)
    assert {m["steps"] for m in models.values()} == {steps}
    assert plan["tokens"] == steps * 65536
    assert sum(m["seconds"] for m in models.values()) == pytest.approx(150.0, rel=0.01)
    # dense_8k's attention costs the most per token: its share of the time is the largest
    assert models["dense_8k"]["seconds"] > models["longnet_8k"]["seconds"]
    assert models["longnet_8k"]["seconds"] > models["dense_2k"]["seconds"]


def test_measured_speeds_replace_the_estimate_and_tokens_stay_equal(tmp_path):
    """A previous study.json's tokens/s sizes its models; a model it lacks is estimated from
    the default; a model with half the tokens per step gets twice the steps."""
    study = {"runs": [{"name": "dense_2k", "train_tokens_per_s": 4e6},
                      {"name": "longnet_8k", "train_tokens_per_s": 2e6}]}  # fmt: skip
    (tmp_path / "study.json").write_text(json.dumps(study))
    recipes = _recipes({"dense_2k": 16, "longnet_8k": 8, "dense_8k": 8})
    plan = plan_gpu_scale(recipes, 2048, 60.0, measured=tmp_path / "study.json")
    models = plan["models"]
    assert models["dense_2k"]["seconds_per_step"] == pytest.approx(32768 / 4e6)
    assert models["longnet_8k"]["seconds_per_step"] == pytest.approx(65536 / 2e6)
    assert models["dense_8k"]["speed"].startswith("estimated from default")
    assert plan["attained_flops"] is None
    assert models["dense_8k"]["seconds_per_step"] == pytest.approx(
        STEP_OVERHEAD_S
        + 65536 * models["dense_8k"]["flops_per_token"]
        / (DEFAULT_ATTAINED_FLOPS * SMALL_MODEL_EFFICIENCY)
    )  # fmt: skip
    assert models["dense_2k"]["steps"] == 2 * models["longnet_8k"]["steps"]
    assert len({m["tokens"] for m in models.values()}) == 1


def test_a_budget_too_small_still_trains_a_few_steps():
    plan = plan_gpu_scale(_recipes(), 2048, 0.001)
    assert {m["steps"] for m in plan["models"].values()} == {study_plan.MIN_STEPS}

"""Sizing the context study's gpu scale (``LONGNET_STUDY_SCALE=gpu pipelines/context_study.sh``).

The gpu scale runs in one short slot of a GPU, after ``gpu_check`` in the same command, so its
training time is fixed and its number of tokens is what fits. The three models train on the
same number of tokens (as at every scale): with ``T_i`` tokens per step and ``s_i`` seconds per
step for model ``i``, a training budget of ``B`` seconds gives each

    tokens = B / sum_i (s_i / T_i)            steps = tokens / T_i

``s_i`` comes from the best measurement there is, in this order:

1. ``measured``: a previous gpu-scale ``study.json`` on the same machine kind: each model's
   training tokens/s from its ``metrics.jsonl`` (first steps included), ``s_i = T_i / that``;
2. ``gpu_check``: the JSON of ``tools/gpu_check.py --json``, whose ``paper_base train`` row
   measured the model FLOP/s a 768-wide, 12-layer LongNet attains on this GPU in bf16: then
   ``s_i = STEP_OVERHEAD_S + T_i * F_i / (that * SMALL_MODEL_EFFICIENCY)``, with ``F_i`` the
   model's training FLOPs per token (``model.flops``);
3. else ``DEFAULT_ATTAINED_FLOPS`` in the same formula.

``SMALL_MODEL_EFFICIENCY`` and ``STEP_OVERHEAD_S`` are estimates (the study's models are 128
wide and 2 layers deep: small matrices and a launch-bound step reach much less of a GPU than
paper_base does) until a run measures them; the pipeline also caps each model's training time,
so a wrong estimate costs tokens, never the slot.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from longnet_cli.config import Recipe

DEFAULT_ATTAINED_FLOPS = 200e12  # paper_base's model FLOP/s, guessed: an H200 at 0.2 of its peak
SMALL_MODEL_EFFICIENCY = 0.15  # the study's models' share of what paper_base attains (estimate)
STEP_OVERHEAD_S = 0.015  # launches, optimizer and bookkeeping of one step (estimate)
MIN_STEPS = 2
GPU_CHECK_TRAIN_ROW = "paper_base train"
_TFLOPS = re.compile(r"([\d,.]+) TFLOP/s of bf16 peak")


def gpu_check_flops(path: Path | None) -> tuple[float | None, str]:
    """The model FLOP/s of gpu_check's ``paper_base train`` row in the JSON at ``path``, and
    where the figure came from (or why there is none: no file, a failed row)."""
    if path is None:
        return None, "no gpu_check JSON given"
    try:
        rows = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None, f"{path}: no such file"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return None, f"{path}: cannot read: {err}"
    for row in rows if isinstance(rows, list) else []:
        if not isinstance(row, dict) or not str(row.get("check", "")).startswith(
            GPU_CHECK_TRAIN_ROW
        ):
            continue
        match = _TFLOPS.search(str(row.get("figure", "")))
        if row.get("status") in ("ok", "below") and match:
            return float(match.group(1).replace(",", "")) * 1e12, f"{path}: {row['check']}"
        return None, f"{path}: {row.get('check')}: {row.get('status')}: {row.get('figure')}"
    return None, f"{path}: no '{GPU_CHECK_TRAIN_ROW}' row"


def measured_speeds(study_json: Path | None) -> dict[str, float]:
    """Training tokens/s per model name from a previous ``study.json`` (empty when there is
    none, or it does not read)."""
    if study_json is None:
        return {}
    try:
        study = json.loads(Path(study_json).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    rows = study.get("runs") if isinstance(study, dict) else None
    return {
        row["name"]: float(row["train_tokens_per_s"])
        for row in rows or []
        if isinstance(row, dict) and row.get("name") and row.get("train_tokens_per_s")
    }


def flops_per_token(recipe: Recipe, vocab_size: int) -> float:
    """Training FLOPs per token of the recipe's model at its ``train.seq_len`` (built on the
    meta device: no memory, no weights)."""
    import torch

    from longnet_cli.model.flops import training_flops_per_token

    with torch.device("meta"):
        model = recipe.model.build(vocab_size)
    return training_flops_per_token(model, recipe.train.seq_len)


def plan_gpu_scale(
    recipes: Mapping[str, Recipe],
    vocab_size: int,
    budget_s: float,
    gpu_check: Path | None = None,
    measured: Path | None = None,
) -> dict[str, Any]:
    """Steps (the same tokens for every model) that fit ``budget_s`` seconds of training, from
    the speeds the module docstring names; per model its tokens per step, FLOPs per token,
    estimated seconds per step and planned seconds."""
    attained, source = gpu_check_flops(gpu_check)
    if attained is None:
        source = f"default {DEFAULT_ATTAINED_FLOPS / 1e12:.0f} TFLOP/s ({source})"
    speeds = measured_speeds(measured)
    models: dict[str, dict[str, Any]] = {}
    for name, recipe in recipes.items():
        train = recipe.train
        tokens_per_step = train.micro_batch_size * train.grad_accum * train.seq_len
        flops = flops_per_token(recipe, vocab_size)
        if name in speeds:
            seconds_per_step, how = tokens_per_step / speeds[name], f"measured: {measured}"
        else:
            effective = (attained or DEFAULT_ATTAINED_FLOPS) * SMALL_MODEL_EFFICIENCY
            seconds_per_step = STEP_OVERHEAD_S + tokens_per_step * flops / effective
            how = f"estimated from {source}"
        models[name] = {
            "tokens_per_step": tokens_per_step,
            "flops_per_token": flops,
            "seconds_per_step": seconds_per_step,
            "speed": how,
        }
    seconds_per_token = sum(m["seconds_per_step"] / m["tokens_per_step"] for m in models.values())
    tokens = budget_s / seconds_per_token if seconds_per_token > 0 else 0.0
    largest = max(m["tokens_per_step"] for m in models.values())
    steps = max(MIN_STEPS, math.floor(tokens / largest))
    for model in models.values():
        model["steps"] = steps * largest // model["tokens_per_step"]
        model["tokens"] = model["steps"] * model["tokens_per_step"]
        model["seconds"] = model["steps"] * model["seconds_per_step"]
    return {
        "budget_s": budget_s,
        "attained_flops": attained,
        "attained_source": source,
        "small_model_efficiency": SMALL_MODEL_EFFICIENCY,
        "step_overhead_s": STEP_OVERHEAD_S,
        "tokens": steps * largest,
        "models": models,
    }

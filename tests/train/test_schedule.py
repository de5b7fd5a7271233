"""The learning-rate schedule: warm-up, cosine decay, and its extension when train.steps changes;
the optimizer and the TF32 choice on each device."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from longnet_cli.config.errors import RecipeError
from longnet_cli.config.sections import TrainConfig
from longnet_cli.train.schedule import (
    Schedule,
    adamw_options,
    build_optimizer,
    tf32_allowed,
    use_tf32,
)


@pytest.mark.parametrize("warmup", [0, 3, 10])
def test_schedule_extension_is_continuous(warmup):
    """Every (first steps, resume step, new steps): the lr at the resume step is the one the
    old schedule gives it, then never rises, and is the floor at the new last step; in warm-up
    the new schedule is the plain one of the new length (the warm-up does not depend on it)."""
    lr, floor = 1e-3, 1e-4
    for first in (12, 40):
        base = Schedule(lr, min(warmup, first), first, floor)
        for step in range(0, first + 1):
            for steps in (step + 1, step + 7, 3 * first):
                if steps < max(step, base.warmup) or steps == first:
                    continue
                new = base.extended(step, steps)
                assert new.lr_at(step) == pytest.approx(base.lr_at(step), rel=1e-12)
                if step <= base.warmup:
                    assert new == Schedule(lr, base.warmup, steps, floor)
                    continue
                tail = [new.lr_at(s) for s in range(step, steps)]
                assert all(b <= a for a, b in itertools.pairwise(tail))
                if len(tail) > 1:  # one step left: it keeps the lr (no jump to the floor)
                    assert tail[-1] == pytest.approx(floor)
                again = new.extended(steps, steps + 5)  # a second change chains on
                assert again.lr_at(steps) == pytest.approx(new.lr_at(steps))


# -- the optimizer and the float32 matmul precision on each device --------------------------------


def _train(**changes) -> TrainConfig:
    return TrainConfig(seq_len=64, steps=4, **changes)


def test_adamw_is_fused_on_cuda_only():
    assert adamw_options("cuda") == {"fused": True}
    for device_type in ("cpu", "mps"):
        assert adamw_options(device_type) == {}  # torch's default: old CPU runs resume bit-exact


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU optimizer")
def test_the_cpu_optimizer_is_todays():
    """On a CPU: the AdamW every earlier run used (not fused, torch's default kernel choice),
    with decay on matrices only, and the TF32 switches untouched."""
    model = nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3))
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    optimizer = build_optimizer(model, _train(tf32=True, lr=1e-3, weight_decay=0.2))
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before
    assert type(optimizer) is torch.optim.AdamW
    assert optimizer.defaults["fused"] is None and optimizer.defaults["foreach"] is None
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.2 and no_decay["weight_decay"] == 0.0
    assert [p.dim() for p in decay["params"]] == [2]
    assert decay["betas"] == (0.9, 0.95) and decay["lr"] == 1e-3


def test_tf32_is_the_recipes_choice_on_cuda_and_nothing_on_a_cpu():
    assert _train().tf32 is True  # the default
    assert tf32_allowed(_train(), "cuda") is True
    assert tf32_allowed(_train(tf32=False), "cuda") is False
    for tf32 in (True, False):
        assert tf32_allowed(_train(tf32=tf32), "cpu") is None


def test_use_tf32_sets_both_switches_and_none_leaves_them():
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        for allowed in (True, False):
            use_tf32(allowed)
            assert torch.backends.cuda.matmul.allow_tf32 is allowed
            assert torch.backends.cudnn.allow_tf32 is allowed
            use_tf32(None)
            assert torch.backends.cuda.matmul.allow_tf32 is allowed
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_tf32_must_be_a_bool():
    with pytest.raises(RecipeError, match="true or false") as info:
        _train(tf32="yes")
    assert info.value.key == "train.tf32"

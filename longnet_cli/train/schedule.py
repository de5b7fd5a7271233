"""The learning rate of every step (``Schedule``) and the optimizer, from ``recipe.train``.

The learning rate is a pure function of the step (and of the schedule a checkpoint stored), so
a resumed run continues on exactly the rates the uninterrupted run would have used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import nn

from longnet_cli.artifacts.layout import STATE_FILE
from longnet_cli.config.schema import Recipe
from longnet_cli.config.sections import TrainConfig
from longnet_cli.core.errors import InputError


def lr_at(step: int, train: TrainConfig) -> float:
    """Linear warm-up to ``train.lr``, then cosine decay to ``lr * min_lr_ratio`` (the schedule
    of a run whose ``train.steps`` never changed)."""
    return Schedule.of(train).lr_at(step)


def cosine(step: int, start: int, end: int, high: float, floor: float) -> float:
    """Cosine from ``high`` at ``start`` down to ``floor`` at step ``end - 1`` (and after)."""
    span = max(end - start - 1, 1)  # the last step runs at the floor
    progress = min((step - start) / span, 1.0)
    return floor + (high - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class Schedule:
    """The learning rate of every step: linear warm-up to ``lr`` over ``warmup`` steps, cosine
    decay to ``floor`` at step ``steps - 1``; once ``train.steps`` changed on resume, from
    ``segment`` = (start step, lr there, new train.steps) on, a cosine from that lr to ``floor``
    at the new last step, so the learning rate never jumps. Checkpoints store it
    (``to_state``): a run resumed with the same ``train.steps`` keeps its schedule bit for bit.
    """

    lr: float
    warmup: int
    steps: int  # train.steps the warm-up-cosine was laid out for
    floor: float
    segment: tuple[int, float, int] | None = None

    @classmethod
    def of(cls, train: TrainConfig) -> Schedule:
        return cls(train.lr, train.warmup_steps, train.steps, train.lr * train.min_lr_ratio)

    @property
    def end(self) -> int:
        """The train.steps this schedule decays to the floor for."""
        return self.segment[2] if self.segment else self.steps

    def lr_at(self, step: int) -> float:
        if self.segment is not None and step >= self.segment[0]:
            start, high, end = self.segment
            return cosine(step, start, end, high, self.floor)
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        return cosine(step, self.warmup, self.steps, self.lr, self.floor)

    def extended(self, step: int, steps: int) -> Schedule:
        """This schedule with ``train.steps`` changed to ``steps`` at ``step`` (steps done).

        During warm-up the cosine has not started: it is laid out for ``steps`` from the start
        (the warm-up does not depend on it). After it, the learning rate at ``step`` is kept
        and decays from there to the floor at step ``steps - 1``.
        """
        if steps == self.end:
            return self
        if self.segment is None and step <= self.warmup:
            return Schedule(self.lr, self.warmup, steps, self.floor)
        return Schedule(self.lr, self.warmup, self.steps, self.floor,
                        (step, self.lr_at(step), steps))  # fmt: skip

    def to_state(self, step: int) -> dict:
        """The checkpoint's ``scheduler`` record after ``step`` steps."""
        segment = None
        if self.segment is not None:
            start, high, end = self.segment
            segment = {"start": start, "lr": high, "steps": end}
        return {"name": "warmup-cosine", "step": step, "lr": self.lr_at(step),
                "steps": self.steps, "segment": segment}  # fmt: skip

    @classmethod
    def saved(cls, train: TrainConfig, existing) -> Schedule:
        """The schedule ``existing`` (a checkpoint) ran on (``extended`` adapts it to a changed
        ``train.steps``). Checkpoints written before schedules were stored ran on the plain
        warm-up-cosine of their recipe's ``train.steps``."""
        state = existing.state
        saved = state.get("scheduler") if isinstance(state.get("scheduler"), dict) else {}
        steps = saved.get("steps")
        if not isinstance(steps, int):
            steps = Recipe.from_saved(state["recipe"]).train.steps
        schedule = replace(cls.of(train), steps=steps)
        segment = saved.get("segment")
        if isinstance(segment, dict):
            try:
                start, high, end = int(segment["start"]), float(segment["lr"]), segment["steps"]
                schedule = replace(schedule, segment=(start, high, int(end)))
            except (KeyError, TypeError, ValueError):
                raise InputError(
                    f"{existing.path / STATE_FILE}: scheduler.segment is not a schedule "
                    f"segment: {segment!r}"
                ) from None
        return schedule


def training_device_type() -> str:
    """Where a run's steps are taken: "cuda" when torch sees a GPU (the trainer's Accelerator
    then runs there), else "cpu"."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def adamw_options(device_type: str) -> dict:
    """AdamW's keyword arguments for a run on ``device_type``: on CUDA the fused kernel (one
    launch for every parameter instead of several per tensor); elsewhere torch's default, which
    keeps a CPU run's steps bit for bit as before (the fused CPU kernel differs by ~1e-7)."""
    return {"fused": True} if device_type == "cuda" else {}


def tf32_allowed(train: TrainConfig, device_type: str) -> bool | None:
    """Whether float32 matmuls and convolutions run in TF32 (``train.tf32``); None on a device
    without TF32 (a CPU), whose settings stay as they are."""
    return train.tf32 if device_type == "cuda" else None


def use_tf32(allowed: bool | None) -> None:
    """Set CUDA's TF32 switches (cuBLAS matmuls, cuDNN convolutions); None leaves them."""
    if allowed is not None:
        torch.backends.cuda.matmul.allow_tf32 = allowed
        torch.backends.cudnn.allow_tf32 = allowed


def build_optimizer(model: nn.Module, train: TrainConfig) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices (embeddings and projections) only; fused on CUDA.

    On CUDA it also sets the float32 matmul precision of the steps it will take
    (``train.tf32``): the trainer and ``bench train`` build the optimizer before they measure
    the matmul peak, so the peak is measured as the steps run.
    """
    device_type = training_device_type()
    use_tf32(tf32_allowed(train, device_type))
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": train.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        groups, lr=train.lr, betas=tuple(train.betas), **adamw_options(device_type)
    )

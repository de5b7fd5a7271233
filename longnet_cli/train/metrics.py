"""What a run reports: ``metrics.jsonl`` (``MetricsLog``), the trackers beside it (tensorboard,
wandb: ``trackers``), throughput and model FLOPs utilisation (``Mfu``, on ``runtime``'s one
matmul peak, measured in the run's compute dtype and recorded with every figure it divides).
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from longnet_cli.config.sections import LogConfig
from longnet_cli.core.files import atomic_write_text

Tracker = Callable[..., None]  # accelerate's log(values, step=...)


def trackers(log: LogConfig) -> list[str] | None:
    """accelerate trackers to log to: tensorboard and wandb, each when asked for and
    installed (a missing one is a warning: metrics.jsonl is always written)."""
    wanted = []
    if log.tensorboard:
        if importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX"):
            wanted.append("tensorboard")
        else:
            print(
                "warning: log.tensorboard is on but tensorboard is not installed "
                "(pip install tensorboard); not logging to it",
                file=sys.stderr,
            )
    if log.wandb:
        if importlib.util.find_spec("wandb"):
            wanted.append("wandb")
        else:
            print(
                "warning: log.wandb is on but wandb is not installed (pip install wandb); "
                "not logging to it",
                file=sys.stderr,
            )
    return wanted or None


def flat_config(values: dict, prefix: str = "") -> dict[str, int | float | str | bool]:
    """The resolved recipe as flat scalars ("model.dim": 256) for trackers' run config."""
    flat: dict[str, int | float | str | bool] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(flat_config(value, f"{prefix}{key}."))
        elif isinstance(value, bool | int | float | str):
            flat[f"{prefix}{key}"] = value
        else:
            flat[f"{prefix}{key}"] = str(value)
    return flat


def flat_metrics(values: dict, prefix: str = "") -> dict[str, float]:
    """Nested metrics as flat scalars for trackers: {"eval": {"contexts": {"1024": {"loss"..."""
    flat: dict[str, float] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(flat_metrics(value, f"{prefix}{key}/"))
        elif isinstance(value, int | float) and key != "step":
            flat[f"{prefix}{key}"] = value
    return flat


class MetricsLog:
    """``metrics.jsonl``: one JSON object per logged step, written by the main process.

    On resume, lines after the resumed step (logged before a crash, then lost) are dropped, so
    is a ``data_changed`` line of the resumed step (written again if the data still differs
    from the checkpoint's: one line per change, however often that resume is repeated), and
    so is a line that does not parse: the torn last line of a process killed while writing it
    (with a warning), which appending after it would otherwise glue to the next record.
    ``write`` also hands the record to ``tracker`` (when trackers are on); ``note`` (where
    the run's weights or data came from) writes to the file only.
    """

    def __init__(
        self, path: Path, active: bool, resumed_step: int, tracker: Tracker | None = None
    ) -> None:
        self.path, self.active, self.tracker = path, active, tracker
        self.started = time.perf_counter()
        self.elapsed_before = 0.0
        if active and path.exists():
            self.elapsed_before = self._keep_until(resumed_step)

    def _keep_until(self, resumed_step: int) -> float:
        """Rewrite the log without the lines a resume from ``resumed_step`` drops; the elapsed
        time it had recorded by then."""
        kept, torn, elapsed_before = [], 0, 0.0
        for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if not isinstance(record, dict):
                torn += bool(line.strip())
                continue
            step = record.get("step", 0)
            if "data_changed" in record and step == resumed_step:
                continue  # a resume from this step writes it again if it still applies
            if isinstance(step, int | float) and step <= resumed_step:
                kept.append(line)
                elapsed = record.get("elapsed_s")
                if isinstance(elapsed, int | float) and math.isfinite(elapsed):
                    elapsed_before = float(elapsed)
        if torn:
            print(
                f"warning: {self.path}: dropped {torn} unreadable line(s) (a line torn by a "
                "process killed while writing it)",
                file=sys.stderr,
            )
        atomic_write_text(self.path, "".join(f"{line}\n" for line in kept))
        return elapsed_before

    def write(self, **values) -> None:
        """One record (with ``elapsed_s``), to the file and the trackers."""
        if self.active:
            self._append(values)
            if self.tracker is not None:
                self.tracker(flat_metrics(values), step=values["step"])

    def note(self, **values) -> None:
        """One record (with ``elapsed_s``), to the file only."""
        if self.active:
            self._append(values)

    def _append(self, values: dict) -> None:
        values["elapsed_s"] = self.elapsed_before + time.perf_counter() - self.started
        with open(self.path, "a") as handle:
            handle.write(json.dumps(values) + "\n")


class Throughput:
    """Tokens per second over the steps since the last ``measure``."""

    def __init__(self, tokens_per_step: int) -> None:
        self.tokens_per_step = tokens_per_step
        self.started, self.steps = time.perf_counter(), 0

    def step(self) -> None:
        self.steps += 1

    def measure(self) -> float:
        """Tokens per second since the last measure (or the start)."""
        elapsed = time.perf_counter() - self.started
        return self.tokens_per_step * self.steps / max(elapsed, 1e-9)

    def restart(self) -> None:
        self.started, self.steps = time.perf_counter(), 0


@dataclass(frozen=True)
class Mfu:
    """Model FLOPs utilisation: model FLOPs per second over the measured peak of all the
    run's devices (``peak_flops``), the peak recorded with every figure it divides."""

    flops_per_token: float
    peak_flops: float

    @classmethod
    def measured(cls, accelerator, precision: str, flops_per_token: float) -> Mfu | None:
        """The device's matmul peak in the run's compute dtype, measured by the main process,
        which alone writes metrics; None on the other processes."""
        from longnet_cli.runtime import PRECISIONS, device_peak_flops

        if not accelerator.is_main_process:
            return None
        peak = device_peak_flops(accelerator.device, PRECISIONS[precision].dtype)
        return cls(flops_per_token, peak.flops_per_s * accelerator.num_processes)

    def figures(self, tokens_per_s: float | None) -> dict:
        """{"mfu": ..., "peak_flops": ...}, or {} without a throughput."""
        if not (self.peak_flops and self.flops_per_token and tokens_per_s):
            return {}
        mfu = tokens_per_s * self.flops_per_token / self.peak_flops
        return {"mfu": mfu, "peak_flops": self.peak_flops}

"""The device's measured peak: the FLOP rate a large matrix multiply reaches here, right now.

Model FLOPs utilisation (MFU, as torchtitan and nanoGPT report it) divides the model FLOPs a
training step performs per second by a peak. A vendor's datasheet figure does not exist for a
CPU and is rarely reached on a GPU, so the peak is measured once at the start of a run, in the
dtype the run computes in, and recorded beside the figures it divides.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PeakFlops:
    """A measured matmul rate: FLOPs per second, with how it was measured."""

    flops_per_s: float
    device: str
    dtype: str
    size: int
    threads: int

    def to_json(self) -> dict:
        return {
            "flops_per_s": self.flops_per_s,
            "device": self.device,
            "dtype": self.dtype,
            "matmul_size": self.size,
            "threads": self.threads,
        }


_MEASURED: dict[tuple[str, str], PeakFlops] = {}


def device_peak_flops(device: torch.device | str, dtype: torch.dtype) -> PeakFlops:
    """``measure_peak_flops`` once per process, device and dtype (a quarter of a second each
    time otherwise: a process that trains several times, tests among them, measures once)."""
    key = (str(torch.device(device)), str(dtype))
    if key not in _MEASURED:
        _MEASURED[key] = measure_peak_flops(device, dtype)
    return _MEASURED[key]


def measure_peak_flops(
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    size: int | None = None,
    seconds: float = 0.25,
) -> PeakFlops:
    """The best rate of ``size`` x ``size`` matmuls over about ``seconds`` (after a warm-up).

    Square matmuls large enough to be compute-bound: 1,024 on a CPU (about 2 GFLOP each),
    8,192 on a GPU. The best repetition is kept: the peak is what the device can do.
    """
    device = torch.device(device)
    if size is None:
        size = 8192 if device.type == "cuda" else 1024
    if device.type == "cpu" and dtype in (torch.float16, torch.bfloat16):
        dtype = torch.float32  # CPU autocast runs the matmuls it can in bf16; fp32 is the floor
    generator = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)
    b = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)
    flops = 2.0 * size**3
    _sync(device)
    torch.mm(a, b)  # warm up: kernels chosen, memory touched
    _sync(device)
    best = float("inf")
    deadline = time.perf_counter() + seconds
    repetitions = 0
    while repetitions < 3 or time.perf_counter() < deadline:
        start = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        best = min(best, time.perf_counter() - start)
        repetitions += 1
    return PeakFlops(
        flops_per_s=flops / best,
        device=str(device),
        dtype=str(dtype).removeprefix("torch."),
        size=size,
        threads=torch.get_num_threads(),
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)

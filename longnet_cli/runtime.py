"""Torch-side process settings, one home each: the allocator, device resolution, the precision
table (names, dtypes, accelerate's and autocast's spelling), and the device's matmul peak.

Nothing here imports torch at module level: the recipe schema reads the precision names from
this module, and loading a recipe (``longnet train --help``, validation) must stay fast.

The peak: model FLOPs utilisation (MFU, as torchtitan and nanoGPT report it) divides the model
FLOPs a training step performs per second by a peak. A vendor's datasheet figure does not exist
for a CPU and is rarely reached on a GPU, so the peak is measured once per process, in the dtype
the run computes in, and recorded beside the figures it divides (``longnet bench train`` divides
by the same measurement).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def keep_freed_memory(threshold_bytes: int = 1 << 30) -> bool:
    """Ask glibc to keep large freed blocks instead of returning them to the OS.

    At long sequence lengths on a CPU, glibc unmaps every large temporary and page-faults it
    back on the next allocation; measured in DESIGN.md as a third of the time in the kernel.
    Returns False (and changes nothing) where glibc's mallopt is not available.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok_mmap = libc.mallopt(_M_MMAP_THRESHOLD, threshold_bytes)
        ok_trim = libc.mallopt(_M_TRIM_THRESHOLD, threshold_bytes)
    except (OSError, AttributeError):
        return False
    return bool(ok_mmap and ok_trim)


# -- precision -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Precision:
    """A compute precision a recipe may name: its torch dtype, and how accelerate says it."""

    name: str  # the recipe's and the CLI's name: "fp32", "bf16", "fp16"
    dtype_name: str  # torch's: "float32", "bfloat16", "float16"
    mixed_precision: str  # accelerate's: "no", "bf16", "fp16"

    @property
    def dtype(self) -> torch.dtype:
        import torch

        return getattr(torch, self.dtype_name)

    @property
    def autocast(self) -> bool:
        """Whether the precision runs under torch autocast (the weights stay float32)."""
        return self.name != "fp32"


PRECISIONS: dict[str, Precision] = {
    "fp32": Precision("fp32", "float32", "no"),
    "bf16": Precision("bf16", "bfloat16", "bf16"),
    "fp16": Precision("fp16", "float16", "fp16"),
}
PRECISION_NAMES = tuple(PRECISIONS)  # ("fp32", "bf16", "fp16")
DTYPE_NAMES = tuple(p.dtype_name for p in PRECISIONS.values())  # ("float32", "bfloat16", ...)


def autocast_context(precision: str, device_type: str):
    """torch autocast for "bf16" / "fp16" on ``device_type``; a no-op context for "fp32"."""
    chosen = PRECISIONS[precision]
    if not chosen.autocast:
        return contextlib.nullcontext()
    import torch

    return torch.autocast(device_type, dtype=chosen.dtype)


# -- device ----------------------------------------------------------------------------------


def resolve_device(name: str | None, auto: bool = False) -> torch.device:
    """The torch device a ``--device`` value names; None (and "auto" where ``auto``) is CUDA
    when available, else the CPU. A bad name or CUDA asked for on a machine without it raises
    InputError (exit code 2) naming the value."""
    import torch

    from longnet_cli.core.errors import InputError

    if name is None or (auto and name == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        choices = "auto, cpu, cuda, cuda:1" if auto else "cpu, cuda, cuda:1"
        raise InputError(f"--device {name!r} is not a device ({choices})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {name}: CUDA is not available on this machine")
    return device


# -- the matmul peak -------------------------------------------------------------------------


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
    import torch

    key = (str(torch.device(device)), str(dtype))
    if key not in _MEASURED:
        _MEASURED[key] = measure_peak_flops(device, dtype)
    return _MEASURED[key]


def measure_peak_flops(
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    size: int | None = None,
    seconds: float = 0.25,
    half_on_cpu: bool = False,
) -> PeakFlops:
    """The best rate of ``size`` x ``size`` matmuls over about ``seconds`` (after a warm-up).

    Square matmuls large enough to be compute-bound: 1,024 on a CPU (about 2 GFLOP each),
    8,192 on a GPU. The best repetition is kept: the peak is what the device can do.
    On a CPU, float16 and bfloat16 are measured as float32 (the floor of what autocast runs)
    unless ``half_on_cpu``: the real half-precision rate (``choose_precision`` compares it).
    """
    import torch

    dtype = torch.float32 if dtype is None else dtype
    device = torch.device(device)
    if size is None:
        size = 8192 if device.type == "cuda" else 1024
    if device.type == "cpu" and dtype in (torch.float16, torch.bfloat16) and not half_on_cpu:
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
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- train.precision: auto -------------------------------------------------------------------

TRAIN_PRECISION_NAMES = (*PRECISION_NAMES, "auto")  # train.precision: "auto" resolves at start

# bf16 must beat fp32's matmul peak by this much: a clear win, not measurement noise (so that
# identical ranks of one run, each measuring, decide alike).
AUTO_BF16_MARGIN = 1.2


def choose_precision(fp32_flops_per_s: float, bf16_flops_per_s: float) -> str:
    """``train.precision: auto``'s rule: "bf16" where its measured matmul peak is at least
    ``AUTO_BF16_MARGIN`` times fp32's on this device, else "fp32"."""
    return "bf16" if bf16_flops_per_s >= AUTO_BF16_MARGIN * fp32_flops_per_s else "fp32"


def measure_auto_precision(device: torch.device | str) -> dict:
    """Measure fp32's and bf16's real matmul peaks on ``device`` and choose between them:
    {"asked": "auto", "resolved": ..., "peak_flops": {"fp32": ..., "bf16": ...}, "device": ...}."""
    import torch

    fp32 = device_peak_flops(device, torch.float32)
    bf16 = measure_peak_flops(device, torch.bfloat16, half_on_cpu=True)
    return {
        "asked": "auto",
        "resolved": choose_precision(fp32.flops_per_s, bf16.flops_per_s),
        "peak_flops": {"fp32": fp32.flops_per_s, "bf16": bf16.flops_per_s},
        "device": fp32.device,
        "threads": fp32.threads,
    }

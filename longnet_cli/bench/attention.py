"""``longnet bench attention``: speed of dilated attention on this machine, beside dense SDPA.

FLOPs are counted the same way for both: 4*D FLOPs per (query, key) pair that the attention
actually scores (causal: pairs with key <= query), forward; forward+backward counts 3x the
forward (the backward does two such products per pair). Times are the best of the repeats.
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from longnet_cli.model.attention import dilated_attention
from longnet_cli.model.flops import dense_attention_flops, dilated_attention_flops
from longnet_cli.model.kernels import select_kernel

MODES = ("fwd", "fwd+bwd")


@dataclass(frozen=True)
class AttentionBenchConfig:
    """What ``bench_attention`` measures."""

    lengths: Sequence[int]
    heads: int = 4
    dim_head: int = 32
    segment_lengths: Sequence[int] = (2048, 4096, 8192, 16384)
    dilation_rates: Sequence[int] = (1, 2, 4, 8)
    causal: bool = True
    dtype: str = "float32"
    backend: str = "auto"
    device: str = "cpu"
    modes: Sequence[str] = MODES
    dense_max: int = 32768
    repeats: int = 3
    min_seconds: float = 1.0
    warmup_seconds: float = 0.3
    long_seconds: float = 20.0  # a first run longer than this: one more run, measured


@dataclass(frozen=True)
class BenchRow:
    """One measurement: an implementation and mode at one sequence length."""

    n: int
    impl: str  # "dilated" or "dense"
    mode: str  # "fwd" or "fwd+bwd"
    seconds: float
    tokens_per_s: float
    gflops: float

    def to_dict(self) -> dict:
        return asdict(self)


def dilated_flops(n: int, cfg: AttentionBenchConfig) -> float:
    """Forward FLOPs of dilated attention at length n (the kernel calls it really makes)."""
    return dilated_attention_flops(
        n, cfg.heads, cfg.dim_head, cfg.segment_lengths, cfg.dilation_rates, cfg.causal
    )


def dense_flops(n: int, cfg: AttentionBenchConfig) -> float:
    """Forward FLOPs of dense attention at length n."""
    return dense_attention_flops(n, cfg.heads, cfg.dim_head, cfg.causal)


def _available_bytes(device: torch.device) -> int:
    """Memory this process may still take: free GPU memory, or MemAvailable on Linux."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def estimated_bytes(n: int, cfg: AttentionBenchConfig) -> int:
    """Peak memory of one forward+backward: q, k, v, their grads, output, its grad, float32
    accumulators and lse, plus bounded per-call temporaries (a generous 16 tensors' worth)."""
    element = torch.finfo(getattr(torch, cfg.dtype)).bits // 8
    return 16 * n * cfg.heads * cfg.dim_head * max(element, 4)


def _timed(fn: Callable[[], None], cfg: AttentionBenchConfig, sync: Callable[[], None]) -> float:
    """Best wall time of ``fn`` over up to ``repeats`` runs, after warming up.

    Warm-up runs go on for at least ``warmup_seconds`` (caches, allocator pools and clocks
    settle; a single warm-up left the first measurement of a process 20% slow). A run over
    ``long_seconds`` is warmed up once and measured once: its first run pays the page faults of
    every new buffer (measured: 1M tokens' fwd+bwd 12% slower cold than warm), which no
    training step after the first pays.
    """

    def once() -> float:
        start = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - start

    first = once()
    if first > cfg.long_seconds:
        return once()
    warm = first
    while warm < cfg.warmup_seconds:
        warm += once()
    times: list[float] = []
    while len(times) < cfg.repeats and (not times or sum(times) < cfg.min_seconds):
        times.append(once())
    return min(times)


def _attention_fn(impl: str, mode: str, q, k, v, cfg: AttentionBenchConfig) -> Callable[[], None]:
    """A closure running one forward (and backward) of the implementation."""

    def forward():
        if impl == "dense":
            out = F.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=cfg.causal
            )  # (B, H, N, D)
            return out
        return dilated_attention(
            q, k, v, cfg.segment_lengths, cfg.dilation_rates,
            causal=cfg.causal, backend=cfg.backend,
        )  # fmt: skip

    def run():
        if mode == "fwd":
            with torch.no_grad():
                forward()
        else:
            out = forward()
            out.backward(torch.ones_like(out))
            for x in (q, k, v):
                x.grad = None

    return run


def bench_attention(
    cfg: AttentionBenchConfig, on_row: Callable[[BenchRow], None] | None = None
) -> list[BenchRow]:
    """Measure dilated (and, up to ``dense_max``, dense) attention at each length.

    Stops before a length whose estimated memory exceeds what is available.
    """
    device = torch.device(cfg.device)
    dtype = getattr(torch, cfg.dtype)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    select_kernel(cfg.backend, torch.empty(1, 1, 1, cfg.dim_head, device=device, dtype=dtype))
    rows: list[BenchRow] = []
    for n in cfg.lengths:
        if estimated_bytes(n, cfg) > 0.8 * _available_bytes(device):
            break
        gen = torch.Generator(device=device).manual_seed(n)
        shape = (1, n, cfg.heads, cfg.dim_head)
        q, k, v = (
            torch.randn(shape, generator=gen, device=device, dtype=dtype).requires_grad_()
            for _ in range(3)
        )
        impls = ["dilated", "dense"] if n <= cfg.dense_max else ["dilated"]
        for impl in impls:
            flops = dilated_flops(n, cfg) if impl == "dilated" else dense_flops(n, cfg)
            for mode in cfg.modes:
                seconds = _timed(_attention_fn(impl, mode, q, k, v, cfg), cfg, sync)
                total = flops * (3 if mode == "fwd+bwd" else 1)
                row = BenchRow(n, impl, mode, seconds, n / seconds, total / seconds / 1e9)
                rows.append(row)
                if on_row:
                    on_row(row)
        del q, k, v
        gc.collect()
    return rows


def summarize(rows: Sequence[BenchRow], cfg: AttentionBenchConfig) -> dict:
    """The figures the project tracks: dilated/dense GFLOP/s at each length where both ran,
    and time per token relative to the first length that holds the longest segment."""
    by_key = {(r.n, r.impl, r.mode): r for r in rows}
    efficiency = {
        f"{mode}@{r.n}": r.gflops / by_key[(r.n, "dense", mode)].gflops
        for r in rows
        for mode in [r.mode]
        if r.impl == "dilated" and (r.n, "dense", mode) in by_key
    }
    reference = next((n for n in cfg.lengths if n >= max(cfg.segment_lengths)), None)
    scaling = {}
    for r in rows:
        base = by_key.get((reference, "dilated", r.mode))
        if r.impl == "dilated" and base and r.n >= reference:
            scaling[f"{r.mode}@{r.n}"] = (r.seconds / r.n) / (base.seconds / base.n)
    return {
        "dilated_over_dense_gflops": efficiency,
        "time_per_token_vs_reference": scaling,
        "reference_length": reference,
    }

"""Kernel choice and call sizing as pure functions of the device's properties (no GPU needed)."""

from __future__ import annotations

import itertools

import pytest
import torch

from longnet_cli.model.attention import (
    CALL_MEMORY_FRACTION,
    MAX_ROWS_PER_CALL,
    ROWS_PER_CALL,
    plan_calls,
    rows_per_call,
    rows_per_call_for,
)
from longnet_cli.model.kernels import choose_backend

HALF = (torch.float16, torch.bfloat16)
CAPABILITIES = [(3, 7), (6, 0), (7, 0), (7, 5), (8, 0), (8, 6), (8, 9), (9, 0), (10, 0), (12, 0)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
HEAD_DIMS = [4, 6, 8, 12, 16, 30, 32, 60, 64, 96, 128, 192, 256, 264, 320]


def _memory_efficient_takes(capability, dtype, head_dim, stride) -> bool:
    """torch's memory-efficient CUDA kernel, as the issue states its rules."""
    if stride != 1 or dtype not in (*HALF, torch.float32) or capability < (5, 0):
        return False
    if dtype == torch.bfloat16 and capability < (8, 0):
        return False
    if capability >= (8, 0):
        return head_dim % (8 if dtype in HALF else 4) == 0
    return True


def _flash_attn_takes(capability, dtype, head_dim, stride) -> bool:
    """flash-attn 2: sm80+, half precision, head_dim % 8 == 0 up to 256."""
    return (
        capability >= (8, 0)
        and dtype in HALF
        and head_dim % 8 == 0
        and head_dim <= 256
        and stride == 1
    )


@pytest.mark.parametrize("installed", [False, True], ids=["no-flash-attn", "flash-attn"])
def test_auto_never_picks_a_cuda_kernel_that_refuses_the_call(installed):
    for capability, dtype, head_dim, stride in itertools.product(
        CAPABILITIES, DTYPES, HEAD_DIMS, [1, 2]
    ):
        chosen = choose_backend("cuda", capability, dtype, head_dim, stride, installed)
        case = (capability, dtype, head_dim, stride)
        if chosen == "flash-attn":
            assert installed and _flash_attn_takes(*case), case
        elif chosen == "torch":
            assert _memory_efficient_takes(*case), case
            assert not (installed and _flash_attn_takes(*case)), case  # flash-attn preferred
        else:
            assert chosen == "math", case
            assert not _memory_efficient_takes(*case), case  # math only as the fallback


@pytest.mark.parametrize(
    ("capability", "dtype", "head_dim", "stride", "installed", "expected"),
    [
        ((9, 0), torch.bfloat16, 64, 1, True, "flash-attn"),
        ((9, 0), torch.bfloat16, 64, 1, False, "torch"),
        ((8, 0), torch.bfloat16, 60, 1, True, "math"),  # 60 % 8: neither kernel
        ((8, 0), torch.float32, 6, 1, False, "math"),  # float32 on sm80 needs % 4
        ((8, 0), torch.float32, 4, 1, True, "torch"),
        ((7, 5), torch.float16, 6, 1, True, "torch"),  # unaligned kernels below sm80
        ((7, 5), torch.bfloat16, 64, 1, True, "math"),  # no bfloat16 below sm80
        ((9, 0), torch.float16, 320, 1, True, "torch"),  # flash-attn stops at 256
        ((9, 0), torch.bfloat16, 64, 3, True, "math"),  # strided last dimension
        ((9, 0), torch.float64, 64, 1, True, "math"),
        ((3, 7), torch.float32, 64, 1, False, "math"),
    ],
)
def test_auto_choice_examples(capability, dtype, head_dim, stride, installed, expected):
    assert choose_backend("cuda", capability, dtype, head_dim, stride, installed) == expected


def test_auto_off_cuda():
    assert choose_backend("cpu", None, torch.bfloat16, 6, 5, True) == "torch"
    assert choose_backend("meta", None, torch.float32, 64, 1, True) == "math"
    assert choose_backend("mps", None, torch.float32, 64, 1, False) == "math"


def test_rows_per_call_cpu_keeps_the_cache_sized_calls():
    assert rows_per_call("cpu", 64, 4) == ROWS_PER_CALL
    assert rows_per_call("cpu", 64, 2, memory_bytes=1 << 40) == ROWS_PER_CALL
    assert rows_per_call_for(torch.empty(1, 8, 2, 64)) == ROWS_PER_CALL


@pytest.mark.parametrize("gib", [8, 24, 80, 141])
@pytest.mark.parametrize(("head_dim", "element"), [(64, 2), (128, 2), (64, 4), (256, 4)])
def test_rows_per_call_gpu_grows_with_memory_within_its_budget(gib, head_dim, element):
    memory = gib << 30
    rows = rows_per_call("cuda", head_dim, element, memory)
    assert rows & (rows - 1) == 0  # a power of two
    assert ROWS_PER_CALL <= rows <= MAX_ROWS_PER_CALL
    row_bytes = head_dim * (8 * element + 8) + 64
    assert rows == ROWS_PER_CALL or rows * row_bytes <= memory * CALL_MEMORY_FRACTION
    assert rows * 2 * row_bytes > memory * CALL_MEMORY_FRACTION or rows == MAX_ROWS_PER_CALL
    assert rows_per_call("cuda", head_dim, element, memory * 2) >= rows


def test_rows_per_call_gpu_makes_a_million_token_layer_a_few_launches():
    """An H200 (141 GB), bf16, D = 64: millions of rows per call; the paper's branches over
    1M tokens x 12 heads take a few calls each instead of hundreds."""
    rows = rows_per_call("cuda", 64, 2, 141 * 10**9)
    assert rows >= 1 << 20
    segments, rates = [2048, 4096, 8192, 16384, 32768], [1, 2, 4, 6, 12]
    gpu = plan_calls(1 << 20, 12, segments, rates, rows_per_call=rows)
    cpu = plan_calls(1 << 20, 12, segments, rates)
    assert len(gpu) <= 4 * len(segments) and len(cpu) > 100

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


# --------------------------------------------------------------------------- choose_kernel

REQUESTS = ["auto", "torch", "efficient", "flash-attn", "math"]


def _torch_flash_takes(capability, dtype, head_dim, stride) -> bool:
    """torch's FlashAttention-2: sm80-sm121, half precision, head_dim % 8 up to 256 (192 on
    sm86-sm89, whose backward stops there)."""
    limit = 192 if (8, 6) <= capability <= (8, 9) else 256
    return (
        (8, 0) <= capability <= (12, 1)
        and dtype in HALF
        and head_dim % 8 == 0
        and (head_dim <= limit)
    )


def _expected_kernel(device, capability, dtype, head_dim, stride, installed, requested):
    """The rule as the issue states it, written independently: the kernel name, or None
    where the request must raise."""
    if requested == "math":
        return "math"
    if requested == "flash-attn" and not installed:
        return None
    if device == "cpu":
        return "torch-cpu" if requested in ("auto", "torch") else None
    if device != "cuda":
        return "math" if requested == "auto" else None
    case = (capability, dtype, head_dim, 1)
    flash_attn = installed and _flash_attn_takes(*case)
    flash, efficient = _torch_flash_takes(*case), _memory_efficient_takes(*case)
    if requested == "auto":
        if stride != 1:
            return "math"
        return next(
            (n for n, ok in [("flash-attn", flash_attn), ("torch-flash", flash),
                             ("torch-efficient", efficient)] if ok),
            "math",
        )  # fmt: skip
    if requested == "torch":
        return "torch-flash" if flash else "torch-efficient" if efficient else None
    if requested == "efficient":
        return "torch-efficient" if efficient else None
    return "flash-attn" if flash_attn else None


@pytest.mark.parametrize("requested", REQUESTS)
@pytest.mark.parametrize("installed", [False, True], ids=["no-flash-attn", "flash-attn"])
def test_choose_kernel_on_every_combination(requested, installed):
    from longnet_cli.model.kernels import KERNELS, choose_kernel

    combos = itertools.chain(
        itertools.product(["cuda"], CAPABILITIES, DTYPES, HEAD_DIMS, [1, 2]),
        itertools.product(["cpu", "meta", "mps"], [None], DTYPES, [8, 6], [1, 2]),
    )
    for device, capability, dtype, head_dim, stride in combos:
        case = (device, capability, dtype, head_dim, stride, installed, requested)
        want = _expected_kernel(*case)
        if want is None:
            with pytest.raises(ValueError):
                choose_kernel(*case)
            continue
        got = choose_kernel(*case)
        assert got == want, case
        assert got in KERNELS


def test_choose_kernel_examples_and_messages():
    from longnet_cli.model.kernels import choose_kernel

    h100 = ("cuda", (9, 0))
    assert choose_kernel(*h100, torch.bfloat16, 64, 1, False) == "torch-flash"
    assert choose_kernel(*h100, torch.bfloat16, 64, 1, True) == "flash-attn"
    assert choose_kernel(*h100, torch.bfloat16, 64, 1, True, "torch") == "torch-flash"
    assert choose_kernel(*h100, torch.bfloat16, 64, 1, True, "efficient") == "torch-efficient"
    assert choose_kernel(*h100, torch.float32, 64, 1, False) == "torch-efficient"
    assert choose_kernel(*h100, torch.float32, 64, 1, False, "torch") == "torch-efficient"
    assert choose_kernel(*h100, torch.float16, 320, 1, False) == "torch-efficient"
    assert choose_kernel("cuda", (8, 6), torch.float16, 256, 1, False) == "torch-efficient"
    assert choose_kernel("cuda", (8, 6), torch.float16, 192, 1, False) == "torch-flash"
    assert choose_kernel("cuda", (7, 5), torch.float16, 64, 1, False) == "torch-efficient"
    assert choose_kernel(*h100, torch.bfloat16, 64, 2, False) == "math"
    assert choose_kernel(*h100, torch.bfloat16, 64, 2, False, "torch") == "torch-flash"
    with pytest.raises(ValueError, match="float32, float16 or bfloat16"):
        choose_kernel(*h100, torch.float64, 64, 1, False, "efficient")
    with pytest.raises(ValueError, match="gpu extra"):
        choose_kernel(*h100, torch.bfloat16, 64, 1, False, "flash-attn")
    with pytest.raises(ValueError, match="does not run on device 'cpu'"):
        choose_kernel("cpu", None, torch.float32, 64, 1, False, "efficient")
    with pytest.raises(ValueError, match="unknown attention backend"):
        choose_kernel("cpu", None, torch.float32, 64, 1, False, "cudnn")


def test_flash_attn_lookup_is_cached(monkeypatch):
    import importlib.util

    from longnet_cli.model import kernels

    calls = []
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: calls.append(name) or real(name))
    kernels.flash_attn_available.cache_clear()
    try:
        first = kernels.flash_attn_available()
        assert [kernels.flash_attn_available() for _ in range(5)] == [first] * 5
        assert calls == ["flash_attn"]
    finally:
        kernels.flash_attn_available.cache_clear()


# --------------------------------------------------------------------------- schema binding

# torch 2.11's schemas of the two flash operators (before the seed outputs were renamed
# rng_state/unused and block_table/num_splits were added), as its _meta_registrations.py
# writes their arguments.
SCHEMA_2_11 = {
    "_flash_attention_forward": (
        "aten::_flash_attention_forward(Tensor query, Tensor key, Tensor value, Tensor? cum_seq_q,"
        " Tensor? cum_seq_k, SymInt max_q, SymInt max_k, float dropout_p, bool is_causal, bool"
        " return_debug_mask, *, float? scale=None, SymInt? window_size_left=None, SymInt?"
        " window_size_right=None, Tensor? seqused_k=None, Tensor? alibi_slopes=None) -> (Tensor"
        " output, Tensor softmax_logsumexp, Tensor philox_seed, Tensor philox_offset, Tensor"
        " debug_attn_mask)"
    ),
    "_flash_attention_backward": (
        "aten::_flash_attention_backward(Tensor grad_out, Tensor query, Tensor key, Tensor value,"
        " Tensor out, Tensor logsumexp, Tensor cum_seq_q, Tensor cum_seq_k, SymInt max_q, SymInt"
        " max_k, float dropout_p, bool is_causal, Tensor philox_seed, Tensor philox_offset, *,"
        " float? scale=None, SymInt? window_size_left=None, SymInt? window_size_right=None) ->"
        " (Tensor, Tensor, Tensor)"
    ),
}


def _positional_names(schema):
    return [a.name for a in schema.arguments if not a.kwarg_only]


@pytest.mark.parametrize(
    "name",
    [
        "_flash_attention_forward",
        "_flash_attention_backward",
        "_efficient_attention_forward",
        "_efficient_attention_backward",
    ],
)
def test_binding_matches_this_torchs_schema(name):
    """Every positional argument of this torch's schema is offered, in the schema's order
    (the non-optional cum_seq, rng_state and unused tensors among them); scale by keyword."""
    from longnet_cli.model.kernels import _ALIASES, _DEFAULT, _OFFERS, bind_operator

    schema = getattr(torch.ops.aten, name).default._schema
    binding = bind_operator(schema, _OFFERS[name])
    names = [_ALIASES.get(n, n) if n not in _OFFERS[name] else n for n in _positional_names(schema)]
    assert [n for n, _ in binding.positional] == names
    assert _DEFAULT not in [n for n, _ in binding.positional]
    assert ("scale", "scale") in binding.keyword
    if name == "_flash_attention_backward":
        required = {
            a.name for a in schema.arguments if not isinstance(a.type, torch._C.OptionalType)
        }
        assert {"cum_seq_q", "cum_seq_k", "rng_state", "unused"} <= required


@pytest.mark.parametrize("name", list(SCHEMA_2_11))
def test_binding_of_a_torch_2_11_schema(name):
    """A schema of torch 2.11's shape binds, and a call passes each value where it goes."""
    from longnet_cli.model.kernels import _OFFERS, bind_operator

    schema = torch._C.parse_schema(SCHEMA_2_11[name])
    binding = bind_operator(schema, _OFFERS[name])
    values = {n: f"<{n}>" for n in _OFFERS[name]}
    seen = {}
    binding.call(lambda *args, **kwargs: seen.update(args=args, kwargs=kwargs), values)
    positional = _positional_names(schema)
    want = [
        values[{"philox_seed": "rng_state", "philox_offset": "unused"}.get(n, n)]
        for n in positional
    ]
    assert list(seen["args"]) == want
    assert seen["kwargs"] == {"scale": "<scale>"}


def test_binding_skips_new_optional_arguments_and_names_unknown_required_ones():
    from longnet_cli.model.kernels import bind_operator

    schema = torch._C.parse_schema(
        "aten::op(Tensor query, Tensor? extra, float dropout_p, int flag=3, *, float? scale=None,"
        " int? num_splits=None, bool new_flag=False) -> Tensor"
    )
    binding = bind_operator(schema, ["query", "dropout_p", "scale"])
    seen = {}
    binding.call(
        lambda *a, **kw: seen.update(a=a, kw=kw), {"query": "q", "dropout_p": 0.0, "scale": 1.0}
    )
    assert seen == {"a": ("q", None, 0.0, 3), "kw": {"scale": 1.0}}
    strict = torch._C.parse_schema("aten::op(Tensor query, Tensor window, *, int splits) -> Tensor")
    with pytest.raises(RuntimeError, match="window, splits"):
        bind_operator(strict, ["query"])


def test_cuda_kernels_run_against_the_meta_schemas():
    """The CUDA kernels' calls on meta tensors (the schemas' shape functions): shapes in and
    out. (torch's meta function of the memory-efficient backward lacks the schema's ``out``
    argument, so that one call is checked by the next test.)"""
    from longnet_cli.model import kernels

    q = torch.empty(3, 40, 4, 64, device="meta", dtype=torch.bfloat16)
    for name in ("torch-flash", "torch-efficient"):
        out, lse = kernels.KERNELS[name].forward(q, q, q, True, 0.125)
        assert out.shape == q.shape and lse.shape == (3, 40, 4) and lse.dtype == torch.float32
    grads = kernels.KERNELS["torch-flash"].backward(q, q, q, q, out, lse, True, 0.125)
    assert [g.shape for g in grads] == [q.shape] * 3


def test_memory_efficient_backward_reuses_its_padded_lse_and_seed(monkeypatch):
    from longnet_cli.model import kernels

    seen = []

    def record(name, **values):
        seen.append(values)
        q = values["query"]
        return torch.zeros_like(q), torch.zeros_like(q), torch.zeros_like(q), None

    monkeypatch.setattr(kernels, "call_operator", record)
    q = torch.randn(2, 40, 3, 8)
    for i in range(3):
        lse = torch.full((2, 40, 3), float(i))
        kernels.KERNELS["torch-efficient"].backward(q, q, q, q, q, lse, True, 0.1)
        pad = seen[-1]["logsumexp"]
        assert pad.shape == (2, 3, 64)
        assert torch.all(pad[:, :, :40] == i) and torch.all(pad[:, :, 40:] == float("inf"))
    assert seen[0]["logsumexp"] is seen[2]["logsumexp"]
    assert seen[0]["philox_seed"] is seen[2]["philox_seed"] is seen[2]["philox_offset"]


def test_select_kernel_off_cuda_never_reads_a_cuda_schema():
    from longnet_cli.model.kernels import select_kernel

    assert select_kernel("torch", torch.empty(1, 8, 2, 16)).name == "torch-cpu"
    with pytest.raises(ValueError, match="does not run on device 'cpu'"):
        select_kernel("efficient", torch.empty(1, 8, 2, 16))


@pytest.mark.gpu
def test_auto_runs_torchs_flash_kernel_on_this_gpu():
    """On the GPU machine: bf16, D = 64 runs torch's FlashAttention-2 (or the flash-attn
    package when installed), and it matches the memory-efficient kernel."""
    from longnet_cli.model.attention import dilated_attention
    from longnet_cli.model.kernels import flash_attn_available, select_kernel

    capability = torch.cuda.get_device_capability()
    q, k, v = (
        torch.randn(2, 4096, 4, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        for _ in range(3)
    )
    name = select_kernel("auto", q).name
    if flash_attn_available():
        assert name == "flash-attn"
    elif (8, 0) <= capability <= (12, 1):
        assert name == "torch-flash"
    results = {}
    for backend in ("torch", "efficient"):
        out = dilated_attention(q, k, v, [1024, 4096], [1, 4], causal=True, backend=backend)
        results[backend] = (out, *torch.autograd.grad(out.float().square().sum(), (q, k, v)))
    for a, b in zip(results["torch"], results["efficient"]):
        torch.testing.assert_close(a.float(), b.float(), atol=3e-2, rtol=3e-2)

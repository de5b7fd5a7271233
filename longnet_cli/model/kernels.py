"""Attention-with-log-sum-exp kernels, one per backend, behind one interface.

Dilated attention needs, for every (segment, offset) group, plain softmax attention that also
returns the log-sum-exp of the scores, and a backward that accepts an *external* output and
log-sum-exp (the merged ones; see ``attention.py``). Every backend here provides exactly that:

    forward(q, k, v, causal, scale)                 -> out, lse
    backward(dout, q, k, v, out, lse, causal, scale) -> dq, dk, dv

Shapes (legend: B batch, L length, H heads, D head dim):
    q, k, v, out, dout: (B, L, H, D), any strides;  lse: (B, L, H) float32 (float64 for
    float64 inputs: the merge accumulates in float64 then, and the CPU kernel wants it so).
Causal masking is top-left aligned (query i sees keys j <= i; q and k have the same length).

Backends:
    "torch"      torch's fused attention: the flash kernel on CPU, memory-efficient kernel on CUDA;
    "flash-attn" the flash-attn package (CUDA, fp16/bf16), when installed;
    "math"       blockwise matmuls in plain torch: any device and dtype, the portable reference.
"""

from __future__ import annotations

import importlib.util
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from longnet_cli.model.config import BACKENDS

ForwardFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, bool, float], tuple]
BackwardFn = Callable[..., tuple]


@dataclass(frozen=True)
class AttentionKernel:
    """A named pair of forward/backward functions following the module's contract."""

    name: str
    forward: ForwardFn
    backward: BackwardFn


# --------------------------------------------------------------------------- torch, CPU


def _cpu_forward(q, k, v, causal, scale):
    # (B, L, H, D) -> (B, H, L, D) views; the kernel returns out laid out as (B, L, H, D)
    # and lse laid out as (B, L, H), so both transposes back are free.
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), 0.0, causal, scale=scale
    )
    return out.transpose(1, 2), lse.transpose(1, 2)


def _cpu_backward(dout, q, k, v, out, lse, causal, scale):
    t = lambda x: x.transpose(1, 2)  # noqa: E731  (B, L, H, D) <-> (B, H, L, D)
    dq, dk, dv = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
        t(dout), t(q), t(k), t(v), t(out), lse.transpose(1, 2), 0.0, causal, scale=scale
    )
    return t(dq), t(dk), t(dv)


# --------------------------------------------------------------------------- torch, CUDA

_LSE_ALIGN = 32  # the memory-efficient kernel pads lse along L to a multiple of 32


def _dense_last(x: torch.Tensor) -> torch.Tensor:
    """x with a contiguous last dimension (the CUDA kernels' one layout requirement): a copy
    only when it is strided (an expanded gradient, a transposed input)."""
    return x if x.stride(-1) == 1 or x.shape[-1] == 1 else x.contiguous()


def _cuda_forward(q, k, v, causal, scale):
    # _efficient_attention_forward takes (B, L, H, D) directly; lse comes back (B, H, L_pad).
    q, k, v = (_dense_last(x) for x in (q, k, v))
    out, lse, *_ = torch.ops.aten._efficient_attention_forward(
        q, k, v, None, None, None, None, None, 0.0, 1 if causal else 0, True, scale=scale
    )
    return out, lse[:, :, : q.shape[1]].transpose(1, 2)


def _cuda_backward(dout, q, k, v, out, lse, causal, scale):
    b, n, h, _ = q.shape
    dout, q, k, v = (_dense_last(x) for x in (dout, q, k, v))
    # The kernel reads lse through its strides, 32 rows at a time past the end: pad it the way
    # the forward kernel does (with +inf) to a multiple of 32. out must be contiguous (its row
    # stride is implied); q, k, v, dout need only a contiguous last dimension.
    lse_pad = torch.full(
        (b, h, -(-n // _LSE_ALIGN) * _LSE_ALIGN), float("inf"), dtype=torch.float32, device=q.device
    )
    lse_pad[:, :, :n] = lse.transpose(1, 2)
    seed = torch.zeros((), dtype=torch.int64, device=q.device)  # unused without dropout
    dq, dk, dv, _ = torch.ops.aten._efficient_attention_backward(
        dout, q, k, v, None, out.contiguous(), None, None, n, n, lse_pad, 0.0, seed, seed,
        1 if causal else 0, False, scale=scale,
    )  # fmt: skip
    return dq, dk, dv


# --------------------------------------------------------------------------- flash-attn


def _flash_attn_forward(q, k, v, causal, scale):
    from flash_attn import flash_attn_func

    out, lse, _ = flash_attn_func(
        q, k, v, softmax_scale=scale, causal=causal, return_attn_probs=True
    )  # lse: (B, H, L)
    return out, lse.transpose(1, 2)


def _flash_attn_backward(dout, q, k, v, out, lse, causal, scale):
    from flash_attn import flash_attn_interface

    fn = flash_attn_interface._flash_attn_backward
    q, k, v, out, dout = (x.contiguous() for x in (q, k, v, out, dout))
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    # The private signature changed across flash-attn releases; pass what this one takes.
    offered = {
        "dout": dout, "q": q, "k": k, "v": v, "out": out,
        "softmax_lse": lse.transpose(1, 2).contiguous(), "dq": dq, "dk": dk, "dv": dv,
        "dropout_p": 0.0, "softmax_scale": scale, "causal": causal, "window_size": (-1, -1),
        "window_size_left": -1, "window_size_right": -1, "softcap": 0.0,
        "alibi_slopes": None, "rng_state": None,
        "deterministic": torch.are_deterministic_algorithms_enabled(),
    }  # fmt: skip
    # flash-attn >= 2.7 wraps it in a torch custom op whose own signature is (*args, **kwargs).
    params = inspect.signature(getattr(fn, "_init_fn", fn)).parameters
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    missing = [
        name
        for name, p in params.items()
        if p.kind in variadic or (p.default is p.empty and name not in offered)
    ]
    if missing:
        raise RuntimeError(
            f"this flash-attn version's backward takes arguments longnet does not know ({missing});"
            " use backend='torch' or a flash-attn 2.5-2.8 release"
        )
    fn(**{name: offered[name] for name in params if name in offered})
    return dq, dk, dv


# --------------------------------------------------------------------------- math

_MATH_BLOCK = 1024  # queries per block: bounds the (block x L) score matrix


def _math_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _math_scores(q_blk, k, start, causal, scale):
    """Scores of a query block against all keys, (B, H, bq, Lk), causal-masked; q_blk and k
    come in the accumulation dtype (float32, float64 for float64 inputs)."""
    s = torch.matmul(q_blk, k.transpose(-1, -2)) * scale
    if causal:
        rows = torch.arange(start, start + q_blk.shape[2], device=q_blk.device)[:, None]
        cols = torch.arange(k.shape[2], device=q_blk.device)[None, :]
        s = s.masked_fill(cols > rows, float("-inf"))
    return s


def _math_forward(q, k, v, causal, scale):
    acc = _math_dtype(q.dtype)
    qh, kh, vh = (x.transpose(1, 2).to(acc) for x in (q, k, v))  # (B, H, L, D)
    out = torch.empty(qh.shape, dtype=acc, device=q.device)
    lse = torch.empty(qh.shape[:3], dtype=acc, device=q.device)
    for i in range(0, qh.shape[2], _MATH_BLOCK):
        s = _math_scores(qh[:, :, i : i + _MATH_BLOCK], kh, i, causal, scale)
        lse_blk = torch.logsumexp(s, dim=-1)
        lse[:, :, i : i + _MATH_BLOCK] = lse_blk
        out[:, :, i : i + _MATH_BLOCK] = torch.matmul(torch.exp(s - lse_blk[..., None]), vh)
    return out.to(q.dtype).transpose(1, 2), lse.transpose(1, 2)


def _math_backward(dout, q, k, v, out, lse, causal, scale):
    acc = _math_dtype(q.dtype)
    qh, kh, vh, oh, doh = (x.transpose(1, 2).to(acc) for x in (q, k, v, out, dout))
    lseh = lse.transpose(1, 2).to(acc)
    dq, dk, dv = torch.zeros_like(qh), torch.zeros_like(kh), torch.zeros_like(vh)
    for i in range(0, qh.shape[2], _MATH_BLOCK):
        blk = slice(i, i + _MATH_BLOCK)
        p = torch.exp(_math_scores(qh[:, :, blk], kh, i, causal, scale) - lseh[:, :, blk, None])
        dv += torch.matmul(p.transpose(-1, -2), doh[:, :, blk])
        dp = torch.matmul(doh[:, :, blk], vh.transpose(-1, -2))
        delta = (doh[:, :, blk] * oh[:, :, blk]).sum(-1, keepdim=True)
        ds = p * (dp - delta) * scale
        dq[:, :, blk] = torch.matmul(ds, kh)
        dk += torch.matmul(ds.transpose(-1, -2), qh[:, :, blk])
    return tuple(x.to(q.dtype).transpose(1, 2) for x in (dq, dk, dv))


# --------------------------------------------------------------------------- selection

_KERNELS = {
    ("torch", "cpu"): AttentionKernel("torch-cpu", _cpu_forward, _cpu_backward),
    ("torch", "cuda"): AttentionKernel("torch-cuda", _cuda_forward, _cuda_backward),
    ("flash-attn", "cuda"): AttentionKernel(
        "flash-attn", _flash_attn_forward, _flash_attn_backward
    ),
}
_MATH = AttentionKernel("math", _math_forward, _math_backward)


def flash_attn_available() -> bool:
    """True when the optional flash-attn package is importable."""
    return importlib.util.find_spec("flash_attn") is not None


def available_backends(device: torch.device | str) -> list[str]:
    """Backends that can run on ``device`` in this environment (for tests and ``bench``)."""
    kind = torch.device(device).type
    names = [name for (name, dev) in _KERNELS if dev == kind]
    if "flash-attn" in names and not flash_attn_available():
        names.remove("flash-attn")
    return [*names, "math"]


HALF_DTYPES = (torch.float16, torch.bfloat16)


def choose_backend(
    device_type: str,
    capability: tuple[int, int] | None,
    dtype: torch.dtype,
    head_dim: int,
    last_dim_stride: int,
    flash_attn_installed: bool,
) -> str:
    """The backend ``"auto"`` resolves to: a pure function of what the kernels require.

    ``capability`` is the CUDA compute capability (major, minor), None off CUDA. On CUDA, in
    order of preference:
      - "flash-attn": sm80+, float16/bfloat16, head_dim a multiple of 8 up to 256, contiguous
        last dimension, package installed;
      - "torch" (the memory-efficient kernel): sm50+ and a contiguous last dimension; bfloat16
        needs sm80; on sm80+ only aligned kernels exist (head_dim % 8 for float16/bfloat16,
        head_dim % 4 for float32), below sm80 unaligned ones do; float64 has none;
      - "math" otherwise, which takes any device, dtype and strides (a strided last dimension
        would cost the CUDA kernels a copy of every input; the math kernel reads it as it is).
    On a CPU torch's flash kernel takes every floating dtype and any strides: "torch".
    """
    if device_type == "cpu":
        return "torch"
    if device_type != "cuda" or capability is None:
        return "math"
    if last_dim_stride != 1:
        return "math"
    sm80 = tuple(capability) >= (8, 0)
    half = dtype in HALF_DTYPES
    if flash_attn_installed and sm80 and half and head_dim % 8 == 0 and head_dim <= 256:
        return "flash-attn"
    if _memory_efficient_refusal(capability, dtype, head_dim) is None:
        return "torch"
    return "math"


def _memory_efficient_refusal(
    capability: tuple[int, int], dtype: torch.dtype, head_dim: int
) -> str | None:
    """Why torch's memory-efficient CUDA kernel would refuse the call (None: it takes it)."""
    if dtype not in (*HALF_DTYPES, torch.float32):
        return f"float32, float16 or bfloat16 (got {dtype})"
    if tuple(capability) < (5, 0):
        return f"compute capability 5.0 or later (got {capability[0]}.{capability[1]})"
    sm80 = tuple(capability) >= (8, 0)
    if dtype == torch.bfloat16 and not sm80:
        return f"compute capability 8.0 or later for bfloat16 (got {capability[0]}.{capability[1]})"
    align = (8 if dtype in HALF_DTYPES else 4) if sm80 else 1
    if head_dim % align:
        return f"a head_dim that is a multiple of {align} for {dtype} on sm80+ (got {head_dim})"
    return None


def _flash_attn_refusal(
    capability: tuple[int, int], dtype: torch.dtype, head_dim: int
) -> str | None:
    """Why flash-attn 2 would refuse the call (None: it takes it)."""
    if tuple(capability) < (8, 0):
        return f"compute capability 8.0 or later (got {capability[0]}.{capability[1]})"
    if dtype not in HALF_DTYPES or head_dim % 8 or head_dim > 256:
        return (
            "float16/bfloat16 and a head_dim that is a multiple of 8 up to 256 "
            f"(got {dtype}, head_dim {head_dim})"
        )
    return None


def cuda_capability(device: torch.device) -> tuple[int, int] | None:
    """The compute capability of a CUDA device (None for other devices)."""
    if device.type != "cuda":
        return None
    return torch.cuda.get_device_capability(device)


def select_kernel(backend: str, q: torch.Tensor) -> AttentionKernel:
    """Resolve a backend name ("auto" or explicit) for tensors like ``q`` (B, L, H, D).

    "auto" never picks a kernel that would refuse ``q`` (see ``choose_backend``); an explicit
    backend that would refuse it raises ValueError saying what it needs.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; choose one of {BACKENDS}")
    kind = q.device.type
    head_dim = q.shape[-1]
    capability = cuda_capability(q.device)
    stride = q.stride(-1) if q.dim() and q.shape[-1] > 1 else 1
    if backend == "auto":
        backend = choose_backend(
            kind, capability, q.dtype, head_dim, stride, flash_attn_available()
        )
    if backend == "math":
        return _MATH
    if backend == "flash-attn" and not flash_attn_available():
        raise ValueError(
            "attention backend 'flash-attn' needs the gpu extra: pip install 'longnet-cli[gpu]'"
        )
    kernel = _KERNELS.get((backend, kind))
    if kernel is None:
        raise ValueError(f"attention backend {backend!r} does not run on device {kind!r}")
    if kind == "cuda":
        check = _flash_attn_refusal if backend == "flash-attn" else _memory_efficient_refusal
        needs = check(capability, q.dtype, head_dim)
        if needs is not None:
            raise ValueError(f"attention backend {backend!r} needs {needs}; use backend 'auto'")
    return kernel


def default_scale(head_dim: int) -> float:
    """The softmax scale used when none is given: 1/sqrt(head_dim)."""
    return 1.0 / math.sqrt(head_dim)

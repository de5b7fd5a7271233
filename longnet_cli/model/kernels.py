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

Backends (``model.backend``) and the kernels they run:
    "torch"      torch's fused attention: its flash kernel on a CPU ("torch-cpu"); on CUDA its
                 FlashAttention-2 ("torch-flash") where that takes the call, else its
                 memory-efficient kernel ("torch-efficient");
    "efficient"  torch's memory-efficient CUDA kernel only;
    "flash-attn" the flash-attn package (CUDA, fp16/bf16), when installed;
    "math"       blockwise matmuls in plain torch: any device and dtype, the portable reference.
"auto" picks by ``choose_kernel``.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import math
from collections.abc import Callable, Iterable
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
#
# torch's fused CUDA kernels are private aten operators whose schemas change between releases
# (torch 2.13 names the flash backward's seed tensors ``rng_state, unused``, earlier releases
# ``philox_seed, philox_offset``; new keyword-only options appear). Each call is bound to the
# schema of the running torch at first use, by argument name: see ``bind_operator``.

# Schema names older or newer releases use for a value, -> the name offered here.
_ALIASES = {"philox_seed": "rng_state", "philox_offset": "unused", "grad_out_": "grad_out"}
_DEFAULT = object()  # a positional argument left at its schema default


@dataclass(frozen=True)
class OperatorBinding:
    """How to call one aten operator with named values: the positional arguments in order
    (an offered name, or ``_DEFAULT`` with its value) and the keyword arguments."""

    positional: tuple[tuple[str | object, object], ...]
    keyword: tuple[tuple[str, str], ...]

    def call(self, op, values: dict):
        args = [default if name is _DEFAULT else values[name] for name, default in self.positional]
        return op(*args, **{arg: values[name] for arg, name in self.keyword})


def bind_operator(schema, offered: Iterable[str]) -> OperatorBinding:
    """Bind a ``torch._C.FunctionSchema`` to values named by ``offered`` (schema names, or the
    names ``_ALIASES`` maps older/newer schema names to). An argument nobody offers is left at
    its default (None for an optional one); a required one raises RuntimeError naming it."""
    offered = set(offered)
    positional: list[tuple[str | object, object]] = []
    keyword: list[tuple[str, str]] = []
    missing = []
    for arg in schema.arguments:
        name = arg.name if arg.name in offered else _ALIASES.get(arg.name)
        known = name in offered
        optional = isinstance(arg.type, torch._C.OptionalType)
        if arg.kwarg_only:
            if known:
                keyword.append((arg.name, name))
            elif not (arg.has_default_value() or optional):
                missing.append(arg.name)
        elif known:
            positional.append((name, None))
        elif arg.has_default_value():
            positional.append((_DEFAULT, arg.default_value))
        elif optional:
            positional.append((_DEFAULT, None))
        else:
            missing.append(arg.name)
    if missing:
        raise RuntimeError(
            f"torch {torch.__version__}'s {schema.name} takes arguments longnet does not know "
            f"({', '.join(missing)}); use model.backend 'math'"
        )
    return OperatorBinding(tuple(positional), tuple(keyword))


# The values each call offers (the names of torch 2.13's schemas).
_OFFERS = {
    "_flash_attention_forward": (
        "query", "key", "value", "cum_seq_q", "cum_seq_k", "max_q", "max_k", "dropout_p",
        "is_causal", "return_debug_mask", "scale",
    ),
    "_flash_attention_backward": (
        "grad_out", "query", "key", "value", "out", "logsumexp", "cum_seq_q", "cum_seq_k",
        "max_q", "max_k", "dropout_p", "is_causal", "rng_state", "unused", "scale",
    ),
    "_efficient_attention_forward": (
        "query", "key", "value", "bias", "cu_seqlens_q", "cu_seqlens_k", "max_seqlen_q",
        "max_seqlen_k", "dropout_p", "custom_mask_type", "compute_log_sumexp", "scale",
    ),
    "_efficient_attention_backward": (
        "grad_out", "query", "key", "value", "bias", "out", "cu_seqlens_q", "cu_seqlens_k",
        "max_seqlen_q", "max_seqlen_k", "logsumexp", "dropout_p", "philox_seed",
        "philox_offset", "custom_mask_type", "bias_requires_grad", "scale",
    ),
}  # fmt: skip


@functools.cache
def _bound(name: str) -> tuple[object, OperatorBinding]:
    """The aten operator ``name`` and its binding, read from this torch's schema once."""
    op = getattr(torch.ops.aten, name).default
    return op, bind_operator(op._schema, _OFFERS[name])


def call_operator(name: str, **values):
    """Call aten operator ``name`` with named values, bound to this torch's schema."""
    op, binding = _bound(name)
    return binding.call(op, values)


_LSE_ALIGN = 32  # the memory-efficient kernel pads lse along L to a multiple of 32


def _dense_last(x: torch.Tensor) -> torch.Tensor:
    """x with a contiguous last dimension (the CUDA kernels' one layout requirement): a copy
    only when it is strided (an expanded gradient, a transposed input)."""
    return x if x.stride(-1) == 1 or x.shape[-1] == 1 else x.contiguous()


class _Reused:
    """Buffers made once per (device, stream, shape) and reused by every later call: the
    memory-efficient backward's +inf-padded lse and the kernels' unused seed tensors.
    Calls on one stream run in order, so a buffer is free again when the next call is queued."""

    def __init__(self) -> None:
        self._buffers: dict[tuple, torch.Tensor] = {}

    def get(self, key: tuple, make: Callable[[], torch.Tensor]) -> torch.Tensor:
        device = key[0]
        stream = torch.cuda.current_stream(device).stream_id if device.type == "cuda" else 0
        full = (*key, stream)
        found = self._buffers.get(full)
        if found is None:
            if len(self._buffers) >= 64:  # many shapes (a changing sequence length): start over
                self._buffers.clear()
            found = self._buffers[full] = make()
        return found


_REUSED = _Reused()


def _seed(device: torch.device) -> torch.Tensor:
    """The seed/offset tensor the kernels take without dropout (never read): made once."""
    return _REUSED.get((device, "seed"), lambda: torch.zeros((), dtype=torch.int64, device=device))


def _efficient_forward(q, k, v, causal, scale):
    # _efficient_attention_forward takes (B, L, H, D) directly; lse comes back (B, H, L_pad).
    q, k, v = (_dense_last(x) for x in (q, k, v))
    out, lse, *_ = call_operator(
        "_efficient_attention_forward", query=q, key=k, value=v, bias=None, cu_seqlens_q=None,
        cu_seqlens_k=None, max_seqlen_q=None, max_seqlen_k=None, dropout_p=0.0,
        custom_mask_type=1 if causal else 0, compute_log_sumexp=True, scale=scale,
    )  # fmt: skip
    return out, lse[:, :, : q.shape[1]].transpose(1, 2)


def _efficient_backward(dout, q, k, v, out, lse, causal, scale):
    b, n, h, _ = q.shape
    dout, q, k, v = (_dense_last(x) for x in (dout, q, k, v))
    # The kernel reads lse through its strides, 32 rows at a time past the end: pad it the way
    # the forward kernel does (with +inf) to a multiple of 32. The padded buffer is made once
    # per shape; only its first n columns are written per call, the +inf tail stays. out must
    # be contiguous (its row stride is implied); q, k, v, dout need only a contiguous last dim.
    shape = (b, h, -(-n // _LSE_ALIGN) * _LSE_ALIGN)
    lse_pad = _REUSED.get(
        (q.device, "lse_pad", shape),
        lambda: torch.full(shape, float("inf"), dtype=torch.float32, device=q.device),
    )
    lse_pad[:, :, :n].copy_(lse.transpose(1, 2))
    seed = _seed(q.device)
    dq, dk, dv, _ = call_operator(
        "_efficient_attention_backward", grad_out=dout, query=q, key=k, value=v, bias=None,
        out=out.contiguous(), cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=n,
        max_seqlen_k=n, logsumexp=lse_pad, dropout_p=0.0, philox_seed=seed, philox_offset=seed,
        custom_mask_type=1 if causal else 0, bias_requires_grad=False, scale=scale,
    )  # fmt: skip
    return dq, dk, dv


# The forward's rng_state/unused outputs, one pair per device, kept for every backward: they
# are what torch's own SDPA hands its flash backward (never read without dropout), in the
# dtype and shape this torch's kernel expects.
_FLASH_RNG: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}


def _torch_flash_forward(q, k, v, causal, scale):
    # torch's FlashAttention-2: (B, L, H, D) in, out (B, L, H, D) and lse (B, H, L) float32.
    q, k, v = (_dense_last(x) for x in (q, k, v))
    out, lse, rng_state, unused, *_ = call_operator(
        "_flash_attention_forward", query=q, key=k, value=v, cum_seq_q=None, cum_seq_k=None,
        max_q=q.shape[1], max_k=k.shape[1], dropout_p=0.0, is_causal=causal,
        return_debug_mask=False, scale=scale,
    )  # fmt: skip
    _FLASH_RNG.setdefault(q.device, (rng_state, unused))
    return out, lse.transpose(1, 2)


def _flash_rng(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    found = _FLASH_RNG.get(device)
    if found is None:  # a backward with no forward before it in this process
        seed = _seed(device)
        found = _FLASH_RNG[device] = (seed, seed)
    return found


def _torch_flash_backward(dout, q, k, v, out, lse, causal, scale):
    dout, q, k, v, out = (_dense_last(x) for x in (dout, q, k, v, out))
    rng_state, unused = _flash_rng(q.device)
    # cum_seq_q/k are non-optional in the schema; None (an undefined tensor) selects the
    # dense, non-varlen path, as torch's own SDPA backward passes them.
    dq, dk, dv = call_operator(
        "_flash_attention_backward", grad_out=dout, query=q, key=k, value=v, out=out,
        logsumexp=lse.transpose(1, 2).contiguous(), cum_seq_q=None, cum_seq_k=None,
        max_q=q.shape[1], max_k=k.shape[1], dropout_p=0.0, is_causal=causal,
        rng_state=rng_state, unused=unused, scale=scale,
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

KERNELS = {
    k.name: k
    for k in (
        AttentionKernel("torch-cpu", _cpu_forward, _cpu_backward),
        AttentionKernel("torch-flash", _torch_flash_forward, _torch_flash_backward),
        AttentionKernel("torch-efficient", _efficient_forward, _efficient_backward),
        AttentionKernel("flash-attn", _flash_attn_forward, _flash_attn_backward),
        AttentionKernel("math", _math_forward, _math_backward),
    )
}
# The kernels each backend name may run, per device type, in order of preference.
_BACKEND_KERNELS = {
    ("torch", "cpu"): ("torch-cpu",),
    ("torch", "cuda"): ("torch-flash", "torch-efficient"),
    ("efficient", "cuda"): ("torch-efficient",),
    ("flash-attn", "cuda"): ("flash-attn",),
}


@functools.cache
def flash_attn_available() -> bool:
    """True when the optional flash-attn package is importable (looked up once per process)."""
    return importlib.util.find_spec("flash_attn") is not None


def available_backends(device: torch.device | str) -> list[str]:
    """Backends that can run on ``device`` in this environment (for tests and ``bench``)."""
    kind = torch.device(device).type
    names = [name for (name, dev) in _BACKEND_KERNELS if dev == kind]
    if "flash-attn" in names and not flash_attn_available():
        names.remove("flash-attn")
    return [*names, "math"]


HALF_DTYPES = (torch.float16, torch.bfloat16)


def choose_kernel(
    device_type: str,
    capability: tuple[int, int] | None,
    dtype: torch.dtype,
    head_dim: int,
    last_dim_stride: int,
    flash_attn_installed: bool,
    requested: str = "auto",
) -> str:
    """The kernel (a ``KERNELS`` name) a backend name runs: a pure function of what the
    kernels require. Raises ValueError, saying what is needed, for an explicit backend that
    cannot take the call; "auto" never picks such a kernel.

    ``capability`` is the CUDA compute capability (major, minor), None off CUDA. On CUDA,
    "auto" takes, in order of preference:
      - "flash-attn" (the package): sm80+, float16/bfloat16, head_dim a multiple of 8 up to
        256, contiguous last dimension, package installed;
      - "torch-flash" (torch's FlashAttention-2, ``aten._flash_attention_*``): sm80 to sm121,
        float16/bfloat16, head_dim a multiple of 8 up to 256 (192 on sm86-sm89, whose
        backward stops there), contiguous last dimension;
      - "torch-efficient" (the memory-efficient kernel, ``aten._efficient_attention_*``):
        sm50+ and a contiguous last dimension; bfloat16 needs sm80; on sm80+ only aligned
        kernels exist (head_dim % 8 for float16/bfloat16, head_dim % 4 for float32), below
        sm80 unaligned ones do; float64 has none;
      - "math" otherwise, which takes any device, dtype and strides (a strided last dimension
        would cost the CUDA kernels a copy of every input; the math kernel reads it as it is).
    "torch" is torch's fused kernels: on CUDA torch-flash where it takes the call, else
    torch-efficient; on a CPU torch's flash kernel, which takes every floating dtype and any
    strides ("auto" picks it there). "efficient" is torch-efficient only; explicit backends
    accept a strided last dimension (the CUDA kernels copy it).
    """
    if requested not in BACKENDS:
        raise ValueError(f"unknown attention backend {requested!r}; choose one of {BACKENDS}")
    if requested == "math":
        return "math"
    if requested == "flash-attn" and not flash_attn_installed:
        raise ValueError(
            "attention backend 'flash-attn' needs the gpu extra: pip install 'longnet-cli[gpu]'"
        )
    if requested == "auto":
        if device_type == "cpu":
            return "torch-cpu"
        if device_type != "cuda" or capability is None or last_dim_stride != 1:
            return "math"
        order = ("flash-attn",) if flash_attn_installed else ()
        for name in (*order, "torch-flash", "torch-efficient"):
            if _REFUSALS[name](capability, dtype, head_dim) is None:
                return name
        return "math"
    candidates = _BACKEND_KERNELS.get((requested, device_type))
    if candidates is None:
        raise ValueError(f"attention backend {requested!r} does not run on device {device_type!r}")
    if device_type != "cuda":
        return candidates[0]
    if capability is None:
        raise ValueError(f"attention backend {requested!r} needs a CUDA compute capability")
    for name in candidates:
        needs = _REFUSALS[name](capability, dtype, head_dim)
        if needs is None:
            return name
    raise ValueError(f"attention backend {requested!r} needs {needs}; use backend 'auto'")


def choose_backend(
    device_type: str,
    capability: tuple[int, int] | None,
    dtype: torch.dtype,
    head_dim: int,
    last_dim_stride: int,
    flash_attn_installed: bool,
) -> str:
    """The backend name ``"auto"`` resolves to ("torch" for any of torch's fused kernels);
    ``choose_kernel`` says which kernel."""
    kernel = choose_kernel(
        device_type, capability, dtype, head_dim, last_dim_stride, flash_attn_installed
    )
    return {"flash-attn": "flash-attn", "math": "math"}.get(kernel, "torch")


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


def _torch_flash_refusal(
    capability: tuple[int, int], dtype: torch.dtype, head_dim: int
) -> str | None:
    """Why torch's FlashAttention-2 kernel would refuse the call (None: it takes it)."""
    if not (8, 0) <= tuple(capability) <= (12, 1):
        return f"compute capability 8.0 to 12.1 (got {capability[0]}.{capability[1]})"
    limit = 192 if (8, 6) <= tuple(capability) <= (8, 9) else 256
    if dtype not in HALF_DTYPES or head_dim % 8 or head_dim > limit:
        return (
            f"float16/bfloat16 and a head_dim that is a multiple of 8 up to {limit} "
            f"(got {dtype}, head_dim {head_dim})"
        )
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


_REFUSALS = {
    "flash-attn": _flash_attn_refusal,
    "torch-flash": _torch_flash_refusal,
    "torch-efficient": _memory_efficient_refusal,
}


def cuda_capability(device: torch.device) -> tuple[int, int] | None:
    """The compute capability of a CUDA device (None for other devices)."""
    if device.type != "cuda":
        return None
    return _capability(device.index if device.index is not None else torch.cuda.current_device())


@functools.cache
def _capability(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def select_kernel(backend: str, q: torch.Tensor) -> AttentionKernel:
    """Resolve a backend name ("auto" or explicit) for tensors like ``q`` (B, L, H, D).

    "auto" never picks a kernel that would refuse ``q`` (see ``choose_kernel``); an explicit
    backend that would refuse it raises ValueError saying what it needs.
    """
    stride = q.stride(-1) if q.dim() and q.shape[-1] > 1 else 1
    name = choose_kernel(
        q.device.type, cuda_capability(q.device), q.dtype, q.shape[-1], stride,
        flash_attn_available(), backend,
    )  # fmt: skip
    return KERNELS[name]


def default_scale(head_dim: int) -> float:
    """The softmax scale used when none is given: 1/sqrt(head_dim)."""
    return 1.0 / math.sqrt(head_dim)

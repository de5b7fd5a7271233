"""Exact dilated attention (LongNet): segment, sparsify, attend, merge by log-sum-exp.

Legend: B batch, N sequence length, H heads, D head dim; for one branch (w, r): S segments,
L = selected tokens per segment (about w/r), J heads per offset, R consecutive offsets o = h mod r.

Head h = o + j*r reads positions ``s*w + o + t*r``. For a run of offsets whose selections have
the same length and head count, the address of (segment s, token t, head j, offset o) is linear
in all four indices, so every kernel call's selection is ONE strided view of q, k and v:

    q (B, N, H, D) --as_strided--> (B, S, L, J, R, D) --reshape--> (B*S, L, J*R, D)

Selecting needs no index tensors and, for r = 1, no copy. Each call is attended by a kernel that
also returns the log-sum-exp and is merged at once into a running (output, lse) pair, so extra
memory stays O(N*H*D) whatever the number of branches. Segments are processed in chunks of
bounded size, which keeps temporaries small and reused.

Gradients are exact: the backward hands each call's kernel backward the *merged* output and
lse, so the softmax normaliser of the union of all branches, and with it the gradient through
the merge weights, is what every call differentiates against.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.autograd.function import once_differentiable

from longnet_cli.model.kernels import AttentionKernel, default_scale, select_kernel

# Upper bound on (batch x token x head) rows handed to one kernel call: bounds temporaries.
ROWS_PER_CALL = 1 << 16
# CUDA kernels put the batch on grid dimension z, which holds at most 65,535 blocks.
MAX_CALL_BATCH = (1 << 16) - 1


@dataclass(frozen=True)
class Group:
    """The selection of one kernel call: a run of offsets of one branch over some segments.

    Token t (< length) of segment s (< segments) for offset ``offset + i`` (i < offsets) sits at
    position ``start + i + s*segment_stride + t*step``; it is attended by heads
    ``offset + i + j*step`` (j < heads).
    """

    branch: int
    start: int
    segments: int
    segment_stride: int
    length: int
    step: int
    offset: int
    offsets: int
    heads: int

    @property
    def rows(self) -> int:
        """(token, head) rows per batch element: the kernel's work unit count."""
        return self.segments * self.length * self.heads * self.offsets


def _offset_runs(span: int, rate: int, num_heads: int) -> list[tuple[int, int, int, int]]:
    """Maximal runs of consecutive offsets with equal (length, head count) in a span of tokens.

    Returns (first offset, number of offsets, length, heads); offsets selecting nothing are left
    out (a span shorter than the rate, or fewer heads than the rate).
    """
    runs: list[tuple[int, int, int, int]] = []
    for o in range(min(rate, num_heads, span)):
        shape = (-(-(span - o) // rate), len(range(o, num_heads, rate)))  # ceil, heads
        if runs and runs[-1][2:] == shape:
            first, count, _, _ = runs[-1]
            runs[-1] = (first, count + 1, *shape)
        else:
            runs.append((o, 1, *shape))
    return runs


def plan_calls(
    seq_len: int,
    num_heads: int,
    segment_lengths: Sequence[int],
    dilation_rates: Sequence[int],
    batch: int = 1,
    rows_per_call: int = ROWS_PER_CALL,
) -> list[Group]:
    """The kernel calls to make, branch by branch. Within a branch calls never overlap, which
    lets the forward write branch 0 without merging."""
    calls = []
    for branch, (w, r) in enumerate(zip(segment_lengths, dilation_rates)):
        w = min(w, seq_len)  # a segment longer than the sequence is the whole sequence
        full, tail = divmod(seq_len, w)
        for first_segment, segments, span in ((0, full, w), (full, 1, tail)):
            if not segments or not span:
                continue
            for offset, offsets, length, heads in _offset_runs(span, r, num_heads):
                per_call = min(
                    max(1, rows_per_call // (batch * length * heads * offsets)),
                    max(1, MAX_CALL_BATCH // batch),
                )
                for first in range(0, segments, per_call):
                    count = min(per_call, segments - first)
                    start = (first_segment + first) * w + offset
                    calls.append(Group(branch, start, count, w, length, r, offset, offsets, heads))
    return calls


def _view(x: torch.Tensor, g: Group) -> torch.Tensor:
    """Strided view of x's selected positions: (B, N, H, *rest) -> (B, S, L, J, R, *rest)."""
    stride_b, stride_n, stride_h, *rest = x.stride()
    size = (x.shape[0], g.segments, g.length, g.heads, g.offsets, *x.shape[3:])
    stride = (
        stride_b,
        g.segment_stride * stride_n,  # next segment
        g.step * stride_n,  # next selected token
        g.step * stride_h,  # next head with the same offset
        stride_n + stride_h,  # next offset: one position and one head further
    )
    offset = x.storage_offset() + g.start * stride_n + g.offset * stride_h
    return x.as_strided(size, (*stride, *rest), offset)


def _gather(x: torch.Tensor, g: Group) -> torch.Tensor:
    """A call's selected positions as kernel input: (B, N, H, *rest) -> (B*S, L, J*R, *rest).

    A view when the strides allow (r = 1 over whole segments), else one bounded copy.
    """
    view = _view(x, g)
    return view.reshape(view.shape[0] * g.segments, g.length, g.heads * g.offsets, *view.shape[5:])


def _scatter_view(result: torch.Tensor, g: Group, target: torch.Tensor):
    """(target's view of the call, the call's result shaped like it)."""
    view = _view(target, g)
    return view, result.reshape(view.shape)


def _forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    calls: list[Group],
    causal: bool,
    scale: float,
    kernel: AttentionKernel,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merged output (B, N, H, D) in q's dtype and merged lse (B, N, H) float32."""
    b, n, h, d = q.shape
    out = q.new_zeros(b, n, h, d, dtype=torch.float32)
    lse = q.new_full((b, n, h), float("-inf"), dtype=torch.float32)
    for g in calls:
        out_g, lse_g = kernel.forward(_gather(q, g), _gather(k, g), _gather(v, g), causal, scale)
        out_acc, out_g = _scatter_view(out_g, g, out)  # (B, S, L, J, R, D)
        lse_acc, lse_g = _scatter_view(lse_g, g, lse)  # (B, S, L, J, R)
        if g.branch == 0:  # the first branch writes where nothing was merged yet
            out_acc.copy_(out_g)
            lse_acc.copy_(lse_g)
            continue
        lse_new = torch.logaddexp(lse_acc, lse_g)
        out_acc.mul_(torch.exp(lse_acc - lse_new).unsqueeze(-1))
        out_acc.add_(out_g * torch.exp(lse_g - lse_new).unsqueeze(-1))
        lse_acc.copy_(lse_new)
    return out.to(q.dtype), lse


def _backward(
    dout: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    calls: list[Group],
    causal: bool,
    scale: float,
    kernel: AttentionKernel,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact dq, dk, dv: every call differentiates against the merged output and lse."""
    acc_dtype = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    dq, dk, dv = (torch.zeros(x.shape, dtype=acc_dtype, device=x.device) for x in (q, k, v))
    dout = dout.to(q.dtype)
    for g in calls:
        inputs = (_gather(x, g) for x in (dout, q, k, v, out, lse))
        grads = kernel.backward(*inputs, causal, scale)
        for total, grad in zip((dq, dk, dv), grads):
            acc, part = _scatter_view(grad, g, total)
            acc.add_(part)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


class _DilatedAttentionFunction(torch.autograd.Function):
    """Autograd wrapper: forward merges branches, backward uses the merged (out, lse)."""

    @staticmethod
    def forward(ctx, q, k, v, calls, causal, scale, kernel):
        out, lse = _forward(q, k, v, calls, causal, scale, kernel)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.plan = (calls, causal, scale, kernel)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = _backward(dout, q, k, v, out, lse, *ctx.plan)
        return dq, dk, dv, None, None, None, None


def validate_branches(segment_lengths: Sequence[int], dilation_rates: Sequence[int]) -> None:
    """Raise ValueError unless the branch lists are equal-length lists of positive integers."""
    segment_lengths, dilation_rates = list(segment_lengths), list(dilation_rates)
    if not segment_lengths:
        raise ValueError("segment_lengths must name at least one branch")
    if len(segment_lengths) != len(dilation_rates):
        raise ValueError(
            f"segment_lengths ({len(segment_lengths)} values) and dilation_rates "
            f"({len(dilation_rates)} values) must have the same length"
        )
    for name, values in (("segment_lengths", segment_lengths), ("dilation_rates", dilation_rates)):
        bad = [x for x in values if isinstance(x, bool) or not isinstance(x, int) or x < 1]
        if bad:
            raise ValueError(f"{name} must be positive integers, got {bad[0]!r}")


def dilated_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    segment_lengths: Sequence[int],
    dilation_rates: Sequence[int],
    *,
    causal: bool = False,
    scale: float | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """LongNet dilated attention over q, k, v of shape (B, N, H, D); returns (B, N, H, D).

    Branch i cuts the sequence into segments of ``segment_lengths[i]`` tokens and keeps every
    ``dilation_rates[i]``-th one, starting at offset ``h mod r`` for head h; branches are merged
    by their softmax denominators. Positions that no branch selects for a head get 0.
    ``backend`` picks the attention kernel ("auto", "torch", "flash-attn", "math").
    """
    if q.dim() != 4 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(
            "q, k, v must have the same shape (batch, seq, heads, head_dim); got "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    validate_branches(segment_lengths, dilation_rates)
    b, n, h, d = q.shape
    scale = default_scale(d) if scale is None else float(scale)
    kernel = select_kernel(backend, q)
    if n == 0:
        return torch.zeros_like(q)
    calls = plan_calls(n, h, segment_lengths, dilation_rates, batch=b)
    needs_grad = torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v))
    if needs_grad:
        return _DilatedAttentionFunction.apply(q, k, v, calls, causal, scale, kernel)
    return _forward(q, k, v, calls, causal, scale, kernel)[0]

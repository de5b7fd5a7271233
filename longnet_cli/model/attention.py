"""Exact dilated attention (LongNet): segment, sparsify, attend, merge by log-sum-exp.

Legend: B batch, N sequence length, H heads, D head dim; for one branch (w, r): S segments,
L = selected tokens per segment (about w/r), Hg heads sharing an offset o = h mod r.

For every branch and offset the selected positions ``s*w + o + t*r`` of all segments form one
*strided view* of q, k and v, so selecting costs no index arithmetic and, for r = 1, no copy:

    q (B, N, H, D) --as_strided--> (B, S, L, Hg, D) --reshape--> (B*S, L, Hg, D)

Each group is attended by a kernel that also returns the log-sum-exp, and merged at once into a
running (output, lse) pair, so extra memory stays O(N*H*D) whatever the number of branches.
Segments are processed in chunks of bounded size, which keeps temporaries small and reused.

Gradients are exact: the backward hands each group's kernel backward the *merged* output and
lse, so the softmax normaliser of the union of all branches, and with it the gradient through
the merge weights, is what every group differentiates against.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.autograd.function import once_differentiable

from longnet_cli.model.kernels import AttentionKernel, default_scale, select_kernel

# Upper bound on (batch x token x head) rows handed to one kernel call: bounds temporaries.
ROWS_PER_CALL = 1 << 16


@dataclass(frozen=True)
class Group:
    """Selected positions of one branch and offset over consecutive segments: one kernel call.

    Token t (0 <= t < length) of segment s (0 <= s < segments) sits at sequence position
    ``start + s*segment_stride + t*step``; it is attended by heads
    ``head_start, head_start + head_step, ...`` (``heads`` of them).
    """

    branch: int
    start: int
    segments: int
    segment_stride: int
    length: int
    step: int
    head_start: int
    head_step: int
    heads: int


def plan_calls(
    seq_len: int,
    num_heads: int,
    segment_lengths: Sequence[int],
    dilation_rates: Sequence[int],
    batch: int = 1,
    rows_per_call: int = ROWS_PER_CALL,
) -> list[tuple[Group, ...]]:
    """The kernel calls to make: each a tuple of groups of one branch with equal shapes.

    Offsets of a branch whose selections have the same length are attended in one call with
    their heads side by side (fewer, larger calls run faster). Within a branch groups never
    overlap, which lets the forward write branch 0 without merging.
    """
    calls = []
    for branch, (w, r) in enumerate(zip(segment_lengths, dilation_rates)):
        w = min(w, seq_len)  # a segment longer than the sequence is the whole sequence
        full, tail = divmod(seq_len, w)
        offsets = range(min(r, num_heads))
        heads = {o: len(range(o, num_heads, r)) for o in offsets}
        for first_segment, segments, span in ((0, full, w), (full, 1 if tail else 0, tail)):
            by_length: dict[int, list[int]] = {}
            for o in offsets:
                length = -(-(span - o) // r)  # ceil: selected tokens of a segment
                if segments and length > 0:
                    by_length.setdefault(length, []).append(o)
            for length, same in by_length.items():
                rows = batch * length * sum(heads[o] for o in same)
                per_call = max(1, rows_per_call // rows)
                for first in range(0, segments, per_call):
                    count = min(per_call, segments - first)
                    start = (first_segment + first) * w
                    calls.append(tuple(
                        Group(branch, start + o, count, w, length, r, o, r, heads[o])
                        for o in same
                    ))  # fmt: skip
    return calls


def _view(x: torch.Tensor, g: Group) -> torch.Tensor:
    """Strided view of x's selected positions: (B, N, H, *rest) -> (B, S, L, Hg, *rest)."""
    stride_b, stride_n, stride_h, *rest = x.stride()
    size = (x.shape[0], g.segments, g.length, g.heads, *x.shape[3:])
    stride = (stride_b, g.segment_stride * stride_n, g.step * stride_n, g.head_step * stride_h)
    offset = x.storage_offset() + g.start * stride_n + g.head_start * stride_h
    return x.as_strided(size, (*stride, *rest), offset)


def _gather(x: torch.Tensor, call: tuple[Group, ...]) -> torch.Tensor:
    """A call's selected positions as kernel input: (B, N, H, *rest) -> (B*S, L, sum Hg, *rest).

    A view when the strides allow (r = 1 over whole segments), else a bounded copy.
    """
    views = [_view(x, g) for g in call]
    view = views[0] if len(views) == 1 else torch.cat(views, dim=3)
    return view.reshape(-1, *view.shape[2:])


def _scatter(result: torch.Tensor, call: tuple[Group, ...], target: torch.Tensor):
    """Pair each group's view of ``target`` with its part of a call's ``result``."""
    parts = result.reshape(target.shape[0], call[0].segments, call[0].length, -1, *target.shape[3:])
    parts = parts.split([g.heads for g in call], dim=3)
    return [(_view(target, g), part) for g, part in zip(call, parts)]


def _forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    calls: list[tuple[Group, ...]],
    causal: bool,
    scale: float,
    kernel: AttentionKernel,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merged output (B, N, H, D) in q's dtype and merged lse (B, N, H) float32."""
    b, n, h, d = q.shape
    out = q.new_zeros(b, n, h, d, dtype=torch.float32)
    lse = q.new_full((b, n, h), float("-inf"), dtype=torch.float32)
    for call in calls:
        out_c, lse_c = kernel.forward(*(_gather(x, call) for x in (q, k, v)), causal, scale)
        pairs = zip(_scatter(out_c, call, out), _scatter(lse_c, call, lse))
        for (out_acc, out_g), (lse_acc, lse_g) in pairs:  # (B, S, L, Hg, D), (B, S, L, Hg)
            if call[0].branch == 0:  # the first branch writes where nothing was merged yet
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
    calls: list[tuple[Group, ...]],
    causal: bool,
    scale: float,
    kernel: AttentionKernel,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact dq, dk, dv: every call differentiates against the merged output and lse."""
    acc_dtype = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    dq, dk, dv = (torch.zeros(x.shape, dtype=acc_dtype, device=x.device) for x in (q, k, v))
    dout = dout.to(q.dtype)
    for call in calls:
        inputs = (_gather(x, call) for x in (dout, q, k, v, out, lse))
        grads = kernel.backward(*inputs, causal, scale)
        for total, grad in zip((dq, dk, dv), grads):
            for acc, part in _scatter(grad, call, total):
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

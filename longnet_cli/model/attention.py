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

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.autograd.function import once_differentiable

from longnet_cli.model.config import validate_branches
from longnet_cli.model.kernels import AttentionKernel, default_scale, select_kernel

# Upper bound on (batch x token x head) rows handed to one kernel call: bounds temporaries.
# On a CPU, sized for its caches; on a GPU, ``rows_per_call`` sizes calls from its memory.
ROWS_PER_CALL = 1 << 16
MAX_ROWS_PER_CALL = 1 << 24
CALL_MEMORY_FRACTION = 1 / 32  # of a GPU's memory, for one call's temporaries
# On a CPU, plan kernel calls whose inputs are views (no gather copies), see ``plan_calls``.
VIEWS_ONLY = True
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


def _offset_runs(
    piece_start: int,
    piece_end: int,
    segment_start: int,
    rate: int,
    num_heads: int,
    views_only: bool = False,
) -> list[tuple[int, int, int, int, int]]:
    """Runs of consecutive offsets that select alike in one piece of a segment.

    Offset o selects positions ``segment_start + o + t*rate`` inside [piece_start, piece_end).
    A run holds offsets whose first selected positions follow each other (+1 each) with equal
    (length, head count), so that one strided view covers them. Returns (first offset, number of
    offsets, first position, length, heads); offsets selecting nothing are left out.
    ``views_only``: offsets with more than one head each stay one per run (a run of them is a
    strided view that a kernel input needs copied; one offset alone is a plain view).
    """
    runs: list[tuple[int, int, int, int, int]] = []
    for o in range(min(rate, num_heads)):
        first = segment_start + o
        if first < piece_start:
            first += -(-(piece_start - first) // rate) * rate  # first selected >= piece_start
        if first >= piece_end:
            continue
        length = -(-(piece_end - first) // rate)
        heads = len(range(o, num_heads, rate))
        if runs and not (views_only and heads > 1):
            offset, count, position, last_length, last_heads = runs[-1]
            if (position + count, last_length, last_heads) == (first, length, heads) and (
                offset + count == o
            ):
                runs[-1] = (offset, count + 1, position, length, heads)
                continue
        runs.append((o, 1, first, length, heads))
    return runs


def segment_pieces(
    start: int, end: int, seq_len: int, segment_length: int
) -> list[tuple[int, int, int]]:
    """Runs of alike pieces of the segments meeting [start, end) of a sequence of ``seq_len``.

    Returns (first segment index, number of segments, piece start in the first segment, piece
    end in it) — a run of whole segments is one entry; clipped pieces at either end are their own.
    """
    w = min(segment_length, seq_len)  # a segment longer than the sequence is the whole sequence
    pieces: list[tuple[int, int, int, int]] = []
    for s in range(start // w, (end - 1) // w + 1):
        piece = (max(s * w, start), min((s + 1) * w, end, seq_len))
        if pieces and piece[0] - s * w == 0 and piece[1] - s * w == w:
            first, count, a, b = pieces[-1]
            if a == first * w and b == (first + 1) * w and first + count == s:  # whole, adjacent
                pieces[-1] = (first, count + 1, a, b)
                continue
        pieces.append((s, 1, *piece))
    return pieces


def rows_per_call(
    device_type: str, head_dim: int, element_size: int, memory_bytes: int | None = None
) -> int:
    """Rows per kernel call on a device with ``memory_bytes`` of memory (a power of two).

    A CPU gets ``ROWS_PER_CALL`` (its caches, not its memory, set the size). A GPU gets as many
    rows as fit in ``CALL_MEMORY_FRACTION`` of its memory, counting a call's temporaries per
    row: the gathered q, k, v, output, gradient and dq, dk, dv (8 x D elements) and float32
    merge and kernel accumulators (2 x D): millions of rows per call on a large GPU, so a
    1M-token layer is a few launches per branch, not hundreds.
    """
    if device_type != "cuda" or not memory_bytes:
        return ROWS_PER_CALL
    row_bytes = head_dim * (8 * element_size + 8) + 64
    rows = int(memory_bytes * CALL_MEMORY_FRACTION) // row_bytes
    rows = min(max(rows, ROWS_PER_CALL), MAX_ROWS_PER_CALL)
    return 1 << (rows.bit_length() - 1)


@functools.cache
def _cuda_memory_bytes(index: int) -> int:
    return torch.cuda.get_device_properties(index).total_memory


def rows_per_call_for(q: torch.Tensor) -> int:
    """``rows_per_call`` for tensors like q (B, N, H, D) on their device."""
    memory = None
    if q.device.type == "cuda":
        index = q.device.index if q.device.index is not None else torch.cuda.current_device()
        memory = _cuda_memory_bytes(index)
    return rows_per_call(q.device.type, q.shape[-1], q.element_size(), memory)


def plan_calls(
    seq_len: int,
    num_heads: int,
    segment_lengths: Sequence[int],
    dilation_rates: Sequence[int],
    batch: int = 1,
    rows_per_call: int | None = None,
    *,
    start: int = 0,
    end: int | None = None,
    views_only: bool = False,
) -> list[Group]:
    """The kernel calls to make, branch by branch, for the positions [start, end) of a sequence
    of ``seq_len`` tokens (all of it by default; a rank's chunk in sequence parallelism), with
    every segment clipped to that range. Group starts are relative to ``start``. Within a branch
    calls never overlap, which lets the forward write branch 0 without merging. Each call
    holds at most ``rows_per_call`` rows (default ``ROWS_PER_CALL``) unless one segment has
    more. ``views_only`` (a CPU, where a call costs little): calls whose inputs are views of
    q, k, v rather than copies, at the price of more calls (see ``_offset_runs``)."""
    end = seq_len if end is None else end
    rows_per_call = ROWS_PER_CALL if rows_per_call is None else rows_per_call
    calls = []
    for branch, (w, r) in enumerate(zip(segment_lengths, dilation_rates)):
        w = min(w, seq_len)
        for first_segment, segments, piece_start, piece_end in segment_pieces(
            start, end, seq_len, w
        ):
            segment_start = first_segment * w
            runs = _offset_runs(piece_start, piece_end, segment_start, r, num_heads, views_only)
            for offset, offsets, position, length, heads in runs:
                per_call = min(
                    max(1, rows_per_call // (batch * length * heads * offsets)),
                    max(1, MAX_CALL_BATCH // batch),
                )
                for first in range(0, segments, per_call):
                    count = min(per_call, segments - first)
                    local = position + first * w - start
                    calls.append(Group(branch, local, count, w, length, r, offset, offsets, heads))
    return calls


def view_of(x: torch.Tensor, g: Group) -> torch.Tensor:
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


def gather(x: torch.Tensor, g: Group) -> torch.Tensor:
    """A call's selected positions as kernel input: (B, N, H, *rest) -> (B*S, L, J*R, *rest).

    A view when the strides allow (r = 1 over whole segments), else one bounded copy.
    """
    view = view_of(x, g)
    return view.reshape(view.shape[0] * g.segments, g.length, g.heads * g.offsets, *view.shape[5:])


def scatter_view(result: torch.Tensor, g: Group, target: torch.Tensor):
    """(target's view of the call, the call's result shaped like it)."""
    view = view_of(target, g)
    return view, result.reshape(view.shape)


def merge_into(
    out_acc: torch.Tensor, lse_acc: torch.Tensor, out_g: torch.Tensor, lse_g: torch.Tensor
) -> None:
    """Fold one call's (output, lse) into the running pair, in place, by log-sum-exp.

    The two merge weights exp(lse_acc - lse_new) and exp(lse_g - lse_new) sum to one, so the
    new output is ``out_acc + w * (out_g - out_acc)`` with w = sigmoid(lse_g - lse_acc): one
    full-size pass over out_acc (lerp), or two without a temporary (mul, addcmul) when out_g
    has a lower precision than the accumulator. The weights are (B, ..., H) sized, D times
    smaller than the outputs.
    """
    diff = lse_g - lse_acc
    if out_g.dtype == out_acc.dtype:
        out_acc.lerp_(out_g, torch.sigmoid(diff).unsqueeze(-1))
    else:
        out_acc.mul_(torch.sigmoid(diff.neg()).unsqueeze(-1))
        out_acc.addcmul_(out_g, torch.sigmoid(diff).unsqueeze(-1))
    torch.logaddexp(lse_acc, lse_g, out=lse_acc)


def attend_calls(q, k, v, calls, causal, scale, kernel, out, lse) -> None:
    """Run ``calls`` on q, k, v (B, N, H, D) and merge them into ``out`` / ``lse``."""
    for g in calls:
        out_g, lse_g = kernel.forward(gather(q, g), gather(k, g), gather(v, g), causal, scale)
        out_acc, out_g = scatter_view(out_g, g, out)  # (B, S, L, J, R, D)
        lse_acc, lse_g = scatter_view(lse_g, g, lse)  # (B, S, L, J, R)
        if g.branch == 0:  # the first branch writes where nothing was merged yet
            out_acc.copy_(out_g)
            lse_acc.copy_(lse_g)
        else:
            merge_into(out_acc, lse_acc, out_g, lse_g)


def first_branch_covers(calls: Sequence[Group]) -> bool:
    """True when branch 0's calls select every (position, head) of their range once: rate 1
    (branch 0's calls never overlap, and segments tile the range)."""
    first = [g for g in calls if g.branch == 0]
    return bool(first) and all(g.step == 1 for g in first)


def differentiate_calls(
    dout, q, k, v, out, lse, calls, causal, scale, kernel, grads, *, overwrite_first=False
) -> None:
    """Add every call's dq, dk, dv into ``grads``; each call differentiates against the merged
    output and lse, which makes the sum the exact gradient of the merged attention.

    ``overwrite_first``: branch 0's calls write their gradients instead of adding them, for
    buffers left uninitialised because those calls cover them (``first_branch_covers``).
    """
    for g in calls:
        inputs = (gather(x, g) for x in (dout, q, k, v, out, lse))
        write = overwrite_first and g.branch == 0
        for total, grad in zip(grads, kernel.backward(*inputs, causal, scale)):
            acc, part = scatter_view(grad, g, total)
            if write:
                acc.copy_(part)
            else:
                acc.add_(part)


def accumulator_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the merge accumulates in: float32, or float64 for float64 inputs (whose
    kernels take and return a float64 lse)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def new_accumulators(q: torch.Tensor, *, fill: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """A zero output (B, N, H, D) and an all -inf lse (B, N, H), in ``accumulator_dtype``;
    left uninitialised (``fill=False``) when branch 0 writes every element."""
    b, n, h, d = q.shape
    dtype = accumulator_dtype(q.dtype)
    if not fill:
        return q.new_empty(b, n, h, d, dtype=dtype), q.new_empty(b, n, h, dtype=dtype)
    out = q.new_zeros(b, n, h, d, dtype=dtype)
    return out, q.new_full((b, n, h), float("-inf"), dtype=dtype)


def gradient_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype gradients accumulate in: float32 for half-precision inputs, else their own."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def new_gradients(*tensors: torch.Tensor, zero: bool = True) -> list[torch.Tensor]:
    """Gradient accumulators in ``gradient_dtype``: zero-filled, or left uninitialised
    (``zero=False``) when the first calls write every element."""
    make = torch.zeros if zero else torch.empty
    return [make(x.shape, dtype=gradient_dtype(x.dtype), device=x.device) for x in tensors]


def whole_first_call(calls: Sequence[Group], shape: Sequence[int]) -> Group | None:
    """Branch 0's call when it is the only one of its branch and selects every (position,
    head) of tensors of ``shape`` (B, N, H, D) at rate 1: its results, laid out (B*S, L, H, D),
    are then the (B, N, H, D) tensors themselves, and become the accumulators (no fill, no
    copy)."""
    if not calls:
        return None
    g, n, h = calls[0], shape[1], shape[2]
    alone = all(c.branch != 0 for c in calls[1:])
    whole = (g.start, g.step, g.offsets, g.heads) == (0, 1, 1, h) and g.length == g.segment_stride
    return g if g.branch == 0 and alone and whole and g.segments * g.length == n else None


def _adopt(result: torch.Tensor, shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    """A whole call's result as a (B, N, H, ...) tensor of ``dtype``: itself when it is laid
    out so (a view), else one copy."""
    if result.dtype == dtype and result.is_contiguous():
        return result.view(*shape)
    return result.reshape(*shape).to(dtype, memory_format=torch.contiguous_format, copy=True)


def _forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    calls: list[Group],
    causal: bool,
    scale: float,
    kernel: AttentionKernel,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merged output (B, N, H, D) in q's dtype and merged lse (B, N, H) in
    ``accumulator_dtype`` (float32; float64 for float64 inputs)."""
    first = whole_first_call(calls, q.shape)
    if first is None:
        out, lse = new_accumulators(q, fill=not first_branch_covers(calls))
    else:
        out_g, lse_g = kernel.forward(gather(q, first), gather(k, first), gather(v, first),
                                      causal, scale)  # fmt: skip
        dtype = accumulator_dtype(q.dtype)
        out, lse = _adopt(out_g, q.shape, dtype), _adopt(lse_g, q.shape[:3], dtype)
        calls = calls[1:]
    attend_calls(q, k, v, calls, causal, scale, kernel, out, lse)
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
    dout = dout.to(q.dtype)
    first = whole_first_call(calls, q.shape)
    if first is None:
        covered = first_branch_covers(calls)
        grads = new_gradients(q, k, v, zero=not covered)
    else:
        inputs = (gather(x, first) for x in (dout, q, k, v, out, lse))
        results = kernel.backward(*inputs, causal, scale)
        grads = [_adopt(g, x.shape, gradient_dtype(x.dtype)) for g, x in zip(results, (q, k, v))]
        calls, covered = calls[1:], False
    differentiate_calls(
        dout, q, k, v, out, lse, calls, causal, scale, kernel, grads, overwrite_first=covered
    )
    return tuple(g.to(x.dtype) for g, x in zip(grads, (q, k, v)))


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


def validate_inputs(q, k, v, segment_lengths, dilation_rates) -> None:
    """Raise ValueError unless q, k, v share a (B, N, H, D) shape and the branches are valid."""
    if q.dim() != 4 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(
            "q, k, v must have the same shape (batch, seq, heads, head_dim); got "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    validate_branches(segment_lengths, dilation_rates)


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
    ``backend`` picks the attention kernel ("auto", "torch", "efficient", "flash-attn", "math";
    see ``kernels.choose_kernel``).
    """
    validate_inputs(q, k, v, segment_lengths, dilation_rates)
    b, n, h, d = q.shape
    scale = default_scale(d) if scale is None else float(scale)
    kernel = select_kernel(backend, q)
    if n == 0:
        return torch.zeros_like(q)
    calls = plan_calls(
        n, h, segment_lengths, dilation_rates, batch=b, rows_per_call=rows_per_call_for(q),
        views_only=VIEWS_ONLY and q.device.type == "cpu",
    )  # fmt: skip
    needs_grad = torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v))
    if needs_grad:
        return _DilatedAttentionFunction.apply(q, k, v, calls, causal, scale, kernel)
    return _forward(q, k, v, calls, causal, scale, kernel)[0]

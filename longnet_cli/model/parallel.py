"""Sequence-parallel dilated attention: one sequence split across the ranks of a process group.

LongNet's distributed algorithm (DESIGN.md). Rank p of P holds positions [p*n, (p+1)*n) of
q, k, v (B, n, H, D). For every branch, each segment piece inside the rank's chunk is attended
locally exactly as in ``dilated_attention`` (causal: a square mask on the chunk's own selected
positions). A segment that spans several ranks also needs the other ranks' keys: each rank
sparsifies its keys and values FIRST (the positions of that segment its heads select), then
sends them to the ranks of the segment that need them (causal: later ranks only). A rank thus
receives about w/r tokens per head and branch, whatever the sequence length. Local queries
attend to those remote keys with no mask (causal: every received key is earlier), and all
calls merge by log-sum-exp into one (output, lse) pair.

The backward mirrors it: every call differentiates against the merged output and lse (exact,
as in ``attention.py``), and the gradients of received keys and values travel back to their
owners (the adjoint of the forward exchange), who add them in. Transport is
``torch.distributed`` point-to-point (``batch_isend_irecv``): gloo on CPU, NCCL on GPU.

Under NCCL the first batched point-to-point call on a group must include every rank of it, and a
rank with nothing to exchange in a layout makes no such call. So before a group's first exchange
every rank of it (each calls the attention at the same place) joins one collective on it
(``_join_group``), which sets up the group's communicator on the attention's device.
"""

from __future__ import annotations

import contextlib
import weakref
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch.autograd.function import once_differentiable

from longnet_cli.model.attention import (
    Group,
    attend_calls,
    differentiate_calls,
    gather,
    merge_into,
    new_accumulators,
    new_gradients,
    plan_calls,
    rows_per_call_for,
    scatter_view,
    validate_inputs,
)
from longnet_cli.model.kernels import AttentionKernel, default_scale, select_kernel


@dataclass(frozen=True)
class Payload:
    """The keys (and values) one rank's heads select in one segment, sent to another rank."""

    branch: int
    segment: int
    offset: int
    source: int  # group rank that owns the keys
    target: int  # group rank whose queries attend to them
    selection: Group  # the keys' positions, in the source rank's local coordinates


@dataclass(frozen=True)
class RemoteCall:
    """This rank's queries of one (branch, segment, offset) against keys from other ranks."""

    queries: Group  # local coordinates
    sources: tuple[Payload, ...]  # ascending source rank: keys in position order


@dataclass
class SequencePlan:
    """Everything one rank computes and exchanges, derived from shapes alone (no negotiation)."""

    local: list[Group]
    remote: list[RemoteCall] = field(default_factory=list)
    sends: dict[int, list[Payload]] = field(default_factory=lambda: defaultdict(list))
    receives: dict[int, list[Payload]] = field(default_factory=lambda: defaultdict(list))

    def received_tokens(self) -> int:
        """(token, head) rows of keys this rank receives per forward (values as many again)."""
        return _rows(self.receives)

    def sent_tokens(self) -> int:
        """(token, head) rows of keys this rank sends per forward (values as many again)."""
        return _rows(self.sends)


def _rows(payloads: dict[int, list[Payload]]) -> int:
    return sum(p.selection.length * p.selection.heads for ps in payloads.values() for p in ps)


def _selection(rank, chunk, seq_len, branch, w, r, segment, offset, num_heads) -> Group | None:
    """Positions of ``segment`` that offset ``offset`` selects inside rank ``rank``'s chunk."""
    start = max(segment * w, rank * chunk)
    end = min((segment + 1) * w, (rank + 1) * chunk, seq_len)
    first = segment * w + offset
    if first < start:
        first += -(-(start - first) // r) * r
    heads = len(range(offset, num_heads, r))
    if first >= end or heads == 0:
        return None
    length = -(-(end - first) // r)
    return Group(branch, first - rank * chunk, 1, w, length, r, offset, 1, heads)


def plan_sequence(
    chunk: int,
    rank: int,
    world: int,
    num_heads: int,
    segment_lengths: Sequence[int],
    dilation_rates: Sequence[int],
    causal: bool,
    batch: int = 1,
    *,
    local: bool = True,
    rows_per_call: int | None = None,
) -> SequencePlan:
    """The local calls, remote calls and exchanges of rank ``rank`` of ``world``.

    ``local=False`` leaves the local calls out (for cost estimates at huge lengths);
    ``rows_per_call`` bounds the local calls as in ``plan_calls``.
    """
    seq_len = chunk * world
    start, end = rank * chunk, (rank + 1) * chunk
    branches = (segment_lengths, dilation_rates)
    calls = (
        plan_calls(seq_len, num_heads, *branches, batch, rows_per_call, start=start, end=end)
        if local
        else []
    )
    plan = SequencePlan(calls)
    for branch, (w, r) in enumerate(zip(segment_lengths, dilation_rates)):
        w = min(w, seq_len)
        # Only the first and the last segment meeting the chunk can reach other ranks.
        for segment in sorted({start // w, (end - 1) // w}):
            last = min((segment + 1) * w, seq_len) - 1
            peers = [p for p in range(segment * w // chunk, last // chunk + 1) if p != rank]
            for offset in range(min(r, num_heads) if peers else 0):
                mine = _selection(rank, chunk, seq_len, branch, w, r, segment, offset, num_heads)
                if mine is None:
                    continue
                sources = []
                for peer in peers:
                    theirs = _selection(
                        peer, chunk, seq_len, branch, w, r, segment, offset, num_heads
                    )
                    if theirs is None:
                        continue
                    if not causal or peer < rank:  # their keys are visible to my queries
                        payload = Payload(branch, segment, offset, peer, rank, theirs)
                        plan.receives[peer].append(payload)
                        sources.append(payload)
                    if not causal or rank < peer:  # my keys are visible to their queries
                        plan.sends[peer].append(Payload(branch, segment, offset, rank, peer, mine))
                if sources:
                    plan.remote.append(RemoteCall(mine, tuple(sources)))
    return plan


# Groups every rank of which has joined a collective on this process (``_join_group``).
_JOINED: weakref.WeakSet = weakref.WeakSet()


def _join_group(group, device: torch.device) -> None:
    """Once per group: every rank takes part in one collective on it, on ``device``.

    NCCL sets up a group's communicator lazily at its first call, and a batched point-to-point
    call that comes first must include every rank; a rank with nothing to exchange skips
    ``batch_isend_irecv``. A one-element all-reduce, which every rank of the group makes
    (``_exchange`` runs on every rank whatever its plan), sets the communicator up first.
    """
    if group in _JOINED:
        return
    if dist.get_backend(group) == "gloo":
        device = torch.device("cpu")
    dist.all_reduce(torch.zeros(1, device=device), group=group)
    _JOINED.add(group)


def _exchange(
    outgoing: dict[int, list[torch.Tensor]],
    incoming: dict[int, list[tuple]],
    like: torch.Tensor,
    group,
) -> dict[int, list[torch.Tensor]]:
    """Send each peer its tensors and receive each peer's, as one message per peer and way.

    ``incoming`` gives the shapes expected from each peer; both sides derive them from the
    same plan, so messages are plain buffers with no header.
    """
    # NCCL runs on the current CUDA device: make it the tensors' for these calls.
    on_device = torch.cuda.device(like.device) if like.is_cuda else contextlib.nullcontext()
    with on_device:
        _join_group(group, like.device)
        buffers = _send_and_receive(outgoing, incoming, like, group)
    received = {}
    for peer, shapes in incoming.items():
        sizes = [torch.Size(s).numel() for s in shapes]
        received[peer] = [part.view(s) for part, s in zip(buffers[peer].split(sizes), shapes)]
    return received


def _send_and_receive(outgoing, incoming, like, group) -> dict[int, torch.Tensor]:
    """One batched call of every send and receive (none when this rank has nothing to do);
    returns each peer's received flat buffer."""
    ops, buffers = [], {}
    for peer, tensors in sorted(outgoing.items()):
        message = torch.cat([t.reshape(-1) for t in tensors])
        ops.append(dist.P2POp(dist.isend, message, dist.get_global_rank(group, peer), group))
    for peer, shapes in sorted(incoming.items()):
        size = sum(torch.Size(s).numel() for s in shapes)
        buffers[peer] = like.new_empty(size)
        ops.append(dist.P2POp(dist.irecv, buffers[peer], dist.get_global_rank(group, peer), group))
    if ops:
        for request in dist.batch_isend_irecv(ops):
            request.wait()
    return buffers


def _payload_shape(payload: Payload, batch: int, head_dim: int) -> tuple[int, ...]:
    """Shape of a payload's keys as ``gather`` returns them: (B, L, J, D)."""
    return (batch, payload.selection.length, payload.selection.heads, head_dim)


def _exchange_keys(k, v, plan: SequencePlan, group) -> dict[Payload, tuple]:
    """Send my selected keys and values; return the received ones by payload."""
    b, _, _, d = k.shape
    outgoing = {
        peer: [gather(x, p.selection) for x in (k, v) for p in payloads]
        for peer, payloads in plan.sends.items()
    }
    incoming = {
        peer: [_payload_shape(p, b, d) for _ in (k, v) for p in payloads]
        for peer, payloads in plan.receives.items()
    }
    received = _exchange(outgoing, incoming, k, group)
    keys = {}
    for peer, payloads in plan.receives.items():
        parts = received[peer]
        for i, payload in enumerate(payloads):
            keys[payload] = (parts[i], parts[len(payloads) + i])
    return keys


def _remote_inputs(call: RemoteCall, keys: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """A remote call's keys and values from all its sources, in position order."""
    k = torch.cat([keys[p][0] for p in call.sources], dim=1)  # (B, Lk, J, D)
    v = torch.cat([keys[p][1] for p in call.sources], dim=1)
    return k, v


def _forward(q, k, v, plan: SequencePlan, causal, scale, kernel, group):
    """This rank's merged output (float32 accumulator), lse, and the keys it received."""
    out, lse = new_accumulators(q)
    attend_calls(q, k, v, plan.local, causal, scale, kernel, out, lse)
    keys = _exchange_keys(k, v, plan, group)
    for call in plan.remote:
        remote_k, remote_v = _remote_inputs(call, keys)
        out_c, lse_c = kernel.forward(gather(q, call.queries), remote_k, remote_v, False, scale)
        out_acc, out_c = scatter_view(out_c, call.queries, out)
        lse_acc, lse_c = scatter_view(lse_c, call.queries, lse)
        merge_into(out_acc, lse_acc, out_c, lse_c)
    return out, lse, keys


def _backward(dout, q, k, v, out, lse, keys, plan: SequencePlan, causal, scale, kernel, group):
    """Exact dq, dk, dv of this rank's chunk, including gradients sent back by other ranks."""
    grads = new_gradients(q, k, v)
    dout = dout.to(q.dtype)
    differentiate_calls(dout, q, k, v, out, lse, plan.local, causal, scale, kernel, grads)
    key_grads: dict[Payload, tuple] = {}
    for call in plan.remote:
        remote_k, remote_v = _remote_inputs(call, keys)
        inputs = (
            gather(dout, call.queries),
            gather(q, call.queries),
            remote_k,
            remote_v,
            gather(out, call.queries),
            gather(lse, call.queries),
        )
        dq, dk, dv = kernel.backward(*inputs, False, scale)
        acc, part = scatter_view(dq, call.queries, grads[0])
        acc.add_(part)
        lengths = [p.selection.length for p in call.sources]
        for payload, dk_part, dv_part in zip(
            call.sources, dk.split(lengths, dim=1), dv.split(lengths, dim=1)
        ):
            key_grads[payload] = (dk_part, dv_part)
    # The adjoint of the forward exchange: key gradients go back to the keys' owners.
    b, _, _, d = k.shape
    outgoing = {
        peer: [key_grads[p][i].contiguous() for i in (0, 1) for p in payloads]
        for peer, payloads in plan.receives.items()
    }
    incoming = {
        peer: [_payload_shape(p, b, d) for _ in (0, 1) for p in payloads]
        for peer, payloads in plan.sends.items()
    }
    returned = _exchange(outgoing, incoming, dk if plan.remote else k, group)
    for peer, payloads in plan.sends.items():
        parts = returned[peer]
        for i, payload in enumerate(payloads):
            for total, part in ((grads[1], parts[i]), (grads[2], parts[len(payloads) + i])):
                acc, part = scatter_view(part, payload.selection, total)
                acc.add_(part)
    return tuple(g.to(x.dtype) for g, x in zip(grads, (q, k, v)))


class _SequenceParallelFunction(torch.autograd.Function):
    """Autograd wrapper of the sequence-parallel forward and its exact backward."""

    @staticmethod
    def forward(ctx, q, k, v, plan, causal, scale, kernel, group):
        out, lse, keys = _forward(q, k, v, plan, causal, scale, kernel, group)
        out = out.to(q.dtype)
        # The received keys and values are saved like every other tensor, so that saved-tensor
        # hooks (activation checkpointing, offloading) see and manage them.
        ctx.payloads = list(keys)
        received = [x for payload in ctx.payloads for x in keys[payload]]
        ctx.save_for_backward(q, k, v, out, lse, *received)
        ctx.setup = (plan, causal, scale, kernel, group)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, dout):
        q, k, v, out, lse, *received = ctx.saved_tensors
        keys = {
            payload: (received[2 * i], received[2 * i + 1])
            for i, payload in enumerate(ctx.payloads)
        }
        dq, dk, dv = _backward(dout, q, k, v, out, lse, keys, *ctx.setup)
        return dq, dk, dv, None, None, None, None, None


def dilated_attention_sp(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    segment_lengths: Sequence[int],
    dilation_rates: Sequence[int],
    *,
    causal: bool = False,
    scale: float | None = None,
    group: dist.ProcessGroup | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Dilated attention over a sequence split across ``group`` (default: the world).

    Rank r passes q, k, v of shape (B, n, H, D) holding positions [r*n, (r+1)*n) of the same
    sequences; it gets back its chunk of exactly what ``dilated_attention`` returns for the
    whole sequence, and the backward gives exactly the whole computation's gradients.
    """
    validate_inputs(q, k, v, segment_lengths, dilation_rates)
    group = group if group is not None else dist.group.WORLD
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    b, n, h, d = q.shape
    scale = default_scale(d) if scale is None else float(scale)
    kernel: AttentionKernel = select_kernel(backend, q)
    plan = plan_sequence(
        n, rank, world, h, segment_lengths, dilation_rates, causal, batch=b,
        rows_per_call=rows_per_call_for(q),
    )  # fmt: skip
    needs_grad = torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v))
    if needs_grad:
        return _SequenceParallelFunction.apply(q, k, v, plan, causal, scale, kernel, group)
    out, _, _ = _forward(q, k, v, plan, causal, scale, kernel, group)
    return out.to(q.dtype)

"""Smeared keys (Olsson et al., 2022): each head's key mixes in the previous position's key.

    k_j <- s_h * k_j + (1 - s_h) * k_{j-1},   s_h = sigmoid(a_h), one a_h per head and layer

applied to the projected keys, before qk-norm and the position encoding. It lets one attention
layer find "the token after the previous occurrence of this one", the move copying from context
(induction) needs. The key before the first position of a *document stream* is zero; a piece of
a stream that starts later (a chunk of long inference, a rank's chunk in sequence parallelism, a
decoding step) smears with the previous position's projected key, which its caller carries over:
``previous_key`` (B, H, D). Under sequence parallelism the previous rank sends it
(``previous_rank_key``), and the gradient of what it sent goes back to it.

Legend: B batch, N positions of the piece, H heads, D head dim.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.autograd.function import once_differentiable

INITIAL_LOGIT = 0.0  # a_h at initialisation: s_h = sigmoid(0) = 0.5, half of each key smeared


def smear_keys(
    k: torch.Tensor, logit: torch.Tensor, previous_key: torch.Tensor | None = None
) -> torch.Tensor:
    """Smeared keys (B, N, H, D) of projected keys k (B, N, H, D), gates ``logit`` (H,) and the
    projected key before position 0 (B, H, D; None: a stream start, zeros)."""
    if previous_key is None:
        previous_key = k.new_zeros(k.shape[0], *k.shape[2:])
    shifted = torch.cat([previous_key[:, None].to(k.dtype), k[:, :-1]], dim=1)  # k_{j-1}
    s = torch.sigmoid(logit).to(k.dtype)[:, None]  # (H, 1): broadcasts over (B, N, H, D)
    return torch.lerp(shifted, k, s)  # s * k + (1 - s) * k_{j-1}


class _PreviousRankKey(torch.autograd.Function):
    """Each rank's last projected key, delivered to the next rank (rank 0 gets zeros); the
    backward delivers the gradient of what a rank received back to the rank that sent it."""

    @staticmethod
    def forward(ctx, last_key: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        gathered = _all_gather(last_key.contiguous(), group)
        rank = dist.get_rank(group)
        return gathered[rank - 1].clone() if rank > 0 else torch.zeros_like(last_key)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        gathered = _all_gather(grad.contiguous(), ctx.group)
        rank, world = dist.get_rank(ctx.group), dist.get_world_size(ctx.group)
        mine = gathered[rank + 1] if rank + 1 < world else torch.zeros_like(grad)
        return mine, None


def _all_gather(x: torch.Tensor, group) -> list[torch.Tensor]:
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, x, group=group)
    return parts


def previous_rank_key(last_key: torch.Tensor, group) -> torch.Tensor:
    """The projected key (B, H, D) before this rank's first position: the previous rank's
    ``last_key``, or zeros on rank 0 (the stream's start). Every rank of ``group`` must call it
    at the same place (one all-gather of B*H*D values forward, one backward)."""
    return _PreviousRankKey.apply(last_key, group)

"""Dense float64 reference for dilated attention, written from the paper's definition.

For every head it builds the N x N multiplicity matrix M: M[i, j] counts the branches that put
key j in query i's dilated segment (both selected by the head's offset, same segment, and j <= i
when causal). Attention is then softmax over keys weighted by M: out_i = sum_j M_ij e^{s_ij} v_j
/ sum_j M_ij e^{s_ij}; a query with no keys gets 0.
"""

from __future__ import annotations

import torch


def multiplicity(n: int, head: int, segment_lengths, dilation_rates, causal: bool) -> torch.Tensor:
    """(N, N) float64 counts of how many branches let query i see key j, for one head."""
    m = torch.zeros(n, n, dtype=torch.float64)
    pos = torch.arange(n)
    for w, r in zip(segment_lengths, dilation_rates):
        segment = pos // w
        selected = (pos - segment * w) % r == head % r
        sees = selected[:, None] & selected[None, :] & (segment[:, None] == segment[None, :])
        if causal:
            sees &= pos[None, :] <= pos[:, None]
        m += sees.double()
    return m


def dense_dilated_attention(q, k, v, segment_lengths, dilation_rates, causal=False, scale=None):
    """Reference output (B, N, H, D) in float64, differentiable through q, k, v."""
    _, n, h, d = q.shape
    scale = d**-0.5 if scale is None else scale
    q, k, v = (x.double() for x in (q, k, v))
    outs = []
    for head in range(h):
        m = multiplicity(n, head, segment_lengths, dilation_rates, causal)
        s = torch.einsum("bid,bjd->bij", q[:, :, head], k[:, :, head]) * scale
        s = s.masked_fill(m == 0, float("-inf")) + torch.log(m.clamp(min=1))
        covered = (m.sum(-1) > 0)[None, :, None]
        p = torch.softmax(s.masked_fill(~covered, 0.0), dim=-1) * covered
        outs.append(torch.einsum("bij,bjd->bid", p, v[:, :, head]))
    return torch.stack(outs, dim=2)

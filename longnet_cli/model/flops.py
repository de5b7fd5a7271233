"""FLOP accounting for benchmarks: attention by the kernel calls it makes, and whole models.

Conventions: 2 FLOPs per multiply-add; attention scores 4*D FLOPs per (query, key) pair per
head (QK^T and PV); a backward costs twice its forward, so training costs 3x the forward.
"""

from __future__ import annotations

from collections.abc import Sequence

from longnet_cli.model.attention import plan_calls


def pair_count(length: int, causal: bool) -> int:
    """(query, key) pairs one head of plain attention scores over ``length`` tokens."""
    return length * (length + 1) // 2 if causal else length * length


def dilated_attention_flops(
    seq_len: int,
    heads: int,
    dim_head: int,
    segment_lengths: Sequence[int],
    dilation_rates: Sequence[int],
    causal: bool = True,
) -> float:
    """Forward FLOPs of one dilated attention over ``seq_len`` tokens (all heads)."""
    calls = plan_calls(seq_len, heads, segment_lengths, dilation_rates)
    pairs = sum(pair_count(g.length, causal) * g.heads * g.offsets * g.segments for g in calls)
    return 4.0 * dim_head * pairs


def dense_attention_flops(seq_len: int, heads: int, dim_head: int, causal: bool = True) -> float:
    """Forward FLOPs of dense attention over ``seq_len`` tokens (all heads)."""
    return 4.0 * dim_head * pair_count(seq_len, causal) * heads


def training_flops_per_token(model, seq_len: int) -> float:
    """Forward+backward FLOPs per token of a LongNetTransformer at ``seq_len``.

    6 per weight of every matrix a token passes through (the output head included, the
    embedding lookup not), plus 3x the forward attention FLOPs of every block.
    """
    config = model.config
    matrices = sum(
        p.numel()
        for name, p in model.named_parameters()
        if p.dim() >= 2 and not name.startswith("token_embedding")
    )
    if config.tie_embeddings:
        matrices += model.head.weight.numel()  # shared with the embedding, used as the head
    attention = dilated_attention_flops(
        seq_len, config.heads, config.dim_head, config.segment_lengths, config.dilation_rates
    )
    return 6.0 * matrices + 3.0 * config.depth * attention / seq_len

"""Transformer layers: RMSNorm, SwiGLU feed-forward and the DilatedAttention module.

Legend: B batch, N sequence length, H heads, Dh head dim, C model dim (= ``dim``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from longnet_cli.model.attention import dilated_attention
from longnet_cli.model.config import validate_branches
from longnet_cli.model.positions import PositionTables, apply_positions, build_position_encoding
from longnet_cli.model.smeared_keys import INITIAL_LOGIT, previous_rank_key, smear_keys


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learnable gain; computed in (at least) float32 for stability."""

    def __init__(
        self,
        dim: int,
        eps: float = 1e-6,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, dtype=dtype, device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # torch's rms_norm computes in (at least) float32 and returns x's dtype: one fused
        # kernel where x and the gain share a dtype, the same values as the five-op formula
        # x * rsqrt(mean(x^2) + eps) * weight. A gain of another dtype (bfloat16 q under
        # autocast, float32 gains) multiplies after the cast, promoting as it always did.
        if not hasattr(F, "rms_norm"):  # torch < 2.4 (pyproject allows 2.3): the formula
            x32 = x.to(torch.promote_types(x.dtype, torch.float32))
            normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
            return normed.to(x.dtype) * self.weight
        shape = (x.shape[-1],)
        if x.dtype == self.weight.dtype:
            return F.rms_norm(x, shape, self.weight, self.eps)
        return F.rms_norm(x, shape, None, self.eps) * self.weight


class SwiGLU(nn.Module):
    """Gated feed-forward (Shazeer, 2020): down(silu(gate(x)) * up(x)), then dropout."""

    def __init__(
        self,
        dim: int,
        hidden_dim: int,
        dropout: float = 0.0,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        factory = {"dtype": dtype, "device": device}
        self.gate_proj = nn.Linear(dim, hidden_dim, bias=False, **factory)
        self.up_proj = nn.Linear(dim, hidden_dim, bias=False, **factory)
        self.down_proj = nn.Linear(hidden_dim, dim, bias=False, **factory)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = F.silu(self.gate_proj(x)) * self.up_proj(x)  # (B, N, C) -> (B, N, hidden)
        return self.dropout(self.down_proj(hidden))  # (B, N, hidden) -> (B, N, C)


def _branches(
    dilation_rate: int | None,
    segment_size: int | None,
    segment_lengths: Sequence[int] | None,
    dilation_rates: Sequence[int] | None,
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Resolve the two ways of naming branches into (segment_lengths, dilation_rates)."""
    single = (dilation_rate, segment_size)
    several = (segment_lengths, dilation_rates)
    if any(x is not None for x in single) and any(x is not None for x in several):
        raise ValueError(
            "give branches either as dilation_rate and segment_size (one branch) or as "
            "segment_lengths=[...] and dilation_rates=[...] (several), not both"
        )
    if all(x is None for x in single + several):
        raise ValueError(
            "DilatedAttention needs branches: dilation_rate and segment_size (one branch) or "
            "segment_lengths=[...] and dilation_rates=[...]"
        )
    if any(x is not None for x in single):
        if dilation_rate is None or segment_size is None:
            raise ValueError("dilation_rate and segment_size must be given together")
        if not all(isinstance(x, int) for x in single):
            raise ValueError(
                "dilation_rate and segment_size are single integers; for several branches pass "
                "segment_lengths=[...] and dilation_rates=[...]"
            )
        segment_lengths, dilation_rates = [segment_size], [dilation_rate]
    elif segment_lengths is None or dilation_rates is None:
        raise ValueError("segment_lengths and dilation_rates must be given together")
    validate_branches(segment_lengths, dilation_rates)
    return tuple(segment_lengths), tuple(dilation_rates)


class DilatedAttention(nn.Module):
    """Multi-head LongNet dilated attention with q/k/v/out projections: (B, N, C) -> (B, N, C).

    Branches: ``DilatedAttention(dim, heads, dilation_rate, segment_size)`` (the community LongNet
    package's signature) is one branch; ``segment_lengths=[...], dilation_rates=[...]`` give
    several, merged exactly as in the paper. ``dim_head`` defaults to ``dim // heads``.

    Options:
        causal: each query sees only keys at positions <= its own.
        use_xpos / rotary: encode q and k with xPos or rotary at global positions (``offset``).
        qk_norm: RMSNorm over the head dim (learnable) of q and k, not v, before positions.
        smeared_keys: each head's key mixes in the previous position's key by a learned gate
            per head (``smeared_keys.py``), before qk-norm and positions.
        dropout: dropout on the attention *output* (before the out projection), in training only.
            Dropout of attention probabilities cannot be applied inside the fused dilated
            kernels, so this is where the community argument takes effect.
        use_rel_pos_bias: not supported (raises): a relative position bias is an N x N additive
            term, which fused dilated kernels cannot take; use use_xpos or rotary instead.
        backend: attention kernel (``model.config.BACKENDS``: "auto", "torch", "efficient",
            "flash-attn", "math"), see ``kernels.py``.
        dtype, device: of the parameters.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        dilation_rate: int | None = None,
        segment_size: int | None = None,
        dropout: float = 0.0,
        causal: bool = False,
        use_xpos: bool = False,
        use_rel_pos_bias: bool = False,
        qk_norm: bool = False,
        *,
        segment_lengths: Sequence[int] | None = None,
        dilation_rates: Sequence[int] | None = None,
        dim_head: int | None = None,
        rotary: bool = False,
        smeared_keys: bool = False,
        backend: str = "auto",
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        if use_rel_pos_bias:
            raise NotImplementedError(
                "use_rel_pos_bias=True is not supported: a relative position bias adds an N x N "
                "term to the scores, which the fused dilated attention kernels cannot take; "
                "use use_xpos=True or rotary=True for position information instead"
            )
        if use_xpos and rotary:
            raise ValueError("choose one position encoding: use_xpos=True or rotary=True")
        if dim_head is None:
            if dim % heads:
                raise ValueError(
                    f"dim ({dim}) is not divisible by heads ({heads}); pass dim_head explicitly"
                )
            dim_head = dim // heads
        self.segment_lengths, self.dilation_rates = _branches(
            dilation_rate, segment_size, segment_lengths, dilation_rates
        )
        self.dim, self.heads, self.dim_head = dim, heads, dim_head
        self.causal = causal
        self.backend = backend
        self.sequence_group = None  # a process group splitting the sequence, if any

        factory = {"dtype": dtype, "device": device}
        inner = heads * dim_head
        self.q_proj = nn.Linear(dim, inner, bias=False, **factory)
        self.k_proj = nn.Linear(dim, inner, bias=False, **factory)
        self.v_proj = nn.Linear(dim, inner, bias=False, **factory)
        self.out_proj = nn.Linear(inner, dim, bias=False, **factory)
        self.q_norm = RMSNorm(dim_head, **factory) if qk_norm else None
        self.k_norm = RMSNorm(dim_head, **factory) if qk_norm else None
        # Smeared keys' gate logits a_h (H,): s_h = sigmoid(a_h) of each key is its own.
        self.key_smear = (
            nn.Parameter(torch.full((heads,), INITIAL_LOGIT, **factory)) if smeared_keys else None
        )
        self.dropout = nn.Dropout(dropout)
        kind = "xpos" if use_xpos else "rotary" if rotary else "none"
        self.position_kind = kind
        self.position_encoding = build_position_encoding(kind, dim_head, self.segment_lengths)

    def forward(
        self, x: torch.Tensor, offset: int = 0, position_tables: PositionTables | None = None
    ) -> torch.Tensor:
        """Attend over x (B, N, C) whose first token sits at global position ``offset``.

        ``position_tables`` (for these N positions) may be passed by a caller that shares them
        across layers; by default they come from this layer's position encoding.
        """
        n = x.shape[1]
        if self.position_encoding is not None and position_tables is None:
            position_tables = self.position_encoding.tables(n, offset, x.device)
        out = self.attend(*self.project(x, position_tables))  # (B, N, H, Dh)
        return self.output(out)

    def project(
        self,
        x: torch.Tensor,
        position_tables: PositionTables | None,
        previous_key: torch.Tensor | None = None,
        *,
        return_last_key: bool = False,
    ):
        """q, k, v (B, N, H, Dh) of x (B, N, C): projections, smeared keys, qk norm, positions
        (per position, so it may run on a chunk of positions with the matching slice of the
        tables). ``previous_key`` (B, H, Dh): the projected key before x's first position, for
        smeared keys (None: the previous rank's under sequence parallelism, else zeros: a
        stream start). ``return_last_key``: also return x's last projected (unsmeared) key
        (B, H, Dh), which the next piece of the stream takes as its ``previous_key``."""
        b, n, _ = x.shape
        shape = (b, n, self.heads, self.dim_head)
        q = self.q_proj(x).view(shape)  # (B, N, C) -> (B, N, H*Dh) -> (B, N, H, Dh)
        k = self.k_proj(x).view(shape)
        v = self.v_proj(x).view(shape)
        last_key = k[:, -1] if return_last_key and self.key_smear is not None else None
        if self.key_smear is not None:
            if previous_key is None and self.sequence_group is not None:
                previous_key = previous_rank_key(k[:, -1], self.sequence_group)
            k = smear_keys(k, self.key_smear, previous_key)
        if self.q_norm is not None:
            # The norms compute in float32 and their float32 gains would promote q and k under
            # autocast (v stays bfloat16): give them back v's dtype, which the kernels need.
            q, k = self.q_norm(q).to(v.dtype), self.k_norm(k).to(v.dtype)
        if self.position_encoding is not None:
            q, k = apply_positions(q, k, position_tables)
        return (q, k, v, last_key) if return_last_key else (q, k, v)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Dilated attention over the whole sequence: (B, N, H, Dh) -> (B, N, H, Dh).

        With ``sequence_group`` set (by ``LongNetTransformer.use_sequence_parallel``), q, k, v
        are this rank's chunk of a sequence split across that process group.
        """
        if self.sequence_group is not None:
            from longnet_cli.model.parallel import dilated_attention_sp

            return dilated_attention_sp(
                q,
                k,
                v,
                self.segment_lengths,
                self.dilation_rates,
                causal=self.causal,
                group=self.sequence_group,
                backend=self.backend,
            )
        return dilated_attention(
            q,
            k,
            v,
            self.segment_lengths,
            self.dilation_rates,
            causal=self.causal,
            backend=self.backend,
        )

    def output(self, out: torch.Tensor) -> torch.Tensor:
        """Dropout and the out projection (per position): (B, N, H, Dh) -> (B, N, C)."""
        b, n = out.shape[:2]
        out = out.reshape(b, n, self.heads * self.dim_head)  # (B, N, H, Dh) -> (B, N, H*Dh)
        return self.out_proj(self.dropout(out))  # (B, N, H*Dh) -> (B, N, C)

    def extra_repr(self) -> str:
        return (
            f"heads={self.heads}, dim_head={self.dim_head}, segment_lengths="
            f"{list(self.segment_lengths)}, dilation_rates={list(self.dilation_rates)}, "
            f"causal={self.causal}, positions={self.position_kind!r}"
            + (", smeared_keys=True" if self.key_smear is not None else "")
        )

"""Rotary position embedding and xPos for q and k of shape (B, N, H, D), at global positions.

Rotary (Su et al., 2021) rotates each channel pair (c, c + D/2) of q and k (the GPT-NeoX "half"
layout) at position p by the angle ``p * theta^(-2c/D)``, so the score q_i . k_j depends on the
positions only through i - j. xPos (Sun et al., 2022, "A Length-Extrapolatable Transformer") also
scales pair c of q by ``zeta_c^(t/base)`` and of k by ``zeta_c^(-t/base)``, with
``zeta_c = (2c/D + 0.4) / 1.4`` and base 512: the score of a query i and an earlier key j is then
damped by ``zeta_c^((i - j)/base) <= 1``, more for distant keys.

Positions are global: ``offset`` is the position of the first token, so a chunk of a longer
sequence (sequence parallelism, streaming evaluation) is encoded exactly like its slice of the
whole sequence. Angles are computed in float64 (float32 loses about 0.06 rad at position 1M) in
bounded chunks, and the tables are stored in float32: O(N * D) memory and time, nothing O(N^2).

xPos at long range. ``zeta_c^(t/base)`` leaves the float32 range once ``|t * log zeta_c| / base``
exceeds 88: about 36K positions for the fastest-decaying pair. torchscale centres t on the middle
of the sequence (t = p - N/2), which only doubles that range; 1M positions would overflow. Here:

- t is the position relative to the centre of its *block*: blocks of ``block_size`` tokens are
  aligned at multiples of ``block_size`` and ``t = p mod block_size - block_size/2`` (torchscale's
  centring, repeated per block). A pair in one block gets exactly ``zeta^((i - j)/base)``.
  ``DilatedAttention`` uses its longest segment length as the block when every segment length
  divides it (the paper's geometric sequences): every (query, key) pair that dilated attention
  lets interact then lies in one block, so xPos is exact where it matters. Pairs in different
  blocks would get a wrong (growing) factor, which is why no other block size is chosen for you.
- with ``block_size=None`` t is the global position itself.
- in both cases each exponent ``t * log(zeta_c) / base`` is clamped to +-``XPOS_MAX_EXPONENT``
  (less for float16, whose range is smaller), so the scales are finite at any position. Where the
  clamp acts the decay saturates (a monotone clamp never amplifies a causal score).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from longnet_cli.model.config import POSITION_KINDS

XPOS_MAX_EXPONENT = 40.0  # |log scale| bound: e^40 per side, e^80 per score, inside float32
XPOS_GAMMA = 0.4  # zeta_c = (2c/D + gamma) / (1 + gamma), as in the paper
_CHUNK = 1 << 16  # positions per float64 angle chunk: bounds the temporary


@dataclass(frozen=True)
class PositionTables:
    """Per-position tables for N tokens: cos, sin and (xPos) the scale of q; k gets 1/scale.

    ``applied`` derives from them, once per set of tables (so once per forward, shared by every
    layer: the model computes one set of tables per forward), the full-width tables that
    ``apply_positions`` multiplies q and k with.
    """

    cos: torch.Tensor  # (N, D/2) float32
    sin: torch.Tensor  # (N, D/2) float32
    scale: torch.Tensor | None = None  # (N, D/2) float32, xPos only
    # (parent tables, start): a slice derives its applied tables from its parent's
    parent: tuple[PositionTables, int] | None = field(default=None, compare=False, repr=False)
    _applied: dict = field(default_factory=dict, compare=False, repr=False)

    def slice(self, start: int, stop: int) -> PositionTables:
        """The tables of positions [start, stop) of these."""
        scale = None if self.scale is None else self.scale[start:stop]
        root, base = self.parent if self.parent is not None else (self, 0)
        return PositionTables(
            self.cos[start:stop], self.sin[start:stop], scale, parent=(root, base + start)
        )

    def applied(self, limit: float = XPOS_MAX_EXPONENT) -> AppliedTables:
        """(q_cos, q_sin, k_cos, k_sin), each (N, 1, D) float32: the cos of pair c repeated in
        channels c and c + D/2, the sin negated in channel c (so that ``rotate`` needs one
        rotate-half), xPos's scale (clamped to e^+-limit) folded into q's and divided out of k's.
        Computed on first use and kept with these tables. A slice takes views of its parent's
        where the parent has them; else it computes its own, for its positions only (chunked
        inference at long N slices the tables chunk by chunk and never holds full-width tables
        for the whole sequence: 2-4 x (N, D) float32 would weigh as much as the hidden states).
        """
        key = None if self.scale is None else float(limit)
        cached = self._applied.get(key)
        if cached is None:
            whole = None if self.parent is None else self.parent[0]._applied.get(key)
            if whole is not None:
                start = self.parent[1]
                cached = tuple(t[start : start + self.cos.shape[0]] for t in whole)
            else:
                cached = _full_width(self.cos, self.sin, self.scale, limit)
            self._applied[key] = cached
        return cached


AppliedTables = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def _full_width(cos, sin, scale, limit: float) -> AppliedTables:
    """The tables of ``PositionTables.applied`` from the (N, D/2) ones."""

    def widen(c: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.cat((c, c), dim=-1)[:, None], torch.cat((-s, s), dim=-1)[:, None]

    if scale is None:
        q_cos, q_sin = widen(cos, sin)
        return q_cos, q_sin, q_cos, q_sin
    if limit < XPOS_MAX_EXPONENT:  # float16: keep q * scale and k / scale inside its range
        scale = scale.clamp(math.exp(-limit), math.exp(limit))
    return (*widen(cos * scale, sin * scale), *widen(cos / scale, sin / scale))


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (c, c + D/2) of x (B, N, H, D) by full-width tables (N, 1, D) of
    ``PositionTables.applied``: x * cos + rotate_half(x) * sin, in float32 (or x's wider dtype),
    returned in x's dtype. One copy (the rotate-half) and two elementwise passes: x's low
    precision values are read as they are and widened inside the multiplies."""
    x1, x2 = x.chunk(2, dim=-1)  # 2 x (B, N, H, D/2)
    half_turned = torch.cat((x2, x1), dim=-1)  # the sign of x2 sits in sin's first half
    return torch.addcmul(x * cos, half_turned, sin).to(x.dtype)


def apply_positions(
    q: torch.Tensor, k: torch.Tensor, tables: PositionTables
) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode q and k (B, N, H, D) with tables for their N positions; float32 math, input dtype."""
    q_cos, q_sin, k_cos, k_sin = tables.applied(xpos_limit(q.dtype))
    return rotate(q, q_cos, q_sin), rotate(k, k_cos, k_sin)


def xpos_limit(dtype: torch.dtype) -> float:
    """The bound on xPos's |log scale| for q and k of ``dtype`` (float16's range is smaller)."""
    return min(XPOS_MAX_EXPONENT, 0.5 * math.log(torch.finfo(dtype).max) - 1.0)


class RotaryEmbedding:
    """Rotary position embedding; remembers the tables of the last (length, offset, device)."""

    def __init__(self, head_dim: int, theta: float = 10000.0) -> None:
        if head_dim % 2:
            raise ValueError(f"rotary position encoding needs an even head_dim, got {head_dim}")
        self.head_dim = head_dim
        self.theta = float(theta)
        self._cached: tuple[tuple, PositionTables] | None = None

    def tables(
        self, length: int, offset: int = 0, device: torch.device | str | None = None
    ) -> PositionTables:
        """Tables for global positions offset, ..., offset + length - 1."""
        key = (int(length), int(offset), torch.device(device or "cpu"))
        if self._cached is None or self._cached[0] != key:
            self._cached = (key, self._compute(*key))
        return self._cached[1]

    def __call__(
        self, q: torch.Tensor, k: torch.Tensor, offset: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode q and k (B, N, H, D) whose first token sits at global position ``offset``."""
        return apply_positions(q, k, self.tables(q.shape[1], offset, q.device))

    def _positions(self, length: int, offset: int, device: torch.device) -> torch.Tensor:
        return torch.arange(offset, offset + length, dtype=torch.float64, device=device)

    def _compute(self, length: int, offset: int, device: torch.device) -> PositionTables:
        half = self.head_dim // 2
        inv_freq = self.theta ** (
            -torch.arange(0, half, dtype=torch.float64, device=device) * 2 / self.head_dim
        )  # (D/2,)
        cos = torch.empty(length, half, dtype=torch.float32, device=device)
        sin = torch.empty_like(cos)
        positions = self._positions(length, offset, device)  # (N,)
        for start in range(0, length, _CHUNK):
            angles = torch.outer(positions[start : start + _CHUNK], inv_freq)  # (chunk, D/2)
            cos[start : start + _CHUNK] = angles.cos()
            sin[start : start + _CHUNK] = angles.sin()
        return PositionTables(cos, sin)


class XPos(RotaryEmbedding):
    """xPos: rotary plus a per-pair decay of the score with distance (see the module notes)."""

    def __init__(
        self,
        head_dim: int,
        scale_base: float = 512.0,
        block_size: int | None = None,
        theta: float = 10000.0,
    ) -> None:
        super().__init__(head_dim, theta)
        if block_size is not None and block_size < 1:
            raise ValueError(f"xPos block_size must be a positive integer, got {block_size}")
        self.scale_base = float(scale_base)
        self.block_size = block_size

    def _compute(self, length: int, offset: int, device: torch.device) -> PositionTables:
        rotary = super()._compute(length, offset, device)
        half = self.head_dim // 2
        pairs = torch.arange(0, half, dtype=torch.float64, device=device)
        zeta = (pairs * 2 / self.head_dim + XPOS_GAMMA) / (1 + XPOS_GAMMA)  # (D/2,) in (0, 1)
        log_zeta = zeta.log() / self.scale_base
        t = self._positions(length, offset, device)  # (N,)
        if self.block_size is not None:
            t = t.remainder(self.block_size) - self.block_size / 2  # centre of each block
        scale = torch.empty(length, half, dtype=torch.float32, device=device)
        for start in range(0, length, _CHUNK):
            exponent = torch.outer(t[start : start + _CHUNK], log_zeta)  # (chunk, D/2)
            scale[start : start + _CHUNK] = exponent.clamp(
                -XPOS_MAX_EXPONENT, XPOS_MAX_EXPONENT
            ).exp()
        return PositionTables(rotary.cos, rotary.sin, scale)


def xpos_block_size(segment_lengths: tuple[int, ...] | list[int]) -> int | None:
    """The longest segment length when every segment length divides it, else None."""
    longest = max(segment_lengths)
    return longest if all(longest % w == 0 for w in segment_lengths) else None


def build_position_encoding(
    kind: str, head_dim: int, segment_lengths: tuple[int, ...] | list[int]
) -> RotaryEmbedding | None:
    """The position encoding named ``kind`` ("rotary", "xpos", "none") for one attention layer."""
    if kind == "rotary":
        return RotaryEmbedding(head_dim)
    if kind == "xpos":
        return XPos(head_dim, block_size=xpos_block_size(segment_lengths))
    if kind == "none":
        return None
    raise ValueError(f"unknown position encoding {kind!r}; choose one of {POSITION_KINDS}")

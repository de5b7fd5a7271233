"""Decoding with a key/value cache bounded by the branches, not by the context.

In a causal branch (w, r), head h reads position p only if p is one of its selected positions,
``(p mod w) mod r == h mod r``, and only from inside p's segment ``[floor(p/w)*w, p]``. Once
decoding passes a segment's end, the branch never reads that segment again. So a decoder keeps,
per layer, branch and head, only the current segment's selected keys and values: at most
``ceil(w_i / r_i)`` per head, ``sum_i H * ceil(w_i / r_i)`` per layer, whatever the context.

One decoding step at position p, per layer and branch: the selected offset is
``o = (p mod w) mod r`` and the slot ``t = (p mod w) // r``; heads ``o, o + r, ...`` write their
key and value at slot t and attend, with ordinary softmax, to slots ``0..t`` (exactly their
selected keys of this segment, itself included). Slots past t hold an older segment's keys and
are never read, so a new segment needs no reset. Branches merge by their log-sum-exp as in the
full forward; a head no branch selects gets 0.

Prefill reads only what can still matter: with ``L`` the least common multiple of the segment
lengths (the longest one when the others divide it, the paper's geometric sequences), every
segment boundary falls on each multiple of L, so nothing before ``floor((n-1)/L)*L`` is read
again by any later position in any layer. The prompt's tail from there runs through the
model's (chunked) forward at its global offset, and each layer's keys and values of the
current segments are copied into the cache as it goes.

Smeared keys make every key depend on the previous position's projected key, and so every layer's
hidden state at a position on the whole stream before it: a prefill then runs the whole prompt
(still chunked, still linear in its length), and the cache also keeps each layer's last projected
key (``previous_keys``, (depth, B, H, D)), which the next decoding step smears with.

Legend: B batch, H heads, D head dim, C model dim, V vocabulary, S cache slots of a branch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from longnet_cli.model.kernels import default_scale


@dataclass
class DecodeCache:
    """Per layer and branch, the current segment's selected keys and values of every head.

    ``keys[i]`` / ``values[i]`` are (depth, B, H, S_i, D) with ``S_i <= ceil(w_i / r_i)`` slots
    (grown by doubling up to that bound as a segment fills); ``position`` is the global position
    of the next token to decode.
    """

    segment_lengths: tuple[int, ...]
    dilation_rates: tuple[int, ...]
    depth: int
    batch: int
    heads: int
    dim_head: int
    dtype: torch.dtype
    device: torch.device
    position: int = 0
    keys: list[torch.Tensor] = field(default_factory=list)
    values: list[torch.Tensor] = field(default_factory=list)
    # smeared keys: each layer's last projected key (B, H, D); None without smearing
    previous_keys: list[torch.Tensor | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.keys:
            self.keys = [self._new(0) for _ in self.segment_lengths]
            self.values = [self._new(0) for _ in self.segment_lengths]
        if not self.previous_keys:
            self.previous_keys = [None] * self.depth

    def _new(self, slots: int) -> torch.Tensor:
        shape = (self.depth, self.batch, self.heads, slots, self.dim_head)
        return torch.zeros(shape, dtype=self.dtype, device=self.device)

    def slot_bound(self, branch: int) -> int:
        """Most slots branch ``branch`` ever needs per head: ceil(w / r)."""
        return -(-self.segment_lengths[branch] // self.dilation_rates[branch])

    def max_keys_per_layer(self) -> int:
        """The contract's bound: sum_i H * ceil(w_i / r_i) keys per layer."""
        return sum(self.heads * self.slot_bound(i) for i in range(len(self.segment_lengths)))

    def slots_per_layer(self) -> int:
        """Keys the cache has room for per layer (allocated), over all branches and heads."""
        return sum(self.heads * k.shape[3] for k in self.keys)

    def keys_per_layer(self) -> int:
        """Keys held per layer: every head's selected keys of its current segments."""
        if self.position == 0:
            return 0
        last = self.position - 1
        held = 0
        for w, r in zip(self.segment_lengths, self.dilation_rates):
            j = last % w  # last written position, relative to its segment's start
            held += sum((j - h % r) // r + 1 for h in range(self.heads) if j >= h % r)
        return held

    def nbytes(self) -> int:
        """Bytes of the keys and values held (allocated) for all layers."""
        held = (*self.keys, *self.values, *(k for k in self.previous_keys if k is not None))
        return sum(t.numel() * t.element_size() for t in held)

    def _reserve(self, branch: int, slots: int) -> None:
        """Room for ``slots`` slots in branch ``branch`` (doubling, up to the bound)."""
        have = self.keys[branch].shape[3]
        if slots <= have:
            return
        grown = min(max(slots, 2 * have, 16), self.slot_bound(branch))
        for store in (self.keys, self.values):
            bigger = self._new(grown)
            bigger[:, :, :, :have] = store[branch]
            store[branch] = bigger

    def fill(self, layer: int, k: torch.Tensor, v: torch.Tensor, start: int, end: int) -> None:
        """Keep the current segments' selected keys and values of positions [start, end).

        k, v (B, end - start, H, D) are one layer's keys and values of those positions; each
        branch keeps the selected ones of the segment holding position end - 1.
        """
        last = end - 1
        for i, (w, r) in enumerate(zip(self.segment_lengths, self.dilation_rates)):
            segment_start = last // w * w
            if segment_start < start:
                raise ValueError(
                    f"prefill from {start} misses the segment starting at {segment_start}"
                )
            self._reserve(i, -(-(last - segment_start + 1) // r))
            k_seg = k[:, segment_start - start :]  # (B, j+1, H, D)
            v_seg = v[:, segment_start - start :]
            for o in range(min(r, self.heads)):
                # heads o, o+r, ... read positions o, o+r, ... of the segment: (B, T, J, D)
                k_sel, v_sel = k_seg[:, o::r, o::r], v_seg[:, o::r, o::r]
                count = k_sel.shape[1]
                self.keys[i][layer, :, o::r, :count] = k_sel.transpose(1, 2)
                self.values[i][layer, :, o::r, :count] = v_sel.transpose(1, 2)
        self.position = end

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Store k, v (B, H, D) of position ``self.position`` in layer ``layer`` and return the
        dilated attention output (B, H, D) of its query q (B, H, D); float32 softmax and merge.
        """
        with torch.autocast(q.device.type, enabled=False):  # float32 softmax and merge
            return self._attend(layer, q, k, v)

    def _attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        p = self.position
        b, h, d = q.shape
        scale = default_scale(d)
        out = q.new_zeros((b, h, d), dtype=torch.float32)
        lse = q.new_full((b, h), float("-inf"), dtype=torch.float32)
        for i, (w, r) in enumerate(zip(self.segment_lengths, self.dilation_rates)):
            j = p % w  # relative to the segment's start
            o, t = j % r, j // r  # the selected offset and this position's slot
            if o >= h:  # no head has this offset
                continue
            self._reserve(i, t + 1)
            keys, values = self.keys[i][layer], self.values[i][layer]  # (B, H, S, D)
            keys[:, o::r, t] = k[:, o::r]
            values[:, o::r, t] = v[:, o::r]
            k_sel = keys[:, o::r, : t + 1].float()  # (B, J, t+1, D)
            v_sel = values[:, o::r, : t + 1].float()
            q_sel = q[:, o::r].float() * scale  # (B, J, D)
            scores = torch.einsum("bjd,bjtd->bjt", q_sel, k_sel)  # (B, J, t+1)
            lse_i = torch.logsumexp(scores, dim=-1)  # (B, J)
            out_i = torch.einsum("bjt,bjtd->bjd", torch.exp(scores - lse_i[..., None]), v_sel)
            lse_acc = lse[:, o::r]
            lse_new = torch.logaddexp(lse_acc, lse_i)
            out[:, o::r] = (
                out[:, o::r] * torch.exp(lse_acc - lse_new)[..., None]
                + out_i * torch.exp(lse_i - lse_new)[..., None]
            )
            lse[:, o::r] = lse_new
        return out.to(q.dtype)


def new_cache(model, batch: int, device: torch.device, dtype: torch.dtype) -> DecodeCache:
    """An empty cache for ``model`` (a LongNetTransformer)."""
    config = model.config
    return DecodeCache(
        config.segment_lengths, config.dilation_rates, config.depth, batch, config.heads,
        config.dim_head, dtype, torch.device(device),
    )  # fmt: skip


def prefill_start(segment_lengths: tuple[int, ...], length: int, smeared_keys: bool = False) -> int:
    """First position a prompt of ``length`` tokens must prefill: the start of the block of
    lcm(segment lengths) tokens holding its last position (nothing earlier is read again);
    0 with smeared keys (every position depends on the whole stream before it)."""
    if smeared_keys:
        return 0
    block = math.lcm(*segment_lengths)
    return (length - 1) // block * block


def prefill(model, tokens: torch.Tensor) -> tuple[torch.Tensor, DecodeCache]:
    """Run a prompt (B, n) through ``model``: logits (B, V) of its last position and the cache.

    Only positions from ``prefill_start`` on run; long tails go through the model's chunked
    long inference. Call without gradients.
    """
    b, n = tokens.shape
    if n < 1:
        raise ValueError("prefill needs at least one prompt token")
    start = prefill_start(model.config.segment_lengths, n, model.config.smeared_keys)
    x = model.token_embedding(tokens[:, start:])  # (B, n', C)
    cache = new_cache(model, b, tokens.device, x.dtype)
    tables = None
    if model.position_encoding is not None:
        tables = model.position_encoding.tables(n - start, start, tokens.device)
    for layer, block in enumerate(model.blocks):

        def keep(k: torch.Tensor, v: torch.Tensor, last_key, layer: int = layer) -> None:
            cache.fill(layer, k, v, start, n)
            cache.previous_keys[layer] = last_key

        x = block.prefill(x, start, tables, keep)
    hidden = model.norm(x[:, -1:])  # (B, 1, C)
    return model.head(hidden)[:, 0], cache  # (B, V)


def decode(model, tokens: torch.Tensor, cache: DecodeCache) -> torch.Tensor:
    """Feed tokens (B,) at position ``cache.position``; logits (B, V) of that position."""
    p = cache.position
    x = model.token_embedding(tokens[:, None])  # (B,) -> (B, 1, C)
    tables = None
    if model.position_encoding is not None:
        tables = model.position_encoding.tables(1, p, tokens.device)
    for layer, block in enumerate(model.blocks):
        x, cache.previous_keys[layer] = block.decode(
            x,
            tables,
            lambda q, k, v, layer=layer: cache.attend(layer, q, k, v),
            cache.previous_keys[layer],
        )
    cache.position = p + 1
    return model.head(model.norm(x))[:, 0]  # (B, 1, C) -> (B, V)


def sample(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Next tokens (B,) from logits (B, V): greedy at temperature 0, else softmax sampling of
    logits / temperature, restricted to the ``top_k`` likeliest (0: all) and to the smallest
    set whose probability reaches ``top_p``."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        before = probs.cumsum(dim=-1) - probs  # probability of the likelier tokens
        sorted_logits = sorted_logits.masked_fill(before >= top_p, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


def stream(
    model,
    tokens: torch.Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    eos_id: int | None = None,
    cache: DecodeCache | None = None,
) -> Iterator[tuple[torch.Tensor, DecodeCache]]:
    """Yield (next tokens (B,), cache) one step at a time, up to ``max_new_tokens`` steps or
    until every row has produced ``eos_id``. Prefills ``tokens`` (B, n) unless a ``cache``
    continuing them is given (then ``tokens`` (B, 1) is the last token, not yet fed)."""
    with torch.inference_mode():
        if cache is None:
            logits, cache = prefill(model, tokens)
        else:
            logits = decode(model, tokens[:, -1], cache)
    done = torch.zeros(tokens.shape[0], dtype=torch.bool, device=tokens.device)
    for step in range(max_new_tokens):
        with torch.inference_mode():  # per step: the caller's code between steps runs as usual
            next_tokens = sample(logits, temperature, top_k, top_p, generator)
        yield next_tokens, cache
        if eos_id is not None:
            done |= next_tokens == eos_id
            if bool(done.all()):
                return
        if step + 1 < max_new_tokens:
            with torch.inference_mode():
                logits = decode(model, next_tokens, cache)

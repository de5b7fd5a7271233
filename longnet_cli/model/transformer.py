"""LongNetTransformer: a causal decoder language model on dilated attention, with a chunked loss.

Read top to bottom: ``Block``, ``LongNetTransformer``; their hyper-parameters are
``LongNetConfig`` (``config.py``, torch-free). The model is single-device code; sequence
parallelism swaps the attention from outside.

The loss never materialises (N x V) logits for a whole long sequence: the head and the
cross-entropy run over chunks of positions, each under activation checkpointing, so forward and
backward hold one chunk of logits at a time.

Legend: B batch, N sequence length, C model dim (``dim``), V vocabulary (``num_tokens``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from longnet_cli.model import decode as decoding
from longnet_cli.model.config import LongNetConfig
from longnet_cli.model.layers import DilatedAttention, RMSNorm, SwiGLU
from longnet_cli.model.positions import PositionTables, build_position_encoding, xpos_limit
from longnet_cli.model.smeared_keys import INITIAL_LOGIT, previous_rank_key

INIT_STD = 0.02
DEFAULT_LOSS_CHUNK = 1024  # positions per head + cross-entropy chunk
CHUNK = 1 << 14  # positions per chunk of per-position work in long inference
# kv_sink(k, v, last_key): a layer's keys and values (B, N, H, Dh) and, with smeared keys, its
# last position's projected key (B, H, Dh), else None; see ``Block.forward_in_chunks``.
KVSink = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], None]


class Block(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then x + ff(norm(x)); parallel: x + attn(h) + ff(h)."""

    def __init__(self, config: LongNetConfig) -> None:
        super().__init__()
        self.parallel = config.parallel_blocks
        self.attn_norm = RMSNorm(config.dim)
        self.attn = DilatedAttention(
            config.dim,
            config.heads,
            dropout=config.dropout,
            causal=True,
            use_xpos=config.positions == "xpos",
            qk_norm=config.qk_norm,
            segment_lengths=config.segment_lengths,
            dilation_rates=config.dilation_rates,
            dim_head=config.dim_head,
            rotary=config.positions == "rotary",
            smeared_keys=config.smeared_keys,
            backend=config.backend,
        )
        # GPT-J / PaLM parallel blocks share one norm between attention and feed-forward.
        self.ff_norm = None if self.parallel else RMSNorm(config.dim)
        self.ff = SwiGLU(config.dim, config.ff_hidden, config.dropout)

    def forward(
        self, x: torch.Tensor, offset: int = 0, position_tables: PositionTables | None = None
    ) -> torch.Tensor:
        if not torch.is_grad_enabled() and x.shape[1] > CHUNK:
            return self.forward_in_chunks(x, offset, position_tables, out=torch.empty_like(x))
        if self.parallel:
            h = self.attn_norm(x)
            return x + self.attn(h, offset, position_tables) + self.ff(h)
        x = x + self.attn(self.attn_norm(x), offset, position_tables)
        return x + self.ff(self.ff_norm(x))

    def forward_in_chunks(
        self,
        x: torch.Tensor,
        offset: int = 0,
        tables: PositionTables | None = None,
        *,
        out: torch.Tensor,
        kv_sink: KVSink | None = None,
    ) -> torch.Tensor:
        """Inference at long N (no autograd) into ``out`` (B, N, C), which may be x itself (the
        model's own loop updates x in place): everything but the attention itself runs on
        chunks of positions, so besides x and out only q, k, v and the attention output exist
        for the whole sequence (no normed copies, no ff_mult-wide hidden layer). Position
        tables are the layer's own for positions ``offset ..`` unless given. ``kv_sink`` (if
        any) is handed the whole sequence's k and v (B, N, H, Dh) and, with smeared keys, the
        last position's projected key (B, H, Dh), else None: decoding caches keep some."""
        b, n, _ = x.shape
        if tables is None and self.attn.position_encoding is not None:
            tables = self.attn.position_encoding.tables(n, offset, x.device)
        shape = (b, n, self.attn.heads, self.attn.dim_head)
        qkv: list[torch.Tensor] = []  # in the projections' dtype (bfloat16 under autocast)
        previous_key = self._previous_rank_key(x)  # smeared keys: carried from chunk to chunk
        for part in _chunks(n):
            chunk_tables = None if tables is None else tables.slice(part.start, part.stop)
            *projected, previous_key = self.attn.project(
                self.attn_norm(x[:, part]), chunk_tables, previous_key, return_last_key=True
            )
            qkv = qkv or [x.new_empty(shape, dtype=piece.dtype) for piece in projected]
            for whole, piece in zip(qkv, projected):
                whole[:, part] = piece  # (B, c, H, Dh)
        q, k, v = qkv
        del qkv
        if kv_sink is not None:
            kv_sink(k, v, previous_key)
        attended = self.attn.attend(q, k, v)  # (B, N, H, Dh)
        del q, k, v
        for part in _chunks(n):
            h = self.attn_norm(x[:, part]) if self.parallel else None
            y = x[:, part] + self.attn.output(attended[:, part])  # (B, c, C)
            y += self.ff(h if self.parallel else self.ff_norm(y))
            out[:, part] = y
        return out

    def _previous_rank_key(self, x: torch.Tensor) -> torch.Tensor | None:
        """Under sequence parallelism with smeared keys, the projected key before x's first
        position (the previous rank's last; zeros on rank 0), for a caller that projects x in
        pieces; else None (the first piece of x is a stream start, or ``project`` fetches it)."""
        attn = self.attn
        if attn.key_smear is None or attn.sequence_group is None:
            return None
        last = attn.k_proj(self.attn_norm(x[:, -1]))  # (B, C) -> (B, H*Dh)
        return previous_rank_key(last.view(-1, attn.heads, attn.dim_head), attn.sequence_group)

    def prefill(
        self,
        x: torch.Tensor,
        offset: int,
        tables: PositionTables | None,
        kv_sink: KVSink,
    ) -> torch.Tensor:
        """Inference forward (as ``forward``) of x (B, N, C) at global ``offset`` that also
        hands the layer's k and v (B, N, H, Dh) and last projected key to ``kv_sink`` (as
        ``forward_in_chunks`` does); long N runs in chunks. x starts a stream (smeared keys)."""
        if x.shape[1] > CHUNK:
            return self.forward_in_chunks(x, offset, tables, out=x, kv_sink=kv_sink)
        h = self.attn_norm(x)
        q, k, v, last_key = self.attn.project(h, tables, return_last_key=True)  # (B, N, H, Dh)
        kv_sink(k, v, last_key)
        attended = self.attn.output(self.attn.attend(q, k, v))  # (B, N, C)
        if self.parallel:
            return x + attended + self.ff(h)
        x = x + attended
        return x + self.ff(self.ff_norm(x))

    def decode(
        self,
        x: torch.Tensor,
        tables: PositionTables | None,
        attend: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
        previous_key: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One new position x (B, 1, C) whose attention ``attend(q, k, v)`` ((B, H, Dh) each
        -> (B, H, Dh)) computes from a decoding cache (see ``decode.py``). With smeared keys
        ``previous_key`` (B, H, Dh) is the previous position's projected key. Returns the
        block's output (B, 1, C) and this position's projected key (None without smearing)."""
        h = self.attn_norm(x)
        q, k, v, last_key = self.attn.project(h, tables, previous_key, return_last_key=True)
        attended = self.attn.output(attend(q[:, 0], k[:, 0], v[:, 0])[:, None])  # (B, 1, C)
        if self.parallel:
            return x + attended + self.ff(h), last_key
        x = x + attended
        return x + self.ff(self.ff_norm(x)), last_key


def _chunks(n: int) -> list[slice]:
    return [slice(start, min(start + CHUNK, n)) for start in range(0, n, CHUNK)]


class LongNetTransformer(nn.Module):
    """Causal decoder LM: embedding, ``depth`` dilated-attention blocks, final norm, output head.

    ``model(tokens)`` gives logits (B, N, V); ``model.loss(tokens)`` the next-token cross-entropy
    computed chunk by chunk; ``model.token_nll(tokens)`` per-position losses for evaluation.
    """

    def __init__(
        self,
        num_tokens: int,
        dim: int,
        depth: int,
        dim_head: int = 64,
        heads: int = 8,
        ff_mult: float = 4,
        segment_lengths: Sequence[int] = (2048, 4096, 8192, 16384),
        dilation_rates: Sequence[int] = (1, 2, 4, 8),
        *,
        positions: str = "rotary",
        parallel_blocks: bool = False,
        tie_embeddings: bool = True,
        qk_norm: bool = False,
        smeared_keys: bool = False,
        dropout: float = 0.0,
        activation_checkpointing: bool = False,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        self.config = config = LongNetConfig(
            num_tokens=num_tokens, dim=dim, depth=depth, heads=heads, dim_head=dim_head,
            ff_mult=ff_mult, segment_lengths=tuple(segment_lengths),
            dilation_rates=tuple(dilation_rates), positions=positions,
            parallel_blocks=parallel_blocks, tie_embeddings=tie_embeddings, qk_norm=qk_norm,
            smeared_keys=smeared_keys, dropout=dropout,
            activation_checkpointing=activation_checkpointing, backend=backend,
        )  # fmt: skip
        self.token_embedding = nn.Embedding(num_tokens, dim)
        self.blocks = nn.ModuleList(Block(config) for _ in range(depth))
        self.norm = RMSNorm(dim)
        self.head = nn.Linear(dim, num_tokens, bias=False)
        if tie_embeddings:
            self.head.weight = self.token_embedding.weight
        # One set of position tables per forward, shared by all blocks.
        self.position_encoding = build_position_encoding(positions, dim_head, segment_lengths)
        self.init_weights()

    @classmethod
    def from_config(cls, config: LongNetConfig) -> LongNetTransformer:
        """Build from a LongNetConfig (e.g. one stored beside a checkpoint)."""
        return cls(**asdict(config))

    @torch.no_grad()
    def init_weights(self) -> None:
        """Normal(0, 0.02) weights, residual out projections / sqrt(2 * depth), unit norm gains.

        Call again after ``to_empty`` when the model was built on the meta device.
        """
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=INIT_STD)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)
        residual_std = INIT_STD / math.sqrt(2 * self.config.depth)
        for block in self.blocks:
            nn.init.normal_(block.attn.out_proj.weight, mean=0.0, std=residual_std)
            nn.init.normal_(block.ff.down_proj.weight, mean=0.0, std=residual_std)
            if block.attn.key_smear is not None:
                nn.init.constant_(block.attn.key_smear, INITIAL_LOGIT)

    def use_sequence_parallel(self, group) -> None:
        """Split sequences across ``group`` (a torch.distributed process group; None: don't).

        Each rank then passes its chunk of every sequence with ``offset`` = its first global
        position; only the attention communicates, all other layers are per position.
        """
        for block in self.blocks:
            block.attn.sequence_group = group

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Parameter count (tied weights once); optionally without the token embedding."""
        total = sum(p.numel() for p in self.parameters())
        return total - self.token_embedding.weight.numel() if exclude_embeddings else total

    def hidden_states(self, tokens: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """Final normed hidden states (B, N, C) of tokens (B, N) starting at global ``offset``."""
        if tokens.dim() != 2:
            raise ValueError(f"tokens must have shape (batch, seq), got {tuple(tokens.shape)}")
        x = self.token_embedding(tokens)  # (B, N) -> (B, N, C)
        tables = None
        if self.position_encoding is not None:
            tables = self.position_encoding.tables(tokens.shape[1], offset, tokens.device)
        recompute = (
            self.config.activation_checkpointing and self.training and torch.is_grad_enabled()
        )
        if recompute and tables is not None:
            # Derive the applied tables before the first checkpointed block: inside it, the
            # forward would derive them and its recomputation find them cached, and a compiled
            # block would then save other tensors the second time (torch.utils.checkpoint refuses).
            tables.applied(xpos_limit(_compute_dtype(x)))
        long_inference = not torch.is_grad_enabled() and x.shape[1] > CHUNK
        for block in self.blocks:
            if recompute:
                x = checkpoint(block, x, offset, tables, use_reentrant=False)
            elif long_inference:  # x is this loop's own: update it in place
                x = block.forward_in_chunks(x, offset, tables, out=x)
            else:
                x = block(x, offset, tables)
        if not torch.is_grad_enabled() and x.shape[1] > CHUNK:
            for part in _chunks(x.shape[1]):  # in place: no second (B, N, C) tensor
                x[:, part] = self.norm(x[:, part])
            return x
        return self.norm(x)

    def forward(self, tokens: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """Logits (B, N, V) for tokens (B, N). For long sequences prefer ``loss``."""
        return self.head(self.hidden_states(tokens, offset))  # (B, N, C) -> (B, N, V)

    def _chunk_nll(
        self, hidden: torch.Tensor, targets: torch.Tensor, ignore_index: int
    ) -> torch.Tensor:
        """Per-token NLL (B, c) float32 of one chunk of hidden states (B, c, C)."""
        logits = self.head(hidden).float()  # (B, c, C) -> (B, c, V)
        nll = F.cross_entropy(
            logits.flatten(0, 1), targets.flatten(), ignore_index=ignore_index, reduction="none"
        )  # (B*c, V) -> (B*c,)
        return nll.view(targets.shape)  # (B*c,) -> (B, c)

    def token_nll(
        self,
        tokens: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        chunk_size: int = DEFAULT_LOSS_CHUNK,
        offset: int = 0,
        ignore_index: int = -100,
    ) -> torch.Tensor:
        """Per-position next-token NLL, float32: (B, N-1) without targets, else (B, N).

        Without targets, tokens[:, :-1] predict tokens[:, 1:]. Ignored targets get 0. Head and
        cross-entropy run ``chunk_size`` positions at a time; with gradients each chunk is
        checkpointed, so one chunk of logits is alive at a time in forward and backward.
        """
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        if targets is None:
            tokens, targets = tokens[:, :-1], tokens[:, 1:]
        elif targets.shape != tokens.shape:
            raise ValueError(
                f"targets {tuple(targets.shape)} must have the shape of tokens "
                f"{tuple(tokens.shape)}"
            )
        hidden = self.hidden_states(tokens, offset)  # (B, N, C)
        recompute = torch.is_grad_enabled() and hidden.requires_grad
        chunks = zip(hidden.split(chunk_size, dim=1), targets.split(chunk_size, dim=1))
        parts = [
            checkpoint(self._chunk_nll, h, t, ignore_index, use_reentrant=False)
            if recompute
            else self._chunk_nll(h, t, ignore_index)
            for h, t in chunks
        ]
        return torch.cat(parts, dim=1)  # n x (B, c) -> (B, N)

    def nll_sum(
        self,
        tokens: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        chunk_size: int = DEFAULT_LOSS_CHUNK,
        offset: int = 0,
        ignore_index: int = -100,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum of next-token NLL, number of predicted targets): for exact means across batches."""
        nll = self.token_nll(
            tokens, targets, chunk_size=chunk_size, offset=offset, ignore_index=ignore_index
        )
        used = targets if targets is not None else tokens[:, 1:]
        return nll.sum(), (used != ignore_index).sum()

    def loss(
        self,
        tokens: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        chunk_size: int = DEFAULT_LOSS_CHUNK,
        reduction: str = "mean",
        offset: int = 0,
        ignore_index: int = -100,
    ) -> torch.Tensor:
        """Next-token cross-entropy, "mean" over predicted positions or "sum"; chunked."""
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        total, count = self.nll_sum(
            tokens, targets, chunk_size=chunk_size, offset=offset, ignore_index=ignore_index
        )
        return total if reduction == "sum" else total / count

    @torch.inference_mode()
    def prefill(self, tokens: torch.Tensor) -> tuple[torch.Tensor, decoding.DecodeCache]:
        """Logits (B, V) of a prompt's (B, n) last position and its decoding cache, which holds
        per layer and branch only the current segment's selected keys and values (at most
        sum_i heads * ceil(w_i / r_i) keys per layer). Runs only the prompt's tail that later
        positions can still read; see ``decode.py``."""
        return decoding.prefill(self, tokens)

    @torch.inference_mode()
    def decode(self, tokens: torch.Tensor, cache: decoding.DecodeCache) -> torch.Tensor:
        """Logits (B, V) after feeding tokens (B,) at position ``cache.position`` (advanced)."""
        return decoding.decode(self, tokens, cache)

    def stream(
        self,
        tokens: torch.Tensor,
        max_new_tokens: int,
        *,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        eos_id: int | None = None,
    ) -> Iterator[tuple[torch.Tensor, decoding.DecodeCache]]:
        """Yield (next tokens (B,), cache) as they are sampled; see ``generate``."""
        if tokens.dim() != 2 or tokens.shape[1] < 1:
            raise ValueError(f"tokens must have shape (batch, seq >= 1), got {tuple(tokens.shape)}")
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        if generator is None and seed is not None:
            generator = torch.Generator(tokens.device).manual_seed(seed)
        return decoding.stream(
            self, tokens, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
            generator=generator, eos_id=eos_id,
        )  # fmt: skip

    def generate(
        self,
        tokens: torch.Tensor,
        max_new_tokens: int,
        *,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        eos_id: int | None = None,
        return_cache: bool = False,
    ):
        """Continue tokens (B, n) (or (n,)) by up to ``max_new_tokens`` sampled tokens.

        Greedy at ``temperature`` 0; ``top_k`` (0: off) and ``top_p`` (1: off) restrict the
        sampling; ``seed`` or ``generator`` make it reproducible. Stops early once every row
        has produced ``eos_id``. Returns the new tokens (B, M) (or (M,)), and with
        ``return_cache`` also the ``DecodeCache`` (to inspect, or to continue with ``decode``).
        Call ``eval()`` first: dropout would otherwise apply.
        """
        single = tokens.dim() == 1
        batch = tokens[None] if single else tokens
        steps = self.stream(
            batch, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
            seed=seed, generator=generator, eos_id=eos_id,
        )  # fmt: skip
        new, cache = [], None
        for next_tokens, step_cache in steps:
            new.append(next_tokens)
            cache = step_cache
        out = torch.stack(new, dim=1) if new else batch.new_empty((batch.shape[0], 0))
        out = out[0] if single else out
        return (out, cache) if return_cache else out


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype q and k are projected in: autocast's where it is on for ``x``'s device."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype

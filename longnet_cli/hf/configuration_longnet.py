"""``LongNetHFConfig``: every model key of a longnet recipe, as a transformers config."""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig

from longnet_cli.hf import MODEL_KEYS


class LongNetHFConfig(PretrainedConfig):
    """A LongNetTransformer's hyper-parameters (``model_type`` "longnet").

    ``reach`` is the longest segment: the furthest a token reads back through the layers.
    The transformers names ``hidden_size``, ``num_hidden_layers`` and ``num_attention_heads``
    read ``dim``, ``depth`` and ``heads``; ``tie_word_embeddings`` follows ``tie_embeddings``.
    """

    model_type = "longnet"
    _auto_class = "AutoConfig"  # save_pretrained writes this file and its auto_map
    attribute_map = {  # noqa: RUF012 (a transformers class attribute)
        "hidden_size": "dim",
        "num_hidden_layers": "depth",
        "num_attention_heads": "heads",
    }

    def __init__(
        self,
        vocab_size: int = 8192,
        dim: int = 512,
        depth: int = 8,
        heads: int = 8,
        dim_head: int = 64,
        ff_mult: float = 4.0,
        segment_lengths: list[int] | tuple[int, ...] = (2048, 4096, 8192, 16384),
        dilation_rates: list[int] | tuple[int, ...] = (1, 2, 4, 8),
        positions: str = "rotary",
        parallel_blocks: bool = False,
        tie_embeddings: bool = True,
        qk_norm: bool = False,
        dropout: float = 0.0,
        activation_checkpointing: bool = False,
        backend: str = "auto",
        **kwargs: Any,
    ) -> None:
        self.vocab_size = vocab_size
        self.dim, self.depth, self.heads, self.dim_head = dim, depth, heads, dim_head
        self.ff_mult = ff_mult
        self.segment_lengths = [int(w) for w in segment_lengths]
        self.dilation_rates = [int(r) for r in dilation_rates]
        self.positions = positions
        self.parallel_blocks = parallel_blocks
        self.tie_embeddings = tie_embeddings
        self.qk_norm = qk_norm
        self.dropout = dropout
        self.activation_checkpointing = activation_checkpointing
        self.backend = backend
        self.reach = max(self.segment_lengths)
        kwargs.pop("reach", None)  # derived, written for readers of config.json
        kwargs["tie_word_embeddings"] = tie_embeddings  # transformers ties by this key
        super().__init__(**kwargs)

    def model_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of ``LongNetTransformer(...)``."""
        return {
            "num_tokens": self.vocab_size,
            **{key: getattr(self, key) for key in MODEL_KEYS},
            "segment_lengths": tuple(self.segment_lengths),
            "dilation_rates": tuple(self.dilation_rates),
        }

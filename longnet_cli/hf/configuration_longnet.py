"""``LongNetHFConfig``: every model key of a longnet recipe, as a transformers config.

Its attributes and their defaults are ``LongNetConfig``'s options (``model/config.py``), the
vocabulary named ``vocab_size`` as in transformers; nothing here lists them again.
"""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig

from longnet_cli.hf import MODEL_KEYS
from longnet_cli.model.config import INTEGER_LISTS, VOCABULARY, option_defaults

# {"vocab_size": 8192, "dim": 512, ...}: transformers builds LongNetHFConfig() without arguments
DEFAULTS = {
    "vocab_size" if name == VOCABULARY else name: value for name, value in option_defaults().items()
}


class LongNetHFConfig(PretrainedConfig):
    """A LongNetTransformer's hyper-parameters (``model_type`` "longnet").

    Takes ``vocab_size`` and each of ``MODEL_KEYS`` as a keyword (defaults: ``DEFAULTS``).
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

    def __init__(self, **kwargs: Any) -> None:
        for name, default in DEFAULTS.items():
            setattr(self, name, kwargs.pop(name, default))
        for name in INTEGER_LISTS:
            setattr(self, name, [int(value) for value in getattr(self, name)])
        self.reach = max(self.segment_lengths)
        kwargs.pop("reach", None)  # derived, written for readers of config.json
        kwargs["tie_word_embeddings"] = self.tie_embeddings  # transformers ties by this key
        super().__init__(**kwargs)

    def model_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of ``LongNetTransformer(...)``."""
        return {
            VOCABULARY: self.vocab_size,
            **{key: getattr(self, key) for key in MODEL_KEYS},
            **{key: tuple(getattr(self, key)) for key in INTEGER_LISTS},
        }

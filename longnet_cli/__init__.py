"""longnet: LongNet dilated attention for long-document language modeling.

Public API (imported lazily so that ``import longnet_cli`` and ``longnet --help`` stay fast):
    dilated_attention   exact dilated attention over (batch, seq, heads, head_dim) tensors
    DilatedAttention    nn.Module with projections; accepts the community package's signature
    LongNetTransformer  causal decoder LM with dilated attention and a chunked loss
    load_model          a checkpoint, run directory or export -> the verified model, in eval mode
    TokenizedCorpus     a tokenized corpus (``TokenizedCorpus.open(PATH)``): documents, splits
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "dilated_attention": "longnet_cli.model.attention",
    "DilatedAttention": "longnet_cli.model.layers",
    "LongNetTransformer": "longnet_cli.model.transformer",
    "load_model": "longnet_cli.artifacts.loading",
    "TokenizedCorpus": "longnet_cli.data.format.reader",
}

__all__ = [
    "DilatedAttention",
    "LongNetTransformer",
    "TokenizedCorpus",
    "__version__",
    "dilated_attention",
    "load_model",
]

if TYPE_CHECKING:
    from longnet_cli.artifacts.loading import load_model
    from longnet_cli.data.format.reader import TokenizedCorpus
    from longnet_cli.model.attention import dilated_attention
    from longnet_cli.model.layers import DilatedAttention
    from longnet_cli.model.transformer import LongNetTransformer


def __getattr__(name: str) -> Any:
    """Import the public objects on first use (torch is heavy; the CLI must start fast)."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'longnet_cli' has no attribute {name!r}")

"""Hugging Face side of an exported model (``longnet export``): config, model and tokenizer.

These classes need the optional ``hf`` extra (``pip install 'longnet-cli[hf]'``, which brings
transformers); nothing else in longnet imports this package. An exported directory's
``configuration_longnet.py``, ``modeling_longnet.py`` and ``tokenization_longnet.py`` only
re-export them, so ``longnet-cli`` must be installed where the directory is loaded.
"""

# The recipe's model keys (``recipes.ModelConfig``) that ``LongNetTransformer`` takes, besides
# the vocabulary: config.json holds each of them (``longnet_cli.export``).
MODEL_KEYS = (
    "dim", "depth", "heads", "dim_head", "ff_mult", "segment_lengths", "dilation_rates",
    "positions", "parallel_blocks", "tie_embeddings", "qk_norm", "dropout",
    "activation_checkpointing", "backend",
)  # fmt: skip

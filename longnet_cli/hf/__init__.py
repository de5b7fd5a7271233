"""Hugging Face side of an exported model (``longnet export``): config, model and tokenizer.

The modules ``configuration_longnet``, ``modeling_longnet`` and ``tokenization_longnet`` need
the optional ``hf`` extra (``pip install 'longnet-cli[hf]'``, which brings transformers);
nothing else in longnet imports them. An exported directory's files of the same names only
re-export their classes, so ``longnet-cli`` must be installed where the directory is loaded;
``save_pretrained`` copies these modules themselves, under the same names (transformers names
the files after the classes' modules), so its output loads the same way. This ``__init__``
imports nothing: ``longnet export`` runs without transformers.
"""

# The recipe's model keys (``recipes.ModelConfig``) that ``LongNetTransformer`` takes, besides
# the vocabulary: config.json holds each of them (``longnet_cli.export``).
MODEL_KEYS = (
    "dim", "depth", "heads", "dim_head", "ff_mult", "segment_lengths", "dilation_rates",
    "positions", "parallel_blocks", "tie_embeddings", "qk_norm", "dropout",
    "activation_checkpointing", "backend",
)  # fmt: skip

"""Hugging Face side of an exported model (``longnet export``): config, model and tokenizer.

The modules ``configuration_longnet``, ``modeling_longnet`` and ``tokenization_longnet`` need
the optional ``hf`` extra (``pip install 'longnet-cli[hf]'``, which brings transformers);
nothing else in longnet imports them. An exported directory's files of the same names only
re-export their classes, so ``longnet-cli`` must be installed where the directory is loaded;
``save_pretrained`` copies these modules themselves, under the same names (transformers names
the files after the classes' modules), so its output loads the same way. This ``__init__``
imports only the torch-free model config: ``longnet export`` runs without transformers.
"""

# The options ``LongNetTransformer`` takes besides the vocabulary, in the recipe's order:
# config.json holds each of them (``longnet_cli.export``). Derived from ``LongNetConfig``.
from longnet_cli.model.config import MODEL_KEYS

__all__ = ["MODEL_KEYS"]

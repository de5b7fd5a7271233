"""The names of a corpus version's files (stdlib only: ``data/versions.py`` links them too)."""

from __future__ import annotations

import re

MANIFEST_FILE = "manifest.json"
TOKENIZER_FILE = "tokenizer.model"
DOCUMENTS_FILE = "documents.parquet"
SHARD_NAME = re.compile(r"shard-\d{5}\.bin")  # what ``shard_name`` gives, and nothing else
SPLITS = ("train", "heldout")  # a document's split (``data/splits.py`` decides which)


def shard_name(index: int) -> str:
    """``shard-00000.bin`` for index 0."""
    return f"shard-{index:05d}.bin"

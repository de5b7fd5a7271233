"""What the files hold: the token dtypes of the shards and the columns of documents.parquet."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

# the shards' dtype, by the manifest's ``dtype``: little-endian whatever the machine
DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}

DOCUMENTS_SCHEMA = pa.schema(
    [
        ("doc_id", pa.int64()),
        ("source", pa.string()),
        ("shard", pa.int32()),
        ("offset", pa.int64()),
        ("tokens", pa.int64()),
        ("bytes", pa.int64()),
        ("sha256", pa.string()),
        ("split", pa.string()),
    ]
)
# documents.parquet written before held-out splits existed lacks ``split``: read as all "train"
LEGACY_DOCUMENTS_NAMES = DOCUMENTS_SCHEMA.names[:-1]


def token_dtype(vocab_size: int) -> str:
    """The shard dtype for a vocabulary: "uint16" up to 65,536 ids, else "uint32"."""
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    if vocab_size <= 1 << 16:
        return "uint16"
    if vocab_size <= 1 << 32:
        return "uint32"
    raise ValueError(f"vocab_size {vocab_size} does not fit in uint32 token ids")

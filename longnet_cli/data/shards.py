"""The corpus format's old home, kept importable: every name now lives in ``data/format/``.

``longnet_cli.data.format.reader.TokenizedCorpus`` (``TokenizedCorpus.open(PATH)``) opens a
corpus; the writer, manifest, verification and errors have a module each (``data/format/``'s
docstring lists them). This module only re-exports them for callers not yet moved.
"""

from __future__ import annotations

from longnet_cli.core.files import TEMP_SUFFIX, sha256_file
from longnet_cli.data.format.errors import (
    REBUILD_HINT,
    CorpusError,
    CorruptCorpusError,
    corrupt,
)
from longnet_cli.data.format.layout import (
    DOCUMENTS_FILE,
    MANIFEST_FILE,
    SPLITS,
    TOKENIZER_FILE,
    shard_name,
)
from longnet_cli.data.format.manifest import (
    DOCUMENTS_SHA256,
    FORMAT_VERSION,
    MANIFEST_SHA256,
    REQUIRED_MANIFEST_KEYS,
    SHARD_ENTRY_KEYS,
    manifest_digest,
    manifest_text,
    parse_manifest,
    read_manifest,
)
from longnet_cli.data.format.reader import TokenizedCorpus
from longnet_cli.data.format.schema import DOCUMENTS_SCHEMA, LEGACY_DOCUMENTS_NAMES, token_dtype
from longnet_cli.data.format.writer import (
    DocumentPlacement,
    ShardWriter,
    write_documents_table,
    write_manifest,
)

__all__ = [
    "DOCUMENTS_FILE",
    "DOCUMENTS_SCHEMA",
    "DOCUMENTS_SHA256",
    "FORMAT_VERSION",
    "LEGACY_DOCUMENTS_NAMES",
    "MANIFEST_FILE",
    "MANIFEST_SHA256",
    "REBUILD_HINT",
    "REQUIRED_MANIFEST_KEYS",
    "SHARD_ENTRY_KEYS",
    "SPLITS",
    "TEMP_SUFFIX",
    "TOKENIZER_FILE",
    "CorpusError",
    "CorruptCorpusError",
    "DocumentPlacement",
    "ShardWriter",
    "TokenizedCorpus",
    "corrupt",
    "manifest_digest",
    "manifest_text",
    "parse_manifest",
    "read_manifest",
    "sha256_file",
    "shard_name",
    "token_dtype",
    "write_documents_table",
    "write_manifest",
]

"""Deprecated: the corpus format's old home; every name now lives in ``data/format/`` (or
``core.files``). Kept for one release: each name is forwarded with a DeprecationWarning naming
its new module. ``longnet_cli.TokenizedCorpus`` (``TokenizedCorpus.open(PATH)``) opens a corpus.
Nothing in longnet imports this module.
"""

from longnet_cli.core.deprecated import forwarder

HOMES = {
    "CorpusError": "longnet_cli.data.format.errors",
    "CorruptCorpusError": "longnet_cli.data.format.errors",
    "DOCUMENTS_FILE": "longnet_cli.data.format.layout",
    "DOCUMENTS_SCHEMA": "longnet_cli.data.format.schema",
    "DOCUMENTS_SHA256": "longnet_cli.data.format.manifest",
    "DocumentPlacement": "longnet_cli.data.format.writer",
    "FORMAT_VERSION": "longnet_cli.data.format.manifest",
    "LEGACY_DOCUMENTS_NAMES": "longnet_cli.data.format.schema",
    "MANIFEST_FILE": "longnet_cli.data.format.layout",
    "MANIFEST_SHA256": "longnet_cli.data.format.manifest",
    "REBUILD_HINT": "longnet_cli.data.format.errors",
    "REQUIRED_MANIFEST_KEYS": "longnet_cli.data.format.manifest",
    "SHARD_ENTRY_KEYS": "longnet_cli.data.format.manifest",
    "SPLITS": "longnet_cli.data.format.layout",
    "ShardWriter": "longnet_cli.data.format.writer",
    "TEMP_SUFFIX": "longnet_cli.core.files",
    "TOKENIZER_FILE": "longnet_cli.data.format.layout",
    "TokenizedCorpus": "longnet_cli.data.format.reader",
    "corrupt": "longnet_cli.data.format.errors",
    "manifest_digest": "longnet_cli.data.format.manifest",
    "manifest_text": "longnet_cli.data.format.manifest",
    "parse_manifest": "longnet_cli.data.format.manifest",
    "read_manifest": "longnet_cli.data.format.manifest",
    "sha256_file": "longnet_cli.core.files",
    "shard_name": "longnet_cli.data.format.layout",
    "token_dtype": "longnet_cli.data.format.schema",
    "write_documents_table": "longnet_cli.data.format.writer",
    "write_manifest": "longnet_cli.data.format.writer",
}

__getattr__ = forwarder(__name__, HOMES)

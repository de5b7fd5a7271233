"""The manifest of a corpus version: its keys, construction, canonical text, digest and checks.

``manifest.json`` is written last (``writer.write_manifest``), so a manifest that reads means a
complete version. It records the format version, the tokenizer's sha256, the vocabulary, the
token dtype, the separator ids, the totals, the splits, every shard with its token count, byte
size and sha256, documents.parquet's sha256, and its own ``manifest_sha256`` over its canonical
text. ``parse_manifest`` is the one check of a manifest's bytes every reader goes through.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from longnet_cli.core.files import sha256_bytes
from longnet_cli.data.format.errors import CorpusError, CorruptCorpusError, corrupt
from longnet_cli.data.format.layout import MANIFEST_FILE, SHARD_NAME, SPLITS
from longnet_cli.data.format.schema import DTYPES

FORMAT_VERSION = 1
REQUIRED_MANIFEST_KEYS = (
    "format",
    "tokenizer_sha256",
    "vocab_size",
    "dtype",
    "eos_id",
    "bos_id",
    "documents",
    "tokens",
    "bytes",
    "shards",
    "skipped",
)
SHARD_ENTRY_KEYS = ("file", "tokens", "bytes", "sha256")

MANIFEST_SHA256 = "manifest_sha256"  # the manifest's checksum of its own content
DOCUMENTS_SHA256 = "documents_sha256"  # documents.parquet's sha256


def build_manifest(
    *,
    tokenizer_sha256: str,
    vocab_size: int,
    dtype: str,
    eos_id: int,
    bos_id: int,
    documents: int,
    text_bytes: int,
    shards: list[dict],
    skipped: dict[str, Any],
    documents_sha256: str,
    **extra: Any,
) -> dict[str, Any]:
    """The manifest of a build from its totals: ``format`` is FORMAT_VERSION, ``tokens`` the
    shards' sum, ``bytes`` the documents' UTF-8 bytes; ``extra`` keys (``fingerprint``,
    ``options``, ``splits``) are kept as given."""
    return {
        "format": FORMAT_VERSION,
        "tokenizer_sha256": tokenizer_sha256,
        "vocab_size": vocab_size,
        "dtype": dtype,
        "eos_id": eos_id,
        "bos_id": bos_id,
        "documents": documents,
        "tokens": sum(entry["tokens"] for entry in shards),
        "bytes": text_bytes,
        "shards": shards,
        "skipped": skipped,
        **extra,
        DOCUMENTS_SHA256: documents_sha256,
    }


def manifest_text(manifest: dict[str, Any]) -> str:
    """The text ``write_manifest`` writes for ``manifest``: sorted keys, indent 2, a newline."""
    return json.dumps(manifest, sort_keys=True, indent=2) + "\n"


def manifest_digest(manifest: dict[str, Any]) -> str:
    """The ``manifest_sha256`` of ``manifest``: the sha256 of its text without that key. Every
    change of a key, value or type changes it; whitespace (which no reader sees) does not."""
    content = {key: value for key, value in manifest.items() if key != MANIFEST_SHA256}
    return sha256_bytes(manifest_text(content).encode())


def _is_int(value: Any, low: int = 0) -> bool:
    """An int (not a bool) in [low, 2**63): what the int64 arrays built from it can hold."""
    return isinstance(value, int) and not isinstance(value, bool) and low <= value < 1 << 63


def _is_sha256(value: Any) -> bool:
    return isinstance(value, str) and re.fullmatch(r"[0-9a-f]{64}", value) is not None


def read_manifest(directory: Path) -> dict[str, Any]:
    """Read and check ``manifest.json`` (the current version's, through the pointer): required
    keys, their types, and the format version."""
    directory = Path(directory)
    path = directory / MANIFEST_FILE
    if not directory.is_dir():
        raise CorpusError(f"{directory}: no such corpus directory")
    if not path.is_file():
        raise CorpusError(f"{directory}: not a tokenized corpus (no {MANIFEST_FILE})")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise CorpusError(f"{path}: cannot read: {err}") from None
    return parse_manifest(path, data)


def parse_manifest(path: Path, data: bytes) -> dict[str, Any]:
    """Check the bytes of the manifest at ``path``: it parses, has every required key, and
    every key any reader uses (optional ones too) has the right type and range. Anything else
    raises CorruptCorpusError (exit 1) naming ``path`` and the key."""
    try:
        manifest = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise corrupt(f"{path}: not UTF-8 text ({err})") from None
    except (json.JSONDecodeError, RecursionError) as err:
        raise corrupt(f"{path}: invalid JSON: {err}") from None
    if not isinstance(manifest, dict):
        raise corrupt(f"{path}: expected a JSON object, got {type(manifest).__name__}")
    for key in REQUIRED_MANIFEST_KEYS:
        if key not in manifest:
            raise corrupt(f"{path}: missing key {key!r}")
    version = manifest["format"]
    if version != FORMAT_VERSION or not _is_int(version):
        raise corrupt(
            f"{path}: unknown format version {version!r:.40} (this longnet reads {FORMAT_VERSION})"
        )

    def bad(key: str, expected: str) -> CorruptCorpusError:
        return corrupt(f"{path}: key {key!r} must be {expected}, got {manifest[key]!r:.60}")

    for key in ("vocab_size", "documents", "tokens", "bytes"):
        if not _is_int(manifest[key], 1 if key == "vocab_size" else 0):
            raise bad(key, "a positive integer" if key == "vocab_size" else "an integer >= 0")
    vocab_size = manifest["vocab_size"]
    if not isinstance(manifest["dtype"], str) or manifest["dtype"] not in DTYPES:
        raise bad("dtype", f"one of {sorted(DTYPES)}")
    if np.iinfo(DTYPES[manifest["dtype"]]).max < vocab_size - 1:
        raise bad("dtype", f"wide enough for vocab_size {vocab_size}")
    if not _is_int(manifest["eos_id"]) or not manifest["eos_id"] < vocab_size:
        raise bad("eos_id", f"an id in [0, {vocab_size})")
    if not _is_int(manifest["bos_id"], -1) or not manifest["bos_id"] < vocab_size:
        raise bad("bos_id", f"-1 or an id in [0, {vocab_size})")
    if not isinstance(manifest["tokenizer_sha256"], str):
        raise bad("tokenizer_sha256", "a hex string")
    for key in (DOCUMENTS_SHA256, MANIFEST_SHA256):
        if key in manifest and not _is_sha256(manifest[key]):
            raise bad(key, "a sha256 (64 lowercase hex digits)")
    _check_skipped(path, manifest["skipped"])
    if "splits" in manifest:
        _check_splits(path, manifest["splits"])
    if not isinstance(manifest["shards"], list):
        raise bad("shards", "a list")
    for index, entry in enumerate(manifest["shards"]):
        where = f"{path}: key 'shards[{index}]'"
        if not isinstance(entry, dict):
            raise corrupt(f"{where} must be an object, got {entry!r:.60}")
        for key in SHARD_ENTRY_KEYS:
            if key not in entry:
                raise corrupt(f"{where}: missing key {key!r}")
        if not isinstance(entry["file"], str) or not SHARD_NAME.fullmatch(entry["file"]):
            raise corrupt(
                f"{where}: key 'file' must be a shard-NNNNN.bin name, got {entry['file']!r:.60}"
            )
        for key in ("tokens", "bytes"):
            if not _is_int(entry[key]):
                raise corrupt(
                    f"{where}: key {key!r} must be an integer >= 0, got {entry[key]!r:.60}"
                )
        if not isinstance(entry["sha256"], str):
            raise corrupt(
                f"{where}: key 'sha256' must be a hex string, got {entry['sha256']!r:.60}"
            )
    return manifest


def _check_skipped(path: Path, skipped: Any) -> None:
    """``skipped``: an object; its ``counts`` (when present) reason -> count, ``examples``
    a list."""
    if not isinstance(skipped, dict):
        raise corrupt(f"{path}: key 'skipped' must be an object, got {skipped!r:.60}")
    counts = skipped.get("counts", {})
    if not isinstance(counts, dict) or not all(_is_int(n) for n in counts.values()):
        raise corrupt(
            f"{path}: key 'skipped.counts' must map reasons to integers >= 0, got {counts!r:.60}"
        )
    if not isinstance(skipped.get("examples", []), list):
        raise corrupt(f"{path}: key 'skipped.examples' must be a list")


def _check_splits(path: Path, splits: Any) -> None:
    """``splits``: the held-out fraction, documents and tokens per split, the fallback flag."""
    if not isinstance(splits, dict):
        raise corrupt(f"{path}: key 'splits' must be an object, got {splits!r:.60}")
    holdout = splits.get("holdout")
    if isinstance(holdout, bool) or not isinstance(holdout, int | float) or not 0 <= holdout < 1:
        raise corrupt(
            f"{path}: key 'splits.holdout' must be a fraction in [0, 1), got {holdout!r:.60}"
        )
    for name in SPLITS:
        figures = splits.get(name)
        if not isinstance(figures, dict):
            raise corrupt(f"{path}: key 'splits.{name}' must be an object, got {figures!r:.60}")
        for key in ("documents", "tokens"):
            if not _is_int(figures.get(key)):
                raise corrupt(
                    f"{path}: key 'splits.{name}.{key}' must be an integer >= 0, "
                    f"got {figures.get(key)!r:.60}"
                )
    if not isinstance(splits.get("fallback", False), bool):
        raise corrupt(f"{path}: key 'splits.fallback' must be true or false")

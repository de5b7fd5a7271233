"""The manifest's checks: every value a reader uses, with the key named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from longnet_cli.data.format.errors import CorpusError
from longnet_cli.data.format.manifest import (
    DOCUMENTS_SHA256,
    FORMAT_VERSION,
    MANIFEST_SHA256,
    build_manifest,
    manifest_digest,
    parse_manifest,
    read_manifest,
)
from longnet_cli.data.format.writer import write_manifest


def _edit_manifest(directory: Path, **changes) -> None:
    path = directory / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest.update(changes)
    path.write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": 99}, r"manifest\.json: unknown format version 99"),
        ({"vocab_size": "300"}, r"manifest\.json: key 'vocab_size'"),
        ({"dtype": "int8"}, r"manifest\.json: key 'dtype'"),
        ({"eos_id": 300}, r"manifest\.json: key 'eos_id'"),
        ({"shards": [{"file": "../x.bin", "tokens": 1, "bytes": 2, "sha256": ""}]}, r"'file'"),
    ],
)
def test_bad_manifest_values(corpus_dir, change, message):
    _edit_manifest(corpus_dir, **change)
    with pytest.raises(CorpusError, match=message):
        read_manifest(corpus_dir)


def test_build_manifest_from_a_build_s_totals(tmp_path):
    """The manifest of a build: FORMAT_VERSION, the shards' token sum, extra keys kept; what
    ``write_manifest`` writes from it parses and seals."""
    shards = [
        {"file": "shard-00000.bin", "tokens": 4, "bytes": 8, "sha256": "0" * 64},
        {"file": "shard-00001.bin", "tokens": 3, "bytes": 6, "sha256": "1" * 64},
    ]
    manifest = build_manifest(
        tokenizer_sha256="2" * 64, vocab_size=300, dtype="uint16", eos_id=1, bos_id=-1,
        documents=2, text_bytes=11, shards=shards, skipped={"counts": {}, "examples": []},
        documents_sha256="3" * 64, fingerprint="f", options={"holdout": 0.0},
    )  # fmt: skip
    assert manifest["format"] == FORMAT_VERSION
    assert (manifest["tokens"], manifest["bytes"], manifest["documents"]) == (7, 11, 2)
    assert manifest[DOCUMENTS_SHA256] == "3" * 64 and manifest["fingerprint"] == "f"
    write_manifest(tmp_path, manifest, seal=True)
    written = parse_manifest(tmp_path / "manifest.json", (tmp_path / "manifest.json").read_bytes())
    assert written[MANIFEST_SHA256] == manifest_digest(written)
    assert {k: v for k, v in written.items() if k != MANIFEST_SHA256} == manifest


def test_manifest_digest_ignores_key_order_not_values():
    manifest = {"a": 1, "b": [1, 2], "manifest_sha256": "x"}
    assert manifest_digest(manifest) == manifest_digest({"b": [1, 2], "a": 1})
    assert manifest_digest(manifest) != manifest_digest({"a": 1.0, "b": [1, 2]})

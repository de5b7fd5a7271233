"""Damaged corpus files: inspect finds every change, readers answer one line naming the file.

One small corpus is tokenized once (a trained tokenizer, several shards, a held-out split);
each test copies it and damages one file. What the module checks (issue 12, "Fuzzing what
users hand us"):

- a damaged manifest.json (bytes, truncation, keys missing, values of the wrong type) exits 1
  with one line naming it and the key, never a traceback; a directory without one, exit 2;
- ``TokenizedCorpus`` answers a damaged documents.parquet, a truncated shard or a damaged
  tokenizer.model with ``CorruptCorpusError`` (exit 1, the file named, the rebuild hint).
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

from longnet_cli.cli import main
from longnet_cli.data.shards import (
    CorpusError,
    CorruptCorpusError,
    TokenizedCorpus,
)
from longnet_cli.data.tokenizer import load_tokenizer
from longnet_cli.errors import DamagedFileError
from longnet_cli.tokenize import TokenizeOptions, tokenize_corpus

WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "zeta",
    "eta",
    "theta",
    "iota",
    "kappa",
    "lambda",
    "mu",
]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """A versioned corpus of 12 small documents in several shards, half of them held out."""
    root = tmp_path_factory.mktemp("integrity")
    rng = random.Random(3)
    for index in range(12):
        text = "\n".join(" ".join(rng.choices(WORDS, k=12)) for _ in range(8)) + "\n"
        (root / "in").mkdir(exist_ok=True)
        (root / "in" / f"doc{index:02d}.txt").write_text(f"# document {index}\n{text}")
    tokenize_corpus(
        TokenizeOptions(
            paths=(root / "in",),
            out=root / "data",
            vocab_size=320,
            sample_bytes=1 << 16,
            holdout=0.5,
            shard_tokens=512,
            workers=1,
            progress=False,
        )
    )
    return root / "data"


@pytest.fixture
def corpus(pristine, tmp_path) -> Path:
    """A copy of the pristine corpus to damage."""
    copy = tmp_path / "data"
    shutil.copytree(pristine, copy, symlinks=True)
    return copy


def _cli(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        main([str(arg) for arg in args])
    out, err = capsys.readouterr()
    return stop.value.code, out, err


def _one_error_line(err: str) -> str:
    """The single ``error:`` line of ``err``, which holds nothing else (no traceback)."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and "--debug" not in err, err
    return lines[0]


def _manifest(corpus: Path) -> tuple[Path, dict]:
    path = (corpus / "manifest.json").resolve()  # the current version's
    return path, json.loads(path.read_text())


def _rewrite(path: Path, manifest: dict) -> None:
    """Write ``manifest`` as tokenize does (sorted, indent 2) but with its old checksum."""
    path.write_text(json.dumps(manifest, sort_keys=True, indent=2) + "\n")


# -- manifest.json damaged: exit 1, one line naming it and the key -------------------------------


def _flip_to_non_utf8(text: str) -> bytes:
    data = bytearray(text.encode())
    data[len(data) // 2] = 0xFF
    return bytes(data)


BYTE_DAMAGE = {
    "not-utf8": _flip_to_non_utf8,
    "truncated": lambda text: text.encode()[: len(text) // 2],
    "empty": lambda text: b"",
    "garbage-appended": lambda text: text.encode() + b"\x00\x07garbage",
    "not-an-object": lambda text: b"[1, 2, 3]\n",
}


@pytest.mark.parametrize("damage", sorted(BYTE_DAMAGE))
def test_inspect_damaged_manifest_bytes_exit_1(corpus, capsys, damage):
    path, _ = _manifest(corpus)
    path.write_bytes(BYTE_DAMAGE[damage](path.read_text()))
    code, _, err = _cli(capsys, "inspect", corpus)
    error = _one_error_line(err)
    assert code == 1 and str(path) in error and "longnet tokenize --force" in error, err


def _set(manifest: dict, dotted: str, value) -> None:
    """Set (or, with value ``...``, delete) the key at a dotted path like ``shards[0].tokens``."""
    parts = dotted.replace("[", ".").replace("]", "").split(".")
    parent = manifest
    for part in parts[:-1]:
        parent = parent[int(part)] if isinstance(parent, list) else parent[part]
    last = int(parts[-1]) if isinstance(parent, list) else parts[-1]
    if value is ...:
        del parent[last]
    else:
        parent[last] = value


STRUCTURAL = [  # (key changed, new value or ... to delete it, the key the error names)
    ("splits", [1, 2], "splits"),
    ("splits.train.documents", {"x": 1}, "splits.train.documents"),  # was a TypeError in inspect
    ("splits.heldout", {}, "splits.heldout.documents"),
    ("splits.holdout", "half", "splits.holdout"),
    ("splits.fallback", "no", "splits.fallback"),
    ("skipped.counts", {"binary": "two"}, "skipped.counts"),
    ("skipped", [], "skipped"),
    ("shards", {"0": 1}, "shards"),
    ("shards[0]", "shard-00000.bin", "shards[0]"),
    ("shards[0].tokens", "512", "shards[0]"),
    ("shards[0].tokens", 1 << 64, "shards[0]"),  # was an OverflowError building the index
    ("shards[1].sha256", ..., "shards[1]"),
    ("vocab_size", [320], "vocab_size"),
    ("tokens", None, "tokens"),
    ("dtype", 7, "dtype"),
    ("format", "1", "format"),
    ("eos_id", ..., "eos_id"),
]


@pytest.mark.parametrize(
    ("key", "value", "named"), STRUCTURAL, ids=[f"{k}={v!r:.12}" for k, v, _ in STRUCTURAL]
)
def test_inspect_manifest_wrong_type_or_missing_key_exit_1(corpus, capsys, key, value, named):
    path, manifest = _manifest(corpus)
    _set(manifest, key, value)
    _rewrite(path, manifest)
    code, _, err = _cli(capsys, "inspect", corpus)
    error = _one_error_line(err)
    assert code == 1 and str(path) in error and named in error, err
    with pytest.raises(CorruptCorpusError, match=str(path)) as info:  # train, eval: the same
        TokenizedCorpus.open(corpus)
    assert info.value.exit_code == 1 and isinstance(info.value, CorpusError)


def test_a_directory_without_manifest_is_exit_2(corpus, capsys):
    path, _ = _manifest(corpus)
    path.unlink()
    code, _, err = _cli(capsys, "inspect", corpus)
    assert code == 2 and "manifest.json" in _one_error_line(err)


# -- documents.parquet: recorded sha256, damaged reads -------------------------------------------


def _documents(corpus: Path) -> Path:
    return (corpus / "documents.parquet").resolve()


@pytest.mark.parametrize("size", [0, 7, 100, -12, -1])
def test_truncated_documents_parquet_is_corrupt(corpus, size):
    path = _documents(corpus)
    path.write_bytes(path.read_bytes()[:size])
    with pytest.raises(CorruptCorpusError, match=f"{path}.*longnet tokenize --force") as info:
        TokenizedCorpus.open(corpus)
    assert info.value.exit_code == 1
    reader = TokenizedCorpus.open(corpus, verify="none")
    for read in (reader.document_starts, reader.document_lengths, reader.documents):
        with pytest.raises(CorruptCorpusError, match=str(path)):
            read()


# -- shards and tokenizer ------------------------------------------------------------------------


def test_truncated_shard_is_corrupt_at_open_and_when_mapped(corpus):
    shard = (corpus / "shard-00001.bin").resolve()
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(CorruptCorpusError, match=rf"{shard}: .*manifest says") as info:
        TokenizedCorpus.open(corpus)  # sizes: one stat per shard
    assert info.value.exit_code == 1 and "longnet tokenize --force" in str(info.value)
    reader = TokenizedCorpus.open(corpus, verify="none")
    with pytest.raises(CorruptCorpusError, match=f"{shard}: cannot map"):
        reader.shard(1)


def test_missing_shard_exit_1_naming_it(corpus, capsys):
    shard = (corpus / "shard-00000.bin").resolve()
    shard.unlink()
    with pytest.raises(CorruptCorpusError, match=f"{shard}: missing shard"):
        TokenizedCorpus.open(corpus)


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty"])
def test_damaged_tokenizer_names_the_file(corpus, damage):
    path = (corpus / "tokenizer.model").resolve()
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[2] ^= 0x46
    path.write_bytes({"flip": data, "truncate": data[: len(data) // 3], "empty": b""}[damage])
    reader = TokenizedCorpus.open(corpus)
    with pytest.raises(CorruptCorpusError, match=f"{path}: sha256 .* tokenizer_sha256") as info:
        reader.load_tokenizer()
    assert info.value.exit_code == 1
    if damage != "flip":  # a flip may still load: only the sha256 tells
        with pytest.raises(DamagedFileError, match=f"{path}: cannot load the SentencePiece"):
            load_tokenizer(path)
    assert reader.verify(full=True) and any(str(path) in p for p in reader.verify(full=True))


def test_sound_tokenizer_loads(pristine):
    processor = TokenizedCorpus.open(pristine).load_tokenizer()
    assert processor.vocab_size() == TokenizedCorpus.open(pristine).vocab_size

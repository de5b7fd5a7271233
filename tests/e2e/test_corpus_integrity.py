"""Damaged corpus files: inspect finds every change, readers answer one line naming the file.

One small corpus is tokenized once (a trained tokenizer, several shards, a held-out split);
each test copies it and damages one file. What the module checks (issue 12, "Fuzzing what
users hand us"):

- the manifest records the sha256 of documents.parquet and of its own content
  (``manifest_sha256``), so ``longnet inspect`` finds a change to any corpus file (exit 1);
- a damaged manifest.json (bytes, truncation, keys missing, values of the wrong type) exits 1
  with one line naming it and the key, never a traceback; a directory without one, exit 2;
- a corpus written before those two sha256s inspects with a note naming what it cannot verify;
- ``TokenizedCorpus`` answers a damaged documents.parquet, a truncated shard or a damaged
  tokenizer.model with ``CorruptCorpusError`` (exit 1, the file named, the rebuild hint).
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest

from longnet_cli.cli import main
from longnet_cli.core.errors import DamagedFileError
from longnet_cli.core.files import sha256_file
from longnet_cli.data.format.errors import CorpusError, CorruptCorpusError
from longnet_cli.data.format.manifest import DOCUMENTS_SHA256, MANIFEST_SHA256, manifest_digest
from longnet_cli.data.format.reader import TokenizedCorpus
from longnet_cli.data.format.writer import write_manifest
from longnet_cli.data.tokenizer import load_tokenizer
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


# -- what a build records ------------------------------------------------------------------------


def test_build_records_documents_and_manifest_sha256(pristine):
    path, manifest = _manifest(pristine)
    assert manifest[DOCUMENTS_SHA256] == sha256_file(path.parent / "documents.parquet")
    content = {key: value for key, value in manifest.items() if key != MANIFEST_SHA256}
    text = json.dumps(content, sort_keys=True, indent=2) + "\n"
    assert manifest[MANIFEST_SHA256] == hashlib.sha256(text.encode()).hexdigest()
    assert manifest_digest(manifest) == manifest[MANIFEST_SHA256]
    corpus = TokenizedCorpus.open(pristine, verify="full")
    assert corpus.unverified() == [] and corpus.verify(full=True) == []


def test_inspect_of_a_sound_corpus_has_no_notes(pristine, capsys):
    code, out, err = _cli(capsys, "inspect", pristine)
    assert code == 0, err
    assert "NOTE:" not in out and "OK: all" in out


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
    ("documents_sha256", "not a hash", "documents_sha256"),
    ("manifest_sha256", 12, "manifest_sha256"),
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


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("options.seed", 1),
        ("fingerprint", "0" * 64),
        ("splits.holdout", 0.25),
        ("skipped.examples", ...),
        ("bytes", 12345),
        ("extra", "a key no reader knows"),
    ],
)
def test_inspect_finds_a_manifest_change_no_check_reads(corpus, capsys, key, value):
    """Values that still parse and that no structural check compares: found by the
    manifest's own sha256."""
    path, manifest = _manifest(corpus)
    _set(manifest, key, value)
    _rewrite(path, manifest)
    code, out, _ = _cli(capsys, "inspect", corpus)
    problems = [line for line in out.splitlines() if line.startswith("PROBLEM:")]
    assert code == 1 and any(str(path) in p and MANIFEST_SHA256 in p for p in problems), out


def test_whitespace_of_the_manifest_is_not_content(corpus, capsys):
    path, manifest = _manifest(corpus)
    path.write_text(json.dumps(manifest))  # one line, keys in another order: same content
    code, out, err = _cli(capsys, "inspect", corpus)
    assert code == 0 and "OK: all" in out, out + err


def test_a_directory_without_manifest_is_exit_2(corpus, capsys):
    path, _ = _manifest(corpus)
    path.unlink()
    code, _, err = _cli(capsys, "inspect", corpus)
    assert code == 2 and "manifest.json" in _one_error_line(err)


# -- documents.parquet: recorded sha256, damaged reads -------------------------------------------


def _documents(corpus: Path) -> Path:
    return (corpus / "documents.parquet").resolve()


def test_inspect_finds_every_flip_in_documents_parquet(corpus, capsys):
    """Bytes flipped anywhere (data pages that still decode included): a PROBLEM line naming
    documents.parquet, exit 1; the readers raise CorruptCorpusError or read the table."""
    path = _documents(corpus)
    original = path.read_bytes()
    rng = random.Random(12)
    offsets = sorted(rng.sample(range(len(original)), 24))
    decoded = 0  # flips pyarrow still reads: only the sha256 can tell
    for offset in offsets:
        damaged = bytearray(original)
        damaged[offset] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(damaged))
        code, out, err = _cli(capsys, "inspect", corpus)
        assert code == 1, (offset, out, err)
        assert any(
            line.startswith("PROBLEM:") and str(path) in line for line in out.splitlines()
        ), (offset, out)
        try:
            reader = TokenizedCorpus.open(corpus, verify="none")
            reader.documents()
            reader.document_starts(), reader.document_lengths(), reader.heldout_mask()
            decoded += 1
        except CorpusError as err:
            assert isinstance(err, CorruptCorpusError) and str(path) in str(err), (offset, err)
    assert decoded >= 1  # the case the sha256 is for was met


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


def test_old_corpus_without_the_sha256s_inspects_with_notes(corpus, capsys):
    """A manifest written before documents_sha256 and manifest_sha256: read and inspected as
    before, each file inspect cannot verify named in a note, exit 0."""
    path, manifest = _manifest(corpus)
    del manifest[DOCUMENTS_SHA256], manifest[MANIFEST_SHA256]
    write_manifest(path.parent, manifest)
    assert MANIFEST_SHA256 not in json.loads(path.read_text())
    code, out, err = _cli(capsys, "inspect", corpus)
    assert code == 0, out + err
    notes = [line for line in out.splitlines() if line.startswith("NOTE:")]
    assert len(notes) == 2, out
    assert str(path) in notes[0] and str(_documents(corpus)) in notes[1]
    code, out, _ = _cli(capsys, "inspect", corpus, "--json")
    assert code == 0 and len(json.loads(out)["notes"]) == 2


def test_rewritten_sealed_manifest_stays_sealed(corpus):
    """write_manifest of a sealed manifest records the checksum of what it writes."""
    path, manifest = _manifest(corpus)
    manifest["options"]["seed"] = 5
    write_manifest(path.parent, manifest)
    written = json.loads(path.read_text())
    assert written[MANIFEST_SHA256] == manifest_digest(written) != manifest[MANIFEST_SHA256]
    assert TokenizedCorpus.open(corpus, verify="full").verify(full=True) == []


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


def test_token_ids_beyond_the_vocabulary_name_the_shard(corpus):
    """Every token window read is checked below vocab_size (what training, eval and generate
    read through): a shard of ids beyond it raises CorruptCorpusError naming it."""
    shard = (corpus / "shard-00001.bin").resolve()
    shard.write_bytes(b"\xff" * shard.stat().st_size)
    reader = TokenizedCorpus.open(corpus)  # sizes unchanged: opens
    start = int(reader.shard_starts[1])
    assert reader.tokens(0, start).size == start  # shard 0 is sound
    for first, length in ((start + 5, 10), (start - 3, 10)):  # inside shard 1, across 0 and 1
        with pytest.raises(CorruptCorpusError, match=rf"{shard}: token id 65535 at offset"):
            reader.tokens(first, length)
    doc = int(np.searchsorted(reader.document_starts(), start, side="right"))
    with pytest.raises(CorruptCorpusError, match=str(shard)):
        reader.document(doc)


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

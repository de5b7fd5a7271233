"""Verification: each corruption is caught, by the right level, naming the file."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from longnet_cli.data.format.errors import CorpusError
from longnet_cli.data.format.reader import TokenizedCorpus
from longnet_cli.data.format.verify import inspect_checks, link_problems
from longnet_cli.data.format.writer import write_documents_table


def _edit_manifest(directory: Path, **changes) -> None:
    path = directory / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest.update(changes)
    path.write_text(json.dumps(manifest))


def test_flipped_byte_found_only_by_full(corpus_dir, small_corpus):
    path = corpus_dir / "shard-00001.bin"
    raw = bytearray(path.read_bytes())
    raw[4] ^= 1  # token 2 of shard 1: a document token (ids >= 2, so never EOS), stays < VOCAB
    path.write_bytes(bytes(raw))
    assert TokenizedCorpus.open(corpus_dir, verify="sizes").verify(full=False) == []
    with pytest.raises(CorpusError, match=r"shard-00001\.bin.*sha256"):
        TokenizedCorpus.open(corpus_dir, verify="full")


def test_truncated_shard_found_by_sizes(corpus_dir):
    path = corpus_dir / "shard-00000.bin"
    path.write_bytes(path.read_bytes()[:-2])
    with pytest.raises(CorpusError, match=r"shard-00000\.bin: 62 bytes, manifest says 64"):
        TokenizedCorpus.open(corpus_dir, verify="sizes")
    TokenizedCorpus.open(corpus_dir, verify="none")  # "none" opens anyway


def test_missing_shard(corpus_dir):
    (corpus_dir / "shard-00002.bin").unlink()
    with pytest.raises(CorpusError, match=r"shard-00002\.bin: missing"):
        TokenizedCorpus.open(corpus_dir)


def test_token_id_beyond_vocabulary(tmp_path, small_corpus):
    small_corpus.write(tmp_path, [[2, 3], [4, small_corpus.vocab, 5]], shard_tokens=4)
    assert TokenizedCorpus.open(tmp_path, verify="sizes").verify(full=False) == []
    problems = TokenizedCorpus.open(tmp_path, verify="none").verify(full=True)
    assert len(problems) == 1
    assert "shard-00001.bin" in problems[0] and f"token id {small_corpus.vocab}" in problems[0]
    assert "vocab_size" in problems[0]


def test_wrong_tokenizer(corpus_dir):
    (corpus_dir / "tokenizer.model").write_bytes(b"another model")
    TokenizedCorpus.open(corpus_dir, verify="sizes")
    with pytest.raises(CorpusError, match=r"tokenizer\.model: sha256"):
        TokenizedCorpus.open(corpus_dir, verify="full")


def test_documents_table_inconsistent(corpus_dir):
    table = pq.read_table(corpus_dir / "documents.parquet")
    offsets = table.column("offset").to_pylist()
    offsets[3] += 1
    table = table.set_column(3, "offset", pa.array(offsets, pa.int64()))
    write_documents_table(corpus_dir, table)
    problems = TokenizedCorpus.open(corpus_dir, verify="sizes").verify(full=True)
    assert any("documents.parquet" in p and "document 3" in p for p in problems), problems


def test_missing_eos(corpus_dir, small_corpus):
    # document 0 has 28 tokens: its EOS is token 28 of shard 0 (bytes 56..57)
    path = corpus_dir / "shard-00000.bin"
    raw = bytearray(path.read_bytes())
    assert raw[56:58] == bytes([small_corpus.eos, 0])
    raw[56] = 7
    path.write_bytes(bytes(raw))
    problems = TokenizedCorpus.open(corpus_dir, verify="none").verify(full=True)
    assert any("not followed by EOS" in p and "document 0" in p for p in problems), problems
    assert any("shard-00000.bin" in p and "sha256" in p for p in problems), problems


def test_documents_row_count(corpus_dir):
    _edit_manifest(corpus_dir, documents=9)
    with pytest.raises(CorpusError, match=r"documents\.parquet: 8 rows, manifest says 9"):
        TokenizedCorpus.open(corpus_dir)


def test_inspect_checks_a_sound_flat_corpus(corpus_dir):
    """A flat corpus has no links to check; it records no sha256 of its documents table or of
    its manifest (written by hand here), so those are notes, not problems."""
    corpus = TokenizedCorpus.open(corpus_dir)
    found = inspect_checks(corpus)
    assert found.ok and found.problems == []
    assert link_problems(corpus) == []
    assert len(found.notes) == 2 and all("older longnet" in note for note in found.notes)


def test_inspect_checks_split_totals_only_when_nothing_else_is_wrong(corpus_dir):
    splits = {"holdout": 0.5, "train": {"documents": 1, "tokens": 1},
              "heldout": {"documents": 0, "tokens": 0}, "fallback": False}  # fmt: skip
    _edit_manifest(corpus_dir, splits=splits)
    found = inspect_checks(TokenizedCorpus.open(corpus_dir))
    assert len(found.problems) == 1 and "splits.train" in found.problems[0]
    (corpus_dir / "shard-00001.bin").unlink()
    found = inspect_checks(TokenizedCorpus.open(corpus_dir, verify="none"))
    assert found.problems and not any("splits." in p for p in found.problems)

"""``longnet inspect``: totals, verification and exit codes over a real SentencePiece corpus."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import sentencepiece

from longnet_cli.cli import main
from longnet_cli.core.errors import InputError
from longnet_cli.data.format.schema import token_dtype
from longnet_cli.data.format.writer import ShardWriter, write_documents_table, write_manifest
from longnet_cli.inspect import inspect_corpus

SHARD_TOKENS = 16
TEXTS = [
    "The quick brown fox jumps over the lazy dog.\n",
    "  leading spaces, a tab\there,\n\nblank lines, Ünïcödé ✓ 日本語 🙂 and trailing  ",
    "",
    "def double(x):\n    return x * 2\n",
    "new words the model never saw: zebra, quokka, Ω≈ç√",
]
TRAINING_LINES = [
    "The quick brown fox jumps over the lazy dog.",
    "def f(x):\n    return x * 2\n",
    "Ünïcödé ✓ 日本語 🙂 text with  spaces\tand tabs",
] * 20


@pytest.fixture(scope="module")
def tokenizer_model() -> bytes:
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(TRAINING_LINES), model_writer=model, vocab_size=400,
        model_type="bpe", byte_fallback=True, normalization_rule_name="identity",
        add_dummy_prefix=False, remove_extra_whitespaces=False, eos_id=1, bos_id=-1, unk_id=0,
        pad_id=-1, minloglevel=2,
    )  # fmt: skip
    return model.getvalue()


@pytest.fixture
def corpus_dir(tmp_path, tokenizer_model) -> Path:
    """A corpus of TEXTS written the way the tokenize stage writes one."""
    processor = sentencepiece.SentencePieceProcessor(model_proto=tokenizer_model)
    directory = tmp_path / "corpus"
    encoded = [processor.encode(text) for text in TEXTS]
    with ShardWriter(directory, token_dtype(400), SHARD_TOKENS, eos_id=1) as writer:
        placements = []
        for ids in encoded:
            writer.begin_document()
            writer.write(np.array(ids))
            placements.append(writer.end_document())
        shards = writer.close()
    data = [text.encode() for text in TEXTS]
    write_documents_table(
        directory,
        {
            "doc_id": list(range(len(TEXTS))),
            "source": [f"text{i}.txt" for i in range(len(TEXTS))],
            "shard": [p.shard for p in placements],
            "offset": [p.offset for p in placements],
            "tokens": [p.tokens for p in placements],
            "bytes": [len(d) for d in data],
            "sha256": [hashlib.sha256(d).hexdigest() for d in data],
        },
    )
    (directory / "tokenizer.model").write_bytes(tokenizer_model)
    write_manifest(
        directory,
        {
            "tokenizer_sha256": hashlib.sha256(tokenizer_model).hexdigest(),
            "vocab_size": 400, "dtype": "uint16", "eos_id": 1, "bos_id": -1,
            "documents": len(TEXTS), "tokens": sum(len(ids) + 1 for ids in encoded),
            "bytes": sum(len(d) for d in data), "shards": shards,
            "skipped": {"counts": {"binary": 2, "too_large": 1}, "examples": []},
        },
    )  # fmt: skip
    return directory


def _total_tokens(tokenizer_model: bytes) -> int:
    processor = sentencepiece.SentencePieceProcessor(model_proto=tokenizer_model)
    return sum(len(processor.encode(text)) + 1 for text in TEXTS)


def _run(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def test_inspect_ok(corpus_dir, tokenizer_model, capsys):
    code, out, err = _run(capsys, "inspect", str(corpus_dir))
    tokens = _total_tokens(tokenizer_model)
    shards = -(-tokens // SHARD_TOKENS)
    assert shards >= 3
    assert code == 0, err
    assert f"OK: all {shards} shards verified" in out
    assert f"documents   {len(TEXTS)}" in out and f"tokens      {tokens}" in out
    assert "binary 2, too_large 1" in out
    assert err == ""


@pytest.mark.parametrize("doc_id", range(len(TEXTS)))
def test_inspect_doc_prints_exact_text(corpus_dir, capsys, doc_id):
    code, out, err = _run(capsys, "inspect", str(corpus_dir), "--doc", str(doc_id))
    assert code == 0, err
    assert out == TEXTS[doc_id]
    assert "OK: all" in err  # totals go to stderr


def test_inspect_json(corpus_dir, tokenizer_model, capsys):
    code, out, _ = _run(capsys, "inspect", str(corpus_dir), "--json", "--doc", "1")
    assert code == 0
    report = json.loads(out)
    assert report["documents"] == len(TEXTS)
    assert report["tokens"] == _total_tokens(tokenizer_model)
    assert report["bytes"] == sum(len(text.encode()) for text in TEXTS)
    assert report["problems"] == [] and report["ok"] is True
    assert report["text"] == TEXTS[1]
    assert report["skipped"] == {"binary": 2, "too_large": 1}
    assert report["tokenizer_sha256"] == hashlib.sha256(tokenizer_model).hexdigest()


def test_inspect_corrupt_shard_exits_1(corpus_dir, capsys):
    path = corpus_dir / "shard-00001.bin"
    raw = bytearray(path.read_bytes())
    raw[0] ^= 0xFF
    path.write_bytes(bytes(raw))
    code, out, err = _run(capsys, "inspect", str(corpus_dir))
    assert code == 1
    assert "OK:" not in out
    assert "PROBLEM:" in out and "shard-00001.bin" in out and "sha256" in out
    assert "problem" in err


def test_inspect_missing_shard_json_exits_1(corpus_dir, capsys):
    (corpus_dir / "shard-00002.bin").unlink()
    code, out, _ = _run(capsys, "inspect", str(corpus_dir), "--json")
    assert code == 1
    problems = json.loads(out)["problems"]
    assert any("shard-00002.bin" in p and "missing" in p for p in problems), problems


def test_inspect_bad_input_exits_2(corpus_dir, tmp_path, capsys):
    code, _, err = _run(capsys, "inspect", str(tmp_path / "nowhere"))
    assert code == 2 and "nowhere" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = _run(capsys, "inspect", str(empty))
    assert code == 2 and "manifest.json" in err
    code, _, err = _run(capsys, "inspect", str(corpus_dir), "--doc", str(len(TEXTS)))
    assert code == 2 and f"0..{len(TEXTS) - 1}" in err
    code, _, err = _run(capsys, "inspect", str(corpus_dir), "--doc", "-1")
    assert code == 2


def test_inspect_corpus_stage(corpus_dir, tokenizer_model):
    report = inspect_corpus(corpus_dir, doc_id=3)
    assert report.text == TEXTS[3] and report.ok
    assert report.documents == len(TEXTS) and report.vocab_size == 400
    assert report.dtype == "uint16" and report.shards == len(list(corpus_dir.glob("shard-*.bin")))
    with pytest.raises(InputError, match=r"0\.\.4"):
        inspect_corpus(corpus_dir, doc_id=5)


def _add_splits(directory: Path, heldout: set[int], recorded: dict | None = None) -> dict:
    """Give the corpus a split column (``heldout`` ids held out) and a manifest "splits"."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(directory / "documents.parquet").drop_columns(["split"])
    splits = ["heldout" if i in heldout else "train" for i in range(table.num_rows)]
    write_documents_table(directory, table.append_column("split", pa.array(splits)))
    lengths = table.column("tokens").to_pylist()
    figures = {
        name: {
            "documents": sum(1 for s in splits if s == name),
            "tokens": sum(n + 1 for n, s in zip(lengths, splits) if s == name),
        }
        for name in ("train", "heldout")
    }
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["splits"] = recorded or {"holdout": 0.25, **figures, "fallback": False}
    write_manifest(directory, manifest)
    return figures


def test_inspect_shows_documents_and_tokens_per_split(corpus_dir, capsys):
    code, out, _ = _run(capsys, "inspect", str(corpus_dir))
    assert code == 0 and "split       none recorded" in out  # an old corpus: all train
    figures = _add_splits(corpus_dir, {0, 3})
    code, out, err = _run(capsys, "inspect", str(corpus_dir))
    assert code == 0, err
    heldout, train = figures["heldout"], figures["train"]
    assert f"heldout     {heldout['documents']} documents, {heldout['tokens']} tokens" in out
    assert f"train       {train['documents']} documents, {train['tokens']} tokens" in out
    assert "holdout     0.25" in out
    code, out, _ = _run(capsys, "inspect", str(corpus_dir), "--json")
    assert json.loads(out)["splits"]["heldout"] == heldout


def test_inspect_reports_splits_that_disagree_with_the_documents_table(corpus_dir, capsys):
    wrong = {
        "holdout": 0.25,
        "train": {"documents": 5, "tokens": 1},
        "heldout": {"documents": 0, "tokens": 0},
    }
    _add_splits(corpus_dir, {1}, recorded=wrong)
    code, out, _ = _run(capsys, "inspect", str(corpus_dir))
    assert code == 1
    assert "splits.train" in out and "splits.heldout" in out


def test_inspect_splits_of_the_wrong_shape_one_line_exit_1(corpus_dir, capsys):
    """A "splits" whose figures are not counts: one line naming manifest.json and the key
    (it was a TypeError formatting the figures)."""
    figures = {"documents": {"n": 1}, "tokens": 3}
    _add_splits(corpus_dir, {1}, recorded={"holdout": 0.25, "train": figures, "heldout": figures})
    code, out, err = _run(capsys, "inspect", str(corpus_dir))
    assert code == 1 and out == ""
    (line,) = err.strip().splitlines()
    assert line.startswith("error: ") and "manifest.json" in line
    assert "'splits.train.documents'" in line

"""Resume policies: a changed corpus (recorded by content, continued with a data_changed record,
or refused with --strict-data)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from test_train import _cli, _metrics, _write_recipe

from longnet_cli.data.shards import TokenizedCorpus
from longnet_cli.data.sources import stdlib_path
from longnet_cli.tokenize import TokenizeOptions, tokenize_corpus


def _tokenize(sources: Path, out: Path, tokenizer: Path | None = None):
    return tokenize_corpus(
        TokenizeOptions(
            paths=(sources,),
            out=out,
            tokenizer=tokenizer,
            vocab_size=600,
            sample_bytes=1 << 20,
            workers=1,
            progress=False,
        )
    )


def _state(run: Path, step: int) -> dict:
    return json.loads((run / "checkpoints" / f"step-{step:07d}" / "state.json").read_text())


def test_changed_corpus_is_recorded_by_content(tmp_path, capsys):
    """A touch re-tokenizes to the same shards: no change. New content (the same tokenizer, as
    the batch pipelines now reuse it): the run continues with a warning and a data_changed
    record; --strict-data refuses with one line and touches nothing."""
    sources = tmp_path / "sources"
    sources.mkdir()
    for name in ("json/decoder.py", "json/encoder.py", "csv.py"):
        shutil.copyfile(stdlib_path() / name, sources / Path(name).name)
    data = tmp_path / "data"
    _tokenize(sources, data)
    recipe = _write_recipe(tmp_path, data, train__steps=2, checkpoint__every=2)
    run = tmp_path / "run"
    assert _cli("train", str(recipe), "--out", str(run), "--quiet") == 0
    record = _state(run, 2)["corpus"]
    manifest = TokenizedCorpus.open(data).manifest
    assert record["shards"] == [entry["sha256"] for entry in manifest["shards"]]
    assert record["tokenizer_sha256"] == manifest["tokenizer_sha256"]

    for file in [*sources.iterdir(), *data.iterdir()]:  # newer times, the same content
        os.utime(file, (2e9, 2e9))
    assert not _tokenize(sources, data).up_to_date  # re-tokenized ...
    capsys.readouterr()
    code = _cli("train", str(recipe), "--out", str(run), "--quiet", "--set", "train.steps=4")
    assert code == 0
    assert "changed" not in capsys.readouterr().err  # ... but nothing changed
    assert not [r for r in _metrics(run) if "data_changed" in r]
    assert _state(run, 4)["corpus"] == record

    tokenizer = tmp_path / "tokenizer.model"
    shutil.copyfile(TokenizedCorpus.open(data).tokenizer_path, tokenizer)
    shutil.copyfile(stdlib_path() / "json/scanner.py", sources / "scanner.py")  # it grows
    _tokenize(sources, data, tokenizer)
    grown = TokenizedCorpus.open(data).manifest
    before = (run / "metrics.jsonl").read_text()
    code = _cli("train", str(recipe), "--out", str(run), "--quiet", "--set", "train.steps=6",
                "--strict-data")  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "--strict-data" in err
    assert "documents 3 -> 4" in err and str(data) in err
    assert (run / "metrics.jsonl").read_text() == before
    assert not (run / "checkpoints" / "step-0000006").exists()

    code = _cli("train", str(recipe), "--out", str(run), "--quiet", "--set", "train.steps=6")
    assert code == 0
    err = capsys.readouterr().err
    assert "warning: the corpus" in err and "documents 3 -> 4" in err and "from step 4" in err
    (changed,) = [r for r in _metrics(run) if "data_changed" in r]
    assert changed["step"] == 4
    assert changed["data_changed"]["from"]["sha256"] == record["sha256"]
    assert changed["data_changed"]["to"]["tokens"] == grown["tokens"]
    assert changed["data_changed"]["checkpoint"].endswith("step-0000004")
    assert [r["step"] for r in _metrics(run) if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert _state(run, 6)["corpus"]["shards"] == [e["sha256"] for e in grown["shards"]]
    code = _cli("train", str(recipe), "--out", str(run), "--quiet", "--set", "train.steps=8")
    assert code == 0 and "changed" not in capsys.readouterr().err  # recorded once


def test_another_tokenizer_is_refused_naming_the_checkpoint_copy(tmp_path, capsys):
    """A corpus re-tokenized with a newly trained tokenizer cannot resume; the message names
    the checkpoint's copy of the old one to re-tokenize with."""
    sources = tmp_path / "sources"
    sources.mkdir()
    shutil.copyfile(stdlib_path() / "json/decoder.py", sources / "decoder.py")
    shutil.copyfile(stdlib_path() / "csv.py", sources / "csv.py")
    data = tmp_path / "data"
    _tokenize(sources, data)
    recipe = _write_recipe(tmp_path, data, train__steps=2, checkpoint__every=2)
    run = tmp_path / "run"
    assert _cli("train", str(recipe), "--out", str(run), "--quiet") == 0
    shutil.copyfile(stdlib_path() / "json/encoder.py", sources / "encoder.py")
    _tokenize(sources, data)  # a new tokenizer, trained on the grown corpus
    code = _cli("train", str(recipe), "--out", str(run), "--quiet", "--set", "train.steps=4")
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert f"--tokenizer {run / 'checkpoints' / 'step-0000002' / 'tokenizer.model'}" in err

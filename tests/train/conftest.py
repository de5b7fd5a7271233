"""Fixtures of tests/train: a small corpus with a held-out split and a short finished run on it
(the source that ``train.init_from`` starts from, and whose metrics carry mfu), and factories
for the tiny recipes and corpora those tests write."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from helpers import exit_code

from longnet_cli.data.sources import stdlib_path
from longnet_cli.tokenize import TokenizeOptions, tokenize_corpus

FILES = ("json/decoder.py", "json/encoder.py", "csv.py", "textwrap.py", "shlex.py")
SHAPE = {"dim": 32, "depth": 2, "heads": 2, "dim_head": 16}


def _tokenize(out: Path, vocab_size: int) -> Path:
    options = TokenizeOptions(
        paths=tuple(stdlib_path() / name for name in FILES), out=out, vocab_size=vocab_size,
        sample_bytes=1 << 20, holdout=0.5, workers=1, progress=False,
    )  # fmt: skip
    tokenize_corpus(options)
    return out


def _recipe(directory: Path, corpus: Path, **train) -> Path:
    recipe = {
        "data": {"shards": str(corpus)},
        "model": {**SHAPE, "segment_lengths": [16, 64], "dilation_rates": [1, 4]},
        "train": {"seq_len": 64, "steps": 3, "lr": 3e-3, "seed": 1, "threads": 1, **train},
        "checkpoint": {"every": 3},
        "log": {"every": 1},
    }
    path = directory / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.fixture(scope="session")
def tokenize_stdlib():
    """``tokenize_stdlib(out, vocab_size)``: a few standard-library modules tokenized into
    ``out`` (half of them held out); returns ``out``."""
    return _tokenize


@pytest.fixture(scope="session")
def tiny_recipe():
    """``tiny_recipe(directory, corpus, **train)``: a 2-layer recipe of 3 steps on ``corpus``
    (``train`` keys changed), written to ``directory/recipe.yaml``; returns its path."""
    return _recipe


@pytest.fixture(scope="session")
def stdlib_corpus(tmp_path_factory) -> Path:
    return _tokenize(tmp_path_factory.mktemp("extend-corpus") / "data", 600)


@pytest.fixture(scope="session")
def source_run(stdlib_corpus, tmp_path_factory) -> Path:
    """A finished 3-step run on ``stdlib_corpus``."""
    directory = tmp_path_factory.mktemp("extend-source")
    run = directory / "run"
    recipe = _recipe(directory, stdlib_corpus)
    assert exit_code("train", str(recipe), "--out", str(run), "--quiet") == 0
    return run

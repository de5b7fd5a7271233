"""Shared test set-up: tests/ on the import path (helpers, reference), seeds reset per test, and the
small training corpus and uninterrupted run that several modules compare against."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from helpers import exit_code, write_train_recipe

from longnet_cli.data.sources import stdlib_path
from longnet_cli.tokenize import TokenizeOptions, tokenize_corpus


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same random state."""
    import torch

    random.seed(0)
    torch.manual_seed(0)
    yield


def pytest_collection_modifyitems(config, items):
    """GPU tests skip (with a reason) where CUDA is not available."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """A small real corpus: a few standard-library modules, 600-token vocabulary."""
    out = tmp_path_factory.mktemp("corpus") / "data"
    files = [stdlib_path() / name for name in ("json/decoder.py", "json/encoder.py", "csv.py")]
    tokenize_corpus(
        TokenizeOptions(
            paths=tuple(files),
            out=out,
            vocab_size=600,
            sample_bytes=1 << 20,
            workers=1,
            progress=False,
        )
    )
    return out


@pytest.fixture(scope="session")
def reference_run(corpus, tmp_path_factory) -> Path:
    """An uninterrupted run, the baseline of the resume tests."""
    directory = tmp_path_factory.mktemp("reference")
    recipe = write_train_recipe(directory, corpus)
    assert exit_code("train", str(recipe), "--out", str(directory / "run"), "--quiet") == 0
    return directory / "run"

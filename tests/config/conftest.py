"""Shared by the recipe tests: a minimal valid recipe (as dicts) and a writer of recipe files."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import pytest

MINIMAL = {
    "data": {"shards": "runs/x/data"},
    "model": {
        "dim": 64,
        "depth": 2,
        "heads": 2,
        "dim_head": 16,
        "segment_lengths": ["1K", 2048],
        "dilation_rates": [1, 2],
    },
    "train": {"seq_len": "2K", "steps": 10},
    "checkpoint": {"every": 5},
}


@pytest.fixture
def minimal() -> Callable[..., dict]:
    """``minimal(**changes)``: MINIMAL with some sections' keys replaced (a section given as
    None is removed); ``minimal()`` is MINIMAL itself, a fresh copy."""

    def build(**changes: dict | None) -> dict:
        data = copy.deepcopy(MINIMAL)
        for section, values in changes.items():
            if values is None:
                data.pop(section, None)
            else:
                data.setdefault(section, {}).update(values)
        return data

    return build


@pytest.fixture
def write(tmp_path: Path) -> Callable[..., Path]:
    """``write(text, name="mine.yaml")``: a recipe file in the test's tmp_path."""

    def write_file(text: str, name: str = "mine.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write_file

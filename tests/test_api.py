"""The public API: exports from ``longnet_cli`` and the README's Python example, run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import longnet_cli

README = Path(__file__).resolve().parents[1] / "README.md"


def test_public_exports():
    from longnet_cli.model.attention import dilated_attention
    from longnet_cli.model.layers import DilatedAttention
    from longnet_cli.model.transformer import LongNetTransformer

    assert longnet_cli.dilated_attention is dilated_attention
    assert longnet_cli.DilatedAttention is DilatedAttention
    assert longnet_cli.LongNetTransformer is LongNetTransformer
    assert set(longnet_cli.__all__) >= {
        "dilated_attention",
        "DilatedAttention",
        "LongNetTransformer",
    }


def test_readme_python_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    assert blocks, "README has no Python example"
    namespace: dict = {}
    exec(compile(blocks[0], str(README), "exec"), namespace)  # the example, verbatim
    assert namespace["out"].shape == namespace["q"].shape
    assert namespace["q"].grad is not None and torch.isfinite(namespace["q"].grad).all()
    assert namespace["y"].shape == (2, 1000, 512)
    assert namespace["logits"].shape == (1, 1024, 32000)
    assert torch.isfinite(namespace["loss"]) and namespace["loss"].item() > 0


def test_readme_loading_example_runs(corpus, reference_run):
    """The README's second example, on a real corpus and run: load_model and TokenizedCorpus."""
    if not hasattr(longnet_cli, "load_model") or not hasattr(longnet_cli, "TokenizedCorpus"):
        pytest.skip("longnet_cli.load_model / TokenizedCorpus are not public yet")
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    assert len(blocks) >= 2, "README has no example of load_model and TokenizedCorpus"
    example = blocks[1]
    assert "runs/quickstart/data" in example and "runs/quickstart/run" in example
    example = example.replace("runs/quickstart/data", str(corpus))
    example = example.replace("runs/quickstart/run", str(reference_run))
    namespace: dict = {}
    exec(compile(example, str(README), "exec"), namespace)  # the example, on this test's files
    model, corpus_read = namespace["model"], namespace["corpus"]
    assert not model.training  # eval mode
    assert len(namespace["lengths"]) == corpus_read.num_documents
    assert len(namespace["heldout"]) >= 1
    assert namespace["tokens"].shape[0] == 1 and torch.isfinite(namespace["loss"])
    assert namespace["new"].shape[0] == 1 and namespace["new"].shape[1] <= 32


def test_deprecated_import_paths_warn(monkeypatch):
    """The old paths scripts may hold keep working for one release, with a DeprecationWarning
    (raised on import or on first use of the name: the module is imported afresh)."""
    if not hasattr(longnet_cli, "load_model"):
        pytest.skip("longnet_cli.load_model is not public yet (the old paths move with it)")
    import importlib
    import sys

    for module, name in (
        ("longnet_cli.recipes", "load_recipe"),
        ("longnet_cli.checkpoints", "load_model_weights"),
        ("longnet_cli.data.shards", "TokenizedCorpus"),
    ):
        monkeypatch.delitem(sys.modules, module, raising=False)  # restored after the test
        with pytest.warns(DeprecationWarning):
            assert callable(getattr(importlib.import_module(module), name))

"""The public API: exports from ``longnet_cli`` and the README's Python example, run as written."""

from __future__ import annotations

import re
from pathlib import Path

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

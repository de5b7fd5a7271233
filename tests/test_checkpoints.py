"""longnet_cli.checkpoints: the deprecated path of the checkpoint functions keeps working for one
release, warning with their new home; nothing in the package imports it."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import longnet_cli
from longnet_cli.artifacts import checkpoints


def test_old_path_warns_and_gives_the_same_function():
    with pytest.warns(
        DeprecationWarning, match=r"longnet_cli\.artifacts\.checkpoints\.load_model_weights"
    ):
        from longnet_cli.checkpoints import load_model_weights
    assert load_model_weights is checkpoints.load_model_weights
    shim = importlib.import_module("longnet_cli.checkpoints")
    with pytest.raises(AttributeError):
        shim.no_such_function  # noqa: B018


def test_nothing_in_the_package_imports_the_shim():
    package = Path(longnet_cli.__file__).parent
    importers = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            if "longnet_cli.checkpoints" in names:
                importers.append(f"{path.relative_to(package)}:{node.lineno}")
    assert importers == []

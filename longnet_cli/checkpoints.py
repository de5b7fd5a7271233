"""Deprecated: the checkpoint functions moved to ``longnet_cli.artifacts.checkpoints``.

``from longnet_cli.checkpoints import load_model_weights`` (the path scripts may hold from before
the package was laid out by stage) keeps working for one release, with a DeprecationWarning that
names the new home. Nothing in longnet imports this module. To load a model, prefer
``from longnet_cli import load_model``, which also verifies the checkpoint's hashes.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

NEW_HOME = "longnet_cli.artifacts.checkpoints"


def __getattr__(name: str) -> Any:
    """The public name ``name`` of the new module, after a DeprecationWarning naming it there."""
    if name.startswith("_"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(NEW_HOME), name)  # AttributeError when unknown
    warnings.warn(
        f"longnet_cli.checkpoints.{name} is deprecated and will be removed in the next release; "
        f"use {NEW_HOME}.{name}",
        DeprecationWarning,
        stacklevel=2,
    )
    return value

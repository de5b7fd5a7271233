"""Deprecated: ``longnet_cli.recipes`` became ``longnet_cli.config`` (kept for one release).

``from longnet_cli.recipes import load_recipe`` still works, with a DeprecationWarning; import
``load_recipe``, ``Recipe`` and ``RecipeError`` from ``longnet_cli.config`` instead.
"""

from __future__ import annotations

import warnings
from typing import Any

_MOVED = ("load_recipe", "Recipe", "RecipeError")


def __getattr__(name: str) -> Any:
    """The moved name from ``longnet_cli.config``, with a DeprecationWarning naming it."""
    if name not in _MOVED:
        raise AttributeError(f"module 'longnet_cli.recipes' has no attribute {name!r}")
    warnings.warn(
        f"longnet_cli.recipes.{name} is deprecated; use longnet_cli.config.{name}",
        DeprecationWarning,
        stacklevel=2,
    )
    import longnet_cli.config

    return getattr(longnet_cli.config, name)

"""Deprecated: ``longnet_cli.recipes`` became ``longnet_cli.config`` (kept for one release).

``from longnet_cli.recipes import load_recipe`` still works, with a DeprecationWarning; import
``load_recipe``, ``Recipe`` and ``RecipeError`` from ``longnet_cli.config`` instead.
"""

from longnet_cli.core.deprecated import forwarder

__getattr__ = forwarder(
    __name__, dict.fromkeys(("load_recipe", "Recipe", "RecipeError"), "longnet_cli.config")
)

"""``longnet_cli.recipes``: the old path (deprecated for one release) warns and points to
``longnet_cli.config``."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

QUICKSTART = Path(__file__).resolve().parents[1] / "recipes" / "quickstart.yaml"


def test_old_recipes_module_warns_and_still_loads():
    import longnet_cli.recipes

    with pytest.warns(DeprecationWarning, match=r"longnet_cli\.config\.load_recipe") as caught:
        from longnet_cli.recipes import load_recipe
    assert caught[0].filename == __file__  # the warning points at the importing line
    assert load_recipe is longnet_cli.config.load_recipe
    assert load_recipe(QUICKSTART).train.precision == "fp32"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(AttributeError, match="no attribute 'nothing'"):
            longnet_cli.recipes.nothing  # noqa: B018

"""``longnet_cli.config`` exposes load_recipe, Recipe and RecipeError, and the old path
``longnet_cli.recipes`` (deprecated for one release) warns and points to it."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

import longnet_cli.config
from longnet_cli.config import errors, load, schema

QUICKSTART = Path(__file__).resolve().parents[2] / "recipes" / "quickstart.yaml"


def test_the_package_exposes_load_recipe_recipe_and_recipe_error():
    assert longnet_cli.config.load_recipe is load.load_recipe
    assert longnet_cli.config.Recipe is schema.Recipe
    assert longnet_cli.config.RecipeError is errors.RecipeError


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

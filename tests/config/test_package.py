"""``longnet_cli.config`` exposes load_recipe, Recipe and RecipeError."""

from __future__ import annotations

import longnet_cli.config
from longnet_cli.config import errors, load, schema


def test_the_package_exposes_load_recipe_recipe_and_recipe_error():
    assert longnet_cli.config.load_recipe is load.load_recipe
    assert longnet_cli.config.Recipe is schema.Recipe
    assert longnet_cli.config.RecipeError is errors.RecipeError

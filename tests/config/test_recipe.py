"""The old import paths keep working: ``longnet_cli.config.recipe`` re-exports what it held
before the split, and ``longnet_cli.recipes`` (deprecated for one release) warns and points to
``longnet_cli.config``."""

from __future__ import annotations

import importlib
import warnings
from pathlib import Path

import pytest

import longnet_cli.config
from longnet_cli.config import corpus, errors, load, model_section, resume, schema, sections

QUICKSTART = Path(__file__).resolve().parents[2] / "recipes" / "quickstart.yaml"

HELD = {  # the names config/recipe.py defined, and where each lives now
    "RecipeError": errors,
    "ModelConfig": model_section,
    "DataConfig": sections,
    "TrainConfig": sections,
    "CheckpointConfig": sections,
    "LogConfig": sections,
    "EvalConfig": sections,
    "ParallelConfig": sections,
    "SAMPLING_MODES": sections,
    "SECTIONS": schema,
    "REQUIRED_SECTIONS": schema,
    "Recipe": schema,
    "key_paths": schema,
    "recipe_from_dict": schema,
    "parse_override": load,
    "apply_overrides": load,
    "load_recipe": load,
    "check_against_corpus": corpus,
    "SAFE_ON_RESUME": resume,
    "safe_to_change_on_resume": resume,
}


def test_config_recipe_re_exports_what_it_held():
    recipe = importlib.import_module("longnet_cli.config.recipe")
    for name, module in HELD.items():
        assert getattr(recipe, name) is getattr(module, name), name
    assert recipe.POSITIONS == ("rotary", "xpos", "none")
    assert recipe.BACKENDS == ("auto", "torch", "flash-attn", "math")
    assert recipe.PRECISIONS == ("fp32", "bf16", "fp16")


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

"""model_section.py: the recipe's model section (derived from model.config.LongNetConfig; the
derivation itself is tests/model/test_config.py's): its cross-field checks and the model it
builds."""

from __future__ import annotations

from dataclasses import fields

import pytest

from longnet_cli.config.errors import RecipeError
from longnet_cli.config.model_section import ModelConfig
from longnet_cli.config.schema import recipe_from_dict


def test_model_choices_are_the_models():
    """One definition: the recipe's choices are the very tuples the model checks against."""
    from longnet_cli.model.config import BACKENDS as MODEL_BACKENDS
    from longnet_cli.model.config import POSITION_KINDS

    choices = {spec.name: spec.metadata.get("choices") for spec in fields(ModelConfig)}
    assert choices["positions"] is POSITION_KINDS and choices["backend"] is MODEL_BACKENDS


def test_to_model_kwargs_are_the_constructor_arguments(minimal):
    import inspect

    from longnet_cli.model.transformer import LongNetTransformer

    kwargs = recipe_from_dict(minimal()).model.to_model_kwargs(vocab_size=100)
    params = set(inspect.signature(LongNetTransformer).parameters)
    assert set(kwargs) == params
    assert kwargs["num_tokens"] == 100
    assert kwargs["segment_lengths"] == (1024, 2048)


def test_model_vocab_size_from_recipe_or_argument(minimal):
    model = recipe_from_dict(minimal(model={"vocab_size": 50})).model
    assert model.to_model_kwargs()["num_tokens"] == 50
    assert model.to_model_kwargs(50)["num_tokens"] == 50
    with pytest.raises(RecipeError, match=r"model\.vocab_size"):
        model.to_model_kwargs(60)
    with pytest.raises(RecipeError, match=r"model\.vocab_size"):
        recipe_from_dict(minimal()).model.to_model_kwargs()


def test_odd_dim_head_is_fine_without_positions(minimal):
    recipe = recipe_from_dict(minimal(model={"dim_head": 15, "positions": "none"}))
    assert recipe.model.dim_head == 15

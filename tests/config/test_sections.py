"""sections.py: the sections validate themselves when built directly; their choices come from
the modules that define them. errors.py: RecipeError is an InputError."""

from __future__ import annotations

from dataclasses import fields

import pytest

from longnet_cli.config.errors import RecipeError
from longnet_cli.config.sections import SAMPLING_MODES, TrainConfig
from longnet_cli.core.errors import InputError


def test_sections_validate_when_built_directly():
    assert TrainConfig(seq_len="32K", steps=3).seq_len == 32768
    with pytest.raises(RecipeError, match=r"train\.seq_len"):
        TrainConfig(seq_len="32Q", steps=3)


def test_recipe_error_is_an_input_error():
    assert issubclass(RecipeError, InputError)
    assert RecipeError("x").exit_code == 2


def test_choices_are_those_of_the_modules_that_use_them():
    from longnet_cli.data.windows import SAMPLING_MODES as WINDOW_MODES
    from longnet_cli.runtime import PRECISION_NAMES, TRAIN_PRECISION_NAMES

    assert SAMPLING_MODES == WINDOW_MODES  # a mirror: data.windows imports numpy
    choices = {spec.name: spec.metadata.get("choices") for spec in fields(TrainConfig)}
    assert choices["precision"] is TRAIN_PRECISION_NAMES  # the runtime's, with "auto"
    assert (*PRECISION_NAMES, "auto") == TRAIN_PRECISION_NAMES

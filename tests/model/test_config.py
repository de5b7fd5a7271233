"""LongNetConfig (model/config.py): the one definition of the model's options, torch-free, and
everything derived from it agreeing with it: LongNetTransformer's signature, the recipe's model
section, hf.MODEL_KEYS and LongNetHFConfig's attributes and defaults."""

from __future__ import annotations

import dataclasses
import inspect
import subprocess
import sys

import pytest

from longnet_cli.model.config import (
    INTEGER_LISTS,
    MODEL_KEYS,
    VOCABULARY,
    LongNetConfig,
    option_defaults,
)

FIELDS = {spec.name: spec for spec in dataclasses.fields(LongNetConfig)}


def test_importing_the_model_config_and_hf_does_not_import_torch():
    code = (
        "import sys, longnet_cli.model.config, longnet_cli.hf; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_transformer_signature_takes_exactly_the_config_options():
    from longnet_cli.model.transformer import LongNetTransformer

    params = inspect.signature(LongNetTransformer).parameters
    assert set(params) == set(FIELDS)
    for name, param in params.items():
        default = FIELDS[name].default
        if default is dataclasses.MISSING:
            assert param.default is inspect.Parameter.empty, name
        else:
            assert param.default == default, name
    positional = [n for n, p in params.items() if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert positional == [
        "num_tokens", "dim", "depth", "dim_head", "heads", "ff_mult", "segment_lengths",
        "dilation_rates",
    ]  # fmt: skip


def test_transformer_keeps_its_config():
    from longnet_cli.model.transformer import LongNetTransformer

    model = LongNetTransformer(10, 16, 1, 8, 2, segment_lengths=[8, 16], dilation_rates=[1, 2])
    assert model.config == LongNetConfig(
        num_tokens=10, dim=16, depth=1, dim_head=8, heads=2, segment_lengths=(8, 16),
        dilation_rates=(1, 2),
    )  # fmt: skip
    assert LongNetTransformer.from_config(model.config).config == model.config


def test_model_keys_and_defaults_are_the_fields():
    assert tuple(name for name in FIELDS if name != VOCABULARY) == MODEL_KEYS
    assert MODEL_KEYS[:4] == ("dim", "depth", "heads", "dim_head")  # the recipe's order
    assert INTEGER_LISTS == ("segment_lengths", "dilation_rates")
    defaults = option_defaults()
    assert list(defaults) == list(FIELDS)
    assert (defaults["num_tokens"], defaults["dim"], defaults["depth"]) == (8192, 512, 8)
    assert defaults["heads"] == 8 and defaults["segment_lengths"] == (2048, 4096, 8192, 16384)


def test_recipe_model_section_is_derived_from_the_config():
    from longnet_cli.config.model_section import ModelConfig

    section = {spec.name: spec for spec in dataclasses.fields(ModelConfig)}
    assert list(section) == [*MODEL_KEYS, "vocab_size"]
    for name in MODEL_KEYS:
        model, recipe = FIELDS[name], section[name]
        assert recipe.metadata == model.metadata, name
        if model.metadata.get("recipe_required"):
            assert recipe.default is dataclasses.MISSING, name
        else:
            assert recipe.default == model.default, name
    assert ModelConfig.required_keys() == ["dim", "depth", "heads", "segment_lengths",
                                           "dilation_rates"]  # fmt: skip
    assert section["vocab_size"].default is None


def test_hf_config_attributes_and_defaults_are_derived_from_the_config():
    pytest.importorskip("transformers")
    from longnet_cli.hf import MODEL_KEYS as HF_MODEL_KEYS
    from longnet_cli.hf.configuration_longnet import LongNetHFConfig
    from longnet_cli.model.transformer import LongNetTransformer

    assert HF_MODEL_KEYS == MODEL_KEYS
    config = LongNetHFConfig()
    for name, default in option_defaults().items():
        value = getattr(config, "vocab_size" if name == VOCABULARY else name)
        assert value == (list(default) if name in INTEGER_LISTS else default), name
    assert config.reach == 16384 and config.hidden_size == 512
    kwargs = LongNetHFConfig(dim=32, segment_lengths=(8, 16), dilation_rates=[1, 2]).model_kwargs()
    assert set(kwargs) == set(inspect.signature(LongNetTransformer).parameters)
    assert kwargs["segment_lengths"] == (8, 16) and kwargs["dim"] == 32


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"depth": 0}, "depth must be a positive integer"),
        ({"heads": True}, "heads must be a positive integer"),
        ({"ff_mult": 0}, "ff_mult must be positive"),
        ({"dilation_rates": (1,)}, "same length"),
        ({"positions": "alibi"}, "positions must be one of"),
        ({"dim_head": 15}, "needs an even dim_head"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
        ({"backend": "cuda"}, "backend must be one of"),
    ],
)
def test_config_validation(changes, match):
    options = {"num_tokens": 10, "dim": 8, "depth": 1, "segment_lengths": (8, 16), **changes}
    options.setdefault("dilation_rates", (1, 2))
    with pytest.raises(ValueError, match=match):
        LongNetConfig(**options)

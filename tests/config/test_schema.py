"""schema.py: Recipe and building it from dicts: defaults filled, every kind of mistake a
RecipeError naming the key path and what to change (did-you-mean for unknown keys), round trips
through to_dict and YAML, saved recipes backfilled."""

from __future__ import annotations

from pathlib import Path

import pytest

from longnet_cli.config.errors import RecipeError
from longnet_cli.config.load import load_recipe
from longnet_cli.config.model_section import ModelConfig
from longnet_cli.config.schema import SECTIONS, Recipe, key_paths, recipe_from_dict
from longnet_cli.config.sections import EvalConfig

RECIPES_DIR = Path(__file__).resolve().parents[2] / "recipes"


def error_of(data: dict) -> str:
    with pytest.raises(RecipeError) as info:
        recipe_from_dict(data, source="mine.yaml")
    return str(info.value)


def test_readme_documents_every_key():
    readme = (RECIPES_DIR / "README.md").read_text()
    missing = [path for path in key_paths() if f"`{path}`" not in readme]
    assert not missing, f"recipes/README.md does not describe {missing}"


def test_lengths_are_stored_as_ints_and_defaults_filled(minimal):
    recipe = recipe_from_dict(minimal())
    assert recipe.model.segment_lengths == [1024, 2048]
    assert recipe.train.seq_len == 2048
    assert recipe.train.loss_chunk == 1024
    assert recipe.train.betas == [0.9, 0.95]
    assert recipe.model.ff_mult == 4.0 and isinstance(recipe.model.ff_mult, float)
    assert recipe.log.every == 10 and recipe.eval.every == 0 and recipe.parallel.sequence == 1
    assert recipe.eval.context_lengths(recipe.train.seq_len) == [2048]
    assert EvalConfig(contexts=["1K"]).context_lengths(4096) == [1024]


def test_round_trip_to_dict_and_yaml(minimal, write):
    recipe = recipe_from_dict(minimal(eval={"contexts": ["1K", "2K"], "every": 3}))
    assert recipe_from_dict(recipe.to_dict()) == recipe
    assert "source" not in recipe.to_dict()
    path = write(recipe.to_yaml())
    assert load_recipe(path) == recipe
    assert "segment_lengths: [1024, 2048]" in recipe.to_yaml()


# -- errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        # unknown keys and sections, with the closest valid name
        (
            {"model": {"dimm": 3}},
            "unknown key 'model.dimm' in mine.yaml; did you mean 'model.dim'?",
        ),
        ({"model": {"seq_len": 3}}, "did you mean 'train.seq_len'?"),
        ({"train": {"warmup": 3}}, "did you mean 'train.warmup_steps'?"),
        ({"modle": {}}, "unknown section 'modle'; did you mean 'model'?"),
        # wrong types
        ({"model": {"dim": "wide"}}, "model.dim in mine.yaml: must be an integer, got 'wide'"),
        ({"model": {"dim": True}}, "model.dim in mine.yaml: must be an integer, got True (bool)"),
        ({"model": {"dim": 64.0}}, "model.dim in mine.yaml: must be an integer"),
        ({"model": {"qk_norm": 1}}, "model.qk_norm in mine.yaml: must be true or false"),
        ({"train": {"lr": "fast"}}, "train.lr in mine.yaml: must be a number"),
        ({"train": {"lr": True}}, "train.lr in mine.yaml: must be a number"),
        ({"data": {"shards": 3}}, "data.shards in mine.yaml: must be a non-empty string"),
        (
            {"model": {"segment_lengths": "1K"}},
            "model.segment_lengths in mine.yaml: must be a list",
        ),
        (
            {"model": {"dilation_rates": [1, 2.5]}},
            "model.dilation_rates[1] in mine.yaml: must be an",
        ),
        ({"train": {"betas": [0.9]}}, "train.betas in mine.yaml: must be a list of 2 values"),
        ({"model": 5}, "model in mine.yaml: must be a mapping of keys"),
        # out of range
        ({"model": {"depth": 0}}, "model.depth in mine.yaml: must be a positive integer, got 0"),
        ({"model": {"heads": -1}}, "model.heads in mine.yaml: must be a positive integer"),
        ({"model": {"dropout": 1.0}}, "model.dropout in mine.yaml: must be in [0, 1)"),
        ({"model": {"ff_mult": 0}}, "model.ff_mult in mine.yaml: must be positive"),
        ({"model": {"vocab_size": 0}}, "model.vocab_size in mine.yaml: must be a positive integer"),
        (
            {"model": {"dilation_rates": [1, 0]}},
            "model.dilation_rates[1] in mine.yaml: must be a pos",
        ),
        ({"train": {"lr": 0}}, "train.lr in mine.yaml: must be > 0"),
        ({"train": {"lr": float("inf")}}, "train.lr in mine.yaml: must be a finite number"),
        ({"train": {"min_lr_ratio": 0}}, "train.min_lr_ratio in mine.yaml: must be in (0, 1]"),
        ({"train": {"min_lr_ratio": 1.5}}, "train.min_lr_ratio in mine.yaml: must be in (0, 1]"),
        ({"train": {"warmup_steps": 11}}, "train.warmup_steps in mine.yaml: is 11 but must not"),
        (
            {"train": {"warmup_steps": -1}},
            "train.warmup_steps in mine.yaml: must be an integer >= 0",
        ),
        ({"train": {"weight_decay": -0.1}}, "train.weight_decay in mine.yaml: must be >= 0"),
        ({"train": {"betas": [0.9, 1.0]}}, "train.betas[1] in mine.yaml: must be in [0, 1)"),
        ({"train": {"grad_clip": -1}}, "train.grad_clip in mine.yaml: must be >= 0"),
        ({"train": {"micro_batch_size": 0}}, "train.micro_batch_size in mine.yaml: must be a pos"),
        ({"train": {"grad_accum": 0}}, "train.grad_accum in mine.yaml: must be a positive"),
        ({"train": {"steps": 0}}, "train.steps in mine.yaml: must be a positive integer"),
        ({"train": {"seed": -1}}, "train.seed in mine.yaml: must be an integer >= 0"),
        ({"train": {"threads": 0}}, "train.threads in mine.yaml: must be a positive integer"),
        ({"checkpoint": {"every": 0}}, "checkpoint.every in mine.yaml: must be a positive"),
        ({"checkpoint": {"keep_last": 0}}, "checkpoint.keep_last in mine.yaml: must be a positive"),
        ({"log": {"every": 0}}, "log.every in mine.yaml: must be a positive integer"),
        ({"eval": {"every": -1}}, "eval.every in mine.yaml: must be an integer >= 0"),
        ({"eval": {"docs": 0}}, "eval.docs in mine.yaml: must be a positive integer"),
        ({"parallel": {"sequence": 0}}, "parallel.sequence in mine.yaml: must be a positive"),
        (
            {"parallel": {"shard": "zero3"}},
            "parallel.shard in mine.yaml: must be one of 'none', 'fsdp'; got 'zero3'",
        ),
        (
            {"parallel": {"shard": "fsdp"}, "train": {"precision": "fp16"}},
            "train.precision in mine.yaml: is fp16, but parallel.shard: fsdp trains in fp32",
        ),
        (
            {"parallel": {"sequence": 3}},
            "train.seq_len in mine.yaml: must be divisible by parallel",
        ),
        # branch lists
        (
            {"model": {"dilation_rates": [1, 2, 4]}},
            "model.dilation_rates in mine.yaml: has 3 values but model.segment_lengths has 2",
        ),
        ({"model": {"segment_lengths": [], "dilation_rates": []}}, "must name at least one branch"),
        # choices
        (
            {"model": {"positions": "alibi"}},
            "model.positions in mine.yaml: must be one of 'rotary', 'xpos', 'none'; got 'alibi'",
        ),
        ({"model": {"backend": "cuda"}}, "model.backend in mine.yaml: must be one of 'auto'"),
        (
            {"train": {"precision": "fp8"}},
            "must be one of 'fp32', 'bf16', 'fp16', 'auto'; got 'fp8'",
        ),
        ({"data": {"sampling": "random"}}, "must be one of 'stream', 'document'"),
        # lengths
        ({"train": {"seq_len": "32Q"}}, "train.seq_len in mine.yaml: '32Q' is not a length"),
        ({"train": {"seq_len": 0}}, "train.seq_len in mine.yaml: 0 is not a positive length"),
        ({"train": {"seq_len": 1.5}}, "train.seq_len in mine.yaml: must be a length such as"),
        ({"model": {"segment_lengths": ["1K", "2k2"]}}, "model.segment_lengths[1] in mine.yaml"),
        ({"eval": {"contexts": ["1K", "big"]}}, "eval.contexts[1] in mine.yaml: 'big' is not"),
        ({"train": {"loss_chunk": "0K"}}, "train.loss_chunk in mine.yaml"),
        # model rules shared with LongNetConfig
        ({"model": {"dim_head": 15}}, "model.dim_head in mine.yaml: must be even with positions"),
    ],
)
def test_errors_name_key_file_and_problem(changes, expected, minimal):
    data = minimal(**{k: v for k, v in changes.items() if isinstance(v, dict)})
    for section, value in changes.items():
        if not isinstance(value, dict):
            data[section] = value
    assert expected in error_of(data)


def test_missing_required_key_and_section(minimal):
    data = minimal()
    del data["train"]["steps"]
    assert "train.steps in mine.yaml: missing required key" in error_of(data)
    data = minimal()
    del data["model"]["segment_lengths"]
    assert "model.segment_lengths in mine.yaml: missing required key" in error_of(data)
    assert "checkpoint in mine.yaml: missing required section" in error_of(minimal(checkpoint=None))


# -- saved recipes ---------------------------------------------------------------------------------


def test_from_saved_backfills_missing_keys(minimal):
    saved = recipe_from_dict(minimal()).to_dict()
    del saved["train"]["loss_chunk"]
    del saved["model"]["qk_norm"]
    del saved["parallel"]
    recipe = Recipe.from_saved(saved)
    assert recipe.train.loss_chunk == 1024
    assert recipe.model.qk_norm is False
    assert recipe.parallel.sequence == 1
    assert recipe == recipe_from_dict(minimal())


def test_from_saved_rejects_unknown_keys(minimal):
    saved = recipe_from_dict(minimal()).to_dict()
    saved["train"]["schedule"] = "linear"
    with pytest.raises(RecipeError, match=r"unknown key 'train\.schedule' in <saved recipe>"):
        Recipe.from_saved(saved)


def test_key_paths_cover_every_section():
    paths = key_paths()
    assert {path.split(".")[0] for path in paths} == set(SECTIONS)
    assert "model.segment_lengths" in paths and "parallel.sequence" in paths
    assert len(paths) == len(set(paths))
    assert ModelConfig.required_keys() == [
        "dim",
        "depth",
        "heads",
        "segment_lengths",
        "dilation_rates",
    ]

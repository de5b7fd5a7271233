"""recipes/study/: the context study's three recipes differ only where the study means them to
(attention and sequence length), training on the same tokens per step. (Loading and building
every shipped recipe, these included, is tests/config/test_load.py's.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from longnet_cli.config import load_recipe

STUDY = Path(__file__).resolve().parents[2] / "recipes" / "study"
NAMES = ("dense_2k", "longnet_8k", "dense_8k")


@pytest.fixture(scope="module")
def recipes() -> dict:
    return {name: load_recipe(STUDY / f"{name}.yaml") for name in NAMES}


def test_the_recipes_differ_only_in_attention_and_length(recipes):
    dense_2k, longnet_8k, dense_8k = (recipes[name] for name in NAMES)
    assert {r.data.shards for r in recipes.values()} == {"runs/context_study/data"}
    assert (dense_2k.train.seq_len, longnet_8k.train.seq_len, dense_8k.train.seq_len) == (
        2048, 8192, 8192,
    )  # fmt: skip
    tokens_per_step = {r.train.seq_len * r.train.micro_batch_size * r.train.grad_accum
                       for r in recipes.values()}  # fmt: skip
    assert tokens_per_step == {8192}
    for recipe in recipes.values():
        assert recipe.train.steps == dense_2k.train.steps and recipe.train.lr == dense_2k.train.lr
        for key in ("dim", "depth", "heads", "dim_head", "positions", "smeared_keys"):
            assert getattr(recipe.model, key) == getattr(dense_2k.model, key), key
        for key in ("precision", "compile"):  # one training setting for the three
            assert getattr(recipe.train, key) == getattr(dense_2k.train, key), key
    assert dense_2k.model.smeared_keys  # the study's one architecture (issue 21)
    for dense in (dense_2k, dense_8k):  # full attention past every evaluation context (32K)
        assert dense.model.dilation_rates == [1] and dense.model.segment_lengths[0] > 32768
    model = longnet_8k.model
    assert max(model.segment_lengths) == 32768 > longnet_8k.train.seq_len  # reach 32K
    assert model.segment_lengths == sorted(model.segment_lengths)
    assert all(b == 4 * a for a, b in zip(model.segment_lengths, model.segment_lengths[1:]))
    assert max(model.dilation_rates) <= model.heads  # every head offset of every branch is used

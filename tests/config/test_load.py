"""load.py: every shipped recipe loads and builds; YAML (1e-3 floats, syntax errors with line
and column), ``--set`` overrides and their errors, and the file's name in every message."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from longnet_cli.config.errors import RecipeError
from longnet_cli.config.load import load_recipe
from longnet_cli.config.schema import Recipe, recipe_from_dict
from longnet_cli.config.sections import EvalConfig

RECIPES_DIR = Path(__file__).resolve().parents[2] / "recipes"
SHIPPED = sorted(RECIPES_DIR.rglob("*.yaml"))  # recipes/study/ too


def test_loading_a_recipe_does_not_import_torch():
    code = (
        "import sys, longnet_cli.config; "
        "longnet_cli.config.load_recipe('recipes/quickstart.yaml'); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=RECIPES_DIR.parent)


# -- shipped recipes -------------------------------------------------------------------------------


def test_recipes_are_shipped():
    names = {path.name for path in SHIPPED}
    assert {"quickstart.yaml", "book_1m.yaml", "repo_256k.yaml", "paper_base.yaml"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda path: str(path.relative_to(RECIPES_DIR)))
def test_shipped_recipe_loads_and_builds_on_meta(path):
    recipe = load_recipe(path)
    assert recipe.source == str(path)
    assert recipe_from_dict(recipe.to_dict()) == recipe
    with torch.device("meta"):
        model = recipe.model.build(vocab_size=32000)
    assert model.config.num_tokens == 32000
    assert next(model.parameters()).device.type == "meta"
    assert recipe.train.seq_len % recipe.parallel.sequence == 0


def test_quickstart_is_a_small_cpu_recipe():
    recipe = load_recipe(RECIPES_DIR / "quickstart.yaml")
    assert recipe.train.seq_len >= 8192
    assert recipe.train.precision == "fp32"
    assert recipe.parallel.sequence == 1
    assert recipe.data.shards == "runs/quickstart/data"
    assert recipe.eval.contexts == [1024, 8192]


def test_paper_base_matches_the_paper():
    recipe = load_recipe(RECIPES_DIR / "paper_base.yaml")
    model = recipe.model
    assert (model.dim, model.depth, model.heads, model.dim_head) == (768, 12, 12, 64)
    assert model.segment_lengths == [2048, 4096, 8192, 16384, 32768]
    assert model.dilation_rates == [1, 2, 4, 6, 12]
    assert recipe.train.seq_len == 32768
    assert recipe.train.precision == "bf16"
    with torch.device("meta"):
        built = model.build(vocab_size=32000)
    # 12 blocks x (4 x 768^2 attention + 3 x 768 x 3072 SwiGLU) ~ 113M, + 24.6M tied embedding
    assert 105e6 < built.num_parameters(exclude_embeddings=True) < 120e6
    assert 130e6 < built.num_parameters() < 145e6


def test_book_1m_is_sequence_parallel_with_checkpointing():
    recipe = load_recipe(RECIPES_DIR / "book_1m.yaml")
    assert recipe.train.seq_len == 1024**2
    assert recipe.parallel.sequence == 8
    assert recipe.model.activation_checkpointing
    assert recipe.train.precision == "bf16"
    assert recipe.data.sampling == "document"


# -- YAML ------------------------------------------------------------------------------------------


def test_int_accepted_for_float_and_1e_notation_in_yaml(write):
    text = (
        "data: {shards: d}\n"
        "model: {dim: 64, depth: 1, heads: 2, dim_head: 16, ff_mult: 2,\n"
        "        segment_lengths: [1K], dilation_rates: [1]}\n"
        "train: {seq_len: 1K, steps: 5, lr: 1e-3, weight_decay: 0}\n"
        "checkpoint: {every: 1}\n"
        "eval:\n"
    )
    recipe = load_recipe(write(text))
    assert recipe.train.lr == pytest.approx(1e-3)
    assert recipe.model.ff_mult == 2.0
    assert recipe.train.weight_decay == 0.0
    assert recipe.eval == EvalConfig()  # an empty section gets its defaults


def test_yaml_syntax_error_names_file_and_line(write):
    path = write("data:\n  shards: d\nmodel:\n  dim: [1, 2\n  depth: 3\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    message = str(info.value)
    assert message.startswith(f"{path}: invalid YAML at line ")
    path = write("data:\n  shards: d\n model: 3\n")
    with pytest.raises(RecipeError, match=r"invalid YAML at line 3"):
        load_recipe(path)


@pytest.mark.parametrize("text", ["- a\n- b\n", "just text\n", ""])
def test_top_level_must_be_a_mapping(text, write):
    with pytest.raises(RecipeError, match="a recipe must be a mapping of sections"):
        load_recipe(write(text))


def test_missing_file(tmp_path):
    with pytest.raises(RecipeError, match="no such recipe file"):
        load_recipe(tmp_path / "nope.yaml")


def test_unknown_key_in_yaml_file_names_the_file(minimal, write):
    text = Recipe.to_yaml(recipe_from_dict(minimal())).replace("  dim: 64", "  dimm: 64")
    path = write(text)
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert str(info.value) == f"unknown key 'model.dimm' in {path}; did you mean 'model.dim'?"
    assert info.value.key == "model.dimm"


# -- overrides -------------------------------------------------------------------------------------


def test_overrides_scalars_lists_and_lengths(minimal, write):
    path = write(Recipe.to_yaml(recipe_from_dict(minimal())))
    recipe = load_recipe(
        path,
        [
            "model.dim=128",
            "train.steps=100",
            "train.lr=1e-3",
            "train.seq_len=4K",
            "model.segment_lengths=[2K, 4K]",
            "model.dilation_rates=[1,4]",
            "model.qk_norm=true",
            "train.threads=2",
            "parallel.sequence=2",
            "eval.contexts=[1K]",
            "data.eval_shards=held/out",
        ],
    )
    assert recipe.model.dim == 128
    assert recipe.train.steps == 100
    assert recipe.train.lr == pytest.approx(1e-3)
    assert recipe.train.seq_len == 4096
    assert recipe.model.segment_lengths == [2048, 4096]
    assert recipe.model.dilation_rates == [1, 4]
    assert recipe.model.qk_norm is True
    assert recipe.train.threads == 2
    assert recipe.parallel.sequence == 2
    assert recipe.eval.contexts == [1024]
    assert recipe.data.eval_shards == "held/out"


def test_override_later_wins_and_null_resets(minimal, write):
    path = write(Recipe.to_yaml(recipe_from_dict(minimal(model={"vocab_size": 9}))))
    recipe = load_recipe(path, ["train.steps=3", "train.steps=7", "model.vocab_size=null"])
    assert recipe.train.steps == 7
    assert recipe.model.vocab_size is None


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("model.dim", "--set model.dim: expected KEY=VALUE"),
        ("=3", "expected KEY=VALUE"),
        ("dim=3", "did you mean 'model.dim'?"),
        (
            "model.dimm=3",
            "unknown key 'model.dimm' in --set model.dimm=3; did you mean 'model.dim'?",
        ),
        ("modle.dim=3", "did you mean 'model.dim'?"),
        ("model.dim.x=3", "SECTION.KEY"),
        ("model.segment_lengths=[1K,", "--set model.segment_lengths=[1K,: invalid YAML"),
        ("model.dim=0", "model.dim in --set model.dim=0: must be a positive integer, got 0"),
        ("model.dim=wide", "model.dim in --set model.dim=wide: must be an integer"),
        ("train.seq_len=8X", "train.seq_len in --set train.seq_len=8X: '8X' is not a length"),
    ],
)
def test_bad_overrides_name_the_override(override, expected, minimal, write):
    path = write(Recipe.to_yaml(recipe_from_dict(minimal())))
    with pytest.raises(RecipeError) as info:
        load_recipe(path, [override])
    assert expected in str(info.value)


def test_override_creates_an_optional_section(minimal, write):
    path = write(Recipe.to_yaml(recipe_from_dict(minimal())).split("log:")[0])
    assert load_recipe(path, ["log.every=3"]).log.every == 3

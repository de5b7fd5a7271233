"""Recipes: every shipped YAML loads and builds; every kind of mistake is a RecipeError naming
the key path and what to change; overrides, corpus checks, saved recipes and resume rules."""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from longnet_cli.config.recipe import (
    BACKENDS,
    POSITIONS,
    SECTIONS,
    EvalConfig,
    ModelConfig,
    Recipe,
    RecipeError,
    TrainConfig,
    check_against_corpus,
    key_paths,
    load_recipe,
    recipe_from_dict,
    safe_to_change_on_resume,
)
from longnet_cli.core.errors import InputError

RECIPES_DIR = Path(__file__).resolve().parents[2] / "recipes"
SHIPPED = sorted(RECIPES_DIR.rglob("*.yaml"))  # recipes/study/ too

MINIMAL = {
    "data": {"shards": "runs/x/data"},
    "model": {
        "dim": 64,
        "depth": 2,
        "heads": 2,
        "dim_head": 16,
        "segment_lengths": ["1K", 2048],
        "dilation_rates": [1, 2],
    },
    "train": {"seq_len": "2K", "steps": 10},
    "checkpoint": {"every": 5},
}


def minimal(**changes: dict) -> dict:
    """MINIMAL with some sections' keys replaced (a section given as None is removed)."""
    data = copy.deepcopy(MINIMAL)
    for section, values in changes.items():
        if values is None:
            data.pop(section, None)
        else:
            data.setdefault(section, {}).update(values)
    return data


def write(tmp_path: Path, text: str, name: str = "mine.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(data: dict) -> str:
    with pytest.raises(RecipeError) as info:
        recipe_from_dict(data, source="mine.yaml")
    return str(info.value)


# -- shipped recipes --------------------------------------------------------------------------


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


def test_readme_documents_every_key():
    readme = (RECIPES_DIR / "README.md").read_text()
    missing = [path for path in key_paths() if f"`{path}`" not in readme]
    assert not missing, f"recipes/README.md does not describe {missing}"


def test_model_constants_mirror_the_model():
    from longnet_cli.model.kernels import BACKENDS as MODEL_BACKENDS
    from longnet_cli.model.positions import POSITION_KINDS

    assert tuple(POSITIONS) == tuple(POSITION_KINDS)
    assert tuple(BACKENDS) == tuple(MODEL_BACKENDS)


def test_to_model_kwargs_are_the_constructor_arguments():
    import inspect

    from longnet_cli.model.transformer import LongNetTransformer

    kwargs = recipe_from_dict(MINIMAL).model.to_model_kwargs(vocab_size=100)
    params = set(inspect.signature(LongNetTransformer).parameters)
    assert set(kwargs) == params
    assert kwargs["num_tokens"] == 100
    assert kwargs["segment_lengths"] == (1024, 2048)


def test_model_vocab_size_from_recipe_or_argument():
    model = recipe_from_dict(minimal(model={"vocab_size": 50})).model
    assert model.to_model_kwargs()["num_tokens"] == 50
    assert model.to_model_kwargs(50)["num_tokens"] == 50
    with pytest.raises(RecipeError, match=r"model\.vocab_size"):
        model.to_model_kwargs(60)
    with pytest.raises(RecipeError, match=r"model\.vocab_size"):
        recipe_from_dict(MINIMAL).model.to_model_kwargs()


# -- values and defaults ----------------------------------------------------------------------


def test_lengths_are_stored_as_ints_and_defaults_filled():
    recipe = recipe_from_dict(MINIMAL)
    assert recipe.model.segment_lengths == [1024, 2048]
    assert recipe.train.seq_len == 2048
    assert recipe.train.loss_chunk == 1024
    assert recipe.train.betas == [0.9, 0.95]
    assert recipe.model.ff_mult == 4.0 and isinstance(recipe.model.ff_mult, float)
    assert recipe.log.every == 10 and recipe.eval.every == 0 and recipe.parallel.sequence == 1
    assert recipe.eval.context_lengths(recipe.train.seq_len) == [2048]
    assert EvalConfig(contexts=["1K"]).context_lengths(4096) == [1024]


def test_int_accepted_for_float_and_1e_notation_in_yaml(tmp_path):
    text = (
        "data: {shards: d}\n"
        "model: {dim: 64, depth: 1, heads: 2, dim_head: 16, ff_mult: 2,\n"
        "        segment_lengths: [1K], dilation_rates: [1]}\n"
        "train: {seq_len: 1K, steps: 5, lr: 1e-3, weight_decay: 0}\n"
        "checkpoint: {every: 1}\n"
        "eval:\n"
    )
    recipe = load_recipe(write(tmp_path, text))
    assert recipe.train.lr == pytest.approx(1e-3)
    assert recipe.model.ff_mult == 2.0
    assert recipe.train.weight_decay == 0.0
    assert recipe.eval == EvalConfig()  # an empty section gets its defaults


def test_round_trip_to_dict_and_yaml(tmp_path):
    recipe = recipe_from_dict(minimal(eval={"contexts": ["1K", "2K"], "every": 3}))
    assert recipe_from_dict(recipe.to_dict()) == recipe
    assert "source" not in recipe.to_dict()
    path = write(tmp_path, recipe.to_yaml())
    assert load_recipe(path) == recipe
    assert "segment_lengths: [1024, 2048]" in recipe.to_yaml()


def test_sections_validate_when_built_directly():
    assert TrainConfig(seq_len="32K", steps=3).seq_len == 32768
    with pytest.raises(RecipeError, match=r"train\.seq_len"):
        TrainConfig(seq_len="32Q", steps=3)


# -- overrides --------------------------------------------------------------------------------


def test_overrides_scalars_lists_and_lengths(tmp_path):
    path = write(tmp_path, Recipe.to_yaml(recipe_from_dict(MINIMAL)))
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


def test_override_later_wins_and_null_resets(tmp_path):
    path = write(tmp_path, Recipe.to_yaml(recipe_from_dict(minimal(model={"vocab_size": 9}))))
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
def test_bad_overrides_name_the_override(tmp_path, override, expected):
    path = write(tmp_path, Recipe.to_yaml(recipe_from_dict(MINIMAL)))
    with pytest.raises(RecipeError) as info:
        load_recipe(path, [override])
    assert expected in str(info.value)


def test_override_creates_an_optional_section(tmp_path):
    path = write(tmp_path, Recipe.to_yaml(recipe_from_dict(MINIMAL)).split("log:")[0])
    assert load_recipe(path, ["log.every=3"]).log.every == 3


# -- errors -----------------------------------------------------------------------------------


def test_recipe_error_is_an_input_error():
    assert issubclass(RecipeError, InputError)
    assert RecipeError("x").exit_code == 2


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
        ({"train": {"precision": "fp8"}}, "must be one of 'fp32', 'bf16', 'fp16'; got 'fp8'"),
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
def test_errors_name_key_file_and_problem(changes, expected):
    data = minimal(**{k: v for k, v in changes.items() if isinstance(v, dict)})
    for section, value in changes.items():
        if not isinstance(value, dict):
            data[section] = value
    assert expected in error_of(data)


def test_odd_dim_head_is_fine_without_positions():
    recipe = recipe_from_dict(minimal(model={"dim_head": 15, "positions": "none"}))
    assert recipe.model.dim_head == 15


def test_missing_required_key_and_section():
    data = minimal()
    del data["train"]["steps"]
    assert "train.steps in mine.yaml: missing required key" in error_of(data)
    data = minimal()
    del data["model"]["segment_lengths"]
    assert "model.segment_lengths in mine.yaml: missing required key" in error_of(data)
    assert "checkpoint in mine.yaml: missing required section" in error_of(minimal(checkpoint=None))


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = write(tmp_path, "data:\n  shards: d\nmodel:\n  dim: [1, 2\n  depth: 3\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    message = str(info.value)
    assert message.startswith(f"{path}: invalid YAML at line ")
    path = write(tmp_path, "data:\n  shards: d\n model: 3\n")
    with pytest.raises(RecipeError, match=r"invalid YAML at line 3"):
        load_recipe(path)


@pytest.mark.parametrize("text", ["- a\n- b\n", "just text\n", ""])
def test_top_level_must_be_a_mapping(tmp_path, text):
    with pytest.raises(RecipeError, match="a recipe must be a mapping of sections"):
        load_recipe(write(tmp_path, text))


def test_missing_file(tmp_path):
    with pytest.raises(RecipeError, match="no such recipe file"):
        load_recipe(tmp_path / "nope.yaml")


def test_unknown_key_in_yaml_file_names_the_file(tmp_path):
    text = Recipe.to_yaml(recipe_from_dict(MINIMAL)).replace("  dim: 64", "  dimm: 64")
    path = write(tmp_path, text)
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert str(info.value) == f"unknown key 'model.dimm' in {path}; did you mean 'model.dim'?"
    assert info.value.key == "model.dimm"


# -- checks against the corpus ----------------------------------------------------------------


def stand_in_corpus(num_tokens=10_000, vocab_size=100, documents=3) -> SimpleNamespace:
    manifest = {"vocab_size": vocab_size, "tokenizer_sha256": "ab" * 32, "documents": documents}
    return SimpleNamespace(
        manifest=manifest, num_tokens=num_tokens, vocab_size=vocab_size, directory=Path("corp")
    )


def test_check_against_corpus_returns_the_vocab_size():
    assert check_against_corpus(recipe_from_dict(MINIMAL), stand_in_corpus()) == 100
    recipe = recipe_from_dict(minimal(model={"vocab_size": 100}))
    assert check_against_corpus(recipe, stand_in_corpus()) == 100
    assert check_against_corpus(recipe_from_dict(MINIMAL), stand_in_corpus(num_tokens=2049)) == 100


def test_check_against_corpus_seq_len_too_large():
    recipe = recipe_from_dict(MINIMAL, source="mine.yaml")
    with pytest.raises(RecipeError) as info:
        check_against_corpus(recipe, stand_in_corpus(num_tokens=2048))
    message = str(info.value)
    assert message.startswith("train.seq_len in mine.yaml:")
    assert "2049" in message and "holds 2048 tokens" in message and "corp" in message


def test_check_against_corpus_document_sampling_needs_documents():
    recipe = recipe_from_dict(minimal(data={"sampling": "document"}), source="mine.yaml")
    with pytest.raises(RecipeError, match=r"data\.sampling in mine\.yaml"):
        check_against_corpus(recipe, stand_in_corpus(documents=0))


def test_check_against_corpus_vocab_mismatch():
    recipe = recipe_from_dict(minimal(model={"vocab_size": 32000}), source="mine.yaml")
    with pytest.raises(RecipeError) as info:
        check_against_corpus(recipe, stand_in_corpus(vocab_size=8192))
    message = str(info.value)
    assert message.startswith("model.vocab_size in mine.yaml: is 32000")
    assert "vocab_size 8192" in message and "ab" * 32 in message


# -- saved recipes and resume -----------------------------------------------------------------


def test_from_saved_backfills_missing_keys():
    saved = recipe_from_dict(MINIMAL).to_dict()
    del saved["train"]["loss_chunk"]
    del saved["model"]["qk_norm"]
    del saved["parallel"]
    recipe = Recipe.from_saved(saved)
    assert recipe.train.loss_chunk == 1024
    assert recipe.model.qk_norm is False
    assert recipe.parallel.sequence == 1
    assert recipe == recipe_from_dict(MINIMAL)


def test_from_saved_rejects_unknown_keys():
    saved = recipe_from_dict(MINIMAL).to_dict()
    saved["train"]["schedule"] = "linear"
    with pytest.raises(RecipeError, match=r"unknown key 'train\.schedule' in <saved recipe>"):
        Recipe.from_saved(saved)


def test_safe_to_change_on_resume():
    old = recipe_from_dict(MINIMAL)
    safe = minimal(
        train={"steps": 20, "threads": 2},
        checkpoint={"every": 2, "keep_last": 9},
        log={"every": 1, "tensorboard": True},
        eval={"every": 4, "contexts": ["1K"], "docs": 2, "data": "elsewhere"},
        data={"eval_shards": "held"},
        parallel={"sequence": 2},
    )
    assert safe_to_change_on_resume(old, recipe_from_dict(safe)) == []
    assert safe_to_change_on_resume(old, old) == []
    unsafe = minimal(
        train={"lr": 1e-3, "seed": 1, "seq_len": "1K", "steps": 20},
        model={"dim": 128},
        data={"shards": "other"},
    )
    assert sorted(safe_to_change_on_resume(old, recipe_from_dict(unsafe))) == [
        "data.shards",
        "model.dim",
        "train.lr",
        "train.seed",
        "train.seq_len",
    ]


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

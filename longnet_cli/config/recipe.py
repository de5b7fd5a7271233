"""The names ``longnet_cli.config.recipe`` held before the recipe code was split by job.

A plain re-export, so that ``from longnet_cli.config.recipe import ...`` keeps working:
``errors`` (RecipeError), ``kinds`` (field kinds), ``sections`` and ``model_section`` (the
sections), ``schema`` (Recipe, building from dicts), ``load`` (YAML, ``--set``), ``corpus``
(check_against_corpus) and ``resume`` (SAFE_ON_RESUME). New code imports from those modules,
or ``load_recipe``, ``Recipe`` and ``RecipeError`` from ``longnet_cli.config``.
"""

from longnet_cli.config.corpus import check_against_corpus
from longnet_cli.config.errors import RecipeError
from longnet_cli.config.load import apply_overrides, load_recipe, parse_override
from longnet_cli.config.model_section import ModelConfig
from longnet_cli.config.resume import SAFE_ON_RESUME, safe_to_change_on_resume
from longnet_cli.config.schema import (
    REQUIRED_SECTIONS,
    SECTIONS,
    Recipe,
    key_paths,
    recipe_from_dict,
)
from longnet_cli.config.sections import (
    SAMPLING_MODES,
    CheckpointConfig,
    DataConfig,
    EvalConfig,
    LogConfig,
    ParallelConfig,
    TrainConfig,
)
from longnet_cli.model.config import BACKENDS
from longnet_cli.model.config import POSITION_KINDS as POSITIONS
from longnet_cli.runtime import PRECISION_NAMES as PRECISIONS

__all__ = [
    "BACKENDS",
    "POSITIONS",
    "PRECISIONS",
    "REQUIRED_SECTIONS",
    "SAFE_ON_RESUME",
    "SAMPLING_MODES",
    "SECTIONS",
    "CheckpointConfig",
    "DataConfig",
    "EvalConfig",
    "LogConfig",
    "ModelConfig",
    "ParallelConfig",
    "Recipe",
    "RecipeError",
    "TrainConfig",
    "apply_overrides",
    "check_against_corpus",
    "key_paths",
    "load_recipe",
    "parse_override",
    "recipe_from_dict",
    "safe_to_change_on_resume",
]

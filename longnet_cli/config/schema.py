"""The recipe: its seven sections, the ``Recipe`` that holds them, and building one from dicts.

    data        DataConfig        which tokenized corpus, how windows are drawn from it
    model       ModelConfig       LongNetTransformer hyper-parameters (from model.config)
    train       TrainConfig       sequence length, batch, optimizer, schedule, precision
    checkpoint  CheckpointConfig  how often to save, how many to keep
    log         LogConfig         how often to log, trackers
    eval        EvalConfig        evaluation during training
    parallel    ParallelConfig    sequence parallelism, sharding

``data``, ``model``, ``train`` and ``checkpoint`` must be present; the others default. An
unknown key or section is a RecipeError suggesting the closest valid one, as pip-tools does.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from longnet_cli.config.errors import RecipeError
from longnet_cli.config.kinds import type_name
from longnet_cli.config.model_section import ModelConfig
from longnet_cli.config.sections import (
    CheckpointConfig,
    DataConfig,
    EvalConfig,
    LogConfig,
    ParallelConfig,
    Section,
    TrainConfig,
)

SECTIONS: dict[str, type[Section]] = {
    "data": DataConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "checkpoint": CheckpointConfig,
    "log": LogConfig,
    "eval": EvalConfig,
    "parallel": ParallelConfig,
}
REQUIRED_SECTIONS = ("data", "model", "train", "checkpoint")


def key_paths() -> list[str]:
    """Every valid key path, ``data.shards`` ... ``parallel.sequence``."""
    return [f"{name}.{key}" for name, section in SECTIONS.items() for key in section.key_names()]


@dataclass
class Recipe:
    """A whole recipe: the seven sections, validated, plus the file it came from."""

    data: DataConfig
    model: ModelConfig
    train: TrainConfig
    checkpoint: CheckpointConfig
    log: LogConfig = field(default_factory=LogConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    source: str = field(default="<dict>", compare=False)

    def __post_init__(self) -> None:
        for name, section_type in SECTIONS.items():
            if not isinstance(getattr(self, name), section_type):
                raise TypeError(f"Recipe.{name} must be a {section_type.__name__}")
        sequence = self.parallel.sequence
        if self.train.seq_len % sequence:
            raise RecipeError(
                f"must be divisible by parallel.sequence ({sequence}) so that each rank holds an "
                f"equal chunk; got {self.train.seq_len}",
                "train.seq_len",
            )
        if self.parallel.shard == "fsdp" and self.train.precision == "fp16":
            raise RecipeError(
                "is fp16, but parallel.shard: fsdp trains in fp32 or bf16 (FSDP's mixed-precision "
                "policy; fp16's gradient scaler is not supported on sharded gradients here): use "
                "train.precision: bf16, or parallel.shard: none",
                "train.precision",
            )

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """The resolved values as plain YAML/JSON types (lengths as ints); ``source`` left out."""
        return {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}

    def to_yaml(self) -> str:
        """``to_dict()`` as YAML, sections and keys in schema order."""
        return yaml.dump(self.to_dict(), Dumper=_RecipeDumper, sort_keys=False)

    @classmethod
    def from_saved(cls, data: Mapping[str, Any], source: str = "<saved recipe>") -> Recipe:
        """A recipe stored beside a checkpoint (``to_dict`` output, from YAML or JSON).

        Keys and sections that older versions did not write get their defaults; unknown keys
        are an error, as in any recipe.
        """
        return recipe_from_dict(data, source=source)

    def get(self, path: str) -> Any:
        """The value at a key path such as ``model.dim``."""
        section, _, key = path.partition(".")
        return getattr(getattr(self, section), key)


# -- building from dicts --------------------------------------------------------------------------


def suggest_key(section: str, key: str | None = None) -> str:
    """The hint "; did you mean 'model.dim'?" naming the closest valid key path, or ""."""
    paths = key_paths()
    if key is None:  # an unknown section: a section name, or a key written at top level
        match = difflib.get_close_matches(section, list(SECTIONS), n=1, cutoff=0.6)
        if not match:
            match = [path for path in paths if path.split(".", 1)[1] == section][:1]
    else:
        # the right key in the wrong section, else a near miss in the same section, else anywhere
        match = [path for path in paths if path.split(".", 1)[1] == key][:1]
        if not match and section in SECTIONS:
            close = difflib.get_close_matches(key, SECTIONS[section].key_names(), n=1, cutoff=0.6)
            match = [f"{section}.{close[0]}"] if close else []
        if not match:
            match = difflib.get_close_matches(f"{section}.{key}", paths, n=1, cutoff=0.6)
    return f"; did you mean '{match[0]}'?" if match else ""


def _build_section(name: str, values: Any, source: str) -> Section:
    section_type = SECTIONS[name]
    if values is None:  # "eval:" with every line commented out
        values = {}
    if not isinstance(values, Mapping):
        raise RecipeError(
            f"must be a mapping of keys ({', '.join(section_type.key_names()[:3])}, ...), "
            f"got {values!r}",
            name,
            source,
        )
    for key in values:
        if key not in section_type.key_names():
            raise RecipeError(
                suggest_key(name, str(key)), f"{name}.{key}", source, unknown_key=True
            )
    for key in section_type.required_keys():
        if key not in values:
            raise RecipeError("missing required key", f"{name}.{key}", source)
    return section_type(**values)


def recipe_from_dict(
    data: Mapping[str, Any], source: str = "<dict>", *, origins: Mapping[str, str] | None = None
) -> Recipe:
    """Validate a recipe given as nested dicts (parsed YAML, ``Recipe.to_dict()``).

    ``source`` names the origin in error messages; ``origins`` maps key paths to a more precise
    origin (the ``--set`` override that gave the value).
    """
    if not isinstance(data, Mapping):
        raise RecipeError(
            f"a recipe must be a mapping of sections ({', '.join(SECTIONS)}), "
            f"got {type_name(data)}",
            source=source,
        )
    for name in data:
        if name not in SECTIONS:
            problem = f"unknown section '{name}'{suggest_key(str(name))}"
            raise RecipeError(f"{problem} (sections: {', '.join(SECTIONS)})", source=source)
    for name in REQUIRED_SECTIONS:
        if name not in data:
            keys = ", ".join(SECTIONS[name].required_keys())
            raise RecipeError(f"missing required section (with keys {keys})", name, source)
    try:
        sections = {name: _build_section(name, data.get(name), source) for name in SECTIONS}
        return Recipe(**sections, source=source)
    except RecipeError as err:
        if err.source is None:
            origin = (origins or {}).get((err.key or "").split("[", 1)[0])
            err.source = origin or source
        raise


class _RecipeDumper(yaml.SafeDumper):
    """SafeDumper writing sections as blocks and lists inline: ``segment_lengths: [1024, 2048]``."""


_RecipeDumper.add_representer(
    list, lambda dumper, data: dumper.represent_sequence("tag:yaml.org,2002:seq", data, True)
)

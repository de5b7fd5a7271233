"""An exported model directory (``longnet export``) as longnet reads it back.

An export holds a Hugging Face-style ``config.json`` (model_type "longnet") beside the weight,
tokenizer and state files of a checkpoint (``artifacts.layout``); its ``state.json`` is the
checkpoint's, with ``files`` hashing the export's own weights and tokenizer, so every reader of
checkpoints (``load_model``, ``longnet eval``, ``longnet generate``, ``init_from``) takes it as one.
Writing it is the export stage's job (``longnet_cli.export``); reading it lives here, below the
stages that read it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from longnet_cli.artifacts.layout import STATE_FILE, TOKENIZER_FILE, WEIGHTS_FILE
from longnet_cli.core.errors import InputError

CONFIG_FILE = "config.json"
MODEL_TYPE = "longnet"


@dataclass(frozen=True)
class ExportedModel:
    """An exported directory as longnet reads it: its config.json and state.json."""

    path: Path
    config: dict[str, Any]  # config.json
    state: dict[str, Any]  # state.json: the checkpoint's state and the export record

    @property
    def weights(self) -> Path:
        return self.path / WEIGHTS_FILE

    @property
    def tokenizer(self) -> Path:
        return self.path / TOKENIZER_FILE

    @property
    def step(self) -> int:
        return int(self.state["step"])

    @property
    def recipe(self):
        """The run's resolved recipe (``config.Recipe``), as the checkpoint recorded it."""
        from longnet_cli.config import Recipe

        return Recipe.from_saved(self.state["recipe"], source=str(self.path))

    def model_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of ``LongNetTransformer(...)``, from config.json."""
        from longnet_cli.model.config import MODEL_KEYS

        kwargs = {"num_tokens": self.config["vocab_size"]}
        kwargs.update({key: self.config[key] for key in MODEL_KEYS})
        kwargs["segment_lengths"] = tuple(kwargs["segment_lengths"])
        kwargs["dilation_rates"] = tuple(kwargs["dilation_rates"])
        return kwargs


def read_exported(path: Path | str) -> ExportedModel | None:
    """The exported directory at ``path``, or None when ``path`` is not one (no config.json of
    model_type "longnet"). Raises InputError naming the file when it is one but unreadable."""
    path = Path(path)
    config_file = path / CONFIG_FILE
    if not config_file.is_file():
        return None
    config = _read_json(config_file)
    if not isinstance(config, dict) or config.get("model_type") != MODEL_TYPE:
        return None
    state = _read_json(path / STATE_FILE)
    if not isinstance(state, dict) or "recipe" not in state or "step" not in state:
        raise InputError(f"{path / STATE_FILE}: missing or not a longnet export's state")
    config = {**_added_options(), **config}
    from longnet_cli.model.config import MODEL_KEYS

    missing = [key for key in ("vocab_size", *MODEL_KEYS) if key not in config]
    if missing:
        raise InputError(f"{config_file}: missing model key(s) {', '.join(missing)}")
    if not (path / WEIGHTS_FILE).is_file():
        raise InputError(f"{path}: no {WEIGHTS_FILE}")
    return ExportedModel(path, config, state)


def _added_options() -> dict[str, Any]:
    """The options an older export's config.json may lack, at their defaults, as an older
    recipe's are (``Recipe.from_saved``): an option added later (``smeared_keys``) defaults to
    what models before it computed. The options a recipe must state (``dim``, ``depth``,
    ``heads``, the branches) stay required; the weights' shapes check the rest."""
    from dataclasses import MISSING, fields

    from longnet_cli.model.config import LongNetConfig

    return {
        spec.name: spec.default
        for spec in fields(LongNetConfig)
        if spec.default is not MISSING and not spec.metadata.get("recipe_required")
    }


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: cannot read: {err}") from None

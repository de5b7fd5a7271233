"""Loading a recipe: YAML (with line and column of a syntax error), ``--set`` overrides, and
validation of the result (``schema.recipe_from_dict``).

Lengths are written ``4096``, ``32K`` or ``1M`` (K = 1024, M = 1024**2) and stored as ints. Every
problem is a ``RecipeError`` (an InputError: exit code 2) naming the key path and the file, e.g.
``model.segment_lengths in recipes/x.yaml: ...``, or the ``--set`` override that gave the value.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from longnet_cli.config.errors import RecipeError
from longnet_cli.config.kinds import type_name
from longnet_cli.config.schema import SECTIONS, Recipe, recipe_from_dict, suggest_key
from longnet_cli.core.errors import one_line


class _RecipeLoader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-3`` as a float (YAML 1.2; PyYAML alone gives a string)."""


_RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _parse_yaml(text: str, source: str) -> Any:
    """The YAML value of ``text``; RecipeError with the line and column of a syntax error, on
    one line (PyYAML's own messages span several and name "<unicode string>", not the file)."""
    try:
        return yaml.load(text, Loader=_RecipeLoader)  # a SafeLoader subclass: no objects
    except yaml.reader.ReaderError as err:  # a character YAML does not allow (a control byte)
        line = text.count("\n", 0, err.position) + 1
        column = err.position - (text.rfind("\n", 0, err.position) + 1) + 1
        shown = f"#x{err.character:04x}" if isinstance(err.character, int) else err.character
        raise RecipeError(
            f"invalid YAML at line {line}, column {column}: unacceptable character {shown!s} "
            f"({err.reason})",
            source=source,
        ) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise RecipeError(f"invalid YAML{where}: {one_line(problem)}", source=source) from None


def parse_override(text: str) -> tuple[str, str, Any]:
    """``"model.dim=256"`` -> ("model", "dim", 256); the value is read as a YAML scalar or flow
    value (``[2K, 4K]``, ``null``, ``true``). Raises RecipeError naming the override."""
    origin = f"--set {text}"
    path, equals, value_text = text.partition("=")
    path = path.strip()
    if not equals or not path:
        raise RecipeError("expected KEY=VALUE with KEY a key path such as model.dim", source=origin)
    section, dot, key = path.partition(".")
    if not dot or not key or "." in key:
        raise RecipeError(
            "the key must be SECTION.KEY, such as train.steps" + suggest_key(section or path),
            source=origin,
        )
    if section not in SECTIONS or key not in SECTIONS[section].key_names():
        raise RecipeError(suggest_key(section, key), path, origin, unknown_key=True)
    value = _parse_yaml(value_text, origin) if value_text.strip() else None
    return section, key, value


def apply_overrides(data: Mapping[str, Any], overrides: Iterable[str]) -> tuple[dict, dict]:
    """``data`` with each ``SECTION.KEY=VALUE`` applied (later ones win), and their origins."""
    merged = {name: dict(values) if isinstance(values, Mapping) else values
              for name, values in data.items()}  # fmt: skip
    origins: dict[str, str] = {}
    for text in overrides:
        section, key, value = parse_override(text)
        values = merged.get(section)
        if values is None:
            values = merged[section] = {}
        elif not isinstance(values, dict):
            raise RecipeError(f"is not a mapping, cannot set {section}.{key}", section)
        values[key] = value
        origins[f"{section}.{key}"] = f"--set {text}"
    return merged, origins


def load_recipe(path: str | Path, overrides: Sequence[str] = ()) -> Recipe:
    """Read, override (``--set``) and validate a YAML recipe; RecipeError on any problem."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError("no such recipe file", source=source) from None
    except (OSError, UnicodeDecodeError) as err:
        raise RecipeError(f"cannot read the recipe: {err}", source=source) from None
    data = _parse_yaml(text, source)
    if not isinstance(data, Mapping):
        raise RecipeError(
            f"a recipe must be a mapping of sections ({', '.join(SECTIONS)}), "
            f"got {type_name(data)}",
            source=source,
        )
    try:
        data, origins = apply_overrides(data, overrides)
    except RecipeError as err:
        err.source = err.source or source
        raise
    return recipe_from_dict(data, source, origins=origins)

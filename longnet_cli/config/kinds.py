"""Field kinds: how a recipe value of each kind is checked and stored.

Each field of a recipe section carries a ``kind`` in its metadata (``model.config.option``):
int, float, bool, str, choice, length, lengths, ints, floats. ``normalise`` checks a value
against its kind and returns it in stored form (e.g. "32K" -> 32768); the section's own
``_check`` does the cross-field checks afterwards.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from longnet_cli.config.errors import RecipeError
from longnet_cli.core.lengths import parse_length


def type_name(value: Any) -> str:
    """The YAML-ish name of a value's type, for messages: ``null``, ``str``, ``bool`` ..."""
    return "null" if value is None else type(value).__name__


def check_int(value: Any, key: str, minimum: int | None) -> int:
    """``value`` if it is an integer (not a bool) of at least ``minimum``, else RecipeError."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise RecipeError(f"must be an integer, got {value!r} ({type_name(value)})", key)
    if minimum is not None and value < minimum:
        wanted = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise RecipeError(f"must be {wanted}, got {value}", key)
    return value


def _check_float(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RecipeError(f"must be a number, got {value!r} ({type_name(value)})", key)
    if not math.isfinite(value):
        raise RecipeError(f"must be a finite number, got {value!r}", key)
    return float(value)


def _check_length(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise RecipeError(
            f"must be a length such as 4096, 32K or 1M, got {value!r} ({type_name(value)})", key
        )
    try:
        return parse_length(value)
    except ValueError as err:
        raise RecipeError(str(err), key) from None


def _check_list(value: Any, key: str, size: int | None) -> list:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise RecipeError(f"must be a list such as [1, 2, 4], got {value!r}", key)
    if size is not None and len(value) != size:
        raise RecipeError(f"must be a list of {size} values, got {len(value)}: {value!r}", key)
    return list(value)


def normalise(value: Any, key: str, meta: Mapping[str, Any]) -> Any:
    """Check ``value`` against its field's kind; return it in stored form."""
    kind = meta["kind"]
    if value is None and meta.get("optional"):
        return None
    if kind == "int":
        return check_int(value, key, meta.get("minimum"))
    if kind == "float":
        return _check_float(value, key)
    if kind == "bool":
        if not isinstance(value, bool):
            raise RecipeError(f"must be true or false, got {value!r} ({type_name(value)})", key)
        return value
    if kind == "str":
        if not isinstance(value, str) or not value.strip():
            raise RecipeError(f"must be a non-empty string, got {value!r}", key)
        return value
    if kind == "choice":
        choices = meta["choices"]
        if value not in choices:
            listed = ", ".join(repr(choice) for choice in choices)
            raise RecipeError(f"must be one of {listed}; got {value!r}", key)
        return value
    if kind == "length":
        return _check_length(value, key)
    items = _check_list(value, key, meta.get("size"))
    if kind == "lengths":
        return [_check_length(item, f"{key}[{i}]") for i, item in enumerate(items)]
    if kind == "ints":
        return [check_int(item, f"{key}[{i}]", meta.get("minimum")) for i, item in enumerate(items)]
    if kind == "floats":
        return [_check_float(item, f"{key}[{i}]") for i, item in enumerate(items)]
    raise AssertionError(f"unknown field kind {kind!r}")

"""Old import paths kept for one release: a module ``__getattr__`` that forwards each moved name
to its new home with a DeprecationWarning naming that home (one implementation for every shim)."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Mapping
from typing import Any


def forwarder(old_module: str, homes: Mapping[str, str]) -> Callable[[str], Any]:
    """A module-level ``__getattr__`` for ``old_module``: ``homes`` maps each moved name to the
    module that holds it now; other names raise AttributeError as a module would."""

    def __getattr__(name: str) -> Any:
        if name not in homes:
            raise AttributeError(f"module {old_module!r} has no attribute {name!r}")
        new_home = homes[name]
        warnings.warn(
            f"{old_module}.{name} is deprecated and will be removed in the next release; "
            f"use {new_home}.{name}",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module(new_home), name)

    return __getattr__

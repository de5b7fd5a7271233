"""RecipeError: a recipe problem named by its key path and the file (or ``--set``) it came from."""

from __future__ import annotations

from longnet_cli.core.errors import InputError


class RecipeError(InputError):
    """A recipe problem: ``key`` (a path like ``model.dim``), what is wrong, and where.

    ``source`` (the YAML file, or the ``--set`` override that gave the value) is filled in by the
    loader when the error comes from a section's own validation.
    """

    def __init__(
        self,
        problem: str,
        key: str | None = None,
        source: str | None = None,
        *,
        unknown_key: bool = False,
    ) -> None:
        super().__init__(problem)
        self.problem = problem
        self.key = key
        self.source = source
        self.unknown_key = unknown_key

    def __str__(self) -> str:
        where = f" in {self.source}" if self.source else ""
        if self.unknown_key:  # "unknown key 'model.dimm' in x.yaml; did you mean 'model.dim'?"
            return f"unknown key '{self.key}'{where}{self.problem}"
        if self.key is None:
            return f"{self.source}: {self.problem}" if self.source else self.problem
        return f"{self.key}{where}: {self.problem}"

"""The package's layering, read from the source: every import of every module goes down the layers.

Layers, top to bottom (a module may import its own top-level package freely, and a lower layer):

    entry     cli/, __main__, the package ``__init__`` (the lazy public API: ``from longnet_cli
              import load_model``) and the one-release shims of old import paths (``recipes``,
              ``checkpoints``): what users and scripts call. Nothing in the package imports
              them, so nothing can run up through them; ``from longnet_cli import __version__``
              is the one exception (a constant the ``__init__`` defines without importing).
    stages    tokenize, train/, evaluate/, generate, export/, inspect, runs, bench/: they may
              use each other's public names (a stage built on another, as generate on evaluate)
    artifacts artifacts/, config/ and hf/. hf/ holds the modules an export directory imports
              (config, model, tokenizer for transformers): built on model/ and data/ and
              imported by export/, so it sits between them, beside the other on-disk formats
    data      data/ (only core/ below it) and model/ (only runtime and core/ below it); the two
              never import each other: the model does no I/O, the corpus needs no torch model
    runtime   torch-side process settings (device, precision, matmul peak)
    core      torch-free utilities: no torch, nothing of the package above it

What counts as an import: ``import x``, ``from x import y`` and relative imports, at module level
and inside functions (a function-level import is how a heavy module stays off ``--help``'s path,
not a way around the layers), ``importlib.import_module("...")`` with a literal name, and the
imports under ``if TYPE_CHECKING:`` too: a type named in an annotation is a dependency all the
same (it only does not run), and every such import in the package goes down today.

Private names: no module takes another module's ``_name``, by ``from m import _name`` or as an
attribute (``m._name``), and a private module (``pkg/_x.py``) is imported only inside its own
package. A violation is reported as ``path:line: module imports target: rule``.
"""

from __future__ import annotations

import ast
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "longnet_cli"
ORDER = "entry (cli) -> stages -> artifacts/config/hf -> data/model -> runtime -> core"

# the top-level name of every module of the package (no name: the package __init__) -> layer
LAYERS = {
    "": "entry",
    "__main__": "entry",
    "cli": "entry",
    "recipes": "entry",
    "checkpoints": "entry",
    "tokenize": "stages",
    "train": "stages",
    "evaluate": "stages",
    "generate": "stages",
    "export": "stages",
    "inspect": "stages",
    "runs": "stages",
    "bench": "stages",
    "artifacts": "artifacts",
    "config": "artifacts",
    "hf": "artifacts",
    "data": "data",
    "model": "data",
    "runtime": "runtime",
    "core": "core",
}
RANK = {"entry": 5, "stages": 4, "artifacts": 3, "data": 2, "runtime": 1, "core": 0}
ONLY = {  # top-level packages that may import only these others of the package
    "model": {"runtime", "core"},
    "data": {"core"},
    "core": set(),
}
NO_TORCH = {"core"}
PUBLIC_FROM_THE_TOP = {"__version__"}  # `from longnet_cli import __version__`, from anywhere


@dataclass(frozen=True)
class Violation:
    path: str
    line: int
    module: str
    target: str
    rule: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.module} imports {self.target}: {self.rule}"


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def modules_of(root: Path, package: str) -> dict[str, Path]:
    """Every module of ``package`` under ``root``: dotted name -> file."""
    found = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


@dataclass(frozen=True)
class _Import:
    line: int
    target: str  # the module imported (or the module a name is taken from)
    name: str | None = None  # the name taken from it, when it is not a module


class _Reader(ast.NodeVisitor):
    """The imports of one module, and its uses of private attributes of imported modules."""

    def __init__(self, module: str, is_package: bool, modules: set[str], package: str):
        self.module, self.modules, self.package = module, modules, package
        self.base = module if is_package else module.rpartition(".")[0]
        self.imports: list[_Import] = []
        self.bound: dict[str, str] = {}  # local name -> module of the package it stands for

    def _absolute(self, node: ast.ImportFrom) -> str:
        if not node.level:
            return node.module or ""
        parts = self.base.split(".")
        base = ".".join(parts[: len(parts) - node.level + 1])
        return f"{base}.{node.module}" if node.module else base

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.imports.append(_Import(node.lineno, alias.name))
            if alias.asname:
                self.bound[alias.asname] = alias.name
            else:
                top = alias.name.partition(".")[0]
                self.bound[top] = top

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        source = self._absolute(node)
        for alias in node.names:
            submodule = f"{source}.{alias.name}"
            if submodule in self.modules:
                self.imports.append(_Import(node.lineno, submodule))
                self.bound[alias.asname or alias.name] = submodule
            else:
                self.imports.append(_Import(node.lineno, source, alias.name))

    def visit_Call(self, node: ast.Call) -> None:
        function = node.func
        name = function.attr if isinstance(function, ast.Attribute) else getattr(function, "id", "")
        literal = (
            node.args[0].value if node.args and isinstance(node.args[0], ast.Constant) else None
        )
        if name == "import_module" and isinstance(literal, str):
            self.imports.append(_Import(node.lineno, literal))
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        chain, value = [node.attr], node.value
        while isinstance(value, ast.Attribute):
            chain.append(value.attr)
            value = value.value
        if isinstance(value, ast.Name) and value.id in self.bound:
            target = self.bound[value.id]
            for attr in reversed(chain):
                if f"{target}.{attr}" in self.modules:
                    target = f"{target}.{attr}"
                    continue
                if target in self.modules and _private(attr):
                    self.imports.append(_Import(node.lineno, target, attr))
                break
            return  # the inner attributes are this chain's
        self.generic_visit(node)


def _top(module: str, package: str) -> str:
    """``longnet_cli.data.shards`` -> ``data``; the package itself -> ``""``."""
    return module.removeprefix(package).lstrip(".").partition(".")[0]


def _rule(module: str, imported: _Import, modules: set[str], package: str) -> str | None:
    """What ``imported`` breaks, or None."""
    target, name = imported.target, imported.name
    own = _top(module, package)
    if target == "torch" or target.startswith("torch."):
        return f"{own}/ imports no torch (torch-free utilities)" if own in NO_TORCH else None
    if target != package and not target.startswith(package + "."):
        return None  # outside the package
    if target not in modules:
        return "no such module in the package"
    parts = target.split(".")
    for index, part in enumerate(parts):
        inside = ".".join(parts[:index])
        if _private(part) and module != inside and not module.startswith(inside + "."):
            return f"{target} is private to {inside}"
    if name is not None and _private(name) and target != module:
        return f"takes {target}'s private name {name} (use or add a public one)"
    theirs = _top(target, package)
    if theirs == own:
        return None
    if own not in LAYERS:
        return f"{package}.{own} is in no layer: place it in LAYERS of tests/test_layering.py"
    if theirs not in LAYERS:
        return f"{package}.{theirs} is in no layer: place it in LAYERS of tests/test_layering.py"
    if theirs == "" and name in PUBLIC_FROM_THE_TOP:
        return None
    if own in ONLY and theirs not in ONLY[own]:
        allowed = " and ".join(f"{other}/" for other in sorted(ONLY[own])) or "nothing"
        return f"{own}/ imports only {allowed} of the package, not {theirs or package}"
    ours, their_layer = LAYERS[own], LAYERS[theirs]
    if RANK[their_layer] > RANK[ours]:
        return f"{ours} may not import {their_layer} ({theirs or package}): imports go {ORDER}"
    return None


def check_package(root: Path, package: str = PACKAGE) -> list[Violation]:
    """Every layering violation of ``package`` under ``root``, in file and line order."""
    modules = modules_of(root, package)
    names = set(modules)
    violations = []
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        reader = _Reader(module, path.name == "__init__.py", names, package)
        reader.visit(tree)
        own = _top(module, package)
        if own not in LAYERS:
            rule = f"{package}.{own} is in no layer: place it in LAYERS of tests/test_layering.py"
            violations.append(Violation(str(path.relative_to(root)), 1, module, "-", rule))
        seen = set()
        for imported in reader.imports:
            rule = _rule(module, imported, names, package)
            shown = imported.target + (f".{imported.name}" if imported.name else "")
            if rule and (imported.line, shown) not in seen:
                seen.add((imported.line, shown))
                violations.append(
                    Violation(str(path.relative_to(root)), imported.line, module, shown, rule)
                )
    return violations


# -- the package ---------------------------------------------------------------------------------


def test_every_import_of_the_package_goes_down_the_layers():
    violations = check_package(ROOT)
    if violations:
        listed = "\n".join(map(str, violations))
        pytest.fail(f"{len(violations)} layering violation(s):\n{listed}", pytrace=False)


def test_every_top_level_module_has_a_layer():
    tops = {_top(module, PACKAGE) for module in modules_of(ROOT, PACKAGE)}
    assert tops - set(LAYERS) == set(), "place these in LAYERS, with the reason in the docstring"


# -- the checker itself, on a package made here ----------------------------------------------------


def _package(root: Path, files: dict[str, str]) -> Path:
    for name, text in {"pkg/__init__.py": "__version__ = '0'\n", **files}.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
        for parent in path.relative_to(root).parents[:-2]:  # every folder a package
            (root / parent / "__init__.py").touch()
    return root


def _found(root: Path) -> set[tuple[str, int, str]]:
    return {(v.module, v.line, v.target) for v in check_package(root, "pkg")}


def test_the_checker_passes_a_package_that_follows_the_layers(tmp_path):
    root = _package(tmp_path, {
        "pkg/core/files.py": "import os\nfrom pkg import __version__\n",
        "pkg/runtime.py": "import torch\nfrom pkg.core import files\n",
        "pkg/model/layers.py": "from pkg import runtime\nfrom pkg.core.files import x\n",
        "pkg/data/shards.py": "from ..core import files\nfrom . import _format\n",
        "pkg/data/_format.py": "from pkg.data import shards\n",
        "pkg/config/recipe.py": (
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from pkg.model import layers\n"
        ),
        "pkg/evaluate/stage.py": "def f():\n    from pkg.artifacts import runs\n",
        "pkg/artifacts/runs.py": "from pkg.config.recipe import load\n",
        "pkg/generate.py": "from pkg.evaluate import stage\nstage.evaluate()\n",
        "pkg/cli/group.py": "import pkg.generate\npkg.generate.run()\n",
    })  # fmt: skip
    assert check_package(root, "pkg") == []


def test_the_checker_names_module_line_and_rule_of_each_violation(tmp_path):
    root = _package(tmp_path, {
        "pkg/core/lengths.py": "import os\nimport torch.nn\n",
        "pkg/data/windows.py": "def f():\n    from pkg.runtime import device\n",
        "pkg/model/layers.py": "x = 1\nfrom ..data import windows\n",
        "pkg/artifacts/runs.py": "from pkg.train import loop\n",
        "pkg/train/loop.py": "from pkg.evaluate.stage import _resolve\n",
        "pkg/evaluate/stage.py": "import pkg.generate as g\n\n\ng._helper()\ng.public()\n",
        "pkg/generate.py": "import importlib\nimportlib.import_module('pkg.cli.group')\n",
        "pkg/cli/group.py": "from pkg.data._format import Manifest\n",
        "pkg/config/recipe.py": (
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from pkg.export import card\n"
        ),
        "pkg/runtime.py": "from pkg import load_model\n",
        "pkg/extra.py": "",
        "pkg/data/_format.py": "",
    })  # fmt: skip
    found = {(v.module, v.line, v.target): v.rule for v in check_package(root, "pkg")}
    assert set(found) == {
        ("pkg.core.lengths", 2, "torch.nn"),
        ("pkg.data.windows", 2, "pkg.runtime.device"),
        ("pkg.model.layers", 2, "pkg.data.windows"),
        ("pkg.artifacts.runs", 1, "pkg.train.loop"),
        ("pkg.train.loop", 1, "pkg.evaluate.stage._resolve"),
        ("pkg.evaluate.stage", 4, "pkg.generate._helper"),
        ("pkg.generate", 2, "pkg.cli.group"),
        ("pkg.cli.group", 1, "pkg.data._format.Manifest"),
        ("pkg.config.recipe", 3, "pkg.export.card"),
        ("pkg.runtime", 1, "pkg.load_model"),
        ("pkg.extra", 1, "-"),
    }
    assert "no torch" in found["pkg.core.lengths", 2, "torch.nn"]
    assert "data/ imports only core/" in found["pkg.data.windows", 2, "pkg.runtime.device"]
    assert "model/ imports only" in found["pkg.model.layers", 2, "pkg.data.windows"]
    assert "artifacts may not import stages" in found["pkg.artifacts.runs", 1, "pkg.train.loop"]
    assert "private name _resolve" in found["pkg.train.loop", 1, "pkg.evaluate.stage._resolve"]
    assert "private name _helper" in found["pkg.evaluate.stage", 4, "pkg.generate._helper"]
    assert "stages may not import entry" in found["pkg.generate", 2, "pkg.cli.group"]
    assert "private to pkg.data" in found["pkg.cli.group", 1, "pkg.data._format.Manifest"]
    assert "in no layer" in found["pkg.extra", 1, "-"]
    shown = str(check_package(root, "pkg")[0])
    assert shown.startswith("pkg/") and ":" in shown and " imports " in shown


@pytest.mark.parametrize(
    "source",
    ["from pkg.generate import helper\n", "from ..generate import helper\n",
     "def f():\n    import pkg.generate\n"],
    ids=["absolute", "relative", "function-level"],
)  # fmt: skip
def test_every_form_of_import_is_read(tmp_path, source):
    root = _package(tmp_path, {"pkg/generate.py": "helper = 1\n", "pkg/data/x.py": source})
    ((module, _, target),) = _found(root)
    assert (module, target.partition(".helper")[0]) == ("pkg.data.x", "pkg.generate")

"""Pieces shared by the subcommands: click settings, option parsers and the options that several
commands declare (``--json``, ``--quiet``, ``--device``, ``--runs-dir`` ...), each written once.

A shared option keeps each command's own help text where the commands say different things (the
text is a parameter); what they say alike is the default here. Every decorator is a plain
``click.option`` with the same settings the commands declared before, so ``--help`` reads the same.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from longnet_cli.runtime import DTYPE_NAMES, PRECISION_NAMES

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]

DEVICE_HELP = "cpu or cuda (default: cuda when available)."
RUNS_DIR_HELP = "Where to look for the most recent run when no checkpoint is given."


def int_list(text: str, name: str) -> list[int]:
    """``"1,2,4"`` -> [1, 2, 4]; a bad value is a usage error naming the option."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        message = f"expected comma-separated integers, got {text!r}"
        raise click.BadParameter(message, param_hint=name) from None
    if not values or min(values) < 1:
        raise click.BadParameter(f"expected positive integers, got {text!r}", param_hint=name)
    return values


class LengthParam(click.ParamType):
    """A count with K/M/G suffixes (1024-based): 32K, 256M."""

    name = "SIZE"

    def convert(self, value, param, ctx):
        from longnet_cli.core.lengths import parse_length

        try:
            return parse_length(value)
        except ValueError as err:
            self.fail(str(err), param, ctx)


def length_option(name: str, default: str, help: str) -> Decorator:
    """An option taking a length such as 32K or 1M."""
    return click.option(name, type=LengthParam(), default=default, show_default=True, help=help)


def shown_option(*names: str, default: Any, help: str | None = None, **settings: Any) -> Decorator:
    """An option with a default that ``--help`` shows (as every defaulted option of longnet's)."""
    return click.option(*names, default=default, show_default=True, help=help, **settings)


def stack(*decorators: Decorator) -> Decorator:
    """Several options as one decorator, listed in ``--help`` in the order given."""

    def apply(function: Callable[..., Any]) -> Callable[..., Any]:
        for decorator in reversed(decorators):
            function = decorator(function)
        return function

    return apply


# -- paths -------------------------------------------------------------------------------------


def directory_path(exists: bool = False) -> click.Path:
    """A directory argument or option's type (a file there is a usage error)."""
    return click.Path(exists=exists, file_okay=False, path_type=Path)


def file_path(exists: bool = False) -> click.Path:
    """A file argument or option's type (a directory there is a usage error)."""
    return click.Path(exists=exists, dir_okay=False, path_type=Path)


def recipe_argument() -> Decorator:
    """The RECIPE argument: an existing YAML file."""
    return click.argument("recipe", type=file_path(exists=True))


def set_option(help: str) -> Decorator:
    """``--set KEY=VALUE`` (repeated): recipe overrides, collected as ``overrides``."""
    return click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=help)


def data_option(help: str) -> Decorator:
    """``--data DIR``: a tokenized corpus other than the run's own."""
    return click.option("--data", type=directory_path(), help=help)


def runs_dir_option(help: str = RUNS_DIR_HELP) -> Decorator:
    """``--runs-dir DIR`` (default runs/): where the runs are."""
    return shown_option("--runs-dir", type=directory_path(), default=Path("runs"), help=help)


def checkpoint_tokenizer_option(use: str) -> Decorator:
    """``--tokenizer FILE`` overriding the checkpoint's copy; ``use`` says what it is for."""
    return click.option(
        "--tokenizer",
        type=file_path(),
        help=f"tokenizer.model to {use} (default: the checkpoint's copy, else the run's corpus).",
    )


def existing_tokenizer_option(help: str) -> Decorator:
    """``--tokenizer FILE``: an existing SentencePiece model to encode with."""
    return click.option("--tokenizer", type=file_path(exists=True), help=help)


def exclude_option(help: str, default: tuple[str, ...] | None = None) -> Decorator:
    """``--exclude GLOB`` (repeated): files and folders left out of the corpus walk."""
    return click.option(
        "--exclude",
        multiple=True,
        metavar="GLOB",
        default=default,
        show_default=default is not None,
        help=help,
    )


# -- what a command prints and how hard it works ----------------------------------------------


def json_flag(what: str = "results") -> Decorator:
    """``--json``: print ``what`` as JSON on stdout instead of text (``as_json``)."""
    return click.option("--json", "as_json", is_flag=True, help=f"Print {what} as JSON on stdout.")


def json_file_option(help: str) -> Decorator:
    """``--json FILE``: write the report to FILE, '-' meaning stdout (``json_file``)."""
    return click.option("--json", "json_file", metavar="FILE", help=help)


def quiet_flag(help: str = "No progress bar.", short: bool = True) -> Decorator:
    """``--quiet`` (and ``-q`` where ``short``): less on stderr."""
    names = ("--quiet", "-q") if short else ("--quiet",)
    return click.option(*names, is_flag=True, help=help)


def force_flag(help: str) -> Decorator:
    """``--force``: do what would otherwise be refused or skipped; ``help`` says what."""
    return click.option("--force", is_flag=True, help=help)


def workers_option(
    default: int, show_default: bool | str = True, help: str | None = None
) -> Decorator:
    """``--workers/-j N``: encoding threads (at least 1)."""
    return click.option(
        "--workers",
        "-j",
        default=default,
        show_default=show_default,
        type=click.IntRange(min=1),
        help=help,
    )


def repeats_option(default: int, help: str | None = None) -> Decorator:
    """``--repeats N``: timed runs per measurement, the best kept."""
    return shown_option("--repeats", default=default, type=click.IntRange(min=1), help=help)


# -- where and how the model runs --------------------------------------------------------------


def device_option(help: str = DEVICE_HELP, default: str | None = None) -> Decorator:
    """``--device NAME``; its default is shown when there is one."""
    return click.option("--device", default=default, show_default=default is not None, help=help)


def precision_option(help: str) -> Decorator:
    """``--precision fp32|bf16|fp16``: the precision table's names (``runtime``)."""
    return click.option("--precision", type=click.Choice(PRECISION_NAMES), help=help)


def dtype_option(default: str = "float32") -> Decorator:
    """``--dtype float32|bfloat16|float16``: torch's names of the precision table's dtypes."""
    return shown_option("--dtype", type=click.Choice(DTYPE_NAMES), default=default)


def head_options(heads: int = 4, dim_head: int = 32) -> Decorator:
    """``--heads`` and ``--dim-head`` of a measured attention layer."""
    return stack(
        shown_option("--heads", default=heads, type=click.IntRange(min=1)),
        shown_option("--dim-head", default=dim_head, type=click.IntRange(min=1)),
    )


def branch_options(
    segments: str, rates: str, segments_help: str, rates_help: str | None = None
) -> Decorator:
    """``--segments`` and ``--rates``: the dilated attention's branches, comma lists."""
    return stack(
        shown_option("--segments", default=segments, help=segments_help),
        shown_option("--rates", default=rates, help=rates_help),
    )

"""Pieces shared by the subcommands: click settings and option parsers."""

from __future__ import annotations

import click

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


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


def length_option(name: str, default: str, help: str):
    """An option taking a length such as 32K or 1M."""
    return click.option(name, type=LengthParam(), default=default, show_default=True, help=help)

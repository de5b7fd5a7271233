"""The ``longnet`` command line: the click group (``group``) and one module per subcommand."""

from longnet_cli.cli.group import cli, main

__all__ = ["cli", "main"]

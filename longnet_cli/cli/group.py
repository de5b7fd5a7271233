"""The ``longnet`` command: a click group; each subcommand parses, calls one stage, renders.

Heavy imports (torch, accelerate, pyarrow) stay inside command bodies so ``--help`` is instant.
Exit codes: 0 done, 1 failed, 2 bad usage or bad input. Tracebacks only with ``--debug``.
"""

from __future__ import annotations

import sys
import traceback

import click

from longnet_cli import __version__
from longnet_cli.cli.common import CONTEXT
from longnet_cli.core.errors import LongnetError, one_line


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, "-V", "--version", prog_name="longnet")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
def cli(debug: bool) -> None:
    """LongNet dilated attention for long documents: tokenize, train, evaluate, benchmark.

    Lengths accept K and M suffixes (32K = 32768, 1M = 1048576). Progress goes to stderr,
    results to stdout; exit codes: 0 done, 1 failed, 2 bad usage or bad input.
    """


def _register_commands() -> None:
    """Attach the subcommands (one module each; their heavy imports stay inside the bodies)."""
    from longnet_cli.cli.bench import bench
    from longnet_cli.cli.eval import eval_command
    from longnet_cli.cli.export import export_command
    from longnet_cli.cli.generate import generate_command
    from longnet_cli.cli.inspect import inspect
    from longnet_cli.cli.runs import runs
    from longnet_cli.cli.study_report import study_report
    from longnet_cli.cli.tokenize import tokenize
    from longnet_cli.cli.train import train

    cli.add_command(tokenize)
    cli.add_command(train)
    cli.add_command(inspect)
    cli.add_command(bench)
    cli.add_command(eval_command)
    cli.add_command(generate_command)
    cli.add_command(export_command)
    cli.add_command(runs)
    cli.add_command(study_report)


_register_commands()


def main(argv: list[str] | None = None) -> None:
    """Console entry point: one- or two-line errors and meaningful exit codes.

    Every error is one ``error:`` line (a usage error adds a ``usage:`` line), whatever line
    breaks the message holds. An OSError naming a file (a disk or permission fault, a file gone
    while read) is a failure like a LongnetError: that line names the file, exit code 1. Any
    other exception is unexpected: its type and message, and a pointer to ``--debug``.
    ``--debug`` may appear anywhere on the command line; it adds the traceback above the error
    line and keeps the exit code.
    """
    args = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in args
    if debug:  # accepted after the subcommand too; the group option only documents it
        args = [arg for arg in args if arg != "--debug"]
    try:
        code = cli.main(args=args, prog_name="longnet", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as err:
        _show_click_error(err)
        sys.exit(err.exit_code)
    except LongnetError as err:
        if debug:
            traceback.print_exc()
        click.echo(f"error: {one_line(err)}", err=True)
        sys.exit(err.exit_code)
    except OSError as err:
        if err.filename is None:  # no file to name: an unexpected error like any other
            _show_unexpected(err, debug)
        if debug:
            traceback.print_exc()
        click.echo(f"error: {_file_error(err)}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as err:  # the CLI's last line of defence
        _show_unexpected(err, debug)
    sys.exit(code if isinstance(code, int) else 0)


def _show_unexpected(err: Exception, debug: bool) -> None:
    """An exception no stage turned into a LongnetError (a bug, most likely): its type and
    message on one line, the traceback with ``--debug``; exit code 1."""
    if debug:
        traceback.print_exc()
        click.echo(f"error: {type(err).__name__}: {one_line(err)}", err=True)
    else:
        click.echo(
            f"error: {type(err).__name__}: {one_line(err)} (run with --debug for a traceback)",
            err=True,
        )
    sys.exit(1)


def _file_error(err: OSError) -> str:
    """``path: what went wrong`` for an OSError naming a file (both files for a rename)."""
    what = err.strerror or one_line(err)
    if err.filename2 is not None:
        return f"{err.filename} -> {err.filename2}: {what}"
    return f"{err.filename}: {what}"


def _show_click_error(err: click.ClickException) -> None:
    """A usage error in two lines: what is wrong, then the usage and where to read more."""
    click.echo(f"error: {err.format_message()}", err=True)
    ctx = getattr(err, "ctx", None)
    if isinstance(err, click.UsageError) and ctx is not None:
        usage = ctx.get_usage().replace("Usage: ", "", 1).strip()
        click.echo(f"usage: {usage}  ('{ctx.command_path} --help' for more)", err=True)

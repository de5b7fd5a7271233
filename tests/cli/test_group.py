"""The ``longnet`` group: start-up cost, version, exit codes, every command's help."""

from __future__ import annotations

import subprocess
import sys
import time

import click
import pytest
from click.testing import CliRunner

from longnet_cli import __version__
from longnet_cli.cli import cli, main


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "longnet_cli", *args], capture_output=True, text=True
    )


def test_importing_the_cli_imports_no_torch_numpy_or_pyarrow():
    """``longnet --help`` stays instant: the heavy libraries load inside command bodies only."""
    heavy = "{'torch', 'numpy', 'pyarrow', 'accelerate'}"
    probe = f"import sys, longnet_cli.cli; print(sorted({heavy} & set(sys.modules)))"
    assert subprocess.check_output([sys.executable, "-c", probe], text=True).strip() == "[]"


def test_help_is_fast():
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        result = _run("--help")
        best = min(best, time.perf_counter() - start)
    assert result.returncode == 0 and "bench" in result.stdout
    assert best < 1.0, f"longnet --help took {best:.2f}s"


def _commands(command: click.Command, path: tuple[str, ...] = ()):
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from _commands(sub, (*path, name))


COMMANDS = list(_commands(cli))


@pytest.mark.parametrize(
    ("path", "command"), COMMANDS, ids=[" ".join(path) or "longnet" for path, _ in COMMANDS]
)
def test_every_command_shows_its_help_with_every_option(path, command):
    result = CliRunner().invoke(cli, [*path, "--help"], prog_name="longnet")
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"Usage: {' '.join(('longnet', *path))} ")
    for param in command.params:
        if isinstance(param, click.Option):
            assert all(name in result.output for name in param.opts), param.opts


def test_version():
    result = _run("--version")
    assert result.returncode == 0 and __version__ in result.stdout


def test_unknown_command_is_usage_error():
    result = _run("frobnicate")
    assert result.returncode == 2 and "No such command" in result.stderr


def test_main_turns_errors_into_exit_codes(monkeypatch, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "attention", "--lengths", "nope"])
    assert exit_info.value.code == 2
    assert "nope" in capsys.readouterr().err

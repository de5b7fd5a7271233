"""errors.py and cli.main's error lines: one line whatever the message holds, the file named,
a traceback only with --debug, damaged files mapped only inside ``reading``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import click
import pytest
import yaml

from longnet_cli.cli import cli, main
from longnet_cli.core.errors import DamagedFileError, InputError, LongnetError, one_line, reading


def _run(capsys, raising: BaseException, *extra: str) -> tuple[int, str]:
    """``longnet [extra] boom`` where the command raises ``raising``: (exit code, stderr)."""

    def boom() -> None:
        raise raising

    cli.add_command(click.Command("boom", callback=boom))
    try:
        with pytest.raises(SystemExit) as stop:
            main([*extra, "boom"])
    finally:
        cli.commands.pop("boom")
    return stop.value.code, capsys.readouterr().err


def test_an_os_error_naming_a_file_is_one_line_naming_it(capsys, tmp_path):
    missing = tmp_path / "gone.bin"
    try:
        missing.read_bytes()
    except OSError as err:
        code, err_text = _run(capsys, err)
    assert code == 1
    assert err_text == f"error: {missing}: No such file or directory\n"


def test_debug_shows_the_traceback_and_keeps_the_code(capsys, tmp_path):
    error = FileNotFoundError(2, "No such file or directory", str(tmp_path / "x"))
    code, err_text = _run(capsys, error, "--debug")
    assert code == 1 and "Traceback (most recent call last)" in err_text
    assert (
        err_text.strip().splitlines()[-1] == f"error: {tmp_path / 'x'}: No such file or directory"
    )


def test_unexpected_errors_stay_unexpected_on_one_line(capsys):
    code, err_text = _run(capsys, ValueError("first line\n  second line"))
    assert code == 1
    assert err_text == (
        "error: ValueError: first line second line (run with --debug for a traceback)\n"
    )
    code, err_text = _run(capsys, OSError("no file in it"))  # no filename: nothing to name
    assert code == 1 and "run with --debug" in err_text


def test_a_longnet_error_spanning_lines_prints_one(capsys):
    code, err_text = _run(capsys, InputError('bad value\n  in "<unicode string>"'))
    assert code == 2 and err_text == 'error: bad value in "<unicode string>"\n'


def test_reading_names_the_file_and_keeps_the_cause(tmp_path):
    path = tmp_path / "state.json"
    path.write_text("{not json")
    message = rf"^{re.escape(str(path))}: cannot read the state: "
    with pytest.raises(DamagedFileError, match=message) as info, reading(path, "state"):
        json.loads(path.read_text())
    assert isinstance(info.value.__cause__, json.JSONDecodeError)
    assert info.value.exit_code == 1


def test_reading_passes_other_errors_through(tmp_path):
    with pytest.raises(KeyError), reading(tmp_path / "x"):
        {}["missing"]  # a programming error: not a damaged file
    with pytest.raises(InputError, match=r"^already one line$"), reading(tmp_path / "x"):
        raise InputError("already one line")


def test_one_line():
    assert one_line("a\n  b\tc  ") == "a b c"
    assert one_line(LongnetError("x\ny")) == "x y"


def test_a_recipe_with_a_control_byte_is_one_line_with_its_place(capsys, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_bytes(yaml.safe_dump({"data": {"shards": "x"}}).encode() + b"model:\x00\n")
    with pytest.raises(SystemExit) as stop:
        main(["train", str(recipe)])
    err_text = capsys.readouterr().err
    assert stop.value.code == 2
    assert err_text == (
        f"error: {recipe}: invalid YAML at line 3, column 7: unacceptable character #x0000 "
        "(special characters are not allowed)\n"
    )


def test_eval_writes_its_report_atomically_or_names_the_path(tmp_path):
    from longnet_cli.evaluate.report import write_text_atomically

    target = tmp_path / "report.json"
    write_text_atomically(target, "{}\n")
    assert target.read_text() == "{}\n" and sorted(p.name for p in tmp_path.iterdir()) == [
        "report.json"
    ]
    missing = tmp_path / "no-such-dir" / "report.json"
    with pytest.raises(LongnetError, match=rf"^{re.escape(str(missing))}: cannot write: No such"):
        write_text_atomically(missing, "{}\n")
    assert not Path(missing.parent).exists()

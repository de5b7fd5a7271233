"""``cli/common.py``: the option parsers and the shared options the commands declare."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from longnet_cli.cli import common
from longnet_cli.runtime import DTYPE_NAMES, PRECISION_NAMES


def _command(*decorators):
    @click.command(context_settings=common.CONTEXT)
    @common.stack(*decorators)
    def command(**values):
        click.echo(repr(sorted(values.items())))

    return command


def test_int_list_parses_commas_and_names_the_option_when_wrong():
    assert common.int_list("1,2, 4", "--rates") == [1, 2, 4]
    for bad in ("1,x", "", "0,1"):
        with pytest.raises(click.BadParameter) as info:
            common.int_list(bad, "--rates")
        assert info.value.param_hint == "--rates"


def test_length_option_takes_suffixes_and_shows_its_default():
    command = _command(common.length_option("--size", "32K", "How much."))
    assert "[default: 32K]" in CliRunner().invoke(command, ["--help"]).output
    assert "('size', 1048576)" in CliRunner().invoke(command, ["--size", "1M"]).output
    result = CliRunner().invoke(command, ["--size", "12Q"])
    assert result.exit_code == 2 and "--size" in result.output


def test_stack_keeps_the_order_given():
    command = _command(common.json_flag(), common.quiet_flag(), common.device_option())
    assert [p.name for p in command.params] == ["as_json", "quiet", "device"]


def test_shared_options_take_each_command_s_wording():
    command = _command(
        common.json_flag("the summary"),
        common.quiet_flag("No summary on stderr.", short=False),
        common.checkpoint_tokenizer_option("ship"),
        common.runs_dir_option(),
    )
    help_text = " ".join(CliRunner().invoke(command, ["--help"]).output.split())
    assert "--json Print the summary as JSON on stdout." in help_text
    assert "--quiet No summary on stderr." in help_text and "-q," not in help_text
    assert "tokenizer.model to ship (default: the checkpoint's copy" in help_text
    assert "--runs-dir DIRECTORY" in help_text and "[default: runs]" in help_text
    values = dict(command.make_context("command", []).params)
    assert values == {"as_json": False, "quiet": False, "tokenizer": None, "runs_dir": Path("runs")}


def test_precision_and_dtype_choices_are_the_runtime_table():
    command = _command(common.precision_option("How."), common.dtype_option())
    precision, dtype = command.params
    assert tuple(precision.type.choices) == PRECISION_NAMES == ("fp32", "bf16", "fp16")
    assert tuple(dtype.type.choices) == DTYPE_NAMES and dtype.default == "float32"


def test_a_device_default_is_shown_only_when_there_is_one():
    plain = _command(common.device_option())
    auto = _command(common.device_option("auto, cpu or cuda.", default="auto"))
    assert "[default" not in CliRunner().invoke(plain, ["--help"]).output
    assert "[default: auto]" in CliRunner().invoke(auto, ["--help"]).output

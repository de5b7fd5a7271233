"""The ``longnet`` command: start-up cost, version, exit codes, the attention benchmark."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from longnet_cli import __version__
from longnet_cli.cli import cli, main
from longnet_cli.core.lengths import format_length, parse_length, parse_lengths


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "longnet_cli", *args], capture_output=True, text=True
    )


def test_help_is_fast_and_imports_no_torch():
    heavy = "{'torch', 'accelerate', 'pyarrow'}"
    probe = f"import sys, longnet_cli.cli; print(sorted({heavy} & set(sys.modules)))"
    assert subprocess.check_output([sys.executable, "-c", probe], text=True).strip() == "[]"
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        result = _run("--help")
        best = min(best, time.perf_counter() - start)
    assert result.returncode == 0 and "bench" in result.stdout
    assert best < 1.0, f"longnet --help took {best:.2f}s"


def test_version():
    result = _run("--version")
    assert result.returncode == 0 and __version__ in result.stdout


def test_unknown_command_is_usage_error():
    result = _run("frobnicate")
    assert result.returncode == 2 and "No such command" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["--segments", "64,128", "--rates", "1"],
        ["--rates", "1,x,4,8"],
        ["--lengths", "12Q"],
        ["--heads", "0"],
    ],
)
def test_bench_bad_options_exit_2(args):
    result = CliRunner().invoke(cli, ["bench", "attention", *args])
    assert result.exit_code == 2, result.output


def test_main_turns_errors_into_exit_codes(monkeypatch, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "attention", "--lengths", "nope"])
    assert exit_info.value.code == 2
    assert "nope" in capsys.readouterr().err


def test_bench_attention_json():
    args = ["bench", "attention", "--lengths", "256,512", "--segments", "64,128",
            "--rates", "1,2", "--dense-max", "256", "--repeats", "1", "--json"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    seen = {(row["n"], row["impl"], row["mode"]) for row in report["rows"]}
    assert seen == {
        (256, "dilated", "fwd"), (256, "dilated", "fwd+bwd"), (256, "dense", "fwd"),
        (256, "dense", "fwd+bwd"), (512, "dilated", "fwd"), (512, "dilated", "fwd+bwd"),
    }  # fmt: skip
    assert all(row["gflops"] > 0 and row["tokens_per_s"] > 0 for row in report["rows"])
    assert set(report["summary"]["dilated_over_dense_gflops"]) == {"fwd@256", "fwd+bwd@256"}
    assert report["summary"]["time_per_token_vs_reference"]["fwd@256"] == 1.0


def test_lengths():
    assert parse_length("4096") == 4096
    assert parse_length("32K") == 32768 and parse_length("1m") == 1 << 20
    assert parse_lengths("4K..32K") == [4096, 8192, 16384, 32768]
    assert parse_lengths("4K,1M") == [4096, 1 << 20]
    assert format_length(1 << 20) == "1M" and format_length(1000) == "1000"
    for bad in ("", "12Q", "-1", "0", "1.5K"):
        with pytest.raises(ValueError):
            parse_length(bad)

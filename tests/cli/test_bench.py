"""``longnet bench`` options and the attention benchmark through the CLI (the measurements
themselves: tests/bench/)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from longnet_cli.cli import cli


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

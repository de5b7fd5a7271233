"""The command-line contract, subcommand by subcommand: exit codes (0 done, 1 failed, 2 bad usage
or input), ``--json`` on stdout with progress on stderr only, ``--quiet``, one- or two-line
errors, and tracebacks only with ``--debug``.

Everything runs in this process through ``longnet_cli.cli.main`` (the console entry point) on
a tiny corpus and a tiny run, so the whole file takes seconds.
"""

from __future__ import annotations

import fcntl
import json
import shutil
from pathlib import Path

import pytest
import yaml

from longnet_cli import __version__
from longnet_cli.cli import main
from longnet_cli.data.sources import stdlib_path

FILES = ("json/decoder.py", "json/encoder.py")
SUBCOMMANDS = [["tokenize"], ["inspect"], ["train"], ["eval"], ["runs"], ["bench"],
               ["bench", "attention"], ["bench", "tokenize"], ["bench", "train"],
               ["bench", "generate"], ["generate"], ["export"], ["study-report"]]  # fmt: skip


def _cli(capsys, *args) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of ``longnet ARGS``."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main([str(arg) for arg in args])
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def _is_short_error(err: str) -> bool:
    lines = err.strip().splitlines()
    return 1 <= len(lines) <= 2 and lines[0].startswith("error: ") and "Traceback" not in err


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A corpus of two standard-library files and its recipe (nothing run yet)."""
    root = tmp_path_factory.mktemp("contract")
    corpus = root / "corpus"
    corpus.mkdir()
    for name in FILES:
        shutil.copy(stdlib_path() / name, corpus / Path(name).name)
    recipe = {
        "data": {"shards": str(root / "data")},
        "model": dict(
            dim=32, depth=1, heads=2, dim_head=16, segment_lengths=[32, 64], dilation_rates=[1, 2]
        ),
        "train": {"seq_len": 64, "steps": 2, "warmup_steps": 0, "seed": 1, "threads": 1},
        "checkpoint": {"every": 2},
    }
    (root / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    return root


@pytest.fixture(scope="module")
def data(workspace) -> Path:
    out = workspace / "data"
    with pytest.raises(SystemExit) as exit_info:
        main(["tokenize", str(workspace / "corpus"), "--out", str(out), "--vocab-size", "400",
              "--sample-bytes", "256K", "--workers", "1", "--quiet"])  # fmt: skip
    assert exit_info.value.code == 0
    return out


@pytest.fixture(scope="module")
def run(workspace, data) -> Path:
    out = workspace / "runs" / "tiny"
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(workspace / "recipe.yaml"), "--out", str(out), "--quiet"])
    assert exit_info.value.code == 0
    return out


# -- everywhere -----------------------------------------------------------------------------------


def test_version(capsys):
    for flag in ("--version", "-V"):
        code, out, _ = _cli(capsys, flag)
        assert code == 0 and __version__ in out


@pytest.mark.parametrize("command", SUBCOMMANDS, ids=" ".join)
def test_help(capsys, command):
    code, out, err = _cli(capsys, *command, "--help")
    assert code == 0 and out.startswith("Usage: longnet") and err == ""


@pytest.mark.parametrize("command", SUBCOMMANDS, ids=" ".join)
def test_unknown_option_is_a_two_line_usage_error(capsys, command):
    code, out, err = _cli(capsys, *command, "--frobnicate")
    assert code == 2 and out == ""
    assert _is_short_error(err) and "--frobnicate" in err
    assert err.splitlines()[1].startswith(f"usage: longnet {' '.join(command)}")


# -- success: --json on stdout, progress on stderr, --quiet ---------------------------------------


def test_tokenize_json_progress_and_quiet(capsys, workspace, data):
    args = ["tokenize", workspace / "corpus", "--out", data, "--vocab-size", "400",
            "--sample-bytes", "256K", "--workers", "1", "--json"]  # fmt: skip
    code, out, err = _cli(capsys, *args, "--force")
    assert code == 0 and json.loads(out)["documents"] == 2
    assert "tokenize" in err  # the progress bar, on stderr only
    code, out, err = _cli(capsys, *args, "--quiet")
    assert code == 0 and json.loads(out)["up_to_date"] is True and err == ""
    code, out, err = _cli(capsys, *args[:-1], "--quiet")
    assert code == 0 and "is up to date" in out and err == ""


def test_inspect_json(capsys, data):
    code, out, err = _cli(capsys, "inspect", data, "--json")
    assert code == 0 and json.loads(out)["ok"] is True and err == ""
    code, out, err = _cli(capsys, "inspect", data, "--doc", "0")
    assert code == 0 and out == (stdlib_path() / FILES[0]).read_text()  # stdout: the text only
    assert "OK: all 1 shards verified" in err


def test_train_json_progress_and_quiet(capsys, workspace, data, run):
    recipe = workspace / "recipe.yaml"
    code, out, err = _cli(capsys, "train", recipe, "--out", run, "--json", "--quiet")
    assert code == 0 and err == ""
    assert json.loads(out)["status"] == "already-finished"
    other = workspace / "runs" / "progress"
    code, out, err = _cli(capsys, "train", recipe, "--out", other, "--set", "train.steps=1",
                          "--json")  # fmt: skip
    assert code == 0 and json.loads(out)["final_step"] == 1
    assert "train" in err  # the progress bar


def test_eval_json_progress_and_quiet(capsys, data, run):
    code, out, err = _cli(capsys, "eval", run, "--data", data, "--json", "-", "--quiet")
    assert code == 0 and err == ""
    report = json.loads(out)
    assert report["step"] == 2 and report["context"] == 64
    code, out, err = _cli(capsys, "eval", run, "--docs", "1", "--json", "-")
    assert code == 0 and json.loads(out)["documents"] == 1
    assert "eval" in err and "using data:" in err  # progress and the defaults chosen


def test_runs_json(capsys, workspace, run):
    code, out, err = _cli(capsys, "runs", "--runs-dir", workspace / "runs", "--json")
    assert code == 0 and err == ""
    (tiny,) = [r for r in json.loads(out)["runs"] if r["name"] == "tiny"]
    assert (tiny["step"], tiny["target_steps"], tiny["finished"]) == (2, 2, True)


def test_bench_attention_json(capsys):
    args = ["bench", "attention", "--lengths", "128", "--segments", "64", "--rates", "1",
            "--dense-max", "128", "--repeats", "1", "--json"]  # fmt: skip
    code, out, _ = _cli(capsys, *args)
    assert code == 0 and json.loads(out)["rows"]


# -- failures: exit 1, one line -------------------------------------------------------------------


def test_tokenize_fails_while_another_writes(capsys, workspace, data):
    with open(data / ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        code, out, err = _cli(capsys, "tokenize", workspace / "corpus", "--out", data, "--quiet")
    assert code == 1 and out == "" and _is_short_error(err) and str(data) in err


def test_inspect_fails_on_a_corrupt_shard(capsys, data, tmp_path):
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    shard = copy / "shard-00000.bin"
    content = bytearray(shard.read_bytes())
    content[10] ^= 0xFF
    shard.write_bytes(content)
    code, out, err = _cli(capsys, "inspect", copy)
    assert code == 1 and "PROBLEM" in out and _is_short_error(err)


def test_train_fails_on_a_non_finite_loss(capsys, workspace, data, tmp_path):
    diverging = ["--set", "train.lr=1e30", "--set", "train.grad_clip=0", "--set", "train.steps=5"]
    recipe = workspace / "recipe.yaml"
    code, _, err = _cli(capsys, "train", recipe, "--out", tmp_path / "nan", *diverging, "--quiet")
    assert code == 1 and _is_short_error(err) and "loss is nan" in err


def test_eval_fails_on_corrupt_weights(capsys, run, data, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (weights,) = copy.glob("checkpoints/step-*/model.safetensors")
    weights.write_bytes(weights.read_bytes()[:100])
    code, out, err = _cli(capsys, "eval", copy, "--data", data, "--quiet")
    assert code == 1 and out == "" and _is_short_error(err) and str(weights) in err
    code, _, err = _cli(capsys, "--debug", "eval", copy, "--data", data, "--quiet")
    assert code == 1 and "Traceback (most recent call last)" in err
    assert err.strip().splitlines()[-1].startswith("error: ")


# -- usage and input errors: exit 2, one or two lines naming the culprit ---------------------------


def _usage_cases(workspace: Path, data: Path, run: Path) -> list[tuple[list, str]]:
    recipe, corpus = workspace / "recipe.yaml", workspace / "corpus"
    return [
        (["tokenize", "--out", workspace / "x"], "--stdlib"),
        (["tokenize", corpus, "--stdlib", "--out", workspace / "x"], "--stdlib"),
        (["tokenize", workspace / "missing", "--out", workspace / "x"], "missing"),
        (["tokenize", corpus, "--out", workspace / "x", "--vocab-size", "10"], "--vocab-size"),
        (["inspect", corpus], "manifest.json"),
        (["inspect", data, "--doc", "99"], "--doc 99"),
        (["train", workspace / "missing.yaml"], "missing.yaml"),
        (["train", recipe, "--set", "train.stpes=3"], "steps"),
        (["train", recipe, "--set", "model.dim=-1"], "model.dim"),
        (["eval", workspace / "missing"], "missing"),
        (["eval", run, "--context", "12Q"], "12Q"),
        (["eval", run, "--data", corpus], "manifest.json"),
        (["runs", "--runs-dir", workspace / "missing"], "missing"),
        (["bench", "attention", "--lengths", "nope"], "nope"),
        (["bench", "train", workspace / "missing.yaml"], "missing.yaml"),
    ]


def test_usage_and_input_errors_exit_2(capsys, workspace, data, run):
    for args, named in _usage_cases(workspace, data, run):
        code, out, err = _cli(capsys, *args)
        assert code == 2, (args, err)
        assert out == "" and _is_short_error(err), (args, err)
        assert named in err, (args, err)


def test_debug_shows_the_traceback_anywhere_on_the_line(capsys, workspace):
    corpus = workspace / "corpus"
    code, _, err = _cli(capsys, "inspect", corpus)
    assert code == 2 and "Traceback" not in err
    for args in (["--debug", "inspect", corpus], ["inspect", corpus, "--debug"]):
        code, _, err = _cli(capsys, *args)
        assert code == 2 and "Traceback (most recent call last)" in err
        assert "CorpusError" in err and err.strip().splitlines()[-1].startswith("error: ")

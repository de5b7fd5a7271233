"""Starting a run from trained weights (train.init_from), recipes/extend_32k.yaml, mfu and
the wandb tracker: real tiny trainings through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from longnet_cli.artifacts.checkpoints import latest_checkpoint
from longnet_cli.cli import main
from longnet_cli.config.recipe import load_recipe
from longnet_cli.data.sources import stdlib_path
from longnet_cli.tokenize import TokenizeOptions, tokenize_corpus

ROOT = Path(__file__).resolve().parents[2]
FILES = ("json/decoder.py", "json/encoder.py", "csv.py", "textwrap.py", "shlex.py")
SHAPE = {"dim": 32, "depth": 2, "heads": 2, "dim_head": 16}


def _cli(*args: str) -> int:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    return exit_info.value.code


def _tokenize(out: Path, vocab_size: int) -> Path:
    options = TokenizeOptions(
        paths=tuple(stdlib_path() / name for name in FILES), out=out, vocab_size=vocab_size,
        sample_bytes=1 << 20, holdout=0.5, workers=1, progress=False,
    )  # fmt: skip
    tokenize_corpus(options)
    return out


def _recipe(directory: Path, corpus: Path, **train) -> Path:
    recipe = {
        "data": {"shards": str(corpus)},
        "model": {**SHAPE, "segment_lengths": [16, 64], "dilation_rates": [1, 4]},
        "train": {"seq_len": 64, "steps": 3, "lr": 3e-3, "seed": 1, "threads": 1, **train},
        "checkpoint": {"every": 3},
        "log": {"every": 1},
    }
    path = directory / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return _tokenize(tmp_path_factory.mktemp("extend-corpus") / "data", 600)


@pytest.fixture(scope="module")
def source_run(corpus, tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("extend-source")
    run = directory / "run"
    assert _cli("train", str(_recipe(directory, corpus)), "--out", str(run), "--quiet") == 0
    return run


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(latest_checkpoint(run).path / "model.safetensors"))


def _extend(tmp_path: Path, corpus: Path, source: Path, *sets: str) -> tuple[int, Path]:
    """Train 1 step at a negligible learning rate from ``source`` with longer sequences and a
    branch more: the weights after it are the source's, to within that step's update."""
    recipe = _recipe(tmp_path, corpus, init_from=str(source), steps=1, lr=1e-12, warmup_steps=0)
    run = tmp_path / "extended"
    code = _cli(
        "train", str(recipe), "--out", str(run), "--quiet",
        "--set", "train.seq_len=128", "--set", "model.segment_lengths=[16,64,128]",
        "--set", "model.dilation_rates=[1,4,8]", *sets,
    )  # fmt: skip
    return code, run


def test_init_from_a_run_starts_from_its_weights_and_records_where_they_came_from(
    corpus, source_run, tmp_path
):
    code, run = _extend(tmp_path, corpus, source_run)
    assert code == 0
    before, after = _weights(source_run), _weights(run)
    assert before.keys() == after.keys()
    for name in before:
        torch.testing.assert_close(after[name], before[name], rtol=0, atol=1e-9)
    state = latest_checkpoint(run).state
    source = latest_checkpoint(source_run)
    assert state["step"] == 1  # its own step count, not the source's 3
    assert state["init_from"] == {
        "path": str(source.path),
        "kind": "checkpoint",
        "step": 3,
        "tokenizer_sha256": source.state["tokenizer_sha256"],
    }
    records = _metrics(run)
    first = {key: value for key, value in records[0].items() if key != "elapsed_s"}
    assert first == {"step": 0, "init_from": state["init_from"]}
    # a fresh optimizer: the source's moments are not carried over
    optimizer = torch.load(latest_checkpoint(run).path / "optimizer.pt", weights_only=True)
    assert all(s["step"] == 1 for s in optimizer["state"].values())


def test_init_from_an_export(corpus, source_run, tmp_path):
    exported = tmp_path / "exported"
    assert _cli("export", str(source_run), "--out", str(exported), "--quiet") == 0
    code, run = _extend(tmp_path, corpus, exported)
    assert code == 0
    before, after = _weights(source_run), _weights(run)
    for name in before:
        torch.testing.assert_close(after[name], before[name], rtol=0, atol=1e-9)
    assert latest_checkpoint(run).state["init_from"]["kind"] == "export"


def test_a_shape_change_is_refused_before_anything_is_written(corpus, source_run, tmp_path, capsys):
    code, run = _extend(tmp_path, corpus, source_run, "--set", "model.dim_head=8")
    assert code == 2
    err = capsys.readouterr().err
    assert "blocks.0.attn" in err and "(32, 32)" in err and "(16, 32)" in err
    assert not (run / "checkpoints").exists()
    missing = tmp_path / "nowhere"
    code, _ = _extend(tmp_path, corpus, missing)
    assert code == 2 and f"train.init_from: {missing} does not exist" in capsys.readouterr().err


def test_a_different_tokenizer_is_refused(source_run, tmp_path, capsys):
    other = _tokenize(tmp_path / "other", 500)
    code, _ = _extend(tmp_path, other, source_run)
    assert code == 2
    assert "tokenize the corpus with --tokenizer" in capsys.readouterr().err


def test_metrics_carry_mfu_over_a_peak_measured_at_start(source_run):
    steps = [r for r in _metrics(source_run) if "loss" in r]
    assert len(steps) == 3
    peaks = {r["peak_flops"] for r in steps}
    assert len(peaks) == 1 and peaks.pop() > 1e8  # measured once, recorded with every figure
    assert all(0 < r["mfu"] < 1 for r in steps)
    # mfu is the model FLOPs of the logged tokens/s over that peak
    from longnet_cli.model.flops import training_flops_per_token

    recipe = load_recipe(latest_checkpoint(source_run).path / "recipe.yaml")
    per_token = training_flops_per_token(recipe.model.build(600), 64)
    for record in steps:
        expected = record["tokens_per_s"] * per_token / record["peak_flops"]
        assert record["mfu"] == pytest.approx(expected, rel=1e-9)


def test_the_peak_is_measured_in_the_compute_dtype():
    from longnet_cli.runtime import measure_peak_flops

    peak = measure_peak_flops("cpu", torch.bfloat16, size=128, seconds=0.01)
    assert peak.dtype == "float32" and peak.size == 128  # a CPU's floor is fp32
    assert peak.flops_per_s > 0 and peak.to_json()["matmul_size"] == 128


def test_wandb_logs_offline_with_the_run_name_and_recipe(corpus, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "tracked"
    recipe = _recipe(tmp_path, corpus, steps=2)
    code = _cli("train", str(recipe), "--out", str(run), "--quiet", "--set", "log.wandb=true")
    assert code == 0
    offline = sorted((run / "wandb").glob("offline-run-*"))
    assert len(offline) == 1  # offline: written under the run directory, nothing sent
    (log,) = offline[0].glob("*.wandb")
    # the run's record log (protobuf: strings appear as they are): the run's name, the
    # resolved recipe as config, and the logged metrics
    data = log.read_bytes()
    for expected in (b"tracked", b"model.dim", b"train.steps", b"loss", b"mfu", b"tokens_per_s"):
        assert expected in data, expected


def test_extend_32k_keeps_the_quickstart_shape_and_runs_at_a_tiny_scale(corpus, tmp_path):
    quickstart = load_recipe(ROOT / "recipes" / "quickstart.yaml")
    extend = load_recipe(ROOT / "recipes" / "extend_32k.yaml")
    shape_keys = ("dim", "depth", "heads", "dim_head", "ff_mult", "tie_embeddings", "qk_norm",
                  "parallel_blocks", "positions")  # fmt: skip
    for key in shape_keys:
        assert getattr(extend.model, key) == getattr(quickstart.model, key), key
    assert extend.train.seq_len == 32 * 1024 and max(extend.model.segment_lengths) == 32 * 1024
    assert extend.data.shards == quickstart.data.shards
    assert extend.train.init_from == "runs/quickstart/run"
    # the shipped pair, shrunk: a "quickstart" of the same shape keys, then the extension
    small = ["--set", "model.dim=32", "--set", "model.depth=1", "--set", "model.heads=2",
             "--set", "model.dim_head=16", "--set", "train.threads=1"]  # fmt: skip
    first = tmp_path / "quickstart"
    assert _cli(
        "train", str(ROOT / "recipes" / "quickstart.yaml"), "--out", str(first), "--quiet",
        "--set", f"data.shards={corpus}", "--set", "train.seq_len=64", "--set", "train.steps=2",
        "--set", "train.warmup_steps=0", "--set", "checkpoint.every=2",
        "--set", "model.segment_lengths=[16,32,64]", "--set", "model.dilation_rates=[1,2,4]",
        *small,
    ) == 0  # fmt: skip
    second = tmp_path / "extended"
    assert _cli(
        "train", str(ROOT / "recipes" / "extend_32k.yaml"), "--out", str(second), "--quiet",
        "--set", f"data.shards={corpus}", "--set", f"train.init_from={first}",
        "--set", "train.seq_len=256", "--set", "train.steps=2", "--set", "train.warmup_steps=0",
        "--set", "model.segment_lengths=[16,32,64,128,256]",
        "--set", "model.dilation_rates=[1,2,4,8,16]", "--set", "checkpoint.every=2", *small,
    ) == 0  # fmt: skip
    assert latest_checkpoint(second).state["init_from"]["path"] == str(
        latest_checkpoint(first).path
    )
    assert _cli("eval", str(first), str(second), "--context", "64,256", "--quiet") == 0

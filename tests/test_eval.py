"""``longnet eval``: bucketed perplexity against an independent computation, windows, several
contexts, defaults, the JSON report, refusals (exit 2), the plot and ``evaluate_model``."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from longnet_cli.checkpoints import latest_checkpoint, load_model_weights
from longnet_cli.cli import main
from longnet_cli.data.shards import TokenizedCorpus
from longnet_cli.data.sources import stdlib_path
from longnet_cli.evaluate import bucket_starts, evaluate_model, token_byte_lengths
from longnet_cli.recipes import Recipe
from longnet_cli.tokenize import TokenizeOptions, tokenize_corpus

REQUIRED_KEYS = {
    "checkpoint", "data", "context", "overall", "buckets", "tokens_per_s", "peak_memory_bytes",
    "documents", "step", "chosen",
}  # fmt: skip
FILES = ("json/decoder.py", "json/encoder.py", "csv.py")


def _tokenize(out: Path, vocab_size: int) -> Path:
    tokenize_corpus(
        TokenizeOptions(
            paths=tuple(stdlib_path() / name for name in FILES),
            out=out,
            vocab_size=vocab_size,
            sample_bytes=1 << 20,
            workers=1,
            progress=False,
        )
    )
    return out


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """A few standard-library modules (thousands of tokens each), 600-token vocabulary."""
    return _tokenize(tmp_path_factory.mktemp("eval-corpus") / "data", 600)


@pytest.fixture(scope="session")
def other_corpus(tmp_path_factory) -> Path:
    """The same files with another tokenizer (another vocabulary size, so another sha256)."""
    return _tokenize(tmp_path_factory.mktemp("eval-other") / "data", 500)


def _cli(*args: str) -> int:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    return exit_info.value.code


@pytest.fixture(scope="session")
def run(corpus, tmp_path_factory) -> Path:
    """A tiny model trained a few steps on ``corpus`` (one CPU thread, seq_len 64)."""
    directory = tmp_path_factory.mktemp("eval-run")
    recipe = {
        "data": {"shards": str(corpus)},
        "model": {
            "dim": 32,
            "depth": 2,
            "heads": 2,
            "dim_head": 16,
            "segment_lengths": [32, 64],
            "dilation_rates": [1, 2],
        },
        "train": {"seq_len": 64, "steps": 3, "lr": 3e-3, "seed": 1, "threads": 1},
        "checkpoint": {"every": 3},
    }
    path = directory / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(path), "--out", str(directory / "runs" / "tiny"), "--quiet"])
    assert exit_info.value.code == 0
    return directory / "runs" / "tiny"


@pytest.fixture(scope="session")
def model(run):
    checkpoint = latest_checkpoint(run)
    model = Recipe.from_saved(checkpoint.state["recipe"]).model.build(600)
    load_model_weights(checkpoint.path, model)
    return model.eval()


def _eval_json(capsys, *args: str) -> dict:
    assert _cli("eval", *args, "--json", "-", "--quiet") == 0
    return json.loads(capsys.readouterr().out)


def _nll(model, tokens: np.ndarray) -> np.ndarray:
    """Per-target NLL of one sequence, computed here without the eval stage."""
    ids = torch.tensor(np.asarray(tokens, dtype=np.int64))[None]
    with torch.inference_mode():
        return model.token_nll(ids)[0].double().numpy()


def test_buckets_match_an_independent_computation(run, corpus, model, capsys):
    report = _eval_json(capsys, str(run), "--context", "64", "--buckets", "16,32", "--docs", "2")
    data = TokenizedCorpus.open(corpus)
    token_bytes = token_byte_lengths(data)
    bounds = [(0, 16), (16, 32), (32, 64)]
    sums = {bound: [0, 0.0, 0] for bound in bounds}  # tokens, nll, bytes
    for doc in range(2):
        tokens = data.document(doc)[:64]
        for index, nll in enumerate(_nll(model, tokens).tolist()):
            position = index + 1  # the target's index in the sequence
            bound = next(b for b in bounds if b[0] <= position < b[1])
            sums[bound][0] += 1
            sums[bound][1] += nll
            sums[bound][2] += int(token_bytes[tokens[position]])
    assert [(b["start"], b["end"]) for b in report["buckets"]] == bounds
    for bucket, bound in zip(report["buckets"], bounds):
        tokens, nll, size = sums[bound]
        assert bucket["tokens"] == tokens
        assert bucket["loss"] == pytest.approx(nll / tokens, rel=1e-6)
        assert bucket["bpb"] == pytest.approx(nll / math.log(2) / size, rel=1e-6)
        assert bucket["ppl"] == pytest.approx(math.exp(bucket["loss"]))
    overall = report["overall"]
    assert overall["tokens"] == sum(b["tokens"] for b in report["buckets"]) == 2 * 63
    weighted = sum(b["loss"] * b["tokens"] for b in report["buckets"]) / overall["tokens"]
    assert overall["loss"] == pytest.approx(weighted)
    assert overall["ppl"] == pytest.approx(math.exp(overall["loss"]))
    assert report["documents"] == 2 and report["context"] == 64 and report["step"] == 3


def test_token_bytes_sum_to_each_document_source_size(corpus):
    data = TokenizedCorpus.open(corpus)
    token_bytes = token_byte_lengths(data)
    sizes = data.documents().column("bytes").to_pylist()
    for doc, size in enumerate(sizes):
        assert int(token_bytes[np.asarray(data.document(doc), dtype=np.int64)].sum()) == size


def test_default_buckets_are_powers_of_two_from_1k():
    assert bucket_starts(5000) == [0, 1024, 2048, 4096]
    assert bucket_starts(1024) == [0]
    assert bucket_starts(64, [16, 32, 100]) == [0, 16, 32]


def test_windows_score_every_token_and_docs_limits(run, corpus, capsys):
    lengths = TokenizedCorpus.open(corpus).document_lengths()
    assert lengths[0] > 3 * 256  # long enough to need several windows
    first = _eval_json(capsys, str(run), "--context", "256", "--docs", "1")
    assert first["overall"]["tokens"] == 255
    whole = _eval_json(capsys, str(run), "--context", "256", "--docs", "1", "--windows")
    windows = [min(256, int(lengths[0]) - start) for start in range(0, int(lengths[0]), 256)]
    assert whole["overall"]["tokens"] == sum(n - 1 for n in windows)
    two = _eval_json(capsys, str(run), "--context", "256", "--docs", "2")
    assert two["documents"] == 2
    assert two["overall"]["tokens"] == sum(min(256, int(n)) - 1 for n in lengths[:2])


def test_several_contexts_score_the_same_final_tokens(run, corpus, model, capsys):
    report = _eval_json(capsys, str(run), "--context", "16,64,256", "--docs", "2")
    assert report["context"] == 256
    contexts = report["contexts"]
    assert [c["context"] for c in contexts] == [16, 64, 256]
    assert {c["final"]["tokens"] for c in contexts} == {2 * 15}
    assert contexts[0]["final"] == contexts[0]["overall"]  # the shortest: final = its window
    assert contexts[-1]["overall"] == report["overall"]
    data = TokenizedCorpus.open(corpus)
    tail = np.concatenate([_nll(model, data.document(doc)[:256])[-15:] for doc in range(2)])
    assert contexts[-1]["final"]["loss"] == pytest.approx(tail.mean(), rel=1e-6)
    assert set(contexts[0]) == {"context", "overall", "buckets", "final"}


def test_table_on_stdout_and_json_file_with_exactly_the_keys(run, tmp_path, capsys):
    out = tmp_path / "report.json"
    args = [str(run), "--context", "16,64", "--docs", "1", "--buckets", "8", "--quiet"]
    assert _cli("eval", *args, "--json", str(out)) == 0
    table = capsys.readouterr().out
    assert "overall" in table and "8-64" in table and "final tokens" in table
    report = json.loads(out.read_text())
    assert set(report) == REQUIRED_KEYS | {"contexts"}
    assert set(report["overall"]) == {"tokens", "loss", "ppl", "bpb"}
    assert set(report["buckets"][0]) == {"start", "end", "tokens", "loss", "ppl", "bpb"}
    assert report["tokens_per_s"] > 0 and report["peak_memory_bytes"] > 0
    assert not list(tmp_path.glob(".*.tmp"))
    single = _eval_json(capsys, str(run), "--docs", "1")
    assert set(single) == REQUIRED_KEYS
    assert single["context"] == 64  # train.seq_len by default
    assert any("train.seq_len" in line for line in single["chosen"])


def test_no_checkpoint_argument_picks_the_most_recent_run(run, tmp_path, capsys):
    runs = tmp_path / "runs"
    for name in ("older", "newer"):
        shutil.copytree(run, runs / name)
    old_state = next((runs / "older" / "checkpoints").iterdir()) / "state.json"
    os.utime(old_state, (1, 1))
    newer_state = next((runs / "newer" / "checkpoints").iterdir()) / "state.json"
    os.utime(newer_state, (2, 2))
    (runs / "not-a-run").mkdir()
    assert _cli("eval", "--runs-dir", str(runs), "--docs", "1", "--context", "32") == 0
    captured = capsys.readouterr()
    assert f"using checkpoint: {newer_state.parent}" in captured.err
    assert "data.shards" in captured.err  # the data came from the run's recipe
    os.utime(old_state)  # now the older run's checkpoint is the newest
    report = _eval_json(capsys, "--runs-dir", str(runs), "--docs", "1", "--context", "32")
    assert report["checkpoint"] == str(old_state.parent)
    assert any("checkpoint" in line for line in report["chosen"])


def test_refusals_exit_2_with_a_clear_message(run, corpus, other_corpus, tmp_path, capsys):
    empty = tmp_path / "empty-runs"
    empty.mkdir()
    assert _cli("eval", "--runs-dir", str(empty)) == 2
    assert f"no checkpoint found under {empty}" in capsys.readouterr().err
    assert _cli("eval", str(tmp_path)) == 2
    assert "no checkpoint found in" in capsys.readouterr().err

    assert _cli("eval", str(run), "--data", str(other_corpus), "--quiet") == 2
    err = capsys.readouterr().err
    trained = TokenizedCorpus.open(corpus).manifest["tokenizer_sha256"]
    other = TokenizedCorpus.open(other_corpus).manifest["tokenizer_sha256"]
    assert trained in err and other in err and str(other_corpus) in err

    assert _cli("eval", str(run), "--context", "12Q") == 2
    assert "12Q" in capsys.readouterr().err
    assert _cli("eval", str(run), "--docs", "0") == 2
    capsys.readouterr()

    broken = tmp_path / "broken"
    shutil.copytree(corpus, broken)
    shard = broken / "shard-00000.bin"
    shard.write_bytes(shard.read_bytes()[:-10])
    assert _cli("eval", str(run), "--data", str(broken), "--quiet") == 2
    assert str(shard) in capsys.readouterr().err


def test_plot_writes_a_png(run, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    path = tmp_path / "ppl.png"
    args = ["--context", "16,64", "--docs", "1", "--buckets", "8,16,32", "--quiet"]
    assert _cli("eval", str(run), *args, "--plot", str(path)) == 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_model_gives_the_cli_loss(run, corpus, model, capsys):
    report = _eval_json(capsys, str(run), "--context", "16,64", "--docs", "2")
    model.train()
    summary = evaluate_model(model, TokenizedCorpus.open(corpus), [64, 16], 2)
    assert model.training  # given back in the mode it came in
    model.eval()
    assert set(summary) == {"contexts"} and set(summary["contexts"]) == {"16", "64"}
    for entry in report["contexts"]:
        got = summary["contexts"][str(entry["context"])]
        assert got == pytest.approx({key: entry["overall"][key] for key in got}, rel=1e-9)

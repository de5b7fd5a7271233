"""``longnet eval``: bucketed perplexity against an independent computation, windows, several
contexts, defaults, the JSON report, refusals (exit 2), the plot and ``evaluate_model``; the
held-out split, a model's reach, several runs side by side and the copy probe."""

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

from longnet_cli.artifacts.checkpoints import latest_checkpoint, load_model_weights
from longnet_cli.cli import main
from longnet_cli.config import Recipe
from longnet_cli.data.format.manifest import read_manifest
from longnet_cli.data.format.reader import TokenizedCorpus
from longnet_cli.data.format.schema import LEGACY_DOCUMENTS_NAMES
from longnet_cli.data.format.writer import write_documents_table, write_manifest
from longnet_cli.data.sources import stdlib_path
from longnet_cli.evaluate.scorer import (
    bucket_starts,
    evaluate_model,
    resolve_precision,
    token_byte_lengths,
)
from longnet_cli.tokenize import TokenizeOptions, tokenize_corpus

REQUIRED_KEYS = {
    "checkpoint", "data", "context", "overall", "buckets", "tokens_per_s", "peak_memory_bytes",
    "documents", "step", "chosen", "split", "skipped", "min_tokens", "warnings", "reach", "runs",
}  # fmt: skip
RUN_KEYS = {
    "run", "checkpoint", "recipe", "step", "tokens_trained", "seq_len", "reach", "contexts",
    "probe", "tokens_per_s", "model_seconds", "precision",
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


def _set_splits(directory: Path, heldout: set[int] | None) -> Path:
    """Mark documents ``heldout`` as held out, the others as training documents (manifest
    ``splits`` and the documents table's ``split``); None: a corpus tokenized before splits
    existed (no ``split`` column, no ``splits`` in the manifest)."""
    data = TokenizedCorpus.open(directory)
    table, lengths = data.documents(), data.document_lengths()
    manifest = read_manifest(directory)
    manifest.pop("splits", None)
    if heldout is None:
        write_documents_table(directory, table.select(LEGACY_DOCUMENTS_NAMES))
    else:
        names = ["heldout" if i in heldout else "train" for i in range(table.num_rows)]
        write_documents_table(directory, table.drop(["split"]).append_column("split", [names]))
        manifest["splits"] = {"holdout": 0.5, **{
            split: {"documents": names.count(split),
                    "tokens": int(sum(n + 1 for n, s in zip(lengths, names) if s == split))}
            for split in ("train", "heldout")
        }}  # fmt: skip
    write_manifest(directory, manifest)
    return directory


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """A few standard-library modules (thousands of tokens each), 600-token vocabulary;
    documents 0 and 1 held out, document 2 for training."""
    return _set_splits(_tokenize(tmp_path_factory.mktemp("eval-corpus") / "data", 600), {0, 1})


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
    assert _cli("eval", str(run), "--data", str(broken), "--quiet") == 1  # damaged data
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


# -- the held-out split ---------------------------------------------------------------------------


def _eval_err(capsys, *args: str) -> tuple[dict, str]:
    assert _cli("eval", *args, "--json", "-") == 0
    captured = capsys.readouterr()
    return json.loads(captured.out), captured.err


def test_heldout_documents_by_default_and_split_option(run, corpus, model, capsys):
    report, err = _eval_err(capsys, str(run), "--context", "64")
    assert report["split"] == "heldout" and report["documents"] == 2  # documents 0 and 1
    assert f"eval: data {corpus}, split heldout (2 documents)" in err
    assert "warning" not in err
    report, err = _eval_err(capsys, str(run), "--context", "64", "--split", "train")
    assert report["split"] == "train" and report["documents"] == 1
    assert "split train (1 document) (training-set figures)" in err
    data = TokenizedCorpus.open(corpus)
    assert report["overall"]["loss"] == pytest.approx(_nll(model, data.document(2)[:64]).mean())
    report = _eval_json(capsys, str(run), "--context", "64", "--split", "all", "--docs", "3")
    assert (report["split"], report["documents"]) == ("all", 3)
    report = _eval_json(capsys, str(run), "--context", "64", "--docs", "1")
    assert report["documents"] == 1 and report["overall"]["tokens"] == 63  # first of the split


@pytest.mark.parametrize("heldout", [None, set()], ids=["before-splits", "holdout-0"])
def test_corpus_without_heldout_documents_warns_training_set_figures(
    run, corpus, tmp_path, capsys, heldout
):
    data = tmp_path / "data"
    shutil.copytree(corpus, data)
    _set_splits(data, heldout)
    assert TokenizedCorpus.open(data).has_splits is (heldout is not None)
    report, err = _eval_err(capsys, str(run), "--data", str(data), "--context", "32", "--quiet")
    assert report["split"] == "train" and report["documents"] == 3
    (line,) = err.splitlines()  # the warning, even with --quiet
    assert line.startswith("warning: ") and "training-set figures" in line and str(data) in line
    assert report["warnings"] == [line.removeprefix("warning: ")]


# -- reach ----------------------------------------------------------------------------------------


def test_reach_is_printed_and_a_context_beyond_it_warned(run, capsys):
    report, err = _eval_err(capsys, str(run), "--context", "32,64", "--docs", "1")
    assert report["reach"] == 64 and report["runs"][0]["reach"] == 64
    assert "warning" not in err and report["warnings"] == []
    report, err = _eval_err(capsys, str(run), "--context", "16,256", "--docs", "1")
    (warning,) = [line for line in err.splitlines() if line.startswith("warning:")]
    assert "--context 256 exceeds its reach 64" in warning
    assert "independent blocks of 64 tokens" in warning
    assert _cli("eval", str(run), "--context", "16,256", "--docs", "1", "--quiet") == 0
    out = capsys.readouterr().out
    assert "reach: 64 tokens" in out and "256*" in out and "beyond the model's reach" in out


def test_min_tokens_defaults_to_the_largest_context_and_counts_skips(run, corpus, capsys):
    lengths = TokenizedCorpus.open(corpus).document_lengths()
    assert lengths[0] < 5600 <= lengths[1]  # the held-out documents
    report, err = _eval_err(capsys, str(run), "--context", "16,5600")
    assert (report["documents"], report["skipped"], report["min_tokens"]) == (1, 1, 5600)
    assert "eval: skipped 1 document shorter than 5600 tokens (--min-tokens)" in err
    assert "using min tokens: 5600 (the largest context" in err
    assert report["contexts"][-1]["overall"]["tokens"] == 5599  # never less context
    report = _eval_json(capsys, str(run), "--context", "16,5600", "--min-tokens", "2")
    assert (report["documents"], report["skipped"], report["min_tokens"]) == (2, 0, 2)
    report = _eval_json(capsys, str(run), "--context", "64", "--min-tokens", "5600", "--docs", "1")
    assert (report["documents"], report["skipped"]) == (1, 1)  # passed over on the way


# -- several runs side by side --------------------------------------------------------------------


def _copy_run(run: Path, to: Path, change) -> Path:
    """A copy of ``run`` whose latest checkpoint's state.json is edited by ``change(state)``."""
    shutil.copytree(run, to)
    (state_file,) = (to / "checkpoints").glob("step-*/state.json")
    state = json.loads(state_file.read_text())
    change(state)
    state_file.write_text(json.dumps(state))
    return to


def _wider(state: dict) -> None:
    state["recipe"]["model"]["segment_lengths"] = [32, 128]  # the same weights, reach 128
    state["recipe_source"] = "recipes/study/wider.yaml"


def test_runs_side_by_side_on_the_same_final_tokens(run, corpus, model, tmp_path, capsys):
    other = _copy_run(run, tmp_path / "wider", _wider)
    args = ["--context", "16,64,256", "--docs", "2", "--buckets", "32"]
    report = _eval_json(capsys, str(run), str(other), *args)
    assert set(report) == {
        "data", "split", "documents", "skipped", "min_tokens", "peak_memory_bytes", "chosen",
        "warnings", "context_lengths", "distances", "runs",
    }  # fmt: skip
    assert report["context_lengths"] == [16, 64, 256] and report["distances"] is None
    assert (report["split"], report["documents"]) == ("heldout", 2)
    first, second = report["runs"]
    assert set(first) == set(second) == RUN_KEYS
    assert (first["run"], first["recipe"], first["reach"], first["step"]) == (
        str(run),
        "recipe",
        64,
        3,
    )
    assert (second["run"], second["recipe"], second["reach"]) == (str(other), "wider", 128)
    assert [c["context"] for c in first["contexts"]] == [16, 64, 256]
    assert {c["final"]["tokens"] for r in (first, second) for c in r["contexts"]} == {2 * 15}
    single = _eval_json(capsys, str(run), *args)
    assert single["runs"][0]["contexts"] == first["contexts"]  # as when scored alone
    data = TokenizedCorpus.open(corpus)
    tail = np.concatenate([_nll(model, data.document(doc)[:256][-64:])[-15:] for doc in (0, 1)])
    assert first["contexts"][1]["final"]["loss"] == pytest.approx(tail.mean(), rel=1e-6)
    for got, expected in zip(second["contexts"][:2], first["contexts"][:2]):  # within both reaches
        assert got["final"]["loss"] == pytest.approx(expected["final"]["loss"], rel=1e-5)
    warnings = report["warnings"]
    assert len(warnings) == 2 and "reach 64" in warnings[0] and "reach 128" in warnings[1]

    assert _cli("eval", str(run), str(other), *args, "--quiet") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == ["run", "recipe", "step", "reach", "16", "64", "256"]
    row_a, row_b = lines[2].split(), lines[3].split()
    assert row_a[:4] == [str(run), "recipe", "3", "64"] and row_b[:4] == [
        str(other),
        "wider",
        "3",
        "128",
    ]
    assert float(row_a[5]) == pytest.approx(first["contexts"][1]["final"]["ppl"], abs=0.01)
    assert row_a[6].endswith("*") and row_b[6].endswith("*") and not row_a[5].endswith("*")
    assert (
        f"== {run} (recipe), step 3, reach 64" in lines
        and f"== {other} (wider), step 3, reach 128" in lines
    )


def test_runs_need_a_context_when_seq_len_differ(run, tmp_path, capsys):
    longer = _copy_run(run, tmp_path / "longer", lambda s: s["recipe"]["train"].update(seq_len=128))
    assert _cli("eval", str(run), str(longer), "--docs", "1", "--quiet") == 2
    err = capsys.readouterr().err
    assert "--context is required" in err and "seq_len" in err
    assert f"{run} 64" in err and f"{longer} 128" in err
    assert _cli("eval", str(run), str(longer), "--docs", "1", "--context", "64", "--quiet") == 0


def test_runs_with_different_tokenizers_exit_2_naming_two(run, tmp_path, capsys):
    foreign = _copy_run(run, tmp_path / "foreign", lambda s: s.update(tokenizer_sha256="0" * 64))
    assert _cli("eval", str(run), str(foreign), "--context", "16", "--quiet") == 2
    err = capsys.readouterr().err
    assert "tokenizers differ" in err and str(run) in err and str(foreign) in err


def test_plot_of_several_runs_names_each_run(run, tmp_path, capsys, monkeypatch):
    pytest.importorskip("matplotlib")
    import matplotlib.axes

    labels = []
    original = matplotlib.axes.Axes.plot
    monkeypatch.setattr(
        matplotlib.axes.Axes,
        "plot",
        lambda self, *a, **k: labels.append(k.get("label")) or original(self, *a, **k),
    )
    other = _copy_run(run, tmp_path / "wider", _wider)
    path = tmp_path / "ppl.png"
    args = ["--context", "16,64", "--docs", "1", "--buckets", "8,32", "--quiet"]
    assert _cli("eval", str(run), str(other), *args, "--plot", str(path)) == 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert labels == [f"{run} (recipe), context 16", f"{run} (recipe), context 64",
                      f"{other} (wider), context 16", f"{other} (wider), context 64"]  # fmt: skip


# -- the copy probe -------------------------------------------------------------------------------


def test_copy_probe_against_an_independent_computation(run, corpus, model, tmp_path, capsys):
    args = ["--context", "64", "--docs", "2", "--probe", "copy", "--distances", "16,64"]
    report = _eval_json(capsys, str(run), *args)
    data = TokenizedCorpus.open(corpus)
    probe = {figure["distance"]: figure for figure in report["probe"]}
    assert report["runs"][0]["probe"] == report["probe"]
    for distance, within in ((16, True), (64, False)):  # 2d <= reach 64, then 2d > 64
        first = second = 0.0
        for doc in (0, 1):
            span = data.document(doc)[:distance]
            nll = _nll(model, np.concatenate([span, span]))
            first += nll[: distance - 1].sum()  # positions 1 .. d-1
            second += nll[distance:].sum()  # positions d+1 .. 2d-1: the same tokens again
        figure = probe[distance]
        assert (figure["documents"], figure["tokens"]) == (2, 2 * (distance - 1))
        assert figure["within_reach"] is within
        assert figure["first_loss"] == pytest.approx(first / figure["tokens"], rel=1e-6)
        assert figure["second_loss"] == pytest.approx(second / figure["tokens"], rel=1e-6)
        assert figure["ratio"] == pytest.approx(second / first, rel=1e-6)

    other = _copy_run(run, tmp_path / "wider", _wider)
    assert _cli("eval", str(run), str(other), *args, "--quiet") == 0
    out = capsys.readouterr().out
    table = out[out.index("copy probe") :].splitlines()
    assert table[1].split() == ["run", "d=16", "d=64"]
    assert table[2].split()[0] == str(run) and table[2].split()[2].endswith("*")
    assert not table[3].split()[2].endswith("*")  # reach 128: 2 x 64 fits
    assert table[4].split() == ["documents", "2", "2"]
    assert "2d > the model's reach" in table[5]
    both = _eval_json(capsys, str(run), str(other), *args)
    assert both["distances"] == [16, 64]
    assert both["runs"][0]["probe"] == report["probe"]


# -- precision ------------------------------------------------------------------------------------


def test_resolve_precision():
    assert resolve_precision("bf16", "auto", "cuda") == "bf16"
    assert resolve_precision("bf16", "auto", "cpu") == "bf16"  # the recipe says bf16
    assert resolve_precision("fp32", "auto", "cpu") == "fp32"
    assert resolve_precision("fp32", "auto", "cuda") == "fp32"
    assert resolve_precision("fp16", "auto", "cpu") == "fp32"  # fp16 needs a GPU
    assert resolve_precision("fp16", "torch", "cuda") == "fp16"
    assert resolve_precision("fp32", "flash-attn", "cuda") == "bf16"  # half precision only


def test_evaluate_model_under_bf16_autocast(run, corpus, model):
    """precision="bf16" scores under autocast (figures move by bf16 rounding, no more); the
    NLL is still reduced in float32."""
    data = TokenizedCorpus.open(corpus)
    fp32 = evaluate_model(model, data, [64], 2)["contexts"]["64"]
    bf16 = evaluate_model(model, data, [64], 2, precision="bf16")["contexts"]["64"]
    assert bf16["tokens"] == fp32["tokens"]
    assert bf16["loss"] != fp32["loss"]  # autocast took effect
    assert bf16["loss"] == pytest.approx(fp32["loss"], rel=2e-2)
    with pytest.raises(ValueError, match="precision"):
        evaluate_model(model, data, [64], 2, precision="int8")


def _flash_attn_bf16(state: dict) -> None:
    state["recipe"]["model"]["backend"] = "flash-attn"
    state["recipe"]["train"]["precision"] = "bf16"


def test_eval_of_a_flash_attn_bf16_run_runs_here(run, tmp_path, capsys):
    """A run trained with backend flash-attn under bf16 is scored under its precision, with a
    kernel that runs on this machine; --precision overrides the recipe's."""
    other = _copy_run(run, tmp_path / "flash", _flash_attn_bf16)
    args = ["--context", "64", "--docs", "2"]
    plain = _eval_json(capsys, str(run), *args)
    flash = _eval_json(capsys, str(other), *args)
    forced = _eval_json(capsys, str(other), *args, "--precision", "fp32")
    assert plain["runs"][0]["precision"] == "fp32" == forced["runs"][0]["precision"]
    assert flash["runs"][0]["precision"] == "bf16"
    loss = plain["overall"]["loss"]
    assert flash["overall"]["loss"] == pytest.approx(loss, rel=2e-2)
    assert forced["overall"]["loss"] == pytest.approx(loss, rel=1e-6)
    assert _cli("eval", str(other), *args, "--precision", "fp8", "--quiet") == 2

"""Smeared keys through ``longnet eval`` and ``longnet generate`` on a tiny run: eval's
figures are the model's own full forward (``token_nll``) of each window scored from a stream
start; generate's prefill runs the whole prompt (its note says so) and its greedy tokens are the
full forward's argmax, step by step, at prompts ending before and after a block boundary."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import exit_code, fresh_run, tokenize_stdlib_files

from longnet_cli.artifacts.loading import load_model
from longnet_cli.data.format.reader import TokenizedCorpus
from longnet_cli.data.splits import select_documents

FILES = ("json/decoder.py", "json/encoder.py", "csv.py", "textwrap.py", "shlex.py")
VOCAB = 600
CONTEXT = 64  # train.seq_len and the longest segment: the block of a prefill without smearing
BUCKETS = (16, 32)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return tokenize_stdlib_files(tmp_path_factory.mktemp("smeared-corpus") / "data", FILES, VOCAB)


@pytest.fixture(scope="module")
def run(corpus, tmp_path_factory) -> Path:
    """A tiny model with smeared keys, its gates apart per head and layer and its matrices
    scaled up (outputs that depend on the context), saved as a run's checkpoint."""
    model = {"dim": 32, "depth": 2, "heads": 2, "dim_head": 16, "smeared_keys": True,
             "segment_lengths": [16, CONTEXT], "dilation_rates": [1, 4]}  # fmt: skip
    return fresh_run(
        tmp_path_factory.mktemp("smeared-run") / "run", corpus, VOCAB, model, scale=8.0
    )


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_eval_windows_are_the_models_full_forward_from_a_stream_start(run, corpus, tmp_path):
    """``longnet eval --windows``: every window of a document is one sequence whose first
    position smears with a zero key; each bucket's tokens and summed NLL equal
    ``model.token_nll`` of the same windows."""
    out = tmp_path / "eval.json"
    assert exit_code(
        "eval", str(run), "--context", str(CONTEXT), "--docs", "2", "--windows",
        "--buckets", ",".join(map(str, BUCKETS)), "--json", str(out), "--quiet",
    ) == 0  # fmt: skip
    report = json.loads(out.read_text())

    model = load_model(run)
    assert model.config.smeared_keys
    data = TokenizedCorpus.open(corpus)
    starts = [0, *BUCKETS]
    tokens, nll = np.zeros(len(starts), np.int64), np.zeros(len(starts))
    windows = 0
    for doc_id in select_documents(data, "heldout", 2).doc_ids:
        document = data.document(doc_id).astype(np.int64)
        for begin in range(0, len(document), CONTEXT):
            window = torch.from_numpy(document[begin : begin + CONTEXT])[None]  # (1, n)
            if window.shape[1] < 2:
                continue
            windows += 1
            with torch.inference_mode():
                losses = model.token_nll(window)[0].double().numpy()  # target p at index p-1
            index = np.searchsorted(starts, np.arange(1, len(losses) + 1), side="right") - 1
            tokens += np.bincount(index, minlength=len(starts))
            nll += np.bincount(index, weights=losses, minlength=len(starts))
    assert windows > 2  # documents longer than one window: later windows start streams too
    assert len(document) >= 2 * CONTEXT
    buckets = report["buckets"]
    assert [b["start"] for b in buckets] == starts
    assert [b["tokens"] for b in buckets] == tokens.tolist()
    for bucket, expected in zip(buckets, nll / tokens):
        assert math.isclose(bucket["loss"], expected, rel_tol=1e-9), bucket
    assert math.isclose(report["overall"]["loss"], nll.sum() / tokens.sum(), rel_tol=1e-9)
    # a window is not the continuation of the one before: carrying the previous window's last
    # key (a forward over both; its blocks of 64 are the same) would give other figures
    with torch.inference_mode():
        both = torch.from_numpy(document[: 2 * CONTEXT])[None]
        carried = model.token_nll(both)[0, CONTEXT:].double().numpy()  # the second window's
        alone = model.token_nll(both[:, CONTEXT:])[0].double().numpy()
    assert np.abs(carried - alone).max() > 1e-2


@pytest.mark.parametrize("length", [CONTEXT - 1, CONTEXT + 1])
def test_generate_prefills_the_whole_prompt_and_decodes_the_full_forwards_tokens(
    run, corpus, tmp_path, capsysbinary, length
):
    """``longnet generate``: a prompt of ``length`` tokens is prefilled whole (stderr and JSON
    say so; without smeared keys 65 tokens would prefill 1, the block of 64 holding the last);
    the greedy tokens are the full forward's argmax over the growing sequence."""
    data = TokenizedCorpus.open(corpus)
    doc_id = select_documents(data, "heldout", 1, min_tokens=length).doc_ids[0]
    out = tmp_path / "generate.json"
    new = 24  # crosses the next 16-token segments and, from 63, the block boundary at 64
    assert exit_code(
        "generate", str(run), "--doc", str(doc_id), "--prompt-tokens", str(length),
        "--temperature", "0", "--max-new-tokens", str(new), "--json", str(out),
    ) == 0  # fmt: skip
    err = capsysbinary.readouterr().err.decode()
    assert f"prefill {length:,} (all of it: smeared keys)" in err
    result = json.loads(out.read_text())
    assert result["prompt_tokens"] == result["prefill_tokens"] == length
    generated = result["tokens"]
    assert generated

    model = load_model(run)
    sequence = torch.from_numpy(data.document(doc_id)[:length].astype(np.int64))[None]
    expected = []
    with torch.inference_mode():
        for _ in generated:
            token = int(model(sequence)[0, -1].argmax())
            expected.append(token)
            sequence = torch.cat([sequence, torch.tensor([[token]])], dim=1)
    assert generated == expected

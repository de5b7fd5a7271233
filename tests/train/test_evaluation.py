"""Evaluation during training: the documents it scores (held-out, with the fallbacks), its
figures (the scorer's summed ``Stats``, as ``evaluate_model`` gives them), the precision it runs
under, and each rank's share of the documents."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from helpers import exit_code, metrics_of, train_recipe, write_train_recipe


def test_evaluation_during_training_on_held_out_documents(corpus, tmp_path):
    from longnet_cli.config import load_recipe
    from longnet_cli.data.format.reader import TokenizedCorpus
    from longnet_cli.data.windows import TrainingWindows
    from longnet_cli.evaluate.scorer import scorable_documents
    from longnet_cli.train.evaluation import Evaluation

    recipe = write_train_recipe(
        tmp_path, corpus, train__steps=4, eval__every=2, eval__contexts=[32, 64], eval__docs=1
    )
    run = tmp_path / "run"
    assert exit_code("train", str(recipe), "--out", str(run), "--quiet") == 0
    evals = [r for r in metrics_of(run) if "eval" in r]
    assert [r["step"] for r in evals] == [2, 4]
    for record in evals:
        assert record["eval"]["split"] == "heldout" and record["eval"]["documents"] == 1
        figures = record["eval"]["contexts"]
        assert set(figures) == {"32", "64"}
        assert all(f["tokens"] > 0 and 0 < f["loss"] < 20 for f in figures.values())
    state = json.loads((run / "checkpoints" / "step-0000004" / "state.json").read_text())
    assert state["windows"] == "train-split"
    # The evaluated document is the corpus's first held-out one; training never reads it, and
    # its windows do not depend on eval.*.
    tokenized = TokenizedCorpus.open(corpus)
    heldout = tokenized.split_documents("heldout").tolist()
    assert tokenized.has_splits and len(heldout) == 1  # 3 documents: the smallest hash
    plan = Evaluation.plan(load_recipe(recipe), tokenized)
    assert plan.doc_ids == [i for i in scorable_documents(tokenized, None) if i in heldout][:1]
    assert plan.split == "heldout" and plan.train_end is None and plan.warning is None
    windows = TrainingWindows(tokenized, 64, seed=1)
    assert windows.num_tokens == tokenized.num_tokens - tokenized.document_lengths()[heldout[0]] - 1


def test_evaluation_during_training_runs_under_the_recipe_precision(corpus, tmp_path):
    """A bf16 run is evaluated under bf16 autocast: its eval figures are those of
    ``evaluate_model(precision="bf16")`` on the final weights, not the fp32 ones."""
    from longnet_cli.artifacts.checkpoints import latest_checkpoint, load_model_weights
    from longnet_cli.config import load_recipe
    from longnet_cli.data.format.reader import TokenizedCorpus
    from longnet_cli.evaluate.scorer import evaluate_model
    from longnet_cli.train.evaluation import Evaluation

    recipe_path = write_train_recipe(tmp_path, corpus, train__steps=2, train__precision="bf16",
                                eval__every=2, eval__contexts=[64], eval__docs=1)  # fmt: skip
    run = tmp_path / "run"
    # accelerate's precision is fixed once per process: a bf16 run gets its own
    command = [sys.executable, "-m", "longnet_cli", "train", str(recipe_path), "--out", str(run)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.run([*command, "--quiet"], capture_output=True, env=env)
    stderr = process.stderr
    assert process.returncode == 0, stderr.decode()
    (record,) = [r for r in metrics_of(run) if "eval" in r]
    recipe = load_recipe(recipe_path)
    tokenized = TokenizedCorpus.open(corpus)
    plan = Evaluation.plan(recipe, tokenized)
    assert plan.precision == "bf16"
    model = recipe.model.build(tokenized.vocab_size)
    load_model_weights(latest_checkpoint(run).path, model)
    scored = {
        precision: evaluate_model(model, tokenized, [64], None, doc_ids=plan.doc_ids,
                                  precision=precision)["contexts"]["64"]["loss"]
        for precision in ("bf16", "fp32")
    }  # fmt: skip
    assert scored["bf16"] != scored["fp32"]
    assert record["eval"]["contexts"]["64"]["loss"] == pytest.approx(scored["bf16"], rel=1e-6)


def test_evaluation_shares_balance_documents_by_length():
    from longnet_cli.train.evaluation import Evaluation

    class Corpus:
        def document_lengths(self):
            return [100, 10, 50, 40, 5, 1000]

    plan = Evaluation(Corpus(), [0, 1, 2, 3, 4, 5], [64], None, 16, "heldout")
    shares = plan.shares(2)
    assert sorted(doc for share in shares for doc in share) == [0, 1, 2, 3, 4, 5]
    work = [sum(min([100, 10, 50, 40, 5, 1000][i], 64) for i in share) for share in shares]
    assert max(work) - min(work) <= 64
    assert plan.shares(8)[6:] == [[], []]  # more ranks than documents: some score none


def test_figures_are_the_scorers_sums_as_evaluate_model_reports_them(corpus):
    """Scores summed over two document groups give ``evaluate_model``'s figures on all of them:
    the same keys in the same order, byte counts exact."""
    import torch

    from longnet_cli.config import Recipe
    from longnet_cli.data.format.reader import TokenizedCorpus
    from longnet_cli.evaluate.scorer import Stats, evaluate_model
    from longnet_cli.train.evaluation import Evaluation

    tokenized = TokenizedCorpus.open(corpus)
    changes = {"eval__every": 1, "eval__docs": 3, "eval__contexts": [32, 64],
               "eval__data": str(corpus)}  # fmt: skip
    recipe = Recipe.from_saved(train_recipe(corpus, **changes))
    plan = Evaluation.plan(recipe, tokenized)
    assert plan.split == "all" and len(plan.doc_ids) == 3
    torch.manual_seed(0)
    model = recipe.model.build(tokenized.vocab_size)
    first, rest = plan.doc_ids[:1], plan.doc_ids[1:]
    parts = [plan.score(model, first), plan.score(model, rest)]
    summed = {
        context: Stats(
            sum(p[context].tokens for p in parts),
            sum(p[context].nll for p in parts),
            sum(p[context].bytes for p in parts),
        )
        for context in parts[0]
    }
    assert all(isinstance(stats.bytes, int) for p in parts for stats in p.values())
    figures = plan.figures(summed)
    expected = evaluate_model(model, tokenized, [32, 64], None, doc_ids=plan.doc_ids,
                              chunk_size=plan.chunk_size)  # fmt: skip
    assert list(figures) == ["split", "documents", "contexts"]
    assert figures["documents"] == 3 and list(figures["contexts"]) == ["32", "64"]
    for context, entry in expected["contexts"].items():
        got = figures["contexts"][context]
        assert list(got) == list(entry) == ["loss", "ppl", "bpb", "tokens"]
        assert got["tokens"] == entry["tokens"]
        for key in ("loss", "ppl", "bpb"):
            assert got[key] == pytest.approx(entry[key], rel=1e-12)
    whole = plan.figures(plan.score(model))
    assert whole == plan.figures(plan.score(model, plan.doc_ids))
    assert whole["contexts"] == expected["contexts"]
    nothing = plan.score(model, [])
    assert all(s == Stats() for s in nothing.values())

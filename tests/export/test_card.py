"""``export.card``: which held-out evaluation an exported model's card shows (the rest of the
card is checked on a real export in test_export.py)."""

from __future__ import annotations

import json

from longnet_cli.artifacts.layout import EVAL_FILE, METRICS_FILE
from longnet_cli.export.card import latest_heldout_evaluation


def _figures(split: str, ppl: float) -> dict:
    return {"split": split, "documents": 3,
            "contexts": {"64": {"tokens": 100, "loss": 1.5, "ppl": ppl, "bpb": 0.9}}}  # fmt: skip


def _write_metrics(run, *records) -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in records))


def test_the_latest_heldout_evaluation_at_or_before_the_exported_step(tmp_path):
    run = tmp_path / "run"
    _write_metrics(
        run,
        {"step": 2, "loss": 3.0},
        {"step": 4, "eval": _figures("heldout", 40.0)},
        {"step": 6, "eval": _figures("train", 10.0)},  # training-set figures: never shown
        {"step": 8, "eval": _figures("heldout", 20.0)},
    )
    shown = latest_heldout_evaluation(run, step=6)
    assert (shown.step, shown.source, shown.documents) == (4, METRICS_FILE, 3)
    assert shown.rows == [{"context": 64, "tokens": 100, "loss": 1.5, "ppl": 40.0, "bpb": 0.9}]
    assert latest_heldout_evaluation(run, step=8).rows[0]["ppl"] == 20.0
    assert latest_heldout_evaluation(run, step=3) is None


def test_a_full_eval_of_the_same_step_wins_over_evaluation_during_training(tmp_path):
    run = tmp_path / "run"
    _write_metrics(run, {"step": 8, "eval": _figures("heldout", 20.0)})
    report = {
        "split": "heldout", "documents": 10,
        "runs": [{"checkpoint": str(run / "checkpoints" / "step-0000008"), "step": 8,
                  "contexts": [{"context": 64, "overall": {"tokens": 900, "ppl": 19.0}}]}],
    }  # fmt: skip
    (run / EVAL_FILE).write_text(json.dumps(report))
    shown = latest_heldout_evaluation(run, step=8)
    assert (shown.step, shown.source, shown.documents) == (8, str(run / EVAL_FILE), 10)
    assert shown.rows == [{"context": 64, "tokens": 900, "ppl": 19.0}]
    report["runs"][0]["checkpoint"] = str(tmp_path / "another" / "checkpoints" / "step-0000008")
    (run / EVAL_FILE).write_text(json.dumps(report))  # another run's figures: not this card's
    assert latest_heldout_evaluation(run, step=8).source == METRICS_FILE

"""``artifacts.layout``: the run-directory names, and a checkpoint path's run."""

from __future__ import annotations

from longnet_cli.artifacts import layout


def test_paths_inside_a_run_directory(tmp_path):
    assert layout.checkpoints_dir(tmp_path) == tmp_path / "checkpoints"
    assert layout.metrics_path(tmp_path) == tmp_path / "metrics.jsonl"
    assert layout.rng_file(3) == "rng-rank3.pt"
    assert layout.STEP_DIR.match("step-0000012") and not layout.STEP_DIR.match("step-12")


def test_the_run_a_checkpoint_belongs_to(tmp_path):
    checkpoint = tmp_path / "run" / "checkpoints" / "step-0000004"
    assert layout.run_of_checkpoint(checkpoint) == tmp_path / "run"
    assert layout.run_of_checkpoint(tmp_path / "exported") is None

"""``longnet runs``: finding runs, step / target, last loss, latest eval, empty and bad dirs.

Runs are laid out here by hand in the format ``longnet train`` and ``longnet eval`` write
(checkpoints/step-NNNNNNN/state.json, metrics.jsonl, eval.json); the quickstart test in
tests/e2e/test_pipelines.py lists a real run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from longnet_cli.artifacts.runs import find_runs, list_runs
from longnet_cli.cli import main


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def _checkpoint(run: Path, step: int, target: int) -> Path:
    directory = run / "checkpoints" / f"step-{step:07d}"
    directory.mkdir(parents=True)
    state = {"format": 1, "step": step, "recipe": {"train": {"steps": target}}}
    (directory / "state.json").write_text(json.dumps(state))
    return directory


def _metrics(run: Path, *records: dict, tail: str = "") -> None:
    run.mkdir(parents=True, exist_ok=True)
    lines = "".join(json.dumps(record) + "\n" for record in records)
    (run / "metrics.jsonl").write_text(lines + tail)


def _eval_line(step: int, ppl: float) -> dict:
    figures = {"loss": 1.0, "ppl": ppl, "bpb": 0.5, "tokens": 10}
    return {"step": step, "eval": {"contexts": {"64": {**figures, "ppl": 99.0}, "128": figures}}}


def _eval_json(path: Path, checkpoint: Path, step: int, ppl: float) -> None:
    report = {"checkpoint": str(checkpoint), "step": step, "context": 256,
              "overall": {"tokens": 5, "loss": 2.0, "ppl": ppl, "bpb": 0.7}}  # fmt: skip
    path.write_text(json.dumps(report))


@pytest.fixture
def runs_dir(tmp_path) -> Path:
    """Runs at depths 1, 2 and 3, one too deep, and directories that are not runs."""
    root = tmp_path / "runs"
    finished = root / "alpha"
    _checkpoint(finished, 4, 10)
    _checkpoint(finished, 10, 10)
    (finished / "checkpoints" / ".tmp-step-0000012").mkdir()  # an interrupted save
    partial = '{"step": 11, "lo'  # a line being written
    _metrics(finished, {"step": 5, "loss": 3.5}, {"step": 10, "loss": 2.25}, tail=partial)
    nested = root / "quickstart" / "run"  # the pipeline layout, eval.json beside the run
    _checkpoint(nested, 3, 8)
    _metrics(nested, {"step": 3, "loss": 4.0}, _eval_line(2, 50.0))
    _eval_json(root / "quickstart" / "eval.json", nested / "checkpoints" / "step-0000003", 3, 30.0)
    _metrics(root / "a" / "b" / "deep", {"step": 1, "loss": 6.0})  # depth 3: found
    _metrics(root / "a" / "b" / "c" / "too-deep", {"step": 1, "loss": 6.0})  # depth 4: not
    (root / "quickstart" / "data").mkdir()  # a corpus, not a run
    _metrics(root / ".hidden", {"step": 1, "loss": 1.0})
    return root


def test_finds_runs_down_to_depth_3(runs_dir):
    names = [run.relative_to(runs_dir).as_posix() for run in find_runs(runs_dir)]
    assert names == ["a/b/deep", "alpha", "quickstart/run"]
    assert find_runs(runs_dir / "alpha") == [runs_dir / "alpha"]  # the directory itself


def test_step_loss_eval_and_time(runs_dir):
    runs = {run.name: run for run in list_runs(runs_dir)}
    alpha = runs["alpha"]
    assert (alpha.step, alpha.target_steps, alpha.finished) == (10, 10, True)
    assert (alpha.loss, alpha.loss_step, alpha.eval) == (2.25, 10, None)
    quickstart = runs["quickstart/run"]
    assert (quickstart.step, quickstart.target_steps, quickstart.finished) == (3, 8, False)
    # eval.json (step 3) is newer than the training evaluation (step 2)
    assert quickstart.eval.ppl == 30.0 and quickstart.eval.context == 256
    assert quickstart.eval.source.endswith("eval.json")
    deep = runs["a/b/deep"]
    assert (deep.step, deep.target_steps, deep.loss, deep.eval) == (None, None, 6.0, None)
    os.utime(runs_dir / "alpha" / "metrics.jsonl", (2e9, 2e9))
    assert list_runs(runs_dir)[1].modified == 2e9


def test_latest_eval_by_step_and_owner(tmp_path):
    run = tmp_path / "w" / "run"
    checkpoint = _checkpoint(run, 8, 8)
    _metrics(run, {"step": 8, "loss": 2.0}, _eval_line(8, 40.0))
    _eval_json(tmp_path / "w" / "eval.json", checkpoint, 4, 30.0)  # an older step
    (summary,) = [r.eval for r in list_runs(tmp_path)]
    # the training evaluation, at its largest context
    assert (summary.source, summary.step, summary.context) == ("metrics.jsonl", 8, 128)
    assert summary.ppl == 40.0
    _eval_json(tmp_path / "w" / "eval.json", checkpoint, 8, 30.0)  # the same step: eval.json
    assert list_runs(tmp_path)[0].eval.ppl == 30.0
    _eval_json(tmp_path / "w" / "eval.json", tmp_path / "other" / "checkpoints", 9, 1.0)
    assert list_runs(tmp_path)[0].eval.ppl == 40.0  # another run's report is not this run's


def test_cli_table_and_json(runs_dir, capsys):
    code, out, err = _cli(capsys, "runs", "--runs-dir", str(runs_dir))
    assert code == 0 and err == ""
    header, *rows = out.splitlines()
    assert header.split() == ["RUN", "STEP", "LOSS", "EVAL", "MODIFIED"]
    assert [row.split()[0] for row in rows] == ["a/b/deep", "alpha", "quickstart/run"]
    assert "10/10 done" in rows[1] and "2.2500" in rows[1]
    assert "3/8" in rows[2] and "ppl 30.00" in rows[2] and "eval.json" in rows[2]
    code, out, _ = _cli(capsys, "runs", "--runs-dir", str(runs_dir), "--json")
    report = json.loads(out)
    assert code == 0 and report["runs_dir"] == str(runs_dir)
    quickstart = report["runs"][2]
    assert quickstart["name"] == "quickstart/run" and quickstart["step"] == 3
    assert quickstart["target_steps"] == 8 and quickstart["finished"] is False
    assert quickstart["eval"]["ppl"] == 30.0 and quickstart["loss"] == 4.0


def test_no_runs_is_friendly(tmp_path, capsys, monkeypatch):
    code, out, _ = _cli(capsys, "runs", "--runs-dir", str(tmp_path))
    assert code == 0 and "no runs under" in out
    code, out, _ = _cli(capsys, "runs", "--runs-dir", str(tmp_path), "--json")
    assert code == 0 and json.loads(out)["runs"] == []
    monkeypatch.chdir(tmp_path)  # the default runs/ does not exist yet: still no error
    code, out, _ = _cli(capsys, "runs")
    assert code == 0 and "no runs under runs/" in out


def test_missing_runs_dir_given_explicitly_is_exit_2(tmp_path, capsys):
    code, out, err = _cli(capsys, "runs", "--runs-dir", str(tmp_path / "nope"))
    assert code == 2 and out == "" and "nope" in err and len(err.splitlines()) == 1


def test_eval_split_is_shown_held_out_preferred_on_a_tie(tmp_path, capsys):
    run = tmp_path / "w" / "run"
    checkpoint = _checkpoint(run, 8, 8)
    heldout = _eval_line(8, 40.0)
    heldout["eval"]["split"] = "heldout"
    _metrics(run, heldout)
    report = {"checkpoint": str(checkpoint), "step": 8, "context": 256, "split": "train",
              "overall": {"tokens": 5, "loss": 2.0, "ppl": 30.0, "bpb": 0.7}}  # fmt: skip
    (tmp_path / "w" / "eval.json").write_text(json.dumps(report))
    (summary,) = [r.eval for r in list_runs(tmp_path)]
    assert (summary.source, summary.split, summary.ppl) == ("metrics.jsonl", "heldout", 40.0)
    code, out, _ = _cli(capsys, "runs", "--runs-dir", str(tmp_path))
    assert code == 0 and "(step 8, training, held-out)" in out
    code, out, _ = _cli(capsys, "runs", "--runs-dir", str(tmp_path), "--json")
    assert json.loads(out)["runs"][0]["eval"]["split"] == "heldout"

    report["step"] = 9  # a later training-set evaluation is shown, and said to be one
    (tmp_path / "w" / "eval.json").write_text(json.dumps(report))
    code, out, _ = _cli(capsys, "runs", "--runs-dir", str(tmp_path))
    assert "ppl 30.00" in out and "(step 9, eval.json, train-set)" in out

    _metrics(run, _eval_line(10, 50.0))  # written before splits were recorded
    code, out, _ = _cli(capsys, "runs", "--runs-dir", str(tmp_path))
    assert "ppl 50.00" in out and "(step 10, training, unknown split)" in out


def test_damaged_runs_are_listed_with_a_note(tmp_path, capsys):
    """Damaged files never fail the listing: each run shows what could be read and one note."""
    root = tmp_path / "runs"
    rot = root / "rot"  # the newest checkpoint's state.json torn: the older one is shown
    _checkpoint(rot, 4, 10)
    (_checkpoint(rot, 8, 10) / "state.json").write_text('{"format": 1, "st')
    _metrics(rot, {"step": 4, "loss": 3.0})
    odd = root / "odd"  # valid JSON of the wrong shapes
    (_checkpoint(odd, 2, 10) / "state.json").write_text(
        json.dumps({"format": 1, "step": 2, "recipe": ["not", "a", "dict"]})
    )
    _metrics(odd, {"step": 1, "loss": float("inf"), "elapsed_s": "x"}, {"step": 1e309},
             {"eval": {"contexts": {"64": 3}}, "step": "two"})  # fmt: skip
    (odd / "eval.json").write_text(json.dumps({"checkpoint": "a\u0000b", "step": 2}))
    lost = root / "lost"  # a recorded file missing; garbage in the middle of the log
    state = {"format": 1, "step": 6, "recipe": {"train": {"steps": 6}},
             "files": {"model.safetensors": {"sha256": "00", "bytes": 10},
                       "optimizer.pt": {"sha256": "00", "bytes": 3}}}  # fmt: skip
    directory = _checkpoint(lost, 6, 6)
    (directory / "state.json").write_text(json.dumps(state))
    (directory / "optimizer.pt").write_bytes(b"abcd")
    _metrics(lost, {"step": 5, "loss": 2.5}, tail='\x00\xff{"step"\n{"step": 6, "loss": 2.0}\n')

    runs = {run.name: run for run in list_runs(root)}
    assert (runs["rot"].step, runs["rot"].loss) == (4, 3.0)
    assert runs["rot"].note == "step-0000008/state.json unreadable, skipped"
    assert (runs["odd"].step, runs["odd"].target_steps, runs["odd"].note) == (2, None, None)
    assert (runs["lost"].step, runs["lost"].loss, runs["lost"].finished) == (6, 2.0, True)
    assert runs["lost"].note == (
        "step-0000006/model.safetensors missing; step-0000006/optimizer.pt is 4 bytes, "
        "state.json records 3; metrics.jsonl: 1 unreadable line(s) skipped"
    )
    code, out, err = _cli(capsys, "runs", "--runs-dir", str(root))
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert [line.split()[0] for line in lines] == ["RUN", "lost", "note:", "odd", "rot", "note:"]
    assert lines[2] == f"  note: {runs['lost'].note}"
    code, out, _ = _cli(capsys, "runs", "--runs-dir", str(root), "--json")
    assert code == 0
    assert [r["note"] for r in json.loads(out)["runs"]] == [
        runs["lost"].note,
        None,
        runs["rot"].note,
    ]

"""Resume policies: a changed corpus (recorded by content, continued with a data_changed record,
or refused with --strict-data); a changed train.steps (the learning rate continues, no jump)."""

from __future__ import annotations

import itertools
import json
import os
import shutil
from pathlib import Path

import pytest
from helpers import MEASURED, exit_code, metrics_of, write_train_recipe

from longnet_cli.data.format.reader import TokenizedCorpus
from longnet_cli.data.sources import stdlib_path
from longnet_cli.tokenize import TokenizeOptions, tokenize_corpus

# metrics that depend on the machine, not on the run: compared runs differ in them

LR, FLOOR = 3e-3, 3e-4  # helpers.train_recipe: lr 3e-3, min_lr_ratio 0.1, warm-up 2, 12 steps


def _tokenize(sources: Path, out: Path, tokenizer: Path | None = None):
    return tokenize_corpus(
        TokenizeOptions(
            paths=(sources,),
            out=out,
            tokenizer=tokenizer,
            vocab_size=600,
            sample_bytes=1 << 20,
            workers=1,
            progress=False,
        )
    )


def _state(run: Path, step: int) -> dict:
    return json.loads((run / "checkpoints" / f"step-{step:07d}" / "state.json").read_text())


def test_changed_corpus_is_recorded_by_content(tmp_path, capsys):
    """A touch re-tokenizes to the same shards: no change. New content (the same tokenizer, as
    the batch pipelines now reuse it): the run continues with a warning and a data_changed
    record; --strict-data refuses with one line and touches nothing."""
    sources = tmp_path / "sources"
    sources.mkdir()
    for name in ("json/decoder.py", "json/encoder.py", "csv.py"):
        shutil.copyfile(stdlib_path() / name, sources / Path(name).name)
    data = tmp_path / "data"
    _tokenize(sources, data)
    recipe = write_train_recipe(tmp_path, data, train__steps=2, checkpoint__every=2)
    run = tmp_path / "run"
    assert exit_code("train", str(recipe), "--out", str(run), "--quiet") == 0
    record = _state(run, 2)["corpus"]
    manifest = TokenizedCorpus.open(data).manifest
    assert record["shards"] == [entry["sha256"] for entry in manifest["shards"]]
    assert record["tokenizer_sha256"] == manifest["tokenizer_sha256"]

    for file in [*sources.iterdir(), *data.iterdir()]:  # newer times, the same content
        os.utime(file, (2e9, 2e9))
    assert not _tokenize(sources, data).up_to_date  # re-tokenized ...
    capsys.readouterr()
    code = exit_code("train", str(recipe), "--out", str(run), "--quiet", "--set", "train.steps=4")
    assert code == 0
    assert "the corpus" not in capsys.readouterr().err  # ... but nothing changed
    assert not [r for r in metrics_of(run) if "data_changed" in r]
    assert _state(run, 4)["corpus"] == record

    tokenizer = tmp_path / "tokenizer.model"
    shutil.copyfile(TokenizedCorpus.open(data).tokenizer_path, tokenizer)
    shutil.copyfile(stdlib_path() / "json/scanner.py", sources / "scanner.py")  # it grows
    _tokenize(sources, data, tokenizer)
    grown = TokenizedCorpus.open(data).manifest
    before = (run / "metrics.jsonl").read_text()
    code = exit_code("train", str(recipe), "--out", str(run), "--quiet", "--set", "train.steps=6",
                "--strict-data")  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "--strict-data" in err
    assert "documents 3 -> 4" in err and str(data) in err
    assert (run / "metrics.jsonl").read_text() == before
    assert not (run / "checkpoints" / "step-0000006").exists()

    code = exit_code("train", str(recipe), "--out", str(run), "--quiet", "--set", "train.steps=6")
    assert code == 0
    err = capsys.readouterr().err
    assert "warning: the corpus" in err and "documents 3 -> 4" in err and "from step 4" in err
    (changed,) = [r for r in metrics_of(run) if "data_changed" in r]
    assert changed["step"] == 4
    assert changed["data_changed"]["from"]["sha256"] == record["sha256"]
    assert changed["data_changed"]["to"]["tokens"] == grown["tokens"]
    assert changed["data_changed"]["checkpoint"].endswith("step-0000004")
    assert [r["step"] for r in metrics_of(run) if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert _state(run, 6)["corpus"]["shards"] == [e["sha256"] for e in grown["shards"]]
    shutil.rmtree(run / "checkpoints" / "step-0000006")  # killed before its next checkpoint:
    code = exit_code("train", str(recipe), "--out", str(run), "--quiet", "--set", "train.steps=6")
    assert code == 0 and "warning: the corpus" in capsys.readouterr().err  # said again ...
    assert len([r for r in metrics_of(run) if "data_changed" in r]) == 1  # ... recorded once
    code = exit_code("train", str(recipe), "--out", str(run), "--quiet", "--set", "train.steps=8")
    assert code == 0 and "the corpus" not in capsys.readouterr().err  # recorded once


def test_another_tokenizer_is_refused_naming_the_checkpoint_copy(tmp_path, capsys):
    """A corpus re-tokenized with a newly trained tokenizer cannot resume; the message names
    the checkpoint's copy of the old one to re-tokenize with."""
    sources = tmp_path / "sources"
    sources.mkdir()
    shutil.copyfile(stdlib_path() / "json/decoder.py", sources / "decoder.py")
    shutil.copyfile(stdlib_path() / "csv.py", sources / "csv.py")
    data = tmp_path / "data"
    _tokenize(sources, data)
    recipe = write_train_recipe(tmp_path, data, train__steps=2, checkpoint__every=2)
    run = tmp_path / "run"
    assert exit_code("train", str(recipe), "--out", str(run), "--quiet") == 0
    shutil.copyfile(stdlib_path() / "json/encoder.py", sources / "encoder.py")
    _tokenize(sources, data)  # a new tokenizer, trained on the grown corpus
    code = exit_code("train", str(recipe), "--out", str(run), "--quiet", "--set", "train.steps=4")
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert f"--tokenizer {run / 'checkpoints' / 'step-0000002' / 'tokenizer.model'}" in err


def _lrs(run: Path) -> dict[int, float]:
    return {r["step"]: r["lr"] for r in metrics_of(run) if "lr" in r}


def _resume_copy(reference: Path, tmp_path: Path, name: str, drop: tuple[str, ...] = ()) -> Path:
    run = tmp_path / name
    shutil.copytree(reference, run, ignore=shutil.ignore_patterns(".train.lock"))
    for checkpoint in drop:
        shutil.rmtree(run / "checkpoints" / checkpoint)
    return run


def _assert_continues(lrs: dict[int, float], last: int, end: int, expected: float) -> None:
    """From step ``last`` + 1 the lr starts at ``expected`` (within 1%), never rises, and is
    the floor at ``end``."""
    assert lrs[last + 1] == pytest.approx(expected, rel=0.01)
    following = [lrs[step] for step in range(last + 1, end + 1)]
    assert all(b <= a for a, b in itertools.pairwise(following))
    assert lrs[end] == pytest.approx(FLOOR, rel=1e-9)


def test_raising_steps_on_a_finished_run_keeps_the_learning_rate(
    reference_run, corpus, tmp_path, capsys
):
    """The issue's case: 12 steps done at the floor (0.1 lr); raising train.steps to 20 used to
    jump to 0.63 lr. Now the lr stays at the floor it reached, bit for bit across a second
    resume with the same steps."""
    run = _resume_copy(reference_run, tmp_path, "extended")
    recipe = write_train_recipe(tmp_path, corpus, train__steps=20)
    assert exit_code("train", str(recipe), "--out", str(run), "--quiet") == 0
    assert "train.steps changed from 12 to 20" in capsys.readouterr().err
    lrs = _lrs(run)
    assert lrs[12] == pytest.approx(FLOOR)
    _assert_continues(lrs, 12, 20, lrs[12])
    state = json.loads((run / "checkpoints/step-0000020/state.json").read_text())
    assert state["scheduler"]["segment"] == {"start": 12, "lr": lrs[12], "steps": 20}

    again = _resume_copy(run, tmp_path, "again", drop=("step-0000020",))  # resume from 16
    assert exit_code("train", str(recipe), "--out", str(again), "--quiet") == 0
    assert "train.steps changed" not in capsys.readouterr().err
    assert metrics_of(again) == [
        {**r, **{key: m.get(key) for key in MEASURED}}
        for r, m in zip(metrics_of(run), metrics_of(again))
    ]  # the stored schedule: the same lr (and losses) to the last bit


@pytest.mark.parametrize("steps", [20, 10])
def test_changing_steps_mid_run_continues_the_decay(reference_run, corpus, tmp_path, steps):
    """Resumed at step 8 of 12 with train.steps raised to 20 or lowered to 10: step 9 gets the
    lr it had in the 12-step run, and the decay reaches the floor at the new last step."""
    run = _resume_copy(reference_run, tmp_path, "run", drop=("step-0000012",))
    recipe = write_train_recipe(tmp_path, corpus, train__steps=steps)
    assert exit_code("train", str(recipe), "--out", str(run), "--quiet") == 0
    reference = _lrs(reference_run)
    lrs = _lrs(run)
    assert [lrs[step] for step in range(1, 9)] == [reference[step] for step in range(1, 9)]
    _assert_continues(lrs, 8, steps, reference[9])


def test_lowering_steps_below_the_checkpoint_exits_2(reference_run, corpus, tmp_path, capsys):
    run = _resume_copy(reference_run, tmp_path, "run")
    before = (run / "metrics.jsonl").read_text()
    recipe = write_train_recipe(tmp_path, corpus, train__steps=6)
    assert exit_code("train", str(recipe), "--out", str(run), "--quiet") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "train.steps is 6" in err and "step 12" in err
    assert (run / "metrics.jsonl").read_text() == before
    recipe = write_train_recipe(tmp_path, corpus, train__steps=12)
    assert exit_code("train", str(recipe), "--out", str(run), "--quiet") == 0  # finished: a no-op
    assert "already finished" in capsys.readouterr().out


# -- train.precision: auto -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fp32", "bf16", "chosen"),
    [(1e11, 8e11, "bf16"), (1e11, 1.2e11, "bf16"), (1e11, 1.19e11, "fp32"), (1e11, 5e10, "fp32")],
)
def test_auto_precision_takes_bf16_only_where_its_peak_is_clearly_higher(fp32, bf16, chosen):
    from longnet_cli.runtime import choose_precision

    assert choose_precision(fp32, bf16) == chosen


def test_auto_precision_measures_the_real_bf16_rate_on_a_cpu():
    from longnet_cli.runtime import measure_auto_precision

    record = measure_auto_precision("cpu")
    assert record["asked"] == "auto" and record["resolved"] in ("fp32", "bf16")
    assert set(record["peak_flops"]) == {"fp32", "bf16"}
    assert all(value > 0 for value in record["peak_flops"].values())


@pytest.fixture
def fresh_accelerate_state():
    """accelerate keeps one mixed-precision setting per process: runs here change it."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    yield
    AcceleratorState._reset_state()


def _fake_measurement(resolved: str):
    def measure(device):
        peaks = {"fp32": 1e11, "bf16": 8e11 if resolved == "bf16" else 5e10}
        return {"asked": "auto", "resolved": resolved, "peak_flops": peaks, "device": str(device),
                "threads": 1}  # fmt: skip

    return measure


def test_auto_precision_is_resolved_once_recorded_and_kept_on_resume(
    corpus, tmp_path, monkeypatch, fresh_accelerate_state
):
    import longnet_cli.runtime as runtime

    monkeypatch.setattr(runtime, "measure_auto_precision", _fake_measurement("bf16"))
    whole = tmp_path / "whole"
    recipe = write_train_recipe(tmp_path, corpus, train__precision="auto", train__steps=8)
    assert exit_code("train", str(recipe), "--out", str(whole), "--quiet") == 0
    records = metrics_of(whole)
    assert records[0]["step"] == 0 and records[0]["precision"]["resolved"] == "bf16"
    assert records[0]["precision"]["peak_flops"] == {"fp32": 1e11, "bf16": 8e11}
    assert _state(whole, 8)["recipe"]["train"]["precision"] == "bf16"  # the resolved value

    # Half of it, then resumed where the device would now measure fp32 as the faster: the
    # resumed run keeps the checkpoint's bf16 and reproduces the uninterrupted run's losses.
    half = tmp_path / "half"
    shutil.copytree(whole, half)
    shutil.rmtree(half / "checkpoints" / "step-0000008")
    monkeypatch.setattr(runtime, "measure_auto_precision", _fake_measurement("fp32"))
    assert exit_code("train", str(recipe), "--out", str(half), "--quiet") == 0
    assert _state(half, 8)["recipe"]["train"]["precision"] == "bf16"
    losses = [(r["step"], r["loss"]) for r in metrics_of(half) if "loss" in r]
    assert losses == [(r["step"], r["loss"]) for r in records if "loss" in r]
    assert sum("precision" in r for r in metrics_of(half)) == 1  # measured once, at the start


def test_auto_precision_resumes_a_run_started_with_explicit_fp32(
    corpus, tmp_path, monkeypatch, fresh_accelerate_state
):
    import longnet_cli.runtime as runtime

    run = tmp_path / "run"
    recipe = write_train_recipe(tmp_path, corpus, train__steps=4)
    assert exit_code("train", str(recipe), "--out", str(run), "--quiet") == 0
    monkeypatch.setattr(runtime, "measure_auto_precision", _fake_measurement("bf16"))
    recipe = write_train_recipe(tmp_path, corpus, train__precision="auto", train__steps=8)
    assert exit_code("train", str(recipe), "--out", str(run), "--quiet") == 0
    assert _state(run, 8)["recipe"]["train"]["precision"] == "fp32"

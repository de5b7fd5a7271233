"""pipelines/: quickstart.sh end to end on a reduced setting (and its second run skipping),
books.sh / repos.sh: the lock, exit codes passed through, a log per run.

The scripts run as a new user runs them (bash, a subprocess), with LONGNET_PYTHON set to this
interpreter and the quickstart shrunk through its environment variables.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from longnet_cli.artifacts.runs import list_runs
from longnet_cli.data.format.reader import TokenizedCorpus
from longnet_cli.data.sources import stdlib_path
from longnet_cli.evaluate.stage import plot_available

ROOT = Path(__file__).resolve().parents[2]
PIPELINES = ROOT / "pipelines"
EVAL_KEYS = {"checkpoint", "data", "context", "overall", "buckets", "tokens_per_s",
             "peak_memory_bytes", "documents", "step", "chosen"}  # fmt: skip
TINY_MODEL = {"dim": 32, "depth": 1, "heads": 2, "dim_head": 16, "segment_lengths": [64, 128],
              "dilation_rates": [1, 2]}  # fmt: skip
QUICKSTART_ENV = {
    "LONGNET_QUICKSTART_INCLUDE": "json/*.py email/*.py",  # two packages: two long documents
    "LONGNET_QUICKSTART_VOCAB_SIZE": "400",
    "LONGNET_QUICKSTART_SAMPLE_BYTES": "256K",
    "LONGNET_QUICKSTART_STEPS": "4",
    "LONGNET_QUICKSTART_SEQ_LEN": "128",
    "LONGNET_QUICKSTART_DOCS": "2",
    "LONGNET_QUICKSTART_PROMPT_TOKENS": "300",  # mid-segment of 64 and 128
    "LONGNET_QUICKSTART_NEW_TOKENS": "12",
    "LONGNET_QUICKSTART_TOKENIZE_ARGS": "--workers 1",
    "LONGNET_QUICKSTART_TRAIN_ARGS": " ".join(
        f"--set model.{key}={json.dumps(value).replace(' ', '')}"
        for key, value in TINY_MODEL.items()
    )
    + " --set train.threads=1",
}


def _run(script: str, *args, env: dict | None = None, cwd: Path | None = None):
    environment = {**os.environ, "LONGNET_PYTHON": sys.executable, "OMP_NUM_THREADS": "1",
                   **(env or {})}  # fmt: skip
    started = time.perf_counter()
    result = subprocess.run(
        ["bash", str(PIPELINES / script), *map(str, args)],
        capture_output=True,
        text=True,
        errors="replace",
        env=environment,
        cwd=cwd,
    )  # fmt: skip  (generate writes the bytes a model produced, valid UTF-8 or not)
    return result, time.perf_counter() - started


def _outputs(workdir: Path) -> dict[Path, int]:
    """Modification times of what tokenize and train write."""
    files = [*(workdir / "data").glob("*"), *(workdir / "run" / "checkpoints").rglob("*")]
    return {path: path.stat().st_mtime_ns for path in files if path.is_file()}


def test_quickstart_end_to_end_then_second_run_skips(tmp_path):
    workdir = tmp_path / "qs"
    first, first_seconds = _run("quickstart.sh", workdir, env=QUICKSTART_ENV)
    assert first.returncode == 0, first.stderr[-3000:]

    manifest = json.loads((workdir / "data" / "manifest.json").read_text())
    assert manifest["documents"] == 2 and manifest["vocab_size"] == 400  # json/, email/
    # --holdout 0.05 of two documents selects by content hash; if none, the smallest hash
    assert manifest["splits"]["heldout"]["documents"] == 1
    state = json.loads((workdir / "run/checkpoints/step-0000004/state.json").read_text())
    assert state["step"] == 4 and state["recipe"]["train"]["seq_len"] == 128
    metrics = [
        json.loads(line) for line in (workdir / "run/metrics.jsonl").read_text().splitlines()
    ]
    assert metrics[-1]["step"] == 4 and metrics[-1]["loss"] > 0
    report = json.loads((workdir / "eval.json").read_text())
    assert set(report) >= EVAL_KEYS
    assert report["context"] == 128 and report["documents"] == 1 and report["step"] == 4
    assert report["split"] == "heldout" and report["overall"]["tokens"] == 127
    for line in ("positions", "overall", "tokens/s", "held-out"):
        assert line in first.stdout
    assert (workdir / "eval.png").exists() == plot_available()
    (run,) = list_runs(workdir)
    assert (run.name, run.step, run.target_steps, run.eval.context) == ("run", 4, 4, 128)
    # [4/4]: a continuation of the held-out document; its prompt (300 tokens) ends mid-segment
    assert "--- the model writes ---" in first.stdout
    continuation = first.stdout.split("--- the model writes ---\n", 1)[1].rsplit("\n---", 1)[0]
    assert continuation.strip()
    # the quickstart has smeared keys: the whole prompt is prefilled (a block's first key
    # mixes in the previous position's), then decoded
    assert "prefill: 300 of 300 prompt tokens" in first.stderr and "decode: " in first.stderr
    assert (workdir / "run/checkpoints/step-0000004/tokenizer.model").exists()

    written = _outputs(workdir)
    blocker = tmp_path / "no-matplotlib"  # the second run also sees a python without it
    blocker.mkdir()
    (blocker / "matplotlib.py").write_text("raise ImportError('blocked by the test')\n")
    second, second_seconds = _run(
        "quickstart.sh",
        workdir,
        env={
            **QUICKSTART_ENV,
            "PYTHONPATH": os.pathsep.join([str(blocker), os.environ.get("PYTHONPATH", "")]),
        },
    )
    assert second.returncode == 0, second.stderr[-3000:]
    assert "is up to date" in second.stdout and "already finished at step 4" in second.stdout
    assert "overall" in second.stdout
    assert "matplotlib is not installed: no plot" in second.stderr
    assert _outputs(workdir) == written  # tokenize and train wrote nothing
    assert second_seconds < first_seconds


def test_stdlib_corpus_leaves_out_installed_packages_and_binaries():
    """``longnet tokenize --stdlib`` walks the standard library without site-packages,
    bytecode, extension modules or the build configuration."""
    from longnet_cli.data.sources import stdlib_excludes, stdlib_path, walk_corpus

    rels = [entry.rel for entry in walk_corpus([stdlib_path()], exclude=stdlib_excludes())]
    assert "json/decoder.py" in rels and "csv.py" in rels
    for noise in ("site-packages/", "dist-packages/", "__pycache__/", "lib-dynload/"):
        assert not any(noise in rel for rel in rels), noise
    assert not any(rel.startswith("config-3") for rel in rels)  # idlelib/config-*.def stay
    assert not any(rel.endswith((".pyc", ".whl")) for rel in rels)


def test_quickstart_usage_errors(tmp_path):
    result, _ = _run("quickstart.sh", tmp_path / "a", tmp_path / "b")
    assert result.returncode == 2 and "usage: pipelines/quickstart.sh" in result.stderr
    result, _ = _run("quickstart.sh", tmp_path / "a", env={"LONGNET_PYTHON": "/nonexistent"})
    assert result.returncode == 2 and "not installed" in result.stderr
    assert not (tmp_path / "a").exists()


@pytest.fixture
def batch_setup(tmp_path) -> tuple[Path, Path, dict]:
    """Two small "repositories" (a few standard-library files each) and a tiny recipe."""
    from longnet_cli.data.sources import stdlib_path

    corpus = tmp_path / "corpus"
    for repo, names in {"alpha": ["json/decoder.py", "json/encoder.py"],
                        "beta": ["csv.py", "json/scanner.py"]}.items():  # fmt: skip
        (corpus / repo).mkdir(parents=True)
        for name in names:
            text = (stdlib_path() / name).read_text("utf-8")
            (corpus / repo / Path(name).name).write_text(text)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "data": {"shards": "set-by-the-pipeline"},
        "model": TINY_MODEL,
        "train": {"seq_len": 128, "steps": 2, "warmup_steps": 0, "seed": 1, "threads": 1},
        "checkpoint": {"every": 2},
    }))  # fmt: skip
    env = {"LONGNET_TOKENIZE_ARGS": "--vocab-size 400 --sample-bytes 256K --workers 1",
           "LONGNET_EVAL_DOCS": "2"}  # fmt: skip
    return corpus, recipe, env


def test_repos_pipeline_logs_each_run(batch_setup, tmp_path):
    corpus, recipe, env = batch_setup
    workdir = tmp_path / "work"
    result, _ = _run("repos.sh", corpus, recipe, workdir, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and result.stderr == ""  # quiet on success (for cron)
    manifest = json.loads((workdir / "data" / "manifest.json").read_text())
    assert manifest["documents"] == 2  # one per repository
    assert json.loads((workdir / "eval.json").read_text())["step"] == 2
    (log,) = (workdir / "logs").glob("*.log")
    text = log.read_text()
    for expected in ("[1/3] tokenize", "tokenized 2 documents", "[2/3] train", "trained",
                     "[3/3] evaluate", "overall", "repos.sh: done"):  # fmt: skip
        assert expected in text, text

    kept = workdir / "tokenizer.model"  # the first run's vocabulary, for every later run
    vocabulary = TokenizedCorpus.open(workdir / "data").manifest["tokenizer_sha256"]
    assert hashlib.sha256(kept.read_bytes()).hexdigest() == vocabulary

    again, _ = _run("repos.sh", corpus, recipe, workdir, env=env)
    assert again.returncode == 0
    logs = sorted((workdir / "logs").glob("*.log"))
    assert len(logs) == 2  # a log file per run, even within the same second
    assert sum("already finished at step 2" in log.read_text() for log in logs) == 1
    assert sum(f"with the first run's tokenizer ({kept})" in log.read_text() for log in logs) == 1

    # The corpus grows by a repository: tokenized with the kept tokenizer (a new one would
    # stop every resume), trained on from step 2, the change recorded.
    (corpus / "gamma").mkdir()
    for name in ("json/tool.py", "json/__init__.py"):
        shutil.copyfile(stdlib_path() / name, corpus / "gamma" / Path(name).name)
    longer = {**env, "LONGNET_TRAIN_ARGS": "--set train.steps=4"}
    grown, _ = _run("repos.sh", corpus, recipe, workdir, env=longer)
    assert grown.returncode == 0, grown.stderr
    manifest = TokenizedCorpus.open(workdir / "data").manifest
    assert manifest["documents"] == 3 and manifest["tokenizer_sha256"] == vocabulary
    records = [
        json.loads(line) for line in (workdir / "run/metrics.jsonl").read_text().splitlines()
    ]
    (changed,) = [r for r in records if "data_changed" in r]  # not on the unchanged rerun
    assert changed["step"] == 2 and "documents 2 -> 3" in changed["data_changed"]["change"]
    assert json.loads((workdir / "eval.json").read_text())["step"] == 4


def test_books_pipeline_passes_exit_code_through(batch_setup, tmp_path):
    corpus, _, env = batch_setup
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {stpes: 3}\n")
    workdir = tmp_path / "work"
    result, _ = _run("books.sh", corpus, bad, workdir, env=env)
    assert result.returncode == 2  # the recipe error of longnet train
    (log,) = (workdir / "logs").glob("*.log")
    text = log.read_text()
    assert "tokenized 4 documents" in text  # --group file: one document per file
    assert "error:" in text and "train failed with exit 2" in text
    assert result.stderr.strip() == f"books.sh: train failed (exit 2); log: {log}"


def test_second_run_refused_while_the_lock_is_held(batch_setup, tmp_path):
    corpus, recipe, env = batch_setup
    workdir = tmp_path / "work"
    workdir.mkdir()
    with open(workdir / ".pipeline.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running pipeline holds it
        for script in ("books.sh", "repos.sh"):
            result, seconds = _run(script, corpus, recipe, workdir, env=env)
            assert result.returncode == 75, result.stderr
            assert "another run holds" in result.stderr and seconds < 10
    assert not (workdir / "data").exists()


def test_batch_usage_errors(batch_setup, tmp_path):
    corpus, recipe, _ = batch_setup
    for args in ([corpus, recipe], [tmp_path / "nope", recipe, tmp_path / "w"],
                 [corpus, tmp_path / "nope.yaml", tmp_path / "w"]):  # fmt: skip
        result, _ = _run("books.sh", *args)
        assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr


def test_readme_set_up_commands():
    """The README's test command is .ci/run's commands on one line; its main job runs
    the quickstart pipeline."""
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    commands = [line for line in lines if line and not line.startswith(("#", "set ", "cd "))]
    one_line = " && ".join(f"{{ {c}; }}" if "||" in c else c for c in commands)
    readme = (ROOT / "README.md").read_text()
    assert f"\n   {one_line}\n" in readme
    assert "\n   pip install torch==2.13.0 && pip install . && pipelines/quickstart.sh\n" in readme


def test_context_study_smoke_end_to_end_then_no_op(tmp_path):
    """context_study.sh at its smoke scale: one held-out corpus, three runs on the same number
    of training tokens, scored side by side on held-out documents; the report agrees with the
    evaluation it renders; a second run trains and scores nothing; the lock keeps runs apart."""
    workdir = tmp_path / "study"
    env = {"LONGNET_STUDY_SCALE": "smoke"}
    first, first_seconds = _run("context_study.sh", workdir, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "| `longnet_8k` |" in first.stdout  # the table, printed when done

    manifest = json.loads((workdir / "data" / "manifest.json").read_text())
    assert manifest["splits"]["holdout"] == 0.2 and manifest["splits"]["heldout"]["documents"]
    evaluation = json.loads((workdir / "eval.json").read_text())
    study = json.loads((workdir / "study.json").read_text())
    assert evaluation["split"] == study["split"] == "heldout"
    assert study["contexts"] == [32, 128, 512] and study["distances"] == [2, 8, 32, 128, 256]
    corpus = study["corpus"]  # named, with its training tokens, from the manifest
    assert corpus["name"].startswith("stdlib (--include json/*.py")
    assert corpus["train_tokens"] == manifest["splits"]["train"]["tokens"]
    assert f"Corpus: **{corpus['name']}**" in first.stdout
    names = [row["name"] for row in study["runs"]]
    assert names == ["dense_2k", "longnet_8k", "dense_8k"]
    assert [run["recipe"] for run in evaluation["runs"]] == names  # from the checkpoints
    for row, run in zip(study["runs"], evaluation["runs"]):
        final = {str(c["context"]): c["final"]["ppl"] for c in run["contexts"]}
        assert row["ppl"] == final and row["reach"] == run["reach"]
        metrics = (Path(run["run"]) / "metrics.jsonl").read_text().splitlines()
        assert row["train_tokens"] == json.loads(metrics[-1])["tokens"]
    assert len({row["train_tokens"] for row in study["runs"]}) == 1  # same training tokens
    assert [row["reach"] for row in study["runs"]] == [1024, 512, 1024]
    assert len(study["claims"]) == 8 and all(c["measured"] is not None for c in study["claims"])
    assert study["curve"] is None  # the cpu scale keeps no checkpoints to probe along the way
    assert (workdir / "study.md").read_text() == first.stdout
    assert (workdir / "study.png").exists() == plot_available()

    written = {p: p.stat().st_mtime_ns for p in workdir.rglob("*") if p.is_file()
               and "logs" not in p.parts and p.name != ".train.lock"}  # fmt: skip
    # (each train names itself in its run's lock file, even one that finds the run finished)
    second, second_seconds = _run("context_study.sh", workdir, env=env)
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout == first.stdout
    assert {p: p.stat().st_mtime_ns for p in written} == written  # nothing rewritten
    (log,) = [p for p in (workdir / "logs").glob("*.log") if "up to date" in p.read_text()]
    assert "the study is up to date" in log.read_text()
    assert second_seconds < first_seconds

    with open(workdir / ".pipeline.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        locked, _ = _run("context_study.sh", workdir, env=env)
    assert locked.returncode == 75 and "another run holds" in locked.stderr


def test_context_study_usage_errors(tmp_path):
    result, _ = _run("context_study.sh", tmp_path / "a", tmp_path / "b")
    assert result.returncode == 2 and "usage: pipelines/context_study.sh" in result.stderr
    result, _ = _run("context_study.sh", tmp_path / "a", env={"LONGNET_STUDY_SCALE": "huge"})
    assert result.returncode == 2 and "LONGNET_STUDY_SCALE" in result.stderr
    result, _ = _run("context_study.sh", tmp_path / "a", env={"LONGNET_STUDY_LONG_BUDGET_S": "2h"})
    assert result.returncode == 2 and "LONGNET_STUDY_LONG_BUDGET_S" in result.stderr
    assert "'2h'" in result.stderr
    result, _ = _run("context_study.sh", tmp_path / "a", env={"LONGNET_STUDY_TINY": "yes"})
    assert result.returncode == 2 and "LONGNET_STUDY_TINY must be 0 or 1" in result.stderr
    assert not (tmp_path / "a").exists()


def test_context_study_corpus_is_a_built_in_name_or_a_directory(tmp_path):
    """LONGNET_STUDY_CORPUS: stdlib, site-packages, or a directory; anything else exits 2
    naming the three before any work."""
    env = {"LONGNET_STUDY_CORPUS": str(tmp_path / "missing")}
    result, _ = _run("context_study.sh", tmp_path / "a", env=env)
    assert result.returncode == 2 and "stdlib, site-packages or a corpus directory" in result.stderr
    assert not (tmp_path / "a").exists()


def _study_corpus(tmp_path: Path) -> Path:
    """A directory of a few standard-library files (LONGNET_STUDY_CORPUS), long enough for the
    tiny scales' contexts and distances, standing in for site-packages."""
    corpus = tmp_path / "corpus"
    names = ("json/decoder.py", "json/encoder.py", "json/scanner.py", "csv.py",
             "email/message.py", "email/_header_value_parser.py", "email/utils.py",
             "email/feedparser.py", "email/mime/multipart.py", "email/_policybase.py")  # fmt: skip
    for name in names:
        target = corpus / name.replace("/", "_")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(stdlib_path() / name, target)
    return corpus


def _kept(run: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in (run / "checkpoints").glob("step-*"))


def test_context_study_long_scale_probes_each_kept_checkpoint_and_continues(tmp_path):
    """The long scale, tiny: longnet_8k and dense_2k only, in the WORKDIR named by
    LONGNET_STUDY_LONG_DIR (no argument); every kept checkpoint probed once into probes/; the
    report's curve has a point per checkpoint with the tokens it had trained on; the reports
    copied to LONGNET_STUDY_REPORT_DIR. A later run with more steps continues the same runs and
    probes only the new checkpoint."""
    workdir, reports = tmp_path / "cache" / "long", tmp_path / "reports"
    env = {"LONGNET_STUDY_SCALE": "long", "LONGNET_STUDY_TINY": "1",
           "LONGNET_STUDY_LONG_DIR": str(workdir),
           "LONGNET_STUDY_CORPUS": str(_study_corpus(tmp_path)),
           "LONGNET_STUDY_REPORT_DIR": str(reports)}  # fmt: skip
    first, _ = _run("context_study.sh", env=env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert not (tmp_path / "runs").exists()  # not the work tree's runs/
    assert sorted(p.name for p in workdir.iterdir() if p.is_dir()) == [
        "data", "dense_2k", "logs", "longnet_8k", "probes"]  # fmt: skip
    for recipe in ("longnet_8k", "dense_2k"):
        assert _kept(workdir / recipe) == [2, 4]  # checkpoint.every 2, all kept
    probes = sorted(p.name for p in (workdir / "probes").glob("*.json"))
    assert probes == [
        f"{r}-step-000000{s}.json" for r in ("dense_2k", "longnet_8k") for s in (2, 4)
    ]
    study = json.loads((workdir / "study.json").read_text())
    assert [row["name"] for row in study["runs"]] == ["longnet_8k", "dense_2k"]
    assert len(study["claims"]) == 8
    curve = study["curve"]
    assert curve["contexts"] == [32, 128] and curve["distances"] == [2, 8, 32, 128, 256]
    points = [(p["name"], p["step"], p["role"]) for p in curve["points"]]
    assert points == [("dense_2k", 2, "dense"), ("dense_2k", 4, "dense"),
                      ("longnet_8k", 2, "longnet"), ("longnet_8k", 4, "longnet")]  # fmt: skip
    for point in curve["points"]:
        state = json.loads((Path(point["checkpoint"]) / "state.json").read_text())
        assert point["train_tokens"] == state["tokens"] and len(point["copy"]) == 5
    assert curve["onset"]["model"] == "longnet_8k" and curve["onset"]["distance"] == 32
    assert "## Copy ratio against training tokens" in first.stdout
    copied = {"study.md", "study.json", "study.png", "study_curve.png", "study.log"}
    if not plot_available():
        copied -= {"study.png", "study_curve.png"}
    assert {p.name for p in reports.iterdir()} == copied
    assert (reports / "study.md").read_text() == first.stdout

    probed = {p: p.stat().st_mtime_ns for p in (workdir / "probes").glob("*.json")}
    # A later run toward far more steps than its budget covers: each model trains its share of
    # the budget, stops with a checkpoint (saved on SIGTERM; no other checkpoint this run), and
    # only that one is probed.
    budget = 60
    more, seconds = _run("context_study.sh", cwd=tmp_path, env={
        **env, "LONGNET_STUDY_STEPS": "100000", "LONGNET_STUDY_LONG_BUDGET_S": str(budget),
        "LONGNET_STUDY_TRAIN_ARGS": "--set checkpoint.every=100000"})  # fmt: skip
    assert more.returncode == 0, more.stderr[-3000:]
    assert seconds < 3 * budget  # uncapped, 100,000 steps would run for hours
    log = max((workdir / "logs").glob("*.log")).read_text()
    assert log.count("stopped at its time cap") == 2
    study = json.loads((workdir / "study.json").read_text())
    for recipe, row in zip(("longnet_8k", "dense_2k"), study["runs"], strict=True):
        kept = _kept(workdir / recipe)
        assert kept[:2] == [2, 4] and len(kept) == 3 and kept[2] > 4, kept
        records = (workdir / recipe / "metrics.jsonl").read_text().splitlines()
        steps = [r["step"] for r in map(json.loads, records) if "loss" in r]
        assert steps == list(range(1, kept[2] + 1))  # resumed at step 4: no step trained twice
        assert row["name"] == recipe and row["step"] == kept[2] and row["target_steps"] == 100000
        assert f"`{recipe}` stopped at step {kept[2]:,} of 100,000" in more.stdout
    assert {p: p.stat().st_mtime_ns for p in probed} == probed  # not probed again
    assert [p["step"] for p in study["curve"]["points"]] == [
        2,
        4,
        _kept(workdir / "dense_2k")[2],
        2,
        4,
        _kept(workdir / "longnet_8k")[2],
    ]


def test_context_study_gpu_scale_sized_capped_and_reported(tmp_path):
    """The gpu scale's code path on a CPU, tiny: the steps planned from gpu_check's JSON (the
    row the tool writes), every model stopped by its time cap with a checkpoint (steps far more
    than fit), the kept checkpoints probed in one evaluation, and only the reports, at most 8
    files, in LONGNET_STUDY_REPORT_DIR; the whole scale within its budget."""
    gpu_check = tmp_path / "gpu_check.json"
    gpu_check.write_text(json.dumps([
        {"check": "pytest -m gpu", "figure": "12 passed [20 s]", "target": "all pass",
         "status": "ok"},
        {"check": "paper_base train, 10 steps", "figure": "612,345 tokens/s, 301 TFLOP/s of bf16 "
         "peak 990: 0.30 [25 s]", "target": ">= 0.35 of peak", "status": "below"},
    ]))  # fmt: skip
    workdir, reports = tmp_path / "study", tmp_path / "reports"
    budget = 60
    env = {"LONGNET_STUDY_SCALE": "gpu", "LONGNET_STUDY_TINY": "1",
           "LONGNET_STUDY_CORPUS": str(_study_corpus(tmp_path)), "LONGNET_STUDY_STEPS": "100000",
           "LONGNET_STUDY_GPU_CHECK": str(gpu_check), "LONGNET_STUDY_GPU_BUDGET_S": str(budget),
           "LONGNET_STUDY_REPORT_DIR": str(reports)}  # fmt: skip
    result, seconds = _run("context_study.sh", workdir, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    # The caps hold the trains to the budget: uncapped, 100,000 steps would run for hours. The
    # bound leaves room for a busy machine (65 s quiet; 133 s with four other jobs running).
    assert seconds < 3 * budget
    plan = json.loads((workdir / "gpu_plan.json").read_text())
    assert plan["attained_flops"] == 301e12 and "paper_base train" in plan["attained_source"]
    assert set(plan["models"]) == {"dense_2k", "longnet_8k", "dense_8k"}
    log = next((workdir / "logs").glob("*.log")).read_text()
    assert log.count("stopped at its time cap") == 3
    study = json.loads((workdir / "study.json").read_text())
    for row in study["runs"]:
        assert 0 < row["step"] < row["target_steps"] == 100000, row
        assert f"`{row['name']}` stopped at step {row['step']:,} of 100,000" in result.stdout
    curve = json.loads((workdir / "curve.json").read_text())
    assert sorted({Path(run["run"]).name for run in curve["runs"]}) == ["dense_2k", "longnet_8k"]
    assert {p["name"] for p in study["curve"]["points"]} == {"dense_2k", "longnet_8k"}
    files = {p.name for p in reports.iterdir()}
    assert files <= {"study.md", "study.json", "study.png", "study_curve.png", "gpu_plan.json",
                     "study.log"} and len(files) <= 8  # fmt: skip
    assert {"study.md", "study.json", "gpu_plan.json", "study.log"} <= files


def test_books_pipeline_starts_a_sequence_parallel_layout_with_longnet_devices(
    batch_setup, tmp_path
):
    """LONGNET_DEVICES=2: books.sh trains a parallel.sequence=2 recipe on two processes (one
    command), end to end; without it the recipe's layout is refused with the fix named."""
    corpus, recipe, env = batch_setup
    parallel = tmp_path / "parallel.yaml"
    parallel.write_text(yaml.safe_dump({**yaml.safe_load(recipe.read_text()),
                                        "parallel": {"sequence": 2}}))  # fmt: skip
    refused, _ = _run("books.sh", corpus, parallel, tmp_path / "alone", env=env)
    assert refused.returncode == 2 and "train failed (exit 2)" in refused.stderr
    (log,) = (tmp_path / "alone" / "logs").glob("*.log")
    assert "--devices 2" in log.read_text()  # the override that fits

    workdir = tmp_path / "work"
    result, _ = _run("books.sh", corpus, parallel, workdir, env={**env, "LONGNET_DEVICES": "2"})
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and result.stderr == ""
    state = json.loads((workdir / "run/checkpoints/step-0000002/state.json").read_text())
    assert (state["world_size"], state["sequence_parallel"], state["dp_size"]) == (2, 2, 1)
    assert json.loads((workdir / "eval.json").read_text())["step"] == 2
    (log,) = (workdir / "logs").glob("*.log")
    assert log.read_text().count(f"trained {workdir}/run to step 2") == 1  # rank 0's only

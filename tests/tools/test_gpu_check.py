"""``tools/gpu_check.py`` (run by ``pipelines/gpu_check.sh``): refuses cleanly without CUDA; its
table and parsing on CPU; it runs where the test extras are missing and is not shipped."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "pipelines" / "gpu_check.sh"
TOOL = ROOT / "tools" / "gpu_check.py"


def _load_tool():
    """tools/ is a folder of the checkout, not a package: load the script by its path."""
    spec = importlib.util.spec_from_file_location("gpu_check", TOOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


gpu_check = _load_tool()
Row, attention_rows, format_table = gpu_check.Row, gpu_check.attention_rows, gpu_check.format_table
layer_step, tiny_recipe = gpu_check.layer_step, gpu_check.tiny_recipe


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_without_cuda_exits_2_with_one_line(tmp_path):
    env = {**os.environ, "LONGNET_PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(
        [str(SCRIPT), "--work", str(tmp_path / "work")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "no CUDA device" in lines[0], result.stderr
    assert not (tmp_path / "work").exists()  # nothing made before the refusal


def test_script_is_executable_and_runs_from_the_checkout():
    assert os.access(SCRIPT, os.X_OK)
    text = SCRIPT.read_text()
    assert "PYTHONPATH" in text and "tools/gpu_check.py" in text


def test_attention_rows_give_tflops_and_the_ratio_against_the_target():
    rows = [
        {"n": 32768, "impl": "dilated", "mode": "fwd+bwd", "seconds": 0.01, "gflops": 200e3},
        {"n": 32768, "impl": "dense", "mode": "fwd+bwd", "seconds": 0.02, "gflops": 500e3},
        {"n": 32768, "impl": "dense", "mode": "fwd", "seconds": 0.01, "gflops": 600e3},
        {"n": 1 << 20, "impl": "dilated", "mode": "fwd+bwd", "seconds": 0.3, "gflops": 300e3},
    ]
    first, second = attention_rows({"rows": rows})
    assert "200.0 TFLOP/s" in first.figure and "ratio 0.40" in first.figure
    assert (first.target, first.status) == ("ratio >= 0.5", "below")
    assert "1M" in second.check and "dense" not in second.figure and second.target == ""


def test_table_is_aligned():
    table = format_table(
        [Row("a", "1.0 TFLOP/s", "x", "ok"), Row("longer check", "2", "", "FAILED")]
    )
    header, first, second = table.splitlines()
    assert header.split() == ["check", "figure", "target", "status"]
    column = header.index("status")
    assert (first[column:], second[column:]) == ("ok", "FAILED")
    assert first[header.index("figure") :].startswith("1.0 TFLOP/s")


def test_tiny_recipe_reaches_one_million_tokens():
    from longnet_cli.config import Recipe

    recipe = Recipe.from_saved(tiny_recipe(Path("data")))
    assert max(recipe.model.segment_lengths) == 1 << 20
    assert recipe.train.precision == "bf16"


def test_layer_step_runs_a_paper_base_block_forward_and_backward():
    """The layer step's code on a CPU, at a length short enough for a test."""
    figures = layer_step(64, device="cpu")  # bf16 autocast: emulated on a CPU without it
    assert figures["n"] == 64 and figures["seconds"] > 0 and figures["tokens_per_s"] > 0


def test_attention_rows_from_the_bench_command(capsys):
    """The bench attention command takes the options the check passes (bf16, D = 64, one mode)
    and its JSON is what ``attention_rows`` reads."""
    from longnet_cli.cli import main

    args = ["bench", "attention", "--device", "cpu", "--dtype", "bfloat16", "--heads", "2",
            "--dim-head", "64", "--lengths", "512", "--segments", "128,256", "--rates", "1,2",
            "--dense-max", "1M", "--mode", "fwd+bwd", "--repeats", "1", "--json"]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 0
    (row,) = attention_rows(json.loads(capsys.readouterr().out))
    assert "dilated" in row.figure and "dense" in row.figure and "ratio" in row.figure


# what a GPU machine's image holds: longnet's own dependencies, no pytest, no zstandard
_WITHOUT_TEST_EXTRAS = """
import importlib.util, json, sys
from pathlib import Path
sys.modules["pytest"] = None  # import pytest -> ImportError, find_spec -> None
sys.modules["zstandard"] = None
spec = importlib.util.spec_from_file_location("gpu_check", sys.argv[1])
tool = importlib.util.module_from_spec(spec)
sys.modules["gpu_check"] = tool
spec.loader.exec_module(tool)
(row,) = tool.check_gpu_tests(Path(sys.argv[2]), Path(sys.argv[2]) / "log")
print(json.dumps(row.__dict__))
"""


def test_runs_without_pytest_or_zstandard_and_skips_the_gpu_tests(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", _WITHOUT_TEST_EXTRAS, str(TOOL), str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    row = json.loads(result.stdout)
    assert (row["check"], row["status"]) == ("pytest -m gpu", "skipped")
    assert "pytest is not installed" in row["figure"]


def test_the_tool_is_not_shipped_in_the_package():
    assert not list((ROOT / "longnet_cli").rglob("gpu_check*"))
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'include = ["longnet_cli*"]' in pyproject  # setuptools ships longnet_cli alone
    assert "from tests" not in TOOL.read_text() and "import pytest" not in TOOL.read_text()


# --------------------------------------------------------------------------- time limits


def _fake_step(label, seconds, clock, rows=None):
    def check(work, log, deadline):
        clock.now += seconds
        return rows or [Row(label, f"{seconds} s of work")]

    return gpu_check.Step(label, check, 60.0)


class _Clock:
    now = 0.0

    def __call__(self):
        return self.now


def test_budget_skips_the_steps_it_no_longer_covers(tmp_path, monkeypatch):
    clock = _Clock()
    steps = {name: _fake_step(name, 70.0, clock) for name in ("a", "b", "c", "d")}
    monkeypatch.setattr(gpu_check, "STEPS", steps)
    seen = []
    rows = gpu_check.run_checks(tmp_path, list(steps), seen.append, budget_s=180, clock=clock)
    assert [r.status for r in rows] == ["ok", "ok", "ok", "skipped: budget"]
    assert rows == seen and "180 s budget spent" in rows[-1].figure
    assert rows[0].figure.endswith("[70 s]")


def test_each_step_gets_its_limit_or_what_is_left_of_the_budget(tmp_path, monkeypatch):
    clock, deadlines = _Clock(), []

    def check(work, log, deadline):
        deadlines.append(deadline - clock.now)
        clock.now += 50.0
        return [Row("x", "")]

    steps = {"a": gpu_check.Step("a", check, 60.0), "b": gpu_check.Step("b", check, 60.0)}
    monkeypatch.setattr(gpu_check, "STEPS", steps)
    gpu_check.run_checks(tmp_path, ["a", "b"], lambda row: None, budget_s=80, clock=clock)
    assert deadlines == [60.0, 30.0]


def test_a_step_past_its_limit_is_a_failed_row_and_the_next_still_runs(tmp_path, monkeypatch):
    def slow(work, log, deadline):
        gpu_check._run([sys.executable, "-c", "import time; time.sleep(60)"], log, deadline)
        return [Row("slow", "never")]

    def quick(work, log, deadline):
        return [Row("quick", "done")]

    steps = {"slow": gpu_check.Step("slow", slow, 1.0), "quick": gpu_check.Step("q", quick, 5)}
    monkeypatch.setattr(gpu_check, "STEPS", steps)
    rows = gpu_check.run_checks(tmp_path, ["slow", "quick"], lambda row: None)
    assert rows[0].status == "FAILED" and "timed out after 1 s (limit 1 s)" in rows[0].figure
    assert rows[1].status == "ok"
    assert "killed after 1 s" in (tmp_path / "gpu_check.log").read_text()


def test_the_planned_limits_fit_three_minutes():
    """Every step has a limit; the default budget is the 3 minutes of an H200 slot; dense
    attention stops at 256K (at 1M it alone would take about a minute)."""
    assert gpu_check.BUDGET_S <= 180
    assert all(0 < step.limit_s <= gpu_check.BUDGET_S for step in gpu_check.STEPS.values())
    assert gpu_check.ATTENTION_LENGTHS[-1] > gpu_check.DENSE_MAX
    assert gpu_check.ATTENTION_LENGTHS[0] in (1 << 15,)  # the ratio's target length runs dense


# --------------------------------------------------------------------------- every gpu test

# a package the GPU machine's image lacks, as python reports it there
_MISSING = "raise ModuleNotFoundError(\"No module named 'zstandard'\", name='zstandard')\n"


def test_every_gpu_test_collects_without_zstandard(tmp_path):
    """The check runs ``pytest -m gpu`` over all of tests/ (the fp16 loss-scale resume test of
    tests/artifacts too), and that collects on a machine without zstandard."""
    (tmp_path / "zstandard.py").write_text(_MISSING)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    command = gpu_check.gpu_tests_command()
    assert command[-1] == str(ROOT / "tests") and "gpu" in command
    blocked = subprocess.run(
        [sys.executable, "-c", "import zstandard"], capture_output=True, text=True, env=env
    )
    assert "No module named 'zstandard'" in blocked.stderr  # the blocker works
    result = subprocess.run(
        [*command[:3], "--collect-only", *command[3:]],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "error" not in result.stdout.splitlines()[-1].lower(), result.stdout[-3000:]
    assert "tests/artifacts/test_checkpoints.py::" in result.stdout
    assert "tests/model/test_attention.py::" in result.stdout
    assert "could not import 'zstandard'" in result.stdout  # skipped modules, not errors


def test_a_timed_out_step_leaves_no_process_behind(tmp_path):
    """Past its limit a step's whole process group is killed: its children too."""
    pid_file = tmp_path / "child.pid"
    parent = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
        "time.sleep(60)\n"
    )
    with pytest.raises(gpu_check.StepTimeout):
        gpu_check._run([sys.executable, "-c", parent], tmp_path / "log", time.perf_counter() + 3)
    child = int(pid_file.read_text())
    deadline = time.perf_counter() + 10
    while time.perf_counter() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        stat = Path(f"/proc/{child}/stat")
        if stat.exists() and ") Z " in stat.read_text():
            break  # killed, not yet reaped
        time.sleep(0.1)
    else:
        pytest.fail(f"child {child} still runs")

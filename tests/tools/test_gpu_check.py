"""``tools/gpu_check.py`` (run by ``pipelines/gpu_check.sh``): refuses cleanly without CUDA; its
table and parsing on CPU; it runs where the test extras are missing and is not shipped."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
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
    figures = layer_step(256, device="cpu")
    assert figures["n"] == 256 and figures["seconds"] > 0 and figures["tokens_per_s"] > 0


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

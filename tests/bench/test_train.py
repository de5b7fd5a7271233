"""``longnet bench train``: one setting, or ``--compare``'s four side by side in one run (the
same initial weights and windows for each, so their losses are comparable)."""

from __future__ import annotations

import json

from helpers import exit_code, write_train_recipe

from longnet_cli.bench.train import COMPARED, CompareResult, SettingResult, compared_settings


def test_compare_reports_every_setting_on_the_corpus_windows(corpus, tmp_path, capsys):
    recipe = write_train_recipe(tmp_path, corpus)
    every = ("--compare", "--all-settings", "--steps", "1", "--json")  # bf16 even where slow
    assert exit_code("bench", "train", str(recipe), *every) == 0
    report = json.loads(capsys.readouterr().out)
    assert [s["name"] for s in report["settings"]] == [
        "fp32 eager", "fp32 compiled", "bf16 eager", "bf16 compiled"
    ]  # fmt: skip
    assert report["data"] == "corpus" and report["steps"] == 2
    assert set(report["matmul_peak_gflops"]) == {"fp32", "bf16"}
    eager, compiled, bf16, bf16_compiled = report["settings"]
    assert eager["speedup"] == 1.0
    # Compiling changes how the blocks run, not what they compute.
    assert abs(compiled["loss"] - eager["loss"]) <= 1e-4 * eager["loss"]
    assert abs(bf16_compiled["loss"] - bf16["loss"]) <= 2e-2 * bf16["loss"]
    for setting in report["settings"]:
        assert setting["tokens_per_s"] > 0 and setting["fraction_of_peak"] > 0
        assert setting["model_gflops"] > 0 and setting["first_step_s"] > 0
        assert len(setting["losses"]) == 2 and setting["losses"][-1] == setting["loss"]
    assert report["chosen"] in [s["name"] for s in report["settings"]]


def test_compare_text_table_names_the_choice(capsys):
    """The table a user reads: a row per setting (the measurement itself is the test above's,
    one real run; this renders a result of the same shape)."""
    from longnet_cli.cli.bench import _show_comparison

    settings = [_setting("fp32", False, 100, 5.0), _setting("fp32", True, 120, 5.0),
                _setting("bf16", False, 200, 5.04), _setting("bf16", True, 210, 5.3)]  # fmt: skip
    result = CompareResult("r.yaml", "cpu", 2, 1, 8, 8, 2, "corpus", 1.0, {"fp32": 90.0}, settings,
                           skipped=["fp16 eager: skipped: a reason"])  # fmt: skip
    _show_comparison("r.yaml", result, 600)
    lines = capsys.readouterr().out.splitlines()
    for name in ("fp32 eager", "fp32 compiled", "bf16 eager", "bf16 compiled"):
        assert sum(line.startswith(name) for line in lines) == 1
    assert "vs fp32" in lines[2] and "fp16 eager: skipped: a reason" in lines
    assert lines[-1] == ("fastest within 1% of eager fp32's loss: bf16 eager (train.precision: "
                         "bf16, train.compile: false)")  # fmt: skip


def _setting(precision, compiled, tokens_per_s, loss) -> SettingResult:
    return SettingResult(precision, compiled, 1.0, 1.0, loss, tokens_per_s=tokens_per_s)


def test_the_choice_is_the_fastest_within_one_percent_of_eager_fp32():
    def chosen(*settings) -> str:
        result = CompareResult("r", "cpu", 1, 1, 8, 8, 2, "corpus", 1.0, {}, list(settings))
        return result.chosen.name

    base = _setting("fp32", False, 100, 5.0)
    assert chosen(base, _setting("fp32", True, 120, 5.0), _setting("bf16", False, 200, 5.04),
                  _setting("bf16", True, 210, 5.06)) == "bf16 eager"  # fmt: skip
    assert chosen(base, _setting("fp32", True, 90, 5.0)) == "fp32 eager"
    assert COMPARED[0] == ("fp32", False)  # the baseline comes first


def test_bf16_is_skipped_where_its_matmul_peak_is_below_fp32s():
    """An AVX2-only CPU: bf16 0.9 GFLOP/s against fp32's 147 (measured); its settings are
    skipped, each with a line saying why; --all-settings (every) trains them anyway."""
    kept, skipped = compared_settings({"fp32": 147.1, "bf16": 0.87})
    assert kept == [("fp32", False), ("fp32", True)]
    assert [line.split(":")[0] for line in skipped] == ["bf16 eager", "bf16 compiled"]
    assert "bf16 matmul peak (0.9 GFLOP/s) is below fp32's (147.1)" in skipped[0]
    assert "--all-settings" in skipped[0]
    assert compared_settings({"fp32": 147.1, "bf16": 0.87}, every=True) == (list(COMPARED), [])
    assert compared_settings({"fp32": 201.0, "bf16": 911.0}) == (list(COMPARED), [])


def test_compiled_settings_are_skipped_where_torch_compile_cannot_run():
    why = "no C++ compiler runs here"
    kept, skipped = compared_settings({"fp32": 201.0, "bf16": 911.0}, no_compile=why)
    assert kept == [("fp32", False), ("bf16", False)]
    assert [line.split(":")[0] for line in skipped] == ["fp32 compiled", "bf16 compiled"]
    assert all(why in line for line in skipped)
    kept, skipped = compared_settings({"fp32": 147.1, "bf16": 0.87}, no_compile=why)
    assert kept == [("fp32", False)] and len(skipped) == 3

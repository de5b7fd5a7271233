"""longnet_cli.evaluate.study / ``longnet study-report``: the context study's table and claims,
rendered from a side-by-side evaluation JSON (written here by hand), each run's metrics.jsonl and
the recipe its checkpoint saved (which tells the LongNet model from the dense baseline)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from longnet_cli.cli import cli
from longnet_cli.core.errors import InputError
from longnet_cli.evaluate.study import markdown, study_report

CONTEXTS = [2048, 8192, 32768]
DISTANCES = [512, 2048, 8192, 16384]
DENSE = {"segment_lengths": [65536], "dilation_rates": [1]}  # recipes/study/dense_*.yaml
LONGNET = {"segment_lengths": [2048, 8192, 32768], "dilation_rates": [1, 2, 4]}  # longnet_8k


def _context(context: int, ppl: float) -> dict:
    final = {"tokens": 2047, "loss": math.log(ppl), "ppl": ppl, "bpb": 1.0}
    return {"context": context, "overall": final, "buckets": [], "final": final}


def _run(tmp_path: Path, name: str, ppls: list[float], ratios: list[float], reach: int,
         seq_len: int, seconds: float, model: dict | None = None) -> dict:  # fmt: skip
    """A run's entry of the evaluation JSON; ``model`` (its attention) is saved in the state.json
    of the checkpoint the entry names, as training saves its recipe (None: no checkpoint)."""
    run_dir = tmp_path / name
    run_dir.mkdir()
    checkpoint = run_dir / "checkpoints" / "step-0000010"
    if model is not None:
        checkpoint.mkdir(parents=True)
        recipe = {"model": model, "train": {"seq_len": seq_len}}
        (checkpoint / "state.json").write_text(json.dumps({"step": 10, "recipe": recipe}))
    lines = [{"step": 5, "loss": 6.0, "tokens": 40960, "elapsed_s": seconds / 2},
             {"step": 10, "loss": 5.0, "tokens": 81920, "elapsed_s": seconds}]  # fmt: skip
    (run_dir / "metrics.jsonl").write_text(
        "".join(json.dumps(line) + "\n" for line in lines) + '{"step": 1'  # a cut last line
    )
    return {
        "run": str(run_dir),
        "checkpoint": str(checkpoint),
        "recipe": None,
        "step": 10,
        "seq_len": seq_len,
        "reach": reach,
        "contexts": [_context(c, p) for c, p in zip(CONTEXTS, ppls)],
        "probe": [
            {
                "distance": d,
                "documents": 8,
                "tokens": 100,
                "ratio": r,
                "within_reach": 2 * d <= reach,
            }
            for d, r in zip(DISTANCES, ratios)
        ],
    }


@pytest.fixture
def eval_json(tmp_path) -> Path:
    # dense_2k: breaks at 32K (1.2x its 2K figure); copies at 512, not at 8K
    dense = _run(tmp_path, "dense_2k", [10.0, 11.0, 12.0], [0.5, 0.96, 0.99, 1.0], 65536, 2048,
                 600, DENSE)  # fmt: skip
    # longnet_8k: uses context (0.9x) and holds at 32K (1.1x: the claim fails)
    longnet = _run(tmp_path, "longnet_8k", [10.0, 9.0, 9.9], [0.6, 0.65, 0.8, 0.85], 32768, 8192,
                   900, LONGNET)  # fmt: skip
    runs = [dense, longnet]
    path = tmp_path / "eval.json"
    path.write_text(json.dumps({"data": "d", "split": "heldout", "documents": 8, "skipped": 3,
                                "min_tokens": 32768, "runs": runs}))  # fmt: skip
    return path


def test_rows_claims_and_training_cost(eval_json):
    study = study_report(eval_json)
    assert study["contexts"] == CONTEXTS and study["distances"] == DISTANCES
    dense, longnet = study["runs"]
    assert (dense["name"], longnet["name"]) == ("dense_2k", "longnet_8k")  # directory names
    assert dense["ppl"] == {"2048": 10.0, "8192": 11.0, "32768": 12.0}
    assert dense["train_tokens"] == 81920 and dense["train_seconds"] == 600
    assert dense["train_tokens_per_s"] == pytest.approx(81920 / 600)
    claims = {c["claim"].split(":")[0]: c for c in study["claims"]}
    expected = {
        "LongNet-8K uses context": (0.9, True),
        "LongNet-8K reads 4x past its training length": (1.1, False),
        "LongNet-8K copies from its short branches' reach": (0.65, True),
        "LongNet-8K copies from its training length back": (0.8, False),
        "LongNet-8K copies through its sparse long branches": (0.85, True),
        "dense-2K breaks past its training length": (1.2, True),
        "dense-2K copies within its training length": (0.5, True),
        "dense-2K does not copy from beyond its training length": (0.99, True),
    }
    assert set(claims) == set(expected)
    for name, (measured, holds) in expected.items():
        assert claims[name]["measured"] == pytest.approx(measured), name
        assert claims[name]["holds"] is holds, name


def test_markdown_table(eval_json):
    text = markdown(study_report(eval_json))
    assert "| `dense_2k` | 2K | 64K | 10.00 | 11.00 | 12.00 | 81,920 | 137 | 10.0 min |" in text
    assert "| `longnet_8k` | 8K | 32K | 10.00 | 9.00 | 9.90 |" in text
    assert "| `longnet_8k` | 0.600 | 0.650 | 0.800 | 0.850 |" in text  # 2 x 16K <= its reach
    assert "8 documents of at least 32K tokens (3 shorter ones skipped)" in text
    assert "| LongNet-8K reads 4x past its training length: ppl at 32K / at 8K | <= 1.05 | " \
           "1.100 | no |" in text  # fmt: skip


def test_claims_not_measured_without_the_contexts(tmp_path):
    run = _run(tmp_path, "longnet_8k", [10.0, 9.0, 9.0], [0.5] * 4, 32768, 8192, 60, LONGNET)
    run["contexts"] = run["contexts"][:2]
    run["probe"] = None
    path = tmp_path / "eval.json"
    path.write_text(json.dumps({"runs": [run]}))
    study = study_report(path)
    assert [c["holds"] for c in study["claims"]] == [None] * 5
    assert "not measured" in markdown(study)


def test_bad_input_exits_2(tmp_path, eval_json):
    with pytest.raises(InputError, match="no such file"):
        study_report(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(InputError, match="cannot read"):
        study_report(tmp_path / "bad.json")
    (tmp_path / "single.json").write_text(json.dumps({"checkpoint": "x"}))
    with pytest.raises(InputError, match="no 'runs' list"):
        study_report(tmp_path / "single.json")


def test_command_writes_both_files(tmp_path, eval_json):
    out_md, out_json = tmp_path / "study.md", tmp_path / "study.json"
    result = CliRunner().invoke(
        cli, ["study-report", str(eval_json), "--markdown", str(out_md), "--json", str(out_json)]
    )
    assert result.exit_code == 0, result.output
    assert result.output == out_md.read_text()
    assert json.loads(out_json.read_text())["runs"][1]["name"] == "longnet_8k"
    quiet = CliRunner().invoke(cli, ["study-report", str(eval_json), "--quiet"])
    assert quiet.exit_code == 0 and quiet.output == ""


def test_probe_beyond_reach_is_marked(tmp_path):
    run = _run(tmp_path, "short_reach", [10.0, 9.0, 9.0], [0.5, 0.6, 0.7, 0.8], 8192, 8192, 60)
    path = tmp_path / "eval.json"
    path.write_text(json.dumps({"runs": [run]}))
    study = study_report(path)
    assert study["claims"] == []  # not a run of the study's recipes
    assert "| `short_reach` | 0.500 | 0.600 | 0.700* | 0.800* |" in markdown(study)


def _claims(study: dict) -> dict[str, tuple]:
    return {c["claim"]: (c["measured"], c["holds"]) for c in study["claims"]}


def test_roles_come_from_the_recipes_not_the_names(tmp_path, eval_json):
    """Renamed runs get the same claims; a dense run trained on longer sequences (dense_8k) is
    not the baseline; names alone (no recipe to read) give no claims."""
    expected = _claims(study_report(eval_json))
    report = json.loads(eval_json.read_text())
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    for run, name in zip(report["runs"], ("baseline", "mine")):
        target = renamed / name
        Path(run["run"]).rename(target)
        run["run"], run["checkpoint"] = str(target), str(target / "checkpoints" / "step-0000010")
    upper = _run(renamed, "upper", [9.0, 8.0, 8.5], [0.5, 0.6, 0.7, 0.9], 65536, 8192, 60, DENSE)
    report["runs"] = [report["runs"][1], upper, report["runs"][0]]  # order does not matter
    (renamed / "eval.json").write_text(json.dumps(report))
    study = study_report(renamed / "eval.json")
    assert [row["name"] for row in study["runs"]] == ["mine", "upper", "baseline"]
    assert _claims(study) == expected

    moved = tmp_path / "moved"  # the run directories gone: no recipe, no role
    renamed.rename(moved)
    assert study_report(moved / "eval.json")["claims"] == []


def test_claims_name_the_models_by_their_training_lengths(tmp_path):
    """A scaled-down study (pipelines/context_study.sh at the smoke scale): contexts 32, 128, 512
    and models trained on 32 and 128 tokens; the claims check the same shape."""
    dense = _run(tmp_path, "a", [10.0, 11.0, 12.0], [0.5] * 4, 1024, 32, 60,
                 {"segment_lengths": [1024], "dilation_rates": [1]})  # fmt: skip
    longnet = _run(tmp_path, "b", [10.0, 9.0, 9.0], [0.5] * 4, 512, 128, 60,
                   {"segment_lengths": [32, 128, 512], "dilation_rates": [1, 2, 4]})  # fmt: skip
    for run in (dense, longnet):
        for context, length in zip(run["contexts"], (32, 128, 512)):
            context["context"] = length
        for figure, distance in zip(run["probe"], (8, 32, 128, 256)):
            figure["distance"] = distance
    path = tmp_path / "eval.json"
    path.write_text(json.dumps({"runs": [dense, longnet]}))
    claims = [c["claim"] for c in study_report(path)["claims"]]
    assert len(claims) == 8
    assert claims[0] == "LongNet-128 uses context: ppl at 128 / at 32"
    assert claims[5] == "dense-32 breaks past its training length: ppl at 512 / at 32"

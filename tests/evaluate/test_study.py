"""longnet_cli.evaluate.study / ``longnet study-report``: the context study's table and claims,
rendered from a side-by-side evaluation JSON (written here by hand), each run's metrics.jsonl and
the recipe its checkpoint saved (which tells the LongNet model from the dense baseline)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import exit_code

from longnet_cli.cli import cli
from longnet_cli.core.errors import InputError
from longnet_cli.evaluate.stage import plot_available
from longnet_cli.evaluate.study import corpus_name, markdown, study_report

CONTEXTS = [2048, 8192, 32768]
DISTANCES = [128, 512, 2048, 8192, 16384]
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
    dense = _run(tmp_path, "dense_2k", [10.0, 11.0, 12.0], [0.4, 0.5, 0.96, 0.99, 1.0], 65536, 2048,
                 600, DENSE)  # fmt: skip
    # longnet_8k: uses context (0.9x) and holds at 32K (1.1x: the claim fails)
    longnet = _run(tmp_path, "longnet_8k", [10.0, 9.0, 9.9], [0.5, 0.6, 0.65, 0.8, 0.85], 32768,
                   8192, 900, LONGNET)  # fmt: skip
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
    # 2 x 16K <= reach; d = 8K, 16K: the second copy past the 8K training length
    assert "| `longnet_8k` | 0.500 | 0.600 | 0.650 | 0.800† | 0.850† |" in text
    assert "| `dense_2k` | 0.400 | 0.500 | 0.960† | 0.990† | 1.000† |" in text  # past 2K
    assert "8 documents of at least 32K tokens (3 shorter ones skipped)" in text
    assert "| LongNet-8K reads 4x past its training length: ppl at 32K / at 8K | <= 1.05 | " \
           "1.100 | does not hold |" in text  # fmt: skip
    assert "| LongNet-8K uses context: ppl at 8K / at 2K | <= 0.97 | 0.900 | holds |" in text
    assert "| Transformer, trained on 2K | 4.24 | 5.07 | 11.29 |" in text  # Table 2 beside


def test_claims_not_measured_without_the_contexts(tmp_path):
    run = _run(tmp_path, "longnet_8k", [10.0, 9.0, 9.0], [0.5] * 5, 32768, 8192, 60, LONGNET)
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
    run = _run(tmp_path, "short_reach", [10.0, 9.0, 9.0], [0.4, 0.5, 0.6, 0.7, 0.8], 8192, 8192, 60)
    path = tmp_path / "eval.json"
    path.write_text(json.dumps({"runs": [run]}))
    study = study_report(path)
    assert study["claims"] == []  # not a run of the study's recipes
    assert "| `short_reach` | 0.400 | 0.500 | 0.600 | 0.700* | 0.800* |" in markdown(study)


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
    upper = _run(renamed, "upper", [9.0, 8.0, 8.5], [0.4, 0.5, 0.6, 0.7, 0.9], 65536, 8192, 60,
                 DENSE)  # fmt: skip
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
    dense = _run(tmp_path, "a", [10.0, 11.0, 12.0], [0.5] * 5, 1024, 32, 60,
                 {"segment_lengths": [1024], "dilation_rates": [1]})  # fmt: skip
    longnet = _run(tmp_path, "b", [10.0, 9.0, 9.0], [0.5] * 5, 512, 128, 60,
                   {"segment_lengths": [32, 128, 512], "dilation_rates": [1, 2, 4]})  # fmt: skip
    for run in (dense, longnet):
        for context, length in zip(run["contexts"], (32, 128, 512)):
            context["context"] = length
        for figure, distance in zip(run["probe"], (2, 8, 32, 128, 256)):
            figure["distance"] = distance
    path = tmp_path / "eval.json"
    path.write_text(json.dumps({"runs": [dense, longnet]}))
    claims = [c["claim"] for c in study_report(path)["claims"]]
    assert len(claims) == 8
    assert claims[0] == "LongNet-128 uses context: ppl at 128 / at 32"
    assert claims[5] == "dense-32 breaks past its training length: ppl at 512 / at 32"
    # the claims' distances come from the contexts: short / 4, short, middle, long / 2
    assert [c["claim"].rsplit("d = ", 1)[-1] for c in study_report(path)["claims"][2:5]] == [
        "32", "128", "256"]  # fmt: skip
    assert claims[6].endswith("d = 8") and claims[7].endswith("d = 128")


def test_a_missing_distance_is_not_measured(tmp_path, eval_json):
    """Without d = 2K (an evaluation at the old distances, or other ones) the two claims that
    need it say so; the others still hold or not."""
    report = json.loads(eval_json.read_text())
    for run in report["runs"]:
        run["probe"] = [p for p in run["probe"] if p["distance"] != 2048]
    eval_json.write_text(json.dumps(report))
    holds = {c["claim"].split(":")[0]: c["holds"] for c in study_report(eval_json)["claims"]}
    assert holds["LongNet-8K copies from its short branches' reach"] is None
    assert holds["LongNet-8K copies from its training length back"] is False  # d = 8K: 0.8
    assert holds["dense-2K copies within its training length"] is True  # d = 512: 0.5


# -- the corpus -----------------------------------------------------------------------------------


def test_report_names_the_corpus_and_its_training_tokens(tmp_path, eval_json, corpus):
    """The corpus line comes from the manifest of the evaluation's data (a real tokenized
    corpus here: three files, so the paths name it)."""
    report = json.loads(eval_json.read_text())
    report["data"] = str(corpus)
    eval_json.write_text(json.dumps(report))
    study = study_report(eval_json)
    manifest = json.loads((corpus / "manifest.json").read_text())
    train = manifest["splits"]["train"]["tokens"]
    summary = study["corpus"]
    assert summary["train_tokens"] == train and summary["documents"] == manifest["documents"]
    assert summary["name"] == ", ".join(manifest["options"]["paths"])
    assert summary["name"].endswith("csv.py")
    text = markdown(study)
    assert f"Corpus: **{summary['name']}**, 3 documents: {train:,} training tokens" in text
    assert f"{81920 / train:.2f} passes over the training tokens" in text  # 81,920 trained


@pytest.mark.parametrize(
    ("options", "name"),
    [
        ({"paths": ["/usr/lib/python3.11"], "exclude": ["site-packages", "*.pyc"],
          "include": ["*.py"]}, "stdlib"),  # tokenize --stdlib --include '*.py'
        ({"paths": ["/usr/lib/python3.11"], "exclude": ["site-packages"],
          "include": ["json/*.py"]}, "stdlib (--include json/*.py)"),
        ({"paths": ["/v/lib/python3.11/site-packages", "/usr/lib/python3/dist-packages"],
          "exclude": ["*.pyc"], "include": ["*.py"]}, "site-packages"),
        ({"paths": ["/data/books"], "exclude": [], "include": []}, "/data/books"),
        ({"paths": ["/opt/python3.11"], "exclude": [], "include": []}, "/opt/python3.11"),
    ],
)  # fmt: skip
def test_corpus_names(options, name):
    assert corpus_name({"options": options}) == name


def test_a_corpus_that_moved_is_said_to_be_missing(eval_json):
    study = study_report(eval_json)  # its data "d" is no corpus
    assert study["corpus"] is None
    assert "Corpus: not found" in markdown(study)


# -- the curve ------------------------------------------------------------------------------------


def _checkpoint_eval(tmp_path: Path, name: str, model: dict, step: int, tokens: int,
                     ppls: tuple[float, float], ratios: list[float]) -> Path:  # fmt: skip
    """The JSON of ``longnet eval RUN/checkpoints/step-N --context 2K,8K --probe copy``: one
    run entry, its checkpoint's state.json holding the recipe (which gives the role)."""
    checkpoint = tmp_path / name / "checkpoints" / f"step-{step:07d}"
    checkpoint.mkdir(parents=True)
    recipe = {"model": model, "train": {"seq_len": 8192}}
    (checkpoint / "state.json").write_text(json.dumps({"step": step, "recipe": recipe}))
    run = {
        "run": str(tmp_path / name), "checkpoint": str(checkpoint), "recipe": name, "step": step,
        "tokens_trained": tokens, "seq_len": 8192, "reach": 32768,
        "contexts": [_context(c, p) for c, p in zip((2048, 8192), ppls)],
        "probe": [{"distance": d, "documents": 8, "tokens": 100, "ratio": r, "within_reach": True}
                  for d, r in zip(DISTANCES, ratios)],
    }  # fmt: skip
    path = tmp_path / "probes" / f"{name}-step-{step:07d}.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps({"checkpoint": str(checkpoint), "runs": [run]}))
    return path


@pytest.fixture
def probes(tmp_path) -> Path:
    """Three LongNet checkpoints (the copy ratio at d = 2K falls below 0.7 at the third) and
    two dense ones, written in another order than their tokens."""
    for step, ratio in ((1500, 0.65), (500, 0.95), (1000, 0.72)):
        _checkpoint_eval(tmp_path, "longnet_8k", LONGNET, step, step * 8192,
                         (40.0, 39.0 - step / 500), [0.6, 0.8, ratio, 0.9, 0.95])  # fmt: skip
    for step in (1000, 500):
        _checkpoint_eval(tmp_path, "dense_2k", DENSE, step, step * 8192, (35.0, 60.0),
                         [0.5, 0.9, 1.1, 1.1, 1.05])  # fmt: skip
    return tmp_path / "probes"


def test_curve_of_copy_ratio_against_training_tokens(eval_json, probes):
    study = study_report(eval_json, [probes])
    curve = study["curve"]
    assert curve["contexts"] == [2048, 8192] and curve["distances"] == DISTANCES
    points = [(p["name"], p["step"], p["train_tokens"], p["role"]) for p in curve["points"]]
    assert points == [("dense_2k", 500, 500 * 8192, "dense"),
                      ("dense_2k", 1000, 1000 * 8192, "dense"),
                      ("longnet_8k", 500, 500 * 8192, "longnet"),
                      ("longnet_8k", 1000, 1000 * 8192, "longnet"),
                      ("longnet_8k", 1500, 1500 * 8192, "longnet")]  # fmt: skip
    onset = curve["onset"]
    assert (onset["model"], onset["distance"], onset["reached"]) == ("longnet_8k", 2048, True)
    assert (onset["step"], onset["train_tokens"], onset["lowest"]) == (1500, 1500 * 8192, 0.65)
    text = markdown(study)
    assert "## Copy ratio against training tokens" in text
    assert "| model | step | train tokens | ppl 2K | ppl 8K | 8K / 2K | d = 128 | d = 512 | " \
           "d = 2K | d = 8K | d = 16K |" in text  # fmt: skip
    assert "| `longnet_8k` | 1,000 | 8.2M | 40.00 | 37.00 | 0.925 | 0.600 | 0.800 | 0.720 | " \
           "0.900 | 0.950 |" in text  # fmt: skip
    assert "`longnet_8k`'s copy ratio at d = 2K fell below 0.7 at 12.3M training tokens " \
           "(step 1,500)." in text  # fmt: skip
    assert json.loads(json.dumps(study)) == study  # what --json writes


def test_curve_not_reached_names_the_lowest(eval_json, probes):
    (probes / "longnet_8k-step-0001500.json").unlink()
    onset = study_report(eval_json, [probes])["curve"]["onset"]
    assert onset["reached"] is False and onset["step"] == 1000 and onset["lowest"] == 0.72
    text = markdown(study_report(eval_json, [probes]))
    assert "stayed at or above 0.7 through 8.2M training tokens (lowest 0.720, at 8.2M)" in text


def test_curve_from_files_and_a_side_by_side_evaluation(tmp_path, eval_json, probes):
    """A checkpoint evaluated twice counts once (its last evaluation); a side-by-side file (the
    gpu scale's one eval of every kept checkpoint) gives a point per run entry."""
    again = _checkpoint_eval(tmp_path / "again", "longnet_8k", LONGNET, 500, 500 * 8192,
                             (40.0, 38.0), [0.6, 0.8, 0.9, 0.9, 0.95])  # fmt: skip
    report = json.loads(again.read_text())
    report["runs"][0]["checkpoint"] = json.loads(
        (probes / "longnet_8k-step-0000500.json").read_text())["runs"][0]["checkpoint"]  # fmt: skip
    report["runs"].append(
        json.loads((probes / "dense_2k-step-0001000.json").read_text())["runs"][0]
    )
    again.write_text(json.dumps(report))
    curve = study_report(eval_json, [probes, again])["curve"]
    assert len(curve["points"]) == 5
    (first,) = [p for p in curve["points"] if p["name"] == "longnet_8k" and p["step"] == 500]
    assert first["copy"]["2048"] == 0.9  # the later file's figure


def test_command_curve_and_its_plot(tmp_path, eval_json, probes, capsys):
    plot = tmp_path / "curve.png"
    args = ["study-report", str(eval_json), "--curve", str(probes), "--quiet"]
    if plot_available():
        assert exit_code(*args, "--curve-plot", str(plot)) == 0
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()
    for wrong, message in (
        (["--curve-plot", str(plot)], "--curve-plot needs --curve"),
        (["--curve", str(tmp_path / "nope")], "nope: no such file or directory (--curve)"),
    ):
        assert exit_code(*args[:2], *wrong) == 2
        assert message in capsys.readouterr().err
    (probes / "broken.json").write_text("{")
    assert exit_code(*args) == 2
    err = capsys.readouterr().err
    assert "broken.json: cannot read" in err and len(err.strip().splitlines()) == 1

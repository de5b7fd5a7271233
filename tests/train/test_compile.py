"""Compiled blocks (train.compile): the eager model's parameter names, its losses within float
tolerance in training and on resume in both directions, activation checkpointing and the
chunked loss, sequence parallelism; compile time reported once, apart from tokens/s."""

from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch
from helpers import accelerate_launch, exit_code, metrics_of, write_train_recipe

from longnet_cli.model.transformer import LongNetTransformer
from longnet_cli.train.compiled import compile_blocks

STEPS = 4  # compiling on a 2-core machine is slow: few, tiny steps


def _tiny(**options) -> LongNetTransformer:
    torch.manual_seed(0)
    return LongNetTransformer(
        100, 32, 2, dim_head=16, heads=2, segment_lengths=[32, 64], dilation_rates=[1, 2],
        **options,
    )  # fmt: skip


def _losses(run) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in metrics_of(run) if "loss" in r]


def _assert_close(a, b) -> None:
    assert [s for s, _ in a] == [s for s, _ in b]
    for (_, x), (_, y) in zip(a, b):
        assert x == pytest.approx(y, rel=1e-5, abs=1e-6)


def test_compiled_blocks_keep_the_eager_parameter_names():
    eager = _tiny()
    compiled = compile_blocks(copy.deepcopy(eager))
    assert list(compiled.state_dict()) == list(eager.state_dict())  # no _orig_mod.
    assert not any("_orig_mod" in name for name, _ in compiled.named_parameters())
    compiled.load_state_dict(eager.state_dict())  # and eager weights load into it
    assert compile_blocks(compiled) is compiled  # a second call changes nothing


@pytest.mark.parametrize(
    "options",
    [{}, {"activation_checkpointing": True}, {"smeared_keys": True}],
    ids=["plain", "checkpointing", "smeared-keys"],
)
def test_compiled_loss_and_gradients_match_eager(options):
    """The chunked loss (16-position chunks: 4 per window) with and without activation
    checkpointing, and with smeared keys: the same loss and gradients as the eager model,
    within float tolerance."""
    eager = _tiny(**options)
    compiled = compile_blocks(copy.deepcopy(eager))
    tokens = torch.randint(0, 100, (2, 65), generator=torch.Generator().manual_seed(1))
    for model in (eager, compiled):
        model.loss(tokens, chunk_size=16).backward()
    assert compiled.loss(tokens, chunk_size=16).item() == pytest.approx(
        eager.loss(tokens, chunk_size=16).item(), rel=1e-6
    )
    for (name, a), (_, b) in zip(eager.named_parameters(), compiled.named_parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_compiled_training_matches_eager_and_resumes_both_ways(corpus, tmp_path, capsys):
    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    recipe = write_train_recipe(tmp_path, corpus, train__steps=STEPS, checkpoint__every=2)
    assert exit_code("train", str(recipe), "--out", str(eager), "--quiet") == 0
    on = ("--set", "train.compile=true")
    assert exit_code("train", str(recipe), "--out", str(compiled), "--quiet", *on) == 0
    assert "blocks compiled in" in capsys.readouterr().out  # the run's summary
    _assert_close(_losses(compiled), _losses(eager))
    records = metrics_of(compiled)
    compile_records = [r for r in records if "compile_s" in r]
    assert len(compile_records) == 1 and compile_records[0]["compile_s"] > 0
    assert all("compile_s" not in r for r in records if "loss" in r)  # apart from tokens/s
    # Same keys, same shapes: an eager checkpoint resumes compiled and a compiled one eager.
    state = json.loads((compiled / "checkpoints/step-0000004/state.json").read_text())
    assert state["recipe"]["train"]["compile"] is True
    for source, run, flags in ((eager, "to-compiled", on), (compiled, "to-eager", ())):
        shutil.copytree(source, tmp_path / run, ignore=shutil.ignore_patterns(".train.lock"))
        shutil.rmtree(tmp_path / run / "checkpoints" / "step-0000004")
        code = exit_code("train", str(recipe), "--out", str(tmp_path / run), "--quiet", *flags)
        assert code == 0
        _assert_close(_losses(tmp_path / run), _losses(eager))


def test_compiled_sequence_parallel_training_matches_one_eager_process(corpus, tmp_path):
    """parallel.sequence=2 on 2 gloo processes with compiled blocks: the eager one-process
    losses (the attention and its collectives stay eager; around it each rank's blocks run
    compiled on its half of the window)."""
    recipe = write_train_recipe(tmp_path, corpus, train__steps=3, checkpoint__every=3)
    assert exit_code("train", str(recipe), "--out", str(tmp_path / "one"), "--quiet") == 0
    accelerate_launch(
        recipe, tmp_path / "two", "--set", "parallel.sequence=2", "--set", "train.compile=true"
    )
    for (_, a), (_, b) in zip(_losses(tmp_path / "one"), _losses(tmp_path / "two")):
        assert b == pytest.approx(a, abs=1e-4)
    assert [s for s, _ in _losses(tmp_path / "two")] == [1, 2, 3]


def test_eval_compile_gives_the_eager_figures(reference_run, corpus, capsys):
    figures = []
    for flags in ((), ("--compile",)):
        args = ("eval", str(reference_run), "--data", str(corpus), "--split", "all")
        assert exit_code(*args, "--docs", "2", "--json", "-", "--quiet", *flags) == 0
        figures.append(json.loads(capsys.readouterr().out))
    eager, compiled = (f["runs"][0]["contexts"][0] for f in figures)
    assert compiled["overall"]["tokens"] == eager["overall"]["tokens"]
    assert compiled["overall"]["loss"] == pytest.approx(eager["overall"]["loss"], rel=1e-5)


def test_generate_compile_gives_the_eager_tokens(reference_run, capsys):
    tokens = []
    for flags in ((), ("--compile",)):
        args = ("generate", str(reference_run), "--prompt", "def main(", "--temperature", "0")
        assert exit_code(*args, "--max-new-tokens", "8", "--json", "-", "--quiet", *flags) == 0
        tokens.append(json.loads(capsys.readouterr().out)["tokens"])
    assert tokens[1] == tokens[0]


@pytest.fixture
def no_compiler(tmp_path):
    """Inductor's C++ compiler set to one that does not exist (what ``CXX=/missing/g++`` does
    at import, or a machine without g++): torch.compile cannot run on a CPU."""
    import torch._inductor.config as inductor

    with inductor.patch({"cpp.cxx": (None, str(tmp_path / "missing-g++"))}):
        yield


def test_compile_unavailable_says_why_only_without_a_compiler(request):
    from longnet_cli.train.compiled import compile_unavailable, eager_instead

    assert compile_unavailable("cpu") is None  # g++ is on these machines
    assert eager_instead("cpu", "train.compile") is None
    request.getfixturevalue("no_compiler")
    assert "C++ compiler" in compile_unavailable("cpu")
    assert eager_instead("cpu", "--compile").startswith("warning: --compile: torch.compile")


def test_train_compile_without_a_compiler_trains_eager_with_a_warning(
    corpus, tmp_path, capsys, no_compiler
):
    """A recipe with train.compile: true on a machine without a C++ compiler trains (eager,
    one warning line) instead of failing at its first step; eval and generate --compile too."""
    recipe = write_train_recipe(tmp_path, corpus, train__steps=2, checkpoint__every=2)
    run, on = tmp_path / "run", ("--set", "train.compile=true")
    assert exit_code("train", str(recipe), "--out", str(run), "--quiet", *on) == 0
    err = capsys.readouterr().err
    assert err.count("warning: train.compile: torch.compile cannot run here") == 1
    assert "C++ compiler" in err
    records = metrics_of(run)
    assert [r["step"] for r in records if "loss" in r] == [1, 2]
    assert all("compile_s" not in r for r in records)  # nothing was compiled
    args = ("eval", str(run), "--data", str(corpus), "--split", "all", "--docs", "1", "--compile")
    assert exit_code(*args, "--json", "-") == 0
    assert "torch.compile cannot run here" in capsys.readouterr().err
    args = ("generate", str(run), "--prompt", "def main(", "--max-new-tokens", "2", "--compile")
    assert exit_code(*args, "--temperature", "0") == 0
    assert "torch.compile cannot run here" in capsys.readouterr().err

"""``train.init_from``: the weight loading (every shape-keeping change allowed, the rest refused),
real tiny trainings started from a run or an export through the CLI, and recipes/extend_32k.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import exit_code, metrics_of
from safetensors.torch import load_file, save_file, save_model

from longnet_cli.artifacts.checkpoints import latest_checkpoint
from longnet_cli.config import load_recipe
from longnet_cli.core.errors import InputError
from longnet_cli.model.smeared_keys import INITIAL_LOGIT
from longnet_cli.model.transformer import LongNetTransformer
from longnet_cli.train.init_from import InitSource, check_tokenizer, load_initial_weights

ROOT = Path(__file__).resolve().parents[2]
SMALL = {"num_tokens": 64, "dim": 32, "depth": 2, "heads": 2, "dim_head": 16}


@pytest.fixture
def corpus(stdlib_corpus) -> Path:
    return stdlib_corpus


def _source(tmp_path: Path, model: torch.nn.Module, sha: str | None = "a" * 64) -> InitSource:
    weights = tmp_path / "model.safetensors"
    save_model(model, str(weights))  # tied embedding and head stored once, as checkpoints do
    return InitSource(tmp_path, weights, "checkpoint", 7, sha)


def test_weights_load_across_segments_rates_and_positions_settings(tmp_path):
    torch.manual_seed(0)
    trained = LongNetTransformer(
        **SMALL, segment_lengths=(16, 32), dilation_rates=(1, 2), positions="rotary"
    )
    source = _source(tmp_path, trained)
    torch.manual_seed(1)  # different initial weights
    extended = LongNetTransformer(
        **SMALL, segment_lengths=(16, 32, 64, 128), dilation_rates=(1, 2, 4, 8)
    )
    load_initial_weights(extended, source)
    for (name, a), (_, b) in zip(trained.state_dict().items(), extended.state_dict().items()):
        assert torch.equal(a, b), name
    # tied weights stay tied after loading
    assert extended.head.weight.data_ptr() == extended.token_embedding.weight.data_ptr()
    # a model of the source's own shape, initialised differently, computes what it computed
    torch.manual_seed(2)
    same = LongNetTransformer(**SMALL, segment_lengths=(16, 32), dilation_rates=(1, 2))
    load_initial_weights(same, source)
    tokens = torch.randint(0, SMALL["num_tokens"], (1, 40))
    with torch.no_grad():
        torch.testing.assert_close(same(tokens), trained(tokens), rtol=0, atol=0)


def test_a_changed_shape_is_refused_naming_the_parameter_and_both_shapes(tmp_path):
    source = _source(tmp_path, LongNetTransformer(**SMALL))
    wider = LongNetTransformer(**{**SMALL, "dim_head": 8})
    with pytest.raises(InputError) as err:
        load_initial_weights(wider, source)
    message = str(err.value)
    assert "blocks.0.attn" in message and "(32, 32)" in message and "(16, 32)" in message
    deeper = LongNetTransformer(**{**SMALL, "depth": 3})
    with pytest.raises(InputError, match=r"has no parameter blocks.2"):
        load_initial_weights(deeper, source)
    shallower = LongNetTransformer(**{**SMALL, "depth": 1})
    with pytest.raises(InputError, match=r"lacks: blocks.1"):
        load_initial_weights(shallower, source)


def test_smeared_keys_may_be_added_and_their_gates_start_at_the_initial_value(tmp_path):
    torch.manual_seed(0)
    trained = LongNetTransformer(**SMALL)
    source = _source(tmp_path, trained)
    torch.manual_seed(1)
    smeared = LongNetTransformer(**SMALL, smeared_keys=True)
    with torch.no_grad():
        for block in smeared.blocks:
            block.attn.key_smear.fill_(3.0)  # not the initial value: loading must set it
    added = load_initial_weights(smeared, source)
    assert added == ["blocks.0.attn.key_smear", "blocks.1.attn.key_smear"]
    for block in smeared.blocks:
        gate = torch.sigmoid(block.attn.key_smear)
        torch.testing.assert_close(gate, torch.full((SMALL["heads"],), 0.5))
        assert block.attn.key_smear.tolist() == [INITIAL_LOGIT] * SMALL["heads"]
    smeared_weights = smeared.state_dict()
    for name, tensor in trained.state_dict().items():
        assert torch.equal(smeared_weights[name], tensor), name
    # the same weights, smeared: what it computes differs only by the gates
    tokens = torch.randint(0, SMALL["num_tokens"], (1, 40))
    with torch.no_grad():
        assert not torch.allclose(smeared(tokens), trained(tokens))
    # nothing else may be missing: a deeper smeared model still names the missing layer
    deeper = LongNetTransformer(**{**SMALL, "depth": 3}, smeared_keys=True)
    with pytest.raises(InputError, match=r"has no parameter blocks.2"):
        load_initial_weights(deeper, source)
    # a source without smeared keys into a model without them adds nothing
    assert load_initial_weights(LongNetTransformer(**SMALL), source) == []


def test_smeared_keys_are_not_dropped(tmp_path):
    torch.manual_seed(0)
    trained = LongNetTransformer(**SMALL, smeared_keys=True)
    source = _source(tmp_path, trained)
    plain = LongNetTransformer(**SMALL)
    with pytest.raises(InputError) as err:
        load_initial_weights(plain, source)
    message = str(err.value)
    assert "lacks: blocks.0.attn.key_smear, blocks.1.attn.key_smear" in message
    assert "set model.smeared_keys: true to keep them" in message
    # into a smeared model the trained gates are kept, nothing is added
    with torch.no_grad():
        for block in trained.blocks:
            block.attn.key_smear.copy_(torch.tensor([-1.5, 2.0]))
    source = _source(tmp_path, trained)
    again = LongNetTransformer(**SMALL, smeared_keys=True)
    assert load_initial_weights(again, source) == []
    for block in again.blocks:
        assert block.attn.key_smear.tolist() == [-1.5, 2.0]


def test_unreadable_weights_name_the_file(tmp_path):
    source = _source(tmp_path, LongNetTransformer(**SMALL))
    source.weights.write_bytes(source.weights.read_bytes()[:100])
    with pytest.raises(InputError, match=r"model.safetensors: cannot read weights"):
        load_initial_weights(LongNetTransformer(**SMALL), source)
    save_file({"unrelated": torch.zeros(2)}, str(source.weights))
    with pytest.raises(InputError, match="has no parameter"):
        load_initial_weights(LongNetTransformer(**SMALL), source)


def test_the_tokenizer_must_match(tmp_path):
    source = _source(tmp_path, LongNetTransformer(**SMALL), sha="a" * 64)
    check_tokenizer(source, "a" * 64, tmp_path)
    with pytest.raises(InputError, match=r"tokenizer aaaaaaaaaaaa.*uses bbbbbbbbbbbb"):
        check_tokenizer(source, "b" * 64, tmp_path)
    unknown = _source(tmp_path, LongNetTransformer(**SMALL), sha=None)
    with pytest.raises(InputError, match="does not record its tokenizer"):
        check_tokenizer(unknown, "a" * 64, tmp_path)


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(latest_checkpoint(run).path / "model.safetensors"))


def _extend(
    tiny_recipe, tmp_path: Path, corpus: Path, source: Path, *sets: str
) -> tuple[int, Path]:
    """Train 1 step at a negligible learning rate from ``source`` with longer sequences and a
    branch more: the weights after it are the source's, to within that step's update."""
    recipe = tiny_recipe(tmp_path, corpus, init_from=str(source), steps=1, lr=1e-12, warmup_steps=0)
    run = tmp_path / "extended"
    code = exit_code(
        "train", str(recipe), "--out", str(run), "--quiet",
        "--set", "train.seq_len=128", "--set", "model.segment_lengths=[16,64,128]",
        "--set", "model.dilation_rates=[1,4,8]", *sets,
    )  # fmt: skip
    return code, run


def test_init_from_a_run_starts_from_its_weights_and_records_where_they_came_from(
    corpus, source_run, tmp_path, tiny_recipe
):
    code, run = _extend(tiny_recipe, tmp_path, corpus, source_run)
    assert code == 0
    before, after = _weights(source_run), _weights(run)
    assert before.keys() == after.keys()
    for name in before:
        torch.testing.assert_close(after[name], before[name], rtol=0, atol=1e-9)
    state = latest_checkpoint(run).state
    source = latest_checkpoint(source_run)
    assert state["step"] == 1  # its own step count, not the source's 3
    assert state["init_from"] == {
        "path": str(source.path),
        "kind": "checkpoint",
        "step": 3,
        "tokenizer_sha256": source.state["tokenizer_sha256"],
        "added": [],
    }
    records = metrics_of(run)
    first = {key: value for key, value in records[0].items() if key != "elapsed_s"}
    assert first == {"step": 0, "init_from": state["init_from"]}
    # a fresh optimizer: the source's moments are not carried over
    optimizer = torch.load(latest_checkpoint(run).path / "optimizer.pt", weights_only=True)
    assert all(s["step"] == 1 for s in optimizer["state"].values())


def test_init_from_an_export(corpus, source_run, tmp_path, tiny_recipe):
    exported = tmp_path / "exported"
    assert exit_code("export", str(source_run), "--out", str(exported), "--quiet") == 0
    code, run = _extend(tiny_recipe, tmp_path, corpus, exported)
    assert code == 0
    before, after = _weights(source_run), _weights(run)
    for name in before:
        torch.testing.assert_close(after[name], before[name], rtol=0, atol=1e-9)
    assert latest_checkpoint(run).state["init_from"]["kind"] == "export"


def test_a_shape_change_is_refused_before_anything_is_written(
    corpus, source_run, tmp_path, capsys, tiny_recipe
):
    code, run = _extend(tiny_recipe, tmp_path, corpus, source_run, "--set", "model.dim_head=8")
    assert code == 2
    err = capsys.readouterr().err
    assert "blocks.0.attn" in err and "(32, 32)" in err and "(16, 32)" in err
    assert not (run / "checkpoints").exists()
    missing = tmp_path / "nowhere"
    code, _ = _extend(tiny_recipe, tmp_path, corpus, missing)
    assert code == 2 and f"train.init_from: {missing} does not exist" in capsys.readouterr().err


def test_a_different_tokenizer_is_refused(
    source_run, tmp_path, capsys, tiny_recipe, tokenize_stdlib
):
    other = tokenize_stdlib(tmp_path / "other", 500)
    code, _ = _extend(tiny_recipe, tmp_path, other, source_run)
    assert code == 2
    assert "tokenize the corpus with --tokenizer" in capsys.readouterr().err


def test_a_run_without_smeared_keys_starts_one_with_them_and_records_the_gates(
    corpus, source_run, tmp_path, tiny_recipe, capsys
):
    code, run = _extend(
        tiny_recipe, tmp_path, corpus, source_run, "--set", "model.smeared_keys=true"
    )
    assert code == 0
    before, after = _weights(source_run), _weights(run)
    gates = ["blocks.0.attn.key_smear", "blocks.1.attn.key_smear"]
    assert sorted(after.keys() - before.keys()) == gates
    for name in before:  # a 1e-12 learning rate: the source's weights, to within one update
        torch.testing.assert_close(after[name], before[name], rtol=0, atol=1e-9)
    for name in gates:
        torch.testing.assert_close(after[name], torch.full((2,), INITIAL_LOGIT), rtol=0, atol=1e-9)
    state = latest_checkpoint(run).state
    assert state["init_from"]["added"] == gates
    assert state["recipe"]["model"]["smeared_keys"] is True
    first = {key: value for key, value in metrics_of(run)[0].items() if key != "elapsed_s"}
    assert first == {"step": 0, "init_from": state["init_from"]}
    # and back: a run with smeared keys cannot start one without them (its gates would be lost)
    recipe = tiny_recipe(tmp_path, corpus, init_from=str(run), steps=1)
    code = exit_code("train", str(recipe), "--out", str(tmp_path / "back"), "--quiet")
    assert code == 2
    assert "set model.smeared_keys: true to keep them" in capsys.readouterr().err
    assert not (tmp_path / "back" / "checkpoints").exists()


def test_extend_32k_keeps_the_quickstart_shape_and_runs_at_a_tiny_scale(corpus, tmp_path):
    quickstart = load_recipe(ROOT / "recipes" / "quickstart.yaml")
    extend = load_recipe(ROOT / "recipes" / "extend_32k.yaml")
    shape_keys = ("dim", "depth", "heads", "dim_head", "ff_mult", "tie_embeddings", "qk_norm",
                  "parallel_blocks", "positions", "smeared_keys")  # fmt: skip
    for key in shape_keys:
        assert getattr(extend.model, key) == getattr(quickstart.model, key), key
    assert extend.train.seq_len == 32 * 1024 and max(extend.model.segment_lengths) == 32 * 1024
    assert extend.data.shards == quickstart.data.shards
    assert extend.train.init_from == "runs/quickstart/run"
    # the shipped pair, shrunk: a "quickstart" of the same shape keys, then the extension
    small = ["--set", "model.dim=32", "--set", "model.depth=1", "--set", "model.heads=2",
             "--set", "model.dim_head=16", "--set", "train.threads=1"]  # fmt: skip
    first = tmp_path / "quickstart"
    assert exit_code(
        "train", str(ROOT / "recipes" / "quickstart.yaml"), "--out", str(first), "--quiet",
        "--set", f"data.shards={corpus}", "--set", "train.seq_len=64", "--set", "train.steps=2",
        "--set", "train.warmup_steps=0", "--set", "checkpoint.every=2",
        "--set", "model.segment_lengths=[16,32,64]", "--set", "model.dilation_rates=[1,2,4]",
        *small,
    ) == 0  # fmt: skip
    second = tmp_path / "extended"
    assert exit_code(
        "train", str(ROOT / "recipes" / "extend_32k.yaml"), "--out", str(second), "--quiet",
        "--set", f"data.shards={corpus}", "--set", f"train.init_from={first}",
        "--set", "train.seq_len=256", "--set", "train.steps=2", "--set", "train.warmup_steps=0",
        "--set", "model.segment_lengths=[16,32,64,128,256]",
        "--set", "model.dilation_rates=[1,2,4,8,16]", "--set", "checkpoint.every=2", *small,
    ) == 0  # fmt: skip
    assert latest_checkpoint(second).state["init_from"]["path"] == str(
        latest_checkpoint(first).path
    )
    assert exit_code("eval", str(first), str(second), "--context", "64,256", "--quiet") == 0

"""``longnet export``: the directory's files and model card, transformers loading it offline with
longnet's logits (within 1e-5, fp32) and greedy tokens, its tokenizer, longnet reading it as a
checkpoint, smeared keys (transformers' cached ``generate`` equal to the full forward; an export
written before the option existed still loads), and bad input (exit 2, ``--force``). The
transformers tests skip without it."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers import fresh_run, tokenize_stdlib_files

from longnet_cli.artifacts.checkpoints import (
    latest_checkpoint,
    load_model_weights,
    verify_checkpoint,
)
from longnet_cli.artifacts.exports import read_exported
from longnet_cli.cli import main
from longnet_cli.config import Recipe
from longnet_cli.core.errors import InputError
from longnet_cli.data.format.manifest import read_manifest
from longnet_cli.data.tokenizer import encode_lossless, load_tokenizer
from longnet_cli.export import load_exported_model
from longnet_cli.model.config import MODEL_KEYS

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported: no network, ever
os.environ["TRANSFORMERS_OFFLINE"] = "1"

FILES = ("json/decoder.py", "json/encoder.py", "csv.py", "textwrap.py", "shlex.py")
VOCAB = 600
TINY = {"dim": 32, "depth": 2, "heads": 2, "dim_head": 16,
        "segment_lengths": [16, 64], "dilation_rates": [1, 4]}  # fmt: skip
# every option that changes the modules or the forward: untied head, xPos, qk norm, parallel
# blocks, three branches, heads beyond the largest dilation rate
VARIED = {"dim": 32, "depth": 2, "heads": 4, "dim_head": 8, "ff_mult": 2.0,
          "segment_lengths": [8, 32, 64], "dilation_rates": [1, 2, 4], "positions": "xpos",
          "tie_embeddings": False, "qk_norm": True, "parallel_blocks": True}  # fmt: skip
SMEARED = {**TINY, "smeared_keys": True}
EXPORTED_FILES = {
    "README.md", "config.json", "configuration_longnet.py", "generation_config.json",
    "model.safetensors", "modeling_longnet.py", "state.json", "tokenization_longnet.py",
    "tokenizer.model", "tokenizer_config.json",
}  # fmt: skip


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch thread, as the tiny recipes' train.threads: on a busy 2-core machine more
    threads wait on each other (a tiny forward took 20x longer with two)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _cli(*args: str) -> int:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    return exit_info.value.code


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return tokenize_stdlib_files(tmp_path_factory.mktemp("export-corpus") / "data", FILES, VOCAB)


@pytest.fixture(scope="module")
def run(corpus, tmp_path_factory) -> Path:
    """A tiny model trained 3 steps, evaluated on held-out documents at the end."""
    directory = tmp_path_factory.mktemp("export-run")
    recipe = {
        "data": {"shards": str(corpus)},
        "model": TINY,
        "train": {"seq_len": 64, "steps": 3, "lr": 3e-3, "seed": 1, "threads": 1},
        "checkpoint": {"every": 3},
        "eval": {"every": 3, "contexts": [32, 64], "docs": 2},
    }
    path = directory / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert _cli("train", str(path), "--out", str(directory / "run"), "--quiet") == 0
    return directory / "run"


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export-out") / "tiny-longnet"
    assert _cli("export", str(run), "--out", str(out), "--quiet") == 0
    return out


def _longnet_model(checkpoint_dir: Path):
    checkpoint = latest_checkpoint(checkpoint_dir)
    model = Recipe.from_saved(checkpoint.state["recipe"]).model.build(VOCAB)
    load_model_weights(checkpoint.path, model)
    return model.eval()


# -- the directory --------------------------------------------------------------------------------


def test_export_writes_the_model_directory(run, corpus, exported):
    assert {p.name for p in exported.iterdir()} == EXPORTED_FILES
    assert not [p for p in exported.parent.iterdir() if p.name.startswith(".")]  # no staging
    checkpoint = latest_checkpoint(run)
    recipe = Recipe.from_saved(checkpoint.state["recipe"])
    config = json.loads((exported / "config.json").read_text())
    assert config["model_type"] == "longnet" and config["architectures"] == ["LongNetForCausalLM"]
    model_keys = recipe.to_dict()["model"]
    assert set(MODEL_KEYS) | {"vocab_size"} == set(model_keys)  # every key of the recipe
    for key in MODEL_KEYS:
        assert config[key] == model_keys[key], key
    assert config["vocab_size"] == VOCAB and config["reach"] == 64
    assert config["eos_token_id"] == 1 and config["tie_word_embeddings"] is True
    for name in config["auto_map"].values():
        assert (exported / f"{name.split('.')[0]}.py").is_file()
    assert (exported / "tokenizer.model").read_bytes() == (corpus / "tokenizer.model").read_bytes()
    tokenizer_config = json.loads((exported / "tokenizer_config.json").read_text())
    assert tokenizer_config["eos_token"] == "</s>" and tokenizer_config["bos_token"] is None
    generation = json.loads((exported / "generation_config.json").read_text())
    assert generation["eos_token_id"] == 1 and generation["temperature"] == 0.8
    state = json.loads((exported / "state.json").read_text())
    assert state["export"]["from"] == str(checkpoint.path.resolve())
    own = ("export", "files")
    assert {k: v for k, v in state.items() if k not in own} == {
        k: v for k, v in checkpoint.state.items() if k not in own
    }
    assert set(state["files"]) == {"model.safetensors", "tokenizer.model"}
    assert verify_checkpoint(exported).step == 3  # the hashes are the export's own files'


def test_model_card_has_the_recipe_training_corpus_and_heldout_table(run, corpus, exported):
    card = (exported / "README.md").read_text()
    checkpoint = latest_checkpoint(run)
    recipe_block = card.split("```yaml\n", 1)[1].split("```", 1)[0]
    assert yaml.safe_load(recipe_block) == checkpoint.state["recipe"]
    assert "- steps: 3 of 3" in card
    assert f"- tokens: {checkpoint.state['tokens']:,} (sequences of 64 tokens)" in card
    manifest = read_manifest(corpus)
    assert f"{manifest['documents']:,} documents, {manifest['tokens']:,} tokens" in card
    heldout = manifest["splits"]["heldout"]
    assert f"held out of training: {heldout['documents']:,} documents" in card
    last_eval = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    figures = [r for r in last_eval if "eval" in r][-1]["eval"]
    assert figures["split"] == "heldout"
    for context, values in figures["contexts"].items():
        row = (f"| {context} | {values['tokens']:,} | {values['loss']:.4f} | "
               f"{values['ppl']:.2f} | {values['bpb']:.4f} |")  # fmt: skip
        assert row in card
    assert "Step 3 on 2 documents held out of training, from `metrics.jsonl`" in card


def test_model_card_says_what_it_could_not_read(corpus, tmp_path):
    """A corpus moved away and a run never evaluated: the card says so instead of numbers."""
    run = fresh_run(tmp_path / "run", corpus, VOCAB, TINY, shards=str(tmp_path / "moved"))
    out = tmp_path / "out"
    assert _cli("export", str(run), "--out", str(out), "-q") == 0
    card = (out / "README.md").read_text()
    assert f"`{tmp_path / 'moved'}`: not reachable when this model was exported" in card
    assert f"None recorded in `{run}` up to step 1" in card


def test_longnet_reads_the_export_as_a_checkpoint(run, exported, capsysbinary, tmp_path):
    """``longnet generate`` and ``longnet eval`` take the exported directory as they take the
    run, with the same results; ``read_exported`` tells an export from a checkpoint."""
    assert read_exported(latest_checkpoint(run).path) is None
    assert read_exported(exported).step == 3 and read_exported(exported).recipe.model.dim == 32
    results = {}
    for name, source in (("run", run), ("export", exported)):
        out = tmp_path / f"{name}.json"
        args = ("--prompt", "def encode(", "--temperature", "0", "--max-new-tokens", "12")
        assert _cli("generate", str(source), *args, "--json", str(out), "-q") == 0
        scored = tmp_path / f"{name}-eval.json"
        assert _cli("eval", str(source), "--context", "64", "--docs", "2", "--json",
                    str(scored), "-q") == 0  # fmt: skip
        results[name] = (json.loads(out.read_text())["tokens"],
                         json.loads(scored.read_text())["overall"])  # fmt: skip
    capsysbinary.readouterr()
    assert results["export"] == results["run"]
    tokens = torch.randint(0, VOCAB, (1, 150))
    with torch.no_grad():
        expected = _longnet_model(run)(tokens)
        assert torch.equal(load_exported_model(exported)(tokens), expected)


# -- transformers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model",
    [TINY, VARIED, {**VARIED, "smeared_keys": True}],
    ids=["tied-rotary", "untied-xpos-qknorm", "smeared-untied-xpos-qknorm"],
)
def test_transformers_logits_equal_longnet_without_the_run(corpus, tmp_path, model):
    """AutoModelForCausalLM loads the export offline, the run directory deleted, and gives
    longnet's logits (and loss) within 1e-5 in fp32 over sequences crossing several blocks;
    so does the copy its save_pretrained writes."""
    transformers = pytest.importorskip("transformers")
    run = fresh_run(tmp_path / "run", corpus, VOCAB, model)
    out = tmp_path / "export"
    assert _cli("export", str(run), "--out", str(out), "-q") == 0
    tokens = torch.randint(0, VOCAB, (2, 150))  # 150 tokens: blocks of 64 at 0, 64, 128
    reference = _longnet_model(run)
    with torch.no_grad():
        expected = reference(tokens)
        expected_loss = reference.token_nll(tokens).mean()
    shutil.rmtree(run)

    hf_model = transformers.AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)
    assert type(hf_model).__name__ == "LongNetForCausalLM" and not hf_model.training
    assert hf_model.config.hidden_size == model["dim"] and hf_model.config.reach == 64
    smeared = model.get("smeared_keys", False)
    assert json.loads((out / "config.json").read_text())["smeared_keys"] is smeared
    assert hf_model.config.smeared_keys is smeared
    assert (hf_model.blocks[0].attn.key_smear is not None) is smeared
    with torch.no_grad():
        output = hf_model(input_ids=tokens, labels=tokens)
    assert output.logits.dtype == torch.float32
    assert (output.logits - expected).abs().max().item() <= 1e-5
    assert abs(output.loss.item() - expected_loss.item()) <= 1e-5

    hf_model.save_pretrained(tmp_path / "saved")  # transformers' own copy loads the same
    again = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "saved", trust_remote_code=True
    )
    with torch.no_grad():
        assert torch.equal(again(input_ids=tokens).logits, output.logits)


def test_transformers_generate_is_longnet_greedy_with_the_bounded_cache(corpus, tmp_path):
    """Greedy ``generate`` gives LongNetTransformer.generate's tokens at temperature 0 and the
    full forward's (use_cache=False); with the cache the model sees the prompt once, then one
    token per step, across block boundaries (prompt 70 tokens, 70 new: past 64 and 128)."""
    transformers = pytest.importorskip("transformers")
    run = fresh_run(tmp_path / "run", corpus, VOCAB, TINY, scale=10.0)
    out = tmp_path / "export"
    assert _cli("export", str(run), "--out", str(out), "-q") == 0
    prompt = torch.randint(2, VOCAB, (1, 70))
    expected = _longnet_model(run).generate(prompt, 70, temperature=0)[0].tolist()

    hf_model = transformers.AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)
    seen: list[int] = []

    def record(module, args, kwargs):
        seen.append(kwargs["input_ids"].shape[1])

    hook = hf_model.register_forward_pre_hook(record, with_kwargs=True)
    common = {"max_new_tokens": 70, "min_new_tokens": 70, "do_sample": False}
    cached = hf_model.generate(prompt, attention_mask=torch.ones_like(prompt), **common)
    assert seen == [70] + [1] * 69
    seen.clear()
    full = hf_model.generate(prompt, attention_mask=torch.ones_like(prompt), use_cache=False,
                             **common)  # fmt: skip
    hook.remove()
    assert seen == list(range(70, 140))
    assert cached[0, :70].tolist() == prompt[0].tolist()
    assert cached[0, 70:].tolist() == expected == full[0, 70:].tolist()
    assert len(set(expected)) > 10  # not one token repeated: the context matters
    with pytest.raises(ValueError, match="no padding"):
        hf_model(input_ids=prompt, attention_mask=torch.zeros_like(prompt))


def test_transformers_generate_with_smeared_keys_equals_the_full_forward(corpus, tmp_path):
    """With smeared keys the prefill runs the whole prompt and each decoding step smears with
    the previous position's key: every step's logits of the cached greedy ``generate`` equal
    longnet's full forward over the final sequence within 1e-4, for prompts ending before, on
    and after a block boundary (63, 64, 65 tokens: the block of 64 holding the last token
    starts at 0 or 64), their 20 new tokens crossing the next 16-token segments."""
    transformers = pytest.importorskip("transformers")
    run = fresh_run(tmp_path / "run", corpus, VOCAB, SMEARED, scale=10.0)
    out = tmp_path / "export"
    assert _cli("export", str(run), "--out", str(out), "-q") == 0
    reference = _longnet_model(run)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)
    assert hf_model.config.smeared_keys is True
    seen: list[int] = []
    hook = hf_model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["input_ids"].shape[1]), with_kwargs=True
    )
    torch.manual_seed(5)
    new = 20
    for length in (63, 64, 65):
        seen.clear()
        prompt = torch.randint(2, VOCAB, (1, length))
        generated = hf_model.generate(
            prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new,
            min_new_tokens=new, do_sample=False, return_dict_in_generate=True, output_logits=True,
        )  # fmt: skip
        assert seen == [length] + [1] * (new - 1)  # the whole prompt once, then one token a step
        sequence = generated.sequences  # (1, length + new)
        with torch.no_grad():
            full = reference(sequence)  # (1, length + new, V)
        steps = torch.stack(generated.logits, dim=1)  # (1, new, V): the logits of each step
        difference = (steps - full[:, length - 1 : -1]).abs().max().item()
        assert difference <= 1e-4, (length, difference)
        assert sequence[0, length:].tolist() == full[0, length - 1 : -1].argmax(-1).tolist()
    hook.remove()
    # the gates matter here: the same weights with no smearing (s = 1) predict otherwise
    with torch.no_grad():
        for block in reference.blocks:
            block.attn.key_smear.fill_(30.0)
        assert (reference(sequence) - full).abs().max().item() > 1e-2


def test_an_export_written_before_smeared_keys_still_loads(run, exported, tmp_path, capsys):
    """An export whose config.json and recorded recipe lack ``smeared_keys`` (written before the
    option) loads in longnet and in transformers as a model without them, logits unchanged."""
    old = tmp_path / "old-export"
    shutil.copytree(exported, old)
    config = json.loads((old / "config.json").read_text())
    assert config.pop("smeared_keys") is False
    (old / "config.json").write_text(json.dumps(config, indent=2))
    state = json.loads((old / "state.json").read_text())
    del state["recipe"]["model"]["smeared_keys"]
    (old / "state.json").write_text(json.dumps(state, indent=2))

    read = read_exported(old)
    assert read.model_kwargs()["smeared_keys"] is False
    assert read.recipe.model.smeared_keys is False
    tokens = torch.randint(0, VOCAB, (1, 150))
    with torch.no_grad():
        expected = _longnet_model(run)(tokens)
        assert torch.equal(load_exported_model(old)(tokens), expected)
    assert _cli("generate", str(old), "--prompt", "def f(", "--temperature", "0",
                "--max-new-tokens", "4", "-q") == 0  # fmt: skip
    assert _cli("eval", str(old), "--context", "64", "--docs", "1", "-q") == 0
    capsys.readouterr()
    # a key a recipe must state is still required
    del config["heads"]
    (old / "config.json").write_text(json.dumps(config, indent=2))
    with pytest.raises(InputError, match=r"config.json: missing model key\(s\) heads"):
        read_exported(old)
    config["heads"] = TINY["heads"]
    (old / "config.json").write_text(json.dumps(config, indent=2))

    transformers = pytest.importorskip("transformers")
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(old, trust_remote_code=True)
    assert hf_model.config.smeared_keys is False
    with torch.no_grad():
        assert (hf_model(input_ids=tokens).logits - expected).abs().max().item() <= 1e-5


def test_transformers_tokenizer_is_longnets(corpus, exported, tmp_path):
    """AutoTokenizer encodes as ``longnet tokenize`` does (no BOS/EOS added) and decodes back
    to exactly the text, U+2581 and byte-fallback characters included; it saves and reloads."""
    transformers = pytest.importorskip("transformers")
    tokenizer = transformers.AutoTokenizer.from_pretrained(exported, trust_remote_code=True)
    text = "def f(x):\n\treturn  x \u2581 \u00fc 1234 \U0001f600\n"
    ids = tokenizer(text).input_ids
    assert ids == encode_lossless(load_tokenizer(corpus / "tokenizer.model"), [text])[0]
    assert tokenizer.decode(ids) == text
    assert tokenizer.eos_token_id == 1 and len(tokenizer) == VOCAB
    tokenizer.save_pretrained(tmp_path / "saved")
    again = transformers.AutoTokenizer.from_pretrained(tmp_path / "saved", trust_remote_code=True)
    assert again(text).input_ids == ids


# -- bad input ------------------------------------------------------------------------------------


def test_refusals_exit_2_and_force_replaces(run, corpus, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert _cli("export", str(run), "--out", str(out)) == 2
    assert "exists and is not empty; pass --force" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]

    assert _cli("export", str(run), "--out", str(out), "--force", "-q") == 0
    assert {p.name for p in out.iterdir()} == EXPORTED_FILES
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing left beside it
    assert json.loads((out / "config.json").read_text())["model_type"] == "longnet"

    cases = [
        ((str(tmp_path / "missing"), "--out", str(tmp_path / "a")), "no such checkpoint"),
        ((str(corpus), "--out", str(tmp_path / "b")), "no checkpoint found in"),
        ((str(run), "--out", str(out / "config.json")), "exists and is not a directory"),
        ((str(run), "--out", str(run), "--force"), "would replace the checkpoint it exports"),
        ((str(run), "--out", "."), "is the current directory or holds it"),
        ((str(run), "--out", str(tmp_path / "c"), "--tokenizer", str(out / "README.md")),
         "but " + str(latest_checkpoint(run).path) + " was trained with tokenizer"),
    ]  # fmt: skip
    damaged = tmp_path / "damaged"
    shutil.copytree(latest_checkpoint(run).path, damaged)
    with open(damaged / "optimizer.pt", "r+b") as handle:
        handle.seek(100)
        byte = handle.read(1)
        handle.seek(100)
        handle.write(bytes([byte[0] ^ 0xFF]))
    cases.append(((str(damaged), "--out", str(tmp_path / "d")), "optimizer.pt: sha256"))
    for args, message in cases:
        assert _cli("export", *args) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert latest_checkpoint(run) is not None and (run / "metrics.jsonl").is_file()
    assert not [p for p in "abcd" if (tmp_path / p).exists()]


def test_export_needs_no_transformers(run, tmp_path, monkeypatch, capsys):
    """Without the hf extra, ``longnet export`` still writes the whole directory."""
    monkeypatch.setitem(sys.modules, "transformers", None)  # any import of it fails
    out = tmp_path / "out"
    assert _cli("export", str(run), "--out", str(out), "--json", "-q") == 0
    assert {p.name for p in out.iterdir()} == EXPORTED_FILES
    report = json.loads(capsys.readouterr().out)
    assert report["step"] == 3 and report["files"] == sorted(EXPORTED_FILES)
    assert report["parameters"] == _longnet_model(run).num_parameters()

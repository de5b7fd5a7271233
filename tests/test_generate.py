"""``longnet generate``: streamed text equal to the JSON's, reproducible for a seed, greedy equal
to the full forward's argmax, prompts from text, files and corpus documents, the checkpoint's
tokenizer copy and its fallbacks, ``--stop``, and bad input (exit 2)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from longnet_cli.artifacts.checkpoints import latest_checkpoint, load_model_weights
from longnet_cli.cli import main
from longnet_cli.config import Recipe
from longnet_cli.data.sources import stdlib_path
from longnet_cli.data.token_bytes import TokenBytes
from longnet_cli.data.tokenizer import encode_lossless, load_tokenizer
from longnet_cli.generate import TextStream
from longnet_cli.tokenize import TokenizeOptions, tokenize_corpus

FILES = ("json/decoder.py", "json/encoder.py", "csv.py", "textwrap.py", "shlex.py")


def _tokenize(out: Path, vocab_size: int) -> Path:
    tokenize_corpus(
        TokenizeOptions(
            paths=tuple(stdlib_path() / name for name in FILES),
            out=out,
            vocab_size=vocab_size,
            sample_bytes=1 << 20,
            holdout=0.5,
            workers=1,
            progress=False,
        )
    )
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return _tokenize(tmp_path_factory.mktemp("generate-corpus") / "data", 600)


@pytest.fixture(scope="module")
def run(corpus, tmp_path_factory) -> Path:
    """A tiny model trained a few steps on ``corpus`` (one CPU thread, seq_len 64)."""
    directory = tmp_path_factory.mktemp("generate-run")
    recipe = {
        "data": {"shards": str(corpus)},
        "model": {
            "dim": 32, "depth": 2, "heads": 2, "dim_head": 16,
            "segment_lengths": [16, 64], "dilation_rates": [1, 4],
        },
        "train": {"seq_len": 64, "steps": 3, "lr": 3e-3, "seed": 1, "threads": 1},
        "checkpoint": {"every": 3},
    }  # fmt: skip
    path = directory / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert _cli("train", str(path), "--out", str(directory / "runs" / "tiny"), "--quiet") == 0
    return directory / "runs" / "tiny"


def _cli(*args: str) -> int:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    return exit_info.value.code


def _generate(capsysbinary, tmp_path, *args: str) -> tuple[bytes, dict]:
    out = tmp_path / "generate.json"
    assert _cli("generate", *args, "--json", str(out), "-q") == 0
    return capsysbinary.readouterr().out, json.loads(out.read_text())


def test_checkpoint_carries_its_tokenizer(run, corpus):
    checkpoint = latest_checkpoint(run)
    copy = checkpoint.path / "tokenizer.model"
    assert copy.read_bytes() == (corpus / "tokenizer.model").read_bytes()


def test_streamed_text_is_the_json_text_and_reproducible(run, corpus, capsysbinary, tmp_path):
    args = (str(run), "--prompt", "def encode(", "--max-new-tokens", "30", "--seed", "3")
    stdout, result = _generate(capsysbinary, tmp_path, *args)
    again, _ = _generate(capsysbinary, tmp_path, *args)
    assert stdout == again
    assert stdout.endswith(b"\n") and stdout[:-1].decode("utf-8", "replace") == result["text"]
    assert 1 <= len(result["tokens"]) <= 30
    processor = load_tokenizer(corpus / "tokenizer.model")
    if result["stop_reason"] == "max_new_tokens":
        assert processor.decode(result["tokens"]) == result["text"]
    assert result["cache_keys_per_layer"] <= result["cache_bound_per_layer"] == 2 * (16 + 16)
    other, _ = _generate(capsysbinary, tmp_path, *args[:-1], "4")
    assert other != stdout  # another seed, another sample (30 tokens of a 600-token vocabulary)


def test_greedy_is_the_full_forward_argmax(run, corpus, capsysbinary, tmp_path):
    _, result = _generate(
        capsysbinary, tmp_path, str(run), "--doc", "heldout", "--prompt-tokens", "70",
        "--temperature", "0", "--max-new-tokens", "40",
    )  # fmt: skip
    assert result["prompt_tokens"] == 70 and result["prefill_tokens"] == 70 - 64
    checkpoint = latest_checkpoint(run)
    model = Recipe.from_saved(checkpoint.state["recipe"]).model.build(600)
    load_model_weights(checkpoint.path, model)
    from longnet_cli.data.format.reader import TokenizedCorpus

    data = TokenizedCorpus.open(corpus)
    document = data.document(int(data.split_documents("heldout")[0]))[:70].tolist()
    sequence = torch.tensor(document + result["tokens"])[None]
    with torch.no_grad():
        logits = model.eval()(sequence)[0]
    new = len(result["tokens"])
    assert logits[69 : 69 + new].argmax(-1).tolist() == result["tokens"]


def test_prompt_file_and_stop(run, capsysbinary, tmp_path):
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("import json\n\ndef ")
    args = (str(run), "--prompt-file", str(prompt), "--temperature", "0", "--max-new-tokens", "40")
    _, result = _generate(capsysbinary, tmp_path, *args)
    text = result["text"]
    assert len(text) > 4
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    first = text.index(stop)
    stopped, result = _generate(capsysbinary, tmp_path, *args, "--stop", stop)
    assert result["stop_reason"] == "stop" and result["text"] == text[:first]
    assert stopped == text[:first].encode() + b"\n"


def test_older_checkpoint_falls_back_to_the_corpus_tokenizer(run, capsysbinary, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(latest_checkpoint(run).path, old)
    (old / "tokenizer.model").unlink()
    _, result = _generate(
        capsysbinary, tmp_path, str(old), "--prompt", "x = ", "--max-new-tokens", "3"
    )
    assert "the run's corpus" in " ".join(result["chosen"])
    state = json.loads((old / "state.json").read_text())
    state["recipe"]["data"]["shards"] = str(tmp_path / "moved")
    (old / "state.json").write_text(json.dumps(state))
    assert _cli("generate", str(old), "--prompt", "x", "-q") == 2
    assert "no tokenizer found" in capsysbinary.readouterr().err.decode()


def test_bad_input_exits_2(run, tmp_path, capsysbinary):
    other = _tokenize(tmp_path / "other", 500)
    (tmp_path / "empty.txt").write_text("")
    cases = [
        (("generate", str(run)), "no prompt"),
        (("generate", str(run), "--prompt", ""), "empty"),
        (("generate", str(run), "--prompt-file", str(tmp_path / "empty.txt")), "empty"),
        (("generate", str(run), "--doc", "99999"), "unknown document"),
        (("generate", str(run), "--doc", "heldout:999"), "held-out documents"),
        (("generate", str(run), "--doc", "0", "--data", str(other)), "tokenized with"),
        (("generate", str(run), "--prompt", "x", "--tokenizer", str(other / "tokenizer.model")),
         "sha256"),
        (("generate", str(tmp_path / "nowhere"), "--prompt", "x"), "no such checkpoint"),
        (("generate", str(run), "--prompt", "x", "--top-p", "0"), "--top-p"),
    ]  # fmt: skip
    for args, message in cases:
        assert _cli(*args, "-q") == 2, args
        err = capsysbinary.readouterr().err.decode()
        assert message in err and len(err.strip().splitlines()) == 1, (args, err)


def test_text_stream_holds_back_partial_characters_and_stop_prefixes():
    stream = TextStream(stop="END")
    euro = "€".encode()  # three bytes
    assert stream.feed(b"a" + euro[:1]) == b"a"
    assert stream.feed(euro[1:2]) == b""
    assert stream.feed(euro[2:] + b"E") == euro  # "E" may begin "END"
    assert stream.feed(b"x") == b"Ex"
    assert stream.feed(b"EN") == b""
    assert stream.feed(b"Dtail") == b"" and stream.stopped
    lone = TextStream()
    assert lone.feed(b"\xe2") == b"" and lone.feed(b"z") == b"\xe2z"  # never completes: as is
    assert lone.feed(b"\xf0\x9f") == b"" and lone.finish() == b"\xf0\x9f"


def test_token_bytes_are_exactly_the_text(corpus):
    """The bytes of a text's lossless ids, joined, are the text's bytes (spaces, U+2581 and
    byte-fallback characters included); control ids and ids outside the vocabulary are none."""
    processor = load_tokenizer(corpus / "tokenizer.model")
    token_bytes = TokenBytes(processor)
    text = "def f(x):\n\treturn  x \u2581 \u00fc 1234 \U0001f600\n"
    ids = encode_lossless(processor, [text])[0]
    assert b"".join(token_bytes(token) for token in ids) == text.encode()
    assert token_bytes(processor.eos_id()) == b"" and token_bytes(10**6) == b""
    assert token_bytes.lengths() == [len(token_bytes(t)) for t in range(len(token_bytes.table))]

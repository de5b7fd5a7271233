"""longnet_cli.artifacts.loading: ``load_model`` on a real tiny checkpoint, its run directory
(the newest intact checkpoint) and its export, each verified against the recorded hashes; a
damaged weights file refused naming it; ``find_checkpoint_tokenizer`` and the vocabulary read
from the weights."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from helpers import exit_code

from longnet_cli.artifacts.checkpoints import load_model_weights, read_checkpoint
from longnet_cli.artifacts.loading import (
    find_checkpoint_tokenizer,
    load_checkpoint_model,
    load_model,
    saved_recipe,
    weights_vocab_size,
)
from longnet_cli.core.errors import DamagedFileError, InputError

VOCAB = 600  # conftest's corpus


def _flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 0xFF
    path.write_bytes(bytes(data))


def _reference_model(checkpoint_path: Path):
    """The checkpoint's model built and loaded by hand, without the loader."""
    checkpoint = read_checkpoint(checkpoint_path)
    model = saved_recipe(checkpoint).model.build(VOCAB)
    load_model_weights(checkpoint.path, model)
    return model.eval()


def _same_weights(a, b) -> bool:
    first, second = a.state_dict(), b.state_dict()
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


@pytest.fixture
def run(reference_run, tmp_path) -> Path:
    """A copy of the finished reference run (checkpoints 8 and 12) to damage."""
    copy = tmp_path / "run"
    shutil.copytree(reference_run, copy, ignore=shutil.ignore_patterns(".train.lock"))
    return copy


def test_a_checkpoint_loads_verified_in_eval_mode(run):
    path = run / "checkpoints" / "step-0000012"
    model = load_model(path)
    assert not model.training and _same_weights(model, _reference_model(path))
    assert next(model.parameters()).device.type == "cpu"
    assert weights_vocab_size(path / "model.safetensors") == VOCAB
    half = load_model(str(path), device="cpu", dtype="bf16")
    assert next(half.parameters()).dtype == torch.bfloat16
    assert next(load_model(path, dtype=torch.float16).parameters()).dtype == torch.float16
    with pytest.raises(InputError, match="dtype 'int3'"):
        load_model(path, dtype="int3")


def test_a_run_directory_loads_its_newest_intact_checkpoint(run):
    assert _same_weights(load_model(run), _reference_model(run / "checkpoints/step-0000012"))
    _flip_byte(run / "checkpoints" / "step-0000012" / "model.safetensors", 1000)
    assert _same_weights(load_model(run), _reference_model(run / "checkpoints/step-0000008"))
    _flip_byte(run / "checkpoints" / "step-0000008" / "optimizer.pt", 7)
    with pytest.raises(DamagedFileError, match="no intact checkpoint") as failure:
        load_model(run)
    assert "step-0000008" in str(failure.value) and "step-0000012" in str(failure.value)


def test_a_damaged_weights_file_is_refused_naming_it(run):
    path = run / "checkpoints" / "step-0000012"
    weights = path / "model.safetensors"
    _flip_byte(weights, -100)  # inside a tensor: it would load without complaint
    with pytest.raises(DamagedFileError, match=r"sha256 .* \(corrupted\)") as failure:
        load_model(path)
    assert str(weights) in str(failure.value)
    checkpoint = read_checkpoint(path)
    with pytest.raises(DamagedFileError, match="corrupted"):
        load_checkpoint_model(checkpoint)  # verify=True by default
    weights.write_bytes(weights.read_bytes()[:100])  # unverified and truncated: named too
    with pytest.raises(DamagedFileError, match="cannot load the weights into the model"):
        load_checkpoint_model(checkpoint, verify=False)


def test_an_export_loads_like_its_checkpoint(run, tmp_path):
    out = tmp_path / "export"
    assert exit_code("export", str(run), "--out", str(out), "--quiet") == 0
    model = load_model(out)
    assert not model.training
    assert _same_weights(model, _reference_model(run / "checkpoints" / "step-0000012"))
    _flip_byte(out / "model.safetensors", -100)
    with pytest.raises(DamagedFileError, match=r"model\.safetensors: sha256"):
        load_model(out)


def test_paths_without_a_checkpoint_are_bad_input(tmp_path):
    with pytest.raises(InputError, match="no such checkpoint, run or export directory"):
        load_model(tmp_path / "missing")
    with pytest.raises(InputError, match="no checkpoint found in"):
        load_model(tmp_path)


def test_the_tokenizer_a_checkpoint_was_trained_with(run, corpus, tmp_path):
    checkpoint = read_checkpoint(run / "checkpoints" / "step-0000012")
    recipe = saved_recipe(checkpoint)
    path, processor, origin = find_checkpoint_tokenizer(checkpoint, recipe, None)
    assert (path, origin) == (checkpoint.path / "tokenizer.model", "the checkpoint's copy")
    assert processor.get_piece_size() == VOCAB
    (checkpoint.path / "tokenizer.model").unlink()
    path, _, origin = find_checkpoint_tokenizer(checkpoint, recipe, None)
    assert (path, origin) == (corpus / "tokenizer.model", "the run's corpus")
    foreign = tmp_path / "foreign.model"
    foreign.write_bytes(b"not a model")
    with pytest.raises(InputError, match="was trained with tokenizer"):
        find_checkpoint_tokenizer(checkpoint, recipe, foreign)

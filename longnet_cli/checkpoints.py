"""Training checkpoints: atomic directories, safe formats, pruning, discovery.

``RUN_DIR/checkpoints/step-NNNNNNN/`` holds
    model.safetensors     the model weights (tied weights stored once)
    optimizer.pt          optimizer state (tensors and numbers only; loaded weights_only)
    rng-rankR.pt          each rank's RNG states (torch CPU/CUDA as tensors, numpy, python)
    recipe.yaml           the resolved recipe, for people
    tokenizer.model       the corpus's SentencePiece model (`longnet generate` reads it)
    state.json            step, tokens seen, world layout, tokenizer sha256, scheduler state,
                          the resolved recipe; written last
A checkpoint is written into ``.tmp-step-NNNNNNN`` and renamed when complete, so a crash while
saving leaves the previous checkpoints intact and never a half-written ``step-*`` directory.
Nothing is ever unpickled: safetensors, ``torch.load(weights_only=True)`` and JSON only.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT_VERSION = 1
STEP_DIR = re.compile(r"^step-(\d{7})$")


@dataclass(frozen=True)
class Checkpoint:
    """A complete checkpoint directory and its state.json."""

    path: Path
    step: int
    state: dict[str, Any]


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def step_name(step: int) -> str:
    return f"step-{step:07d}"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoint directories of a run, oldest first."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and STEP_DIR.match(p.name)]
    return sorted(found, key=lambda p: p.name)


def read_checkpoint(path: Path) -> Checkpoint:
    """A checkpoint's state (raises ValueError naming the file when it is unreadable)."""
    state_file = Path(path) / "state.json"
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{state_file}: cannot read checkpoint state: {err}") from None
    if state.get("format") != FORMAT_VERSION:
        raise ValueError(f"{state_file}: unknown checkpoint format {state.get('format')!r}")
    return Checkpoint(Path(path), int(state["step"]), state)


def latest_checkpoint(run_dir: Path) -> Checkpoint | None:
    """The newest complete checkpoint of a run, or None."""
    paths = list_checkpoints(run_dir)
    return read_checkpoint(paths[-1]) if paths else None


def resolve_checkpoint(path: Path) -> Checkpoint:
    """A checkpoint directory, or a run directory (its latest checkpoint)."""
    path = Path(path)
    if (path / "state.json").exists():
        return read_checkpoint(path)
    latest = latest_checkpoint(path)
    if latest is None:
        raise FileNotFoundError(f"no checkpoint found in {path}")
    return latest


def rng_state() -> dict[str, Any]:
    """This process's RNG states in weights_only-loadable form."""
    state = {
        "torch": torch.get_rng_state(),
        "numpy": json.dumps(_jsonable(np.random.get_state())),
        "python": json.dumps(_jsonable(random.getstate())),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``rng_state`` captured."""
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = json.loads(state["numpy"])
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = json.loads(state["python"])
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _jsonable(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    return value


def staging_path(run_dir: Path, step: int) -> Path:
    return checkpoint_dir(run_dir) / f".tmp-{step_name(step)}"


def write_model_files(
    directory: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    recipe_yaml: str,
    tokenizer: Path | None = None,
) -> None:
    """The rank-independent files of a checkpoint (called by the main process); ``tokenizer``
    (the corpus's tokenizer.model) is copied in, so the checkpoint can generate on its own."""
    from safetensors.torch import save_model

    save_model(model, str(directory / "model.safetensors"))
    torch.save(optimizer.state_dict(), directory / "optimizer.pt")
    (directory / "recipe.yaml").write_text(recipe_yaml)
    if tokenizer is not None and Path(tokenizer).is_file():
        shutil.copyfile(tokenizer, directory / "tokenizer.model")


def write_rng_file(directory: Path, rank: int) -> None:
    torch.save(rng_state(), directory / f"rng-rank{rank}.pt")


def finish_checkpoint(directory: Path, final: Path, state: dict[str, Any]) -> None:
    """Write state.json last, then make the checkpoint visible with one rename."""
    state = {"format": FORMAT_VERSION, **state}
    with open(directory / "state.json", "w") as handle:
        json.dump(state, handle, indent=2, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    shutil.rmtree(final, ignore_errors=True)
    os.replace(directory, final)
    fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def prune_checkpoints(run_dir: Path, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` checkpoints, and stale staging directories."""
    for old in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)


def remove_staging(run_dir: Path) -> None:
    """Staging directories left by a crash while saving."""
    root = checkpoint_dir(run_dir)
    if root.is_dir():
        for stale in root.glob(".tmp-step-*"):
            shutil.rmtree(stale, ignore_errors=True)


def load_model_weights(path: Path, model: torch.nn.Module) -> None:
    from safetensors.torch import load_model

    load_model(model, str(Path(path) / "model.safetensors"))


def load_optimizer_state(path: Path, device: torch.device | str = "cpu") -> dict:
    device = torch.device(device)
    where = "cpu" if device.type == "cpu" else device  # accelerate may say "cpu:0": not a tag
    return torch.load(Path(path) / "optimizer.pt", map_location=where, weights_only=True)


def load_rng_file(path: Path, rank: int) -> dict[str, Any] | None:
    file = Path(path) / f"rng-rank{rank}.pt"
    return torch.load(file, weights_only=True) if file.exists() else None

"""Training checkpoints: atomic directories, safe formats, pruning, discovery.

``RUN_DIR/checkpoints/step-NNNNNNN/`` holds
    model.safetensors     the model weights (tied weights stored once)
    optimizer.pt          optimizer state (tensors and numbers only; loaded weights_only)
    rng-rankR.pt          each rank's RNG states (torch CPU/CUDA as tensors, numpy, python)
    recipe.yaml           the resolved recipe, for people
    tokenizer.model       the corpus's SentencePiece model (`longnet generate` reads it)
    state.json            step, tokens seen, world layout, tokenizer sha256, scheduler state,
                          the resolved recipe, and ``files``: the sha256 and size of every
                          other file; written last
A checkpoint is written into ``.tmp-step-NNNNNNN``; every file is fsynced, hashed into
state.json, the directory fsynced, and only then renamed into place, so a crash or a power loss
while saving leaves the previous checkpoints intact and never a half-written ``step-*``
directory. ``verify_checkpoint`` checks a checkpoint against its recorded hashes;
``newest_intact_checkpoint`` picks the newest one that passes (resume falls back to it).
Checkpoints written before hashes were recorded (no ``files`` in state.json) are checked for
their weight and optimizer files only. Nothing is ever unpickled: safetensors,
``torch.load(weights_only=True)`` and JSON only.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from longnet_cli.artifacts.layout import (
    CHECKPOINT_PREFIX,
    OPTIMIZER_FILE,
    RECIPE_FILE,
    SCALER_FILE,
    STATE_FILE,
    STEP_DIR,
    TOKENIZER_FILE,
    WEIGHTS_FILE,
    checkpoints_dir,
    rng_file,
)
from longnet_cli.core.files import fsync_path, sha256_file, write_synced

FORMAT_VERSION = 1
LEGACY_REQUIRED = (WEIGHTS_FILE, OPTIMIZER_FILE)  # checkpoints without recorded hashes


class DamagedCheckpoint(ValueError):
    """A checkpoint that fails verification; the message names the file and what is wrong."""


@dataclass(frozen=True)
class Checkpoint:
    """A complete checkpoint directory and its state.json."""

    path: Path
    step: int
    state: dict[str, Any]


def checkpoint_dir(run_dir: Path) -> Path:
    return checkpoints_dir(run_dir)


def step_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step:07d}"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoint directories of a run, oldest first."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and STEP_DIR.match(p.name)]
    return sorted(found, key=lambda p: p.name)


def read_checkpoint(path: Path) -> Checkpoint:
    """A checkpoint's state (raises DamagedCheckpoint, a ValueError, naming the file when it is
    unreadable or not a checkpoint state)."""
    state_file = Path(path) / STATE_FILE
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DamagedCheckpoint(f"{state_file}: cannot read checkpoint state: {err}") from None
    if not isinstance(state, dict):
        raise DamagedCheckpoint(f"{state_file}: not a checkpoint state (a JSON object)")
    if state.get("format") != FORMAT_VERSION:
        raise DamagedCheckpoint(f"{state_file}: unknown checkpoint format {state.get('format')!r}")
    step = state.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise DamagedCheckpoint(f"{state_file}: 'step' must be an integer >= 0, got {step!r}")
    return Checkpoint(Path(path), step, state)


def verify_checkpoint(path: Path, hashes: bool = True) -> Checkpoint:
    """The checkpoint at ``path`` once its state reads and every file it records is there with
    its size and (``hashes``) its sha256; raises DamagedCheckpoint naming the first bad file.

    A checkpoint written before hashes were recorded only needs its weight and optimizer files.
    """
    checkpoint = read_checkpoint(path)
    _check_saved_recipe(checkpoint)
    files = checkpoint.state.get("files")
    if files is None:
        for name in LEGACY_REQUIRED:
            if not (checkpoint.path / name).is_file():
                raise DamagedCheckpoint(f"{checkpoint.path / name}: missing")
        return checkpoint
    if not isinstance(files, dict) or not files:
        raise DamagedCheckpoint(f"{checkpoint.path / STATE_FILE}: 'files' is not a file table")
    for name, entry in sorted(files.items()):
        file = checkpoint.path / name
        if "/" in name or name in ("", ".", "..") or not isinstance(entry, dict):
            raise DamagedCheckpoint(f"{checkpoint.path / STATE_FILE}: bad files entry {name!r}")
        try:
            size = file.stat().st_size
        except OSError:
            raise DamagedCheckpoint(f"{file}: missing") from None
        if size != entry.get("bytes"):
            raise DamagedCheckpoint(
                f"{file}: {size} bytes, state.json records {entry.get('bytes')}"
            )
        if hashes:
            try:
                digest = sha256_file(file)
            except OSError as err:
                raise DamagedCheckpoint(f"{file}: cannot read: {err}") from None
            if digest != entry.get("sha256"):
                raise DamagedCheckpoint(
                    f"{file}: sha256 {digest[:16]}... does not match the recorded "
                    f"{str(entry.get('sha256'))[:16]}... (corrupted)"
                )
    return checkpoint


def _check_saved_recipe(checkpoint: Checkpoint) -> None:
    """The recipe in state.json must load: resume, eval and generate rebuild the model from it."""
    from longnet_cli.config import Recipe, RecipeError

    state_file = checkpoint.path / STATE_FILE
    saved = checkpoint.state.get("recipe")
    if not isinstance(saved, dict):
        raise DamagedCheckpoint(f"{state_file}: 'recipe' is missing or not a mapping")
    try:
        Recipe.from_saved(saved, source=str(state_file))
    except RecipeError as err:
        raise DamagedCheckpoint(f"{state_file}: the saved recipe does not load: {err}") from None


def newest_intact_checkpoint(run_dir: Path) -> tuple[Checkpoint | None, list[Path], list[str]]:
    """The newest checkpoint of a run that verifies (``verify_checkpoint``), the newer ones it
    skipped, and one line per skipped one saying why."""
    skipped: list[Path] = []
    reasons: list[str] = []
    for path in reversed(list_checkpoints(run_dir)):
        try:
            return verify_checkpoint(path), skipped, reasons
        except DamagedCheckpoint as err:
            skipped.append(path)
            reasons.append(f"{path.name}: {err}")
    return None, skipped, reasons


DAMAGED_SUFFIX = ".damaged"


def set_aside(path: Path) -> Path:
    """Rename a damaged checkpoint to ``step-NNNNNNN.damaged`` (kept for inspection, no longer a
    checkpoint: neither resumed from nor counted by ``keep_last`` pruning, which could otherwise
    delete the intact checkpoints beside it)."""
    target = path.with_name(path.name + DAMAGED_SUFFIX)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(path, target)
    return target


def latest_checkpoint(run_dir: Path) -> Checkpoint | None:
    """The newest complete checkpoint of a run, or None."""
    paths = list_checkpoints(run_dir)
    return read_checkpoint(paths[-1]) if paths else None


def resolve_checkpoint(path: Path) -> Checkpoint:
    """A checkpoint directory, or a run directory (its latest checkpoint)."""
    path = Path(path)
    if (path / STATE_FILE).exists():
        return read_checkpoint(path)
    latest = latest_checkpoint(path)
    if latest is None:
        raise FileNotFoundError(f"no checkpoint found in {path}")
    return latest


def capture_rng() -> dict[str, Any]:
    """This process's RNG states as they are (cheap: copies, no conversion), for ``rng_state``
    to convert later if they have to be saved."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
             "python": random.getstate()}  # fmt: skip
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def rng_state(captured: dict[str, Any] | None = None) -> dict[str, Any]:
    """This process's RNG states (or those ``capture_rng`` took) in weights_only-loadable form."""
    state = dict(captured if captured is not None else capture_rng())
    state["numpy"] = json.dumps(_jsonable(state["numpy"]))
    state["python"] = json.dumps(_jsonable(state["python"]))
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

    save_model(model, str(directory / WEIGHTS_FILE))
    torch.save(optimizer.state_dict(), directory / OPTIMIZER_FILE)
    write_run_files(directory, recipe_yaml, tokenizer)


def write_run_files(directory: Path, recipe_yaml: str, tokenizer: Path | None = None) -> None:
    """The recipe (for people) and a copy of the tokenizer: what every checkpoint holds beside
    its tensors, sharded or not (called by the main process)."""
    (directory / RECIPE_FILE).write_text(recipe_yaml)
    if tokenizer is not None and Path(tokenizer).is_file():
        shutil.copyfile(tokenizer, directory / TOKENIZER_FILE)


def write_scaler_file(directory: Path, scaler) -> None:
    """fp16: the gradient scaler's state (scale, growth tracker), so a resumed run does not
    restart from the initial scale and skip steps finding it again."""
    torch.save(scaler.state_dict(), directory / SCALER_FILE)


def load_scaler_state(path: Path, scaler) -> bool:
    """Restore what ``write_scaler_file`` saved into ``scaler``; False when the checkpoint has
    none (written by a run without fp16, or before scalers were saved)."""
    file = Path(path) / SCALER_FILE
    if not file.is_file():
        return False
    scaler.load_state_dict(torch.load(file, weights_only=True))
    return True


def write_rng_file(directory: Path, rank: int, captured: dict[str, Any] | None = None) -> None:
    """This rank's RNG state (``captured``: one ``capture_rng`` took earlier), fsynced by the
    rank that wrote it (on a shared filesystem the other nodes' writes are theirs to flush)."""
    file = directory / rng_file(rank)
    torch.save(rng_state(captured), file)
    fsync_path(file)


def finish_checkpoint(directory: Path, final: Path, state: dict[str, Any]) -> None:
    """Fsync and hash every file, write state.json (with the hashes) last, fsync the directory,
    then make the checkpoint visible with one rename (and fsync its parent)."""
    files = {}
    for file in sorted(directory.iterdir()):
        if file.name != STATE_FILE and file.is_file():
            fsync_path(file)
            files[file.name] = {"sha256": sha256_file(file), "bytes": file.stat().st_size}
    state = {"format": FORMAT_VERSION, **state, "files": files}
    write_synced(directory / STATE_FILE, json.dumps(state, indent=2, sort_keys=True).encode())
    fsync_path(directory)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(directory, final)
    fsync_path(final.parent)


def prune_checkpoints(run_dir: Path, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` checkpoints, and stale staging directories."""
    for old in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)


def remove_staging(run_dir: Path) -> None:
    """Staging directories left by a crash while saving."""
    root = checkpoint_dir(run_dir)
    if root.is_dir():
        for stale in root.glob(f".tmp-{CHECKPOINT_PREFIX}*"):
            shutil.rmtree(stale, ignore_errors=True)


def load_model_weights(path: Path, model: torch.nn.Module) -> None:
    """The weights of the checkpoint (or export) at ``path`` into ``model``: its
    model.safetensors, or its shards consolidated on this process (``parallel.shard: fsdp``);
    every name and shape must match (a tied weight is stored once, under either name)."""
    from longnet_cli.artifacts.sharded import is_sharded, read_sharded_model

    if not is_sharded(path):
        from safetensors.torch import load_model

        load_model(model, str(Path(path) / WEIGHTS_FILE))
        return
    tensors = read_sharded_model(path)
    for name, other in tied_aliases(model).items():
        if name not in tensors and other in tensors:
            tensors[name] = tensors[other]
    model.load_state_dict(tensors, strict=True)


def tied_aliases(model: torch.nn.Module) -> dict[str, str]:
    """For every state-dict name sharing storage with another, another name it may be stored
    under (safetensors' ``save_model`` and sharded checkpoints keep shared tensors once)."""
    by_storage: dict[tuple[int, int], list[str]] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        by_storage.setdefault(key, []).append(name)
    aliases: dict[str, str] = {}
    for names in by_storage.values():
        for name in names:
            for other in names:
                if other != name:
                    aliases.setdefault(name, other)
    return aliases


def read_model_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The weights of the checkpoint (or export) at ``path`` by name, a tied weight once: its
    model.safetensors, or its shards consolidated on this process."""
    from longnet_cli.artifacts.sharded import is_sharded, read_sharded_model

    if is_sharded(path):
        return read_sharded_model(path)
    from safetensors.torch import load_file

    return load_file(str(Path(path) / WEIGHTS_FILE))


def weight_files(path: Path) -> list[Path]:
    """The files that hold the weights of the checkpoint at ``path``: model.safetensors, or
    every rank's shard file of a sharded checkpoint."""
    from longnet_cli.artifacts.layout import SHARD_PATTERN

    return sorted(Path(path).glob(SHARD_PATTERN)) or [Path(path) / WEIGHTS_FILE]


def load_optimizer_state(path: Path, device: torch.device | str = "cpu") -> dict:
    device = torch.device(device)
    where = "cpu" if device.type == "cpu" else device  # accelerate may say "cpu:0": not a tag
    return torch.load(Path(path) / OPTIMIZER_FILE, map_location=where, weights_only=True)


def load_rng_file(path: Path, rank: int) -> dict[str, Any] | None:
    file = Path(path) / rng_file(rank)
    return torch.load(file, weights_only=True) if file.exists() else None

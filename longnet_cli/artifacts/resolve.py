"""Which checkpoint a command's ``[RUN_DIR|CHECKPOINT]`` argument names, said once for every stage.

A checkpoint directory (or an export, which holds a checkpoint's state.json) names itself; a run
directory names its latest checkpoint; no argument names the latest checkpoint of the most recent
run under ``--runs-dir`` (the run whose latest checkpoint's state.json is newest). The commands
answer damage differently, and keep doing so:

- ``resolve_argument`` (``longnet eval``, ``longnet generate``): a latest checkpoint whose
  state.json does not read is a DamagedFileError (exit 1) naming the file and, when the run has
  one, the newest intact checkpoint to use instead (the one resume would fall back to);
- ``resolve_verified`` (``longnet export``): the checkpoint is verified against every size and
  sha256 its state.json records, and damage is refused as bad input (InputError, exit 2): a damaged
  file is never exported.

A path that does not exist, or holds no checkpoint, is an InputError (exit 2) either way.
"""

from __future__ import annotations

from pathlib import Path

from longnet_cli.artifacts.checkpoints import (
    Checkpoint,
    DamagedCheckpoint,
    list_checkpoints,
    newest_intact_checkpoint,
    read_checkpoint,
    resolve_checkpoint,
    verify_checkpoint,
)
from longnet_cli.artifacts.layout import CHECKPOINTS_DIR, STATE_FILE, run_of_checkpoint
from longnet_cli.core.errors import DamagedFileError, InputError, one_line


def resolve_argument(path: Path | None, runs_dir: Path, chosen: list[str]) -> Checkpoint:
    """The checkpoint ``path`` names, or (``path`` None) the latest of the most recent run under
    ``runs_dir``, reported in ``chosen``. Read, not verified: the caller verifies what it reads."""
    if path is not None:
        path = Path(path)
        try:
            return _named(path)
        except DamagedCheckpoint as err:  # names the file
            hint = "" if (path / STATE_FILE).exists() else _damaged_hint(path)
            raise DamagedFileError(f"{one_line(err)}{hint}") from None
    runs_dir = Path(runs_dir)
    runs = []  # runs_dir itself may be a run; else its subdirectories are
    if runs_dir.is_dir():
        runs = [runs_dir, *sorted(p for p in runs_dir.iterdir() if p.is_dir())]
    latest = [paths[-1] for run in runs if (paths := list_checkpoints(run))]
    if not latest:
        raise InputError(
            f"no checkpoint found under {runs_dir}/ (looked for "
            f"{runs_dir}/*/{CHECKPOINTS_DIR}/step-*/); pass a run directory or checkpoint, or "
            "--runs-dir"
        )
    newest = max(latest, key=_mtime)
    try:
        checkpoint = read_checkpoint(newest)
    except DamagedCheckpoint as err:  # names the file
        raise DamagedFileError(f"{one_line(err)}{_damaged_hint(newest.parent.parent)}") from None
    chosen.append(
        f"checkpoint: {newest} (step {checkpoint.step}, the most recent run under {runs_dir}/)"
    )
    return checkpoint


def resolve_verified(path: Path) -> Checkpoint:
    """The checkpoint ``path`` names (a run directory: its latest), verified against the sizes
    and sha256s its state.json records; damage is an InputError naming the file."""
    path = Path(path)
    try:
        return verify_checkpoint(_named(path).path)
    except DamagedCheckpoint as err:  # names the file
        raise InputError(str(err)) from None


def intact_hint(run_dir: Path, damaged: Path) -> str:
    """A hint naming the newest intact checkpoint of the run (the one resume would fall back
    to) when it is another than ``damaged``, else ""."""
    if run_of_checkpoint(damaged) is None:
        return ""
    intact = newest_intact_checkpoint(run_dir)[0]  # (checkpoint, skipped paths, reasons)
    if intact is None or intact.path == damaged:
        return ""
    return f"; the newest intact checkpoint of {run_dir} is {intact.path} (evaluate it by name)"


def _named(path: Path) -> Checkpoint:
    """The checkpoint at ``path`` or a run directory's latest; DamagedCheckpoint passes."""
    if not path.exists():
        raise InputError(f"{path}: no such checkpoint or run directory")
    try:
        return resolve_checkpoint(path)
    except FileNotFoundError:
        raise InputError(
            f"no checkpoint found in {path} (looked for {path}/{STATE_FILE} and "
            f"{path}/{CHECKPOINTS_DIR}/step-*/)"
        ) from None


def _damaged_hint(run_dir: Path) -> str:
    """The intact-checkpoint hint for a run whose latest checkpoint's state.json is damaged."""
    paths = list_checkpoints(run_dir)
    return intact_hint(run_dir, paths[-1]) if paths else ""


def _mtime(checkpoint_path: Path) -> float:
    state = checkpoint_path / STATE_FILE
    return (state if state.exists() else checkpoint_path).stat().st_mtime

"""Stage ``runs``: the training runs under a directory, with their step, loss and latest eval.

A run is a directory holding ``checkpoints/`` and/or ``metrics.jsonl`` (what ``longnet train``
writes). Runs are found under the runs directory (itself included) down to ``MAX_DEPTH`` levels,
so that ``runs/quickstart/run`` (the quickstart pipeline's layout) is found; a run's own
subdirectories and hidden directories are not searched.

Per run:
- step / target steps: the latest complete checkpoint's ``state.json`` (its ``step``, and
  ``train.steps`` of the resolved recipe stored with it);
- loss: the last line of ``metrics.jsonl`` with a ``loss`` (the last logged training loss);
- eval: the evaluation of the latest step among (a) the last ``metrics.jsonl`` line with an
  ``eval`` key (evaluation during training; its largest context) and (b) an ``eval.json``
  written by ``longnet eval --json`` inside the run directory or beside it (the pipelines write
  ``WORKDIR/eval.json`` next to ``WORKDIR/run``), used only when the checkpoint it names lies in
  this run; on equal steps held-out figures win, then ``eval.json`` (the full ``longnet eval``);
  its ``split`` says which documents it scored: "heldout" (never trained on), "train"
  (training-set figures), "tail" (the last documents of the training corpus, cut from training
  by position: runs started before held-out splits existed), "all" (every document of the
  evaluation data), or None: an evaluation written before splits were recorded;
- modified: the newest modification time of the run directory, ``metrics.jsonl``, the latest
  checkpoint and the eval file;
- note: one line when something of the run is damaged (a newer checkpoint whose state.json does
  not read, skipped; a file the checkpoint records that is missing or of another size; lines
  of ``metrics.jsonl`` that do not parse, other than a last line being written), else None. A
  damaged run is listed with what could be read, never an error.

Only JSON is read (no torch import): listing runs is instant. The checkpoint layout is that of
``longnet_cli.artifacts.checkpoints`` (``checkpoints/step-NNNNNNN/state.json``, written last).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from longnet_cli.artifacts.layout import (
    CHECKPOINTS_DIR,
    EVAL_FILE,
    METRICS_FILE,
    STATE_FILE,
    STEP_DIR,
    checkpoints_dir,
    metrics_path,
)

MAX_DEPTH = 3  # runs/<group>/<name>/run at most


@dataclass
class EvalSummary:
    """One evaluation's overall figures at its largest context."""

    source: str  # "metrics.jsonl" or the path of an eval.json
    step: int | None
    context: int | None
    loss: float | None
    ppl: float | None
    bpb: float | None
    split: str | None = None  # "heldout", "train", "tail", "all"; None: not recorded (old runs)


@dataclass
class RunInfo:
    """What ``longnet runs`` shows about one run."""

    name: str  # the path relative to the runs directory ("." for the directory itself)
    path: str
    step: int | None  # latest complete checkpoint (None: no checkpoint yet)
    target_steps: int | None  # train.steps of the latest checkpoint's recipe
    loss: float | None  # last logged training loss
    loss_step: int | None
    eval: EvalSummary | None
    modified: float  # seconds since the epoch
    note: str | None = None  # what is damaged, in one line (None: nothing found)

    @property
    def finished(self) -> bool:
        return (
            self.step is not None
            and self.target_steps is not None
            and (self.step >= self.target_steps)
        )

    def to_dict(self) -> dict[str, Any]:
        report = asdict(self)
        report["finished"] = self.finished
        return report


def list_runs(runs_dir: Path) -> list[RunInfo]:
    """Every run under ``runs_dir`` (see the module docstring), sorted by name."""
    runs_dir = Path(runs_dir)
    return [_run_info_or_note(path, runs_dir) for path in sorted(find_runs(runs_dir))]


def _run_info_or_note(run_dir: Path, runs_dir: Path) -> RunInfo:
    """``run_info``, or, when the run cannot be read at all (a file vanishing or unreadable
    while it is listed), its name with a note saying so."""
    try:
        return run_info(run_dir, runs_dir)
    except OSError as err:
        return RunInfo(_name(run_dir, runs_dir), str(run_dir), None, None, None, None, None,
                       0.0, f"unreadable: {err}")  # fmt: skip


def is_run(path: Path) -> bool:
    return checkpoints_dir(path).is_dir() or metrics_path(path).is_file()


def find_runs(root: Path, max_depth: int = MAX_DEPTH) -> list[Path]:
    """Run directories at ``root`` or below it, at most ``max_depth`` levels down."""
    if not root.is_dir():
        return []
    if is_run(root):
        return [root]
    if max_depth == 0:
        return []
    found: list[Path] = []
    try:
        children = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return []
    for child in children:
        found.extend(find_runs(child, max_depth - 1))
    return found


def run_info(run_dir: Path, runs_dir: Path) -> RunInfo:
    """The step, loss, latest eval and modification time of one run."""
    notes: list[str] = []
    checkpoint, state = _latest_checkpoint(run_dir, notes)
    step = target = None
    if state is not None:
        step = _int(state.get("step"))
        target = _int(_dict(_dict(state.get("recipe")).get("train")).get("steps"))
    records, bad = _read_metrics(metrics_path(run_dir))
    if bad:
        notes.append(f"{METRICS_FILE}: {bad}")
    last_loss = next((r for r in reversed(records) if _number(r.get("loss")) is not None), None)
    evaluation, eval_file = _latest_eval(run_dir, records)
    times = [_mtime(p) for p in (run_dir, metrics_path(run_dir), checkpoint, eval_file)
             if p is not None]  # fmt: skip
    return RunInfo(
        name=_name(run_dir, runs_dir),
        path=str(run_dir),
        step=step,
        target_steps=target,
        loss=_number(last_loss["loss"]) if last_loss else None,
        loss_step=_int(last_loss.get("step")) if last_loss else None,
        eval=evaluation,
        modified=max(times),
        note="; ".join(notes) or None,
    )


def _name(run_dir: Path, runs_dir: Path) -> str:
    try:
        return run_dir.relative_to(runs_dir).as_posix()
    except ValueError:
        return str(run_dir)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _latest_checkpoint(run_dir: Path, notes: list[str]) -> tuple[Path | None, dict | None]:
    """(state.json path, its content) of the newest checkpoint whose state reads, or (None,
    None); ``notes`` gets a line for each newer one skipped and for the files the chosen one
    records that are missing or of another size (sizes only: listing never hashes)."""
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return None, None
    try:
        names = sorted((p for p in root.iterdir() if STEP_DIR.match(p.name)), reverse=True)
    except OSError as err:
        notes.append(f"{CHECKPOINTS_DIR}/ unreadable: {err.strerror or err}")
        return None, None
    for path in names:
        state = _read_json(path / STATE_FILE)
        if not isinstance(state, dict) or _int(state.get("step")) is None:
            notes.append(f"{path.name}/{STATE_FILE} unreadable, skipped")
            continue
        files = state.get("files")
        for name, entry in sorted(files.items()) if isinstance(files, dict) else []:
            size = _size(path / name)
            if size is None:
                notes.append(f"{path.name}/{name} missing")
            elif size != _dict(entry).get("bytes"):
                notes.append(f"{path.name}/{name} is {size} bytes, state.json records "
                             f"{_dict(entry).get('bytes')}")  # fmt: skip
        return path / STATE_FILE, state
    return None, None


def saved_recipe(path: Path) -> dict | None:
    """The resolved recipe (as JSON) a checkpoint saved in its state.json; ``path`` a checkpoint
    directory, or a run directory (its newest checkpoint whose state reads). None when no state
    reads or holds a recipe. JSON only, like the rest of the listing: no torch import."""
    path = Path(path)
    state = _read_json(path / STATE_FILE)
    if not isinstance(state, dict):
        state = _latest_checkpoint(path, [])[1]
    recipe = state.get("recipe") if isinstance(state, dict) else None
    return recipe if isinstance(recipe, dict) else None


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def read_metrics(path: Path) -> list[dict]:
    """The JSON lines of metrics.jsonl; unreadable lines (a line being written) are skipped."""
    return _read_metrics(path)[0]


def _read_metrics(path: Path) -> tuple[list[dict], str | None]:
    """``read_metrics``'s records and what is damaged: lines that do not parse, other than the
    last one (a line being written, or torn by a kill: resume drops it), or the file itself."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return [], None
    except OSError as err:
        return [], f"unreadable ({err.strerror or err})"
    records, bad = [], 0
    for index, line in enumerate(lines):
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict):
            records.append(record)
        elif line.strip() and index < len(lines) - 1:
            bad += 1
    return records, f"{bad} unreadable line(s) skipped" if bad else None


def _latest_eval(run_dir: Path, records: list[dict]) -> tuple[EvalSummary | None, Path | None]:
    """The evaluation of the latest step (see the module docstring) and the file it came from."""
    candidates: list[tuple[EvalSummary, Path]] = []
    line = next((r for r in reversed(records) if isinstance(r.get("eval"), dict)), None)
    if line is not None and (summary := _from_metrics(line)) is not None:
        candidates.append((summary, metrics_path(run_dir)))
    for path in (run_dir / EVAL_FILE, run_dir.parent / EVAL_FILE):
        report = _read_json(path)
        if isinstance(report, dict) and belongs_to(report.get("checkpoint"), path, run_dir):
            candidates.append((_from_report(report, path), path))
            break
    if not candidates:
        return None, None

    # the latest step wins; on a tie held-out figures, then the later candidate (eval.json)
    def rank(item: tuple[int, tuple[EvalSummary, Path]]) -> tuple[int, bool, int]:
        index, (summary, _) = item
        return (summary.step or -1, summary.split == "heldout", index)

    return max(enumerate(candidates), key=rank)[1]


def _from_metrics(record: dict) -> EvalSummary | None:
    contexts = record["eval"].get("contexts")
    if not isinstance(contexts, dict) or not contexts:
        return None
    context = max(contexts, key=lambda key: _int(key) or 0)
    figures = contexts[context] if isinstance(contexts[context], dict) else {}
    return EvalSummary(
        source=METRICS_FILE,
        step=_int(record.get("step")),
        context=_int(context),
        loss=_number(figures.get("loss")),
        ppl=_number(figures.get("ppl")),
        bpb=_number(figures.get("bpb")),
        split=_split(record["eval"].get("split")),
    )


def _from_report(report: dict, path: Path) -> EvalSummary:
    overall = report.get("overall") if isinstance(report.get("overall"), dict) else {}
    return EvalSummary(
        source=str(path),
        step=_int(report.get("step")),
        context=_int(report.get("context")),
        loss=_number(overall.get("loss")),
        ppl=_number(overall.get("ppl")),
        bpb=_number(overall.get("bpb")),
        split=_split(report.get("split")),
    )


def _split(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def belongs_to(checkpoint: Any, report_path: Path, run_dir: Path) -> bool:
    """Whether an eval.json's checkpoint lies in ``run_dir``. Relative paths in the report are
    relative to where ``longnet eval`` ran, unknown here: they are tried against the current
    directory and, failing that, matched by their trailing components."""
    if not isinstance(checkpoint, str) or not checkpoint:
        return False
    checkpoint_path = Path(checkpoint)
    run = run_dir.resolve()
    try:
        exists = checkpoint_path.exists()
    except (OSError, ValueError):  # a NUL byte, a name too long: not a path of this run
        return False
    if checkpoint_path.is_absolute() or exists:
        resolved = checkpoint_path.resolve()
        return resolved == run or run in resolved.parents
    parts = checkpoint_path.parts
    if CHECKPOINTS_DIR in parts:  # .../<run name>/checkpoints/step-N
        index = len(parts) - 1 - parts[::-1].index(CHECKPOINTS_DIR)
        return index > 0 and parts[index - 1] == run.name
    return checkpoint_path.name == run.name


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):  # None, "abc", NaN, Infinity
        return None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None

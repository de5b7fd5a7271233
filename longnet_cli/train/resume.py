"""The resume policy: which checkpoint a run continues from, what may differ since it was
written, and restoring its optimizer, RNG and loss-scale state.

A run directory holds at most one run. Resuming takes the newest checkpoint that verifies
(setting damaged newer ones aside), refuses a changed tokenizer, data-parallel degree or a
recipe key outside ``SAFE_ON_RESUME``, continues on a corpus whose content changed (a
``data_changed`` record; ``--strict-data`` refuses) and keeps the run's window scheme:

- ``"train-split"`` (new runs on a corpus with a recorded split): windows read the corpus's
  training documents only; evaluation during training scores the held-out split. The windows
  do not depend on ``eval.*``.
- ``"before-eval-tail"`` (runs started before held-out splits existed, i.e. checkpoints without
  the record, and new runs on a corpus tokenized before them): the whole stream, cut before the
  last ``eval.docs`` documents when evaluation during training uses the training corpus; those
  documents are the ones evaluated.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from longnet_cli.artifacts import checkpoints as ckpt
from longnet_cli.artifacts.layout import METRICS_FILE, SCALER_FILE, STATE_FILE, TOKENIZER_FILE
from longnet_cli.artifacts.sharded import is_sharded, load_full_optimizer, load_sharded
from longnet_cli.config.resume import safe_to_change_on_resume
from longnet_cli.config.schema import Recipe
from longnet_cli.core.errors import InputError
from longnet_cli.train.distributed import say_once
from longnet_cli.train.schedule import Schedule

WINDOWS_TRAIN_SPLIT = "train-split"
WINDOWS_BEFORE_EVAL_TAIL = "before-eval-tail"
WINDOW_SCHEMES = (WINDOWS_TRAIN_SPLIT, WINDOWS_BEFORE_EVAL_TAIL)


@dataclass(frozen=True)
class ResumePoint:
    """Where a run starts: the checkpoint (None: a fresh run), its learning-rate schedule, and
    what changed in the corpus since that checkpoint (``data_changed``; None: nothing);
    ``finished``: the checkpoint is at ``train.steps`` already, nothing to do."""

    existing: ckpt.Checkpoint | None
    schedule: Schedule
    data_change: dict | None = None
    finished: bool = False

    @property
    def step(self) -> int:
        """The steps already done."""
        return self.existing.step if self.existing is not None else 0


def prepare_run_dir(accelerator, run_dir: Path, resume: bool, force: bool):
    """The checkpoint to resume from (None to start fresh); clears the run when asked."""
    existing = intact_checkpoint(accelerator, run_dir) if resume else None
    has_run = bool(ckpt.list_checkpoints(run_dir)) or (run_dir / METRICS_FILE).exists()
    if not resume and has_run:
        if not force:
            raise InputError(
                f"{run_dir} already holds a run; --no-resume would overwrite it: add --force, "
                "or choose another --out"
            )
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            import shutil

            shutil.rmtree(ckpt.checkpoint_dir(run_dir), ignore_errors=True)
            (run_dir / METRICS_FILE).unlink(missing_ok=True)
        accelerator.wait_for_everyone()
        existing = None
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        ckpt.remove_staging(run_dir)
    accelerator.wait_for_everyone()
    return existing


def intact_checkpoint(accelerator, run_dir: Path):
    """The newest checkpoint of ``run_dir`` that verifies against its recorded hashes (None: the
    run has no checkpoint). The main process verifies, says on stderr which newer ones it
    skipped and why, and sets them aside (``step-NNNNNNN.damaged``: kept, but out of pruning's
    count); every rank gets its choice. Checkpoints, none intact: InputError, nothing moved."""
    choice: list = [None, None]  # the path to resume from, or the error
    if accelerator.is_main_process:
        found, skipped, reasons = ckpt.newest_intact_checkpoint(run_dir)
        if found is None and skipped:
            choice[1] = (
                f"no intact checkpoint in {ckpt.checkpoint_dir(run_dir)}: {'; '.join(reasons)}; "
                "restore them, or start over with --no-resume --force"
            )
        elif found is not None:
            choice[0] = str(found.path)
            for path, reason in zip(skipped, reasons):
                kept = ckpt.set_aside(path)
                say_once(
                    accelerator,
                    f"warning: skipped damaged checkpoint {reason} (kept as {kept.name})",
                )
            if skipped:
                say_once(accelerator, f"warning: resuming from {found.path}")
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        broadcast_object_list(choice, from_process=0)
    if choice[1] is not None:
        raise InputError(choice[1])
    return None if choice[0] is None else ckpt.read_checkpoint(Path(choice[0]))


def check_resumable(existing, recipe: Recipe, corpus, dp_size: int) -> None:
    """Refuse to resume across a changed tokenizer, global batch or unsafe recipe change.

    The number of processes may change when the global batch stays (``check_global_batch``), and
    so may the sequence-parallel degree and the sharding: a checkpoint of 2 sharded processes
    resumes on 1 unsharded one with ``grad_accum`` doubled, or on 4 with it halved.
    """
    state = existing.state
    if state.get("tokenizer_sha256") != corpus.manifest["tokenizer_sha256"]:
        copy = existing.path / TOKENIZER_FILE
        reuse = f"; re-tokenize it with --tokenizer {copy}" if copy.is_file() else ""
        raise InputError(
            f"checkpoint {existing.path} was trained with tokenizer "
            f"{state.get('tokenizer_sha256')}, but {corpus.directory} uses "
            f"{corpus.manifest['tokenizer_sha256']}{reuse}"
        )
    saved = Recipe.from_saved(state["recipe"], source=str(existing.path / STATE_FILE))
    check_global_batch(existing.path, saved, state.get("dp_size"), recipe, dp_size)
    changed = safe_to_change_on_resume(saved, recipe)
    if changed:
        raise InputError(
            f"the recipe changed since checkpoint {existing.path} in keys that cannot change on "
            f"resume: {', '.join(changed)}; restore them, or start over with --no-resume --force"
        )


def check_global_batch(path: Path, saved: Recipe, saved_dp, recipe: Recipe, dp_size: int) -> None:
    """The windows of a step are a function of the step alone as long as the global batch
    (micro_batch_size x grad_accum x data-parallel processes) is the same: they are numbered
    step by step (``TrainingWindows.sample_index``), each rank reading its own share of them.
    InputError (exit 2) when a resume changes it, with the grad_accum that keeps it."""
    before, now = saved.train, recipe.train
    saved_dp = saved_dp if isinstance(saved_dp, int) and saved_dp > 0 else 1
    batch = before.micro_batch_size * before.grad_accum * saved_dp
    new = now.micro_batch_size * now.grad_accum * dp_size
    if batch == new:
        return
    per_accum = now.micro_batch_size * dp_size
    fix = (
        f"--set train.grad_accum={batch // per_accum}"
        if batch % per_accum == 0
        else f"a micro_batch_size x grad_accum x data-parallel processes of {batch}"
    )
    raise InputError(
        f"checkpoint {path} trained on global batches of {batch} windows (micro_batch_size "
        f"{before.micro_batch_size} x grad_accum {before.grad_accum} x {saved_dp} data-parallel "
        f"processes), this run's is {new} ({now.micro_batch_size} x {now.grad_accum} x "
        f"{dp_size}): resuming would change which windows each step reads; resume with {fix}"
    )


def resume_point(
    accelerator, existing, recipe: Recipe, corpus, record: dict, dp_size: int, strict_data: bool
) -> ResumePoint:
    """Where the run starts, checked: ``existing`` resumable (``check_resumable``), not past
    ``train.steps``, on the same data unless allowed; its schedule continued on a changed
    ``train.steps`` (said on stderr). ``record``: ``corpus_record`` of the corpus now."""
    train = recipe.train
    if existing is None:
        return ResumePoint(None, Schedule.of(train))
    check_resumable(existing, recipe, corpus, dp_size)
    if train.steps < existing.step:
        raise InputError(
            f"train.steps is {train.steps} but checkpoint {existing.path} is at step "
            f"{existing.step}: set it to {existing.step} or more, or start over with "
            "--no-resume --force"
        )
    data_change = data_changed(existing, record)
    if data_change is not None and strict_data:
        raise InputError(
            f"the corpus {recipe.data.shards} changed since checkpoint {existing.path} "
            f"({data_change['change']}); --strict-data refuses to resume on other data: "
            "restore the corpus, or resume without --strict-data to continue on it"
        )
    if existing.step >= train.steps:
        return ResumePoint(existing, Schedule.of(train), data_change, finished=True)
    saved = Schedule.saved(train, existing)
    schedule = saved.extended(existing.step, train.steps)
    if schedule != saved:
        say_once(
            accelerator,
            f"train.steps changed from {saved.end} to {train.steps}: the learning "
            f"rate continues at {schedule.lr_at(existing.step):.3g} from step "
            f"{existing.step + 1} and decays to {schedule.floor:.3g} at step "
            f"{train.steps}",
        )
    return ResumePoint(existing, schedule, data_change)


def restore_training_state(accelerator, existing, optimizer, model, sharded: bool) -> None:
    """The optimizer's moments, this rank's RNG states and the fp16 loss scale of ``existing``,
    whatever layout wrote it and whatever layout resumes (``sharded``: this run's model is):

    - a sharded checkpoint: every rank reads the weights and moments into its shards, or, in an
      unsharded run, the whole tensors (``load_sharded``; DCP reshards to any world);
    - an unsharded checkpoint: its optimizer state, sharded here when this run is (its weights
      were read before the model was sharded, ``trainer._build_model``).
    """
    if is_sharded(existing.path):
        load_sharded(existing.path, model, optimizer)
    else:
        state = ckpt.load_optimizer_state(existing.path, accelerator.device)
        if sharded:
            load_full_optimizer(model, optimizer, state)
        else:
            optimizer.load_state_dict(state)
    rank, saved_world = accelerator.process_index, existing.state.get("world_size") or 1
    if saved_world != accelerator.num_processes:
        say_once(accelerator, rng_on_new_layout(saved_world, accelerator.num_processes))
    rng = ckpt.load_rng_file(existing.path, rank % saved_world)
    if rng is not None:
        ckpt.set_rng_state(rng)
    restore_scaler(accelerator, existing)


def rng_on_new_layout(saved_world: int, world: int) -> str:
    """What a resume on another number of processes says about the RNG states: rank R continues
    the one rank R mod (the old world) saved (dropout's masks; the windows do not depend on it)."""

    def ranks(first: int, last: int) -> str:
        return f"rank {first}" if first == last else f"ranks {first}-{last}"

    if world < saved_world:
        kept = "rank 0 continues its" if world == 1 else f"ranks 0-{world - 1} continue their"
        which = f"{kept} saved RNG state, that of {ranks(world, saved_world - 1)} is dropped"
    else:
        which = f"rank R continues the RNG state rank R mod {saved_world} saved"
    return f"resuming on {world} process(es) a checkpoint of {saved_world}: {which}"


def restore_scaler(accelerator, existing) -> None:
    """fp16: the gradient scaler's state (scale, growth tracker) from the checkpoint, so the
    resumed run goes on with the scale it had found; a checkpoint without one (an fp16 run
    from before scalers were saved) restarts it, with a warning."""
    if accelerator.scaler is None:
        return
    restored = ckpt.load_scaler_state(existing.path, accelerator.scaler)
    if not restored:
        say_once(
            accelerator,
            f"warning: checkpoint {existing.path} has no {SCALER_FILE} (saved before "
            "fp16 scaler states were): the loss scale starts again from its initial value",
        )


def saved_precision(run_dir: Path) -> str | None:
    """The precision the newest readable checkpoint of ``run_dir`` trained in (its recipe's
    resolved ``train.precision``), or None: no checkpoint to resume from. A resumed
    ``train.precision: auto`` run keeps it rather than measuring again and switching; the
    checkpoint is verified later, by ``intact_checkpoint``, as for every resume."""
    for path in reversed(ckpt.list_checkpoints(run_dir)):
        try:
            precision = ckpt.read_checkpoint(path).state["recipe"]["train"]["precision"]
        except (OSError, ValueError, KeyError, TypeError):
            continue  # unreadable: intact_checkpoint sets it aside, or refuses
        if isinstance(precision, str) and precision != "auto":
            return precision
    return None


def corpus_record(corpus) -> dict:
    """Which corpus a run trains on, by content: the manifest's sha256 of every shard, of the
    tokenizer, and the held-out fraction (which documents are trained on), with ``sha256``
    over them all; sizes for people. Neither paths nor modification times: re-tokenizing an
    unchanged (or merely touched) corpus gives the same record. Nothing is re-hashed here: the
    manifest's hashes were computed when the shards were written."""
    manifest = corpus.manifest
    splits = manifest.get("splits")
    content = {
        "tokenizer_sha256": manifest["tokenizer_sha256"],
        "shards": [entry["sha256"] for entry in manifest["shards"]],
        "holdout": splits.get("holdout") if isinstance(splits, dict) else None,
    }
    digest = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()
    return {
        "sha256": digest,
        **content,
        "documents": corpus.num_documents,
        "tokens": corpus.num_tokens,
    }


def data_changed(existing, record: dict) -> dict | None:
    """What changed between the corpus ``existing`` (a checkpoint) trained on and ``record``
    (``corpus_record`` of the corpus now): None when the content is the same, or when the
    checkpoint predates corpus records (nothing to compare)."""
    old = existing.state.get("corpus")
    if not isinstance(old, dict) or old.get("sha256") == record["sha256"]:
        return None
    parts = []
    for key in ("documents", "tokens"):
        if old.get(key) != record[key]:
            before = f"{old.get(key):,}" if isinstance(old.get(key), int) else "?"
            parts.append(f"{key} {before} -> {record[key]:,}")
    old_shards = old.get("shards") if isinstance(old.get("shards"), list) else []
    new_shards = record["shards"]
    changed = sum(a != b for a, b in zip(old_shards, new_shards))
    if changed:
        parts.append(f"{changed} of {len(old_shards)} shard(s) changed")
    if len(new_shards) != len(old_shards):
        parts.append(f"shards {len(old_shards)} -> {len(new_shards)}")
    if old.get("holdout") != record["holdout"]:
        parts.append(f"holdout {old.get('holdout')} -> {record['holdout']}")

    def summary(entry: dict) -> dict:
        shards = entry.get("shards")
        count = len(shards) if isinstance(shards, list) else None
        return {key: entry.get(key) for key in ("sha256", "documents", "tokens")} | {
            "shards": count
        }

    return {
        "checkpoint": str(existing.path),
        "change": ", ".join(parts) or "content changed",
        "from": summary(old),
        "to": summary(record),
    }


def window_scheme(state: dict | None, corpus) -> str:
    """The window scheme of a run: the one its checkpoint ``state`` records; for a checkpoint
    written before schemes were recorded, the pre-split one (so it keeps its windows); for a new
    run, "train-split", unless the corpus was tokenized before held-out splits existed."""
    if state is not None:
        scheme = state.get("windows", WINDOWS_BEFORE_EVAL_TAIL)
        if scheme not in WINDOW_SCHEMES:
            raise InputError(
                f"checkpoint state records windows {scheme!r}; this longnet knows "
                f"{', '.join(WINDOW_SCHEMES)} (a newer longnet wrote it?)"
            )
        return scheme
    return WINDOWS_TRAIN_SPLIT if corpus.has_splits else WINDOWS_BEFORE_EVAL_TAIL

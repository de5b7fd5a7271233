"""Stage: recipe -> checkpoints. A resumable training loop on HF accelerate.

One process, one GPU, or one process per device (``longnet train --devices N`` starts them
through ``launch.py``; ``accelerate launch`` or ``torchrun`` work too; gloo on a CPU) run the same
code. The loop itself is plain PyTorch; accelerate places the model, wraps it for data
parallelism, applies mixed precision and gradient accumulation.

Exact resume: the batch of every (step, micro-step, rank) is a pure function of the seed
(``TrainingWindows``), the learning rate a pure function of the step, and checkpoints restore
weights, optimizer state and every rank's RNG state. A run killed after a checkpoint and started
again reproduces the uninterrupted run's losses bit for bit on a CPU.

Which windows a run reads (its window scheme, recorded as ``"windows"`` in every checkpoint's
state.json and kept on resume):

- ``"train-split"`` (new runs on a corpus with a recorded split): windows read the corpus's
  training documents only; evaluation during training scores the held-out split. The windows
  do not depend on ``eval.*``.
- ``"before-eval-tail"`` (runs started before held-out splits existed, i.e. checkpoints without
  the record, and new runs on a corpus tokenized before them): the whole stream, cut before the
  last ``eval.docs`` documents when evaluation during training uses the training corpus; those
  documents are the ones evaluated.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from longnet_cli.artifacts import checkpoints as ckpt
from longnet_cli.config.recipe import Recipe, check_against_corpus, safe_to_change_on_resume
from longnet_cli.core.errors import InputError, LongnetError
from longnet_cli.model.flops import training_flops_per_token
from longnet_cli.train.init_from import check_tokenizer, load_initial_weights, resolve_init_source

PRECISIONS = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}
WINDOWS_TRAIN_SPLIT = "train-split"
WINDOWS_BEFORE_EVAL_TAIL = "before-eval-tail"
WINDOW_SCHEMES = (WINDOWS_TRAIN_SPLIT, WINDOWS_BEFORE_EVAL_TAIL)
EXIT_ON_SIGNAL = {signal.SIGTERM: 143, signal.SIGINT: 130}


class TrainingInterrupted(LongnetError):
    """SIGTERM or Ctrl-C: a checkpoint was saved; running the same command resumes."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class TrainResult:
    """What a ``train`` call did."""

    run_dir: str
    status: str  # "finished", "already-finished"
    start_step: int
    final_step: int
    loss: float | None
    tokens_per_s: float | None
    seconds: float
    checkpoint: str | None

    def to_dict(self) -> dict:
        return asdict(self)


class LanguageModelLoss(nn.Module):
    """The model's chunked next-token loss as a forward(), so DDP sees and syncs it.

    With sequence parallelism (``sequence_size`` > 1) each rank scores its chunk of the window
    at its global positions; the mean of the ranks' chunk means is the window's mean, which is
    what DDP's gradient average then yields.
    """

    def __init__(
        self, model: nn.Module, chunk_size: int, sequence_rank: int = 0, sequence_size: int = 1
    ) -> None:
        super().__init__()
        self.model = model
        self.chunk_size = chunk_size
        self.sequence_rank, self.sequence_size = sequence_rank, sequence_size

    def forward(self, window: torch.Tensor) -> torch.Tensor:
        if self.sequence_size == 1:
            return self.model.loss(window, chunk_size=self.chunk_size)  # (B, N+1) -> ()
        n = (window.shape[1] - 1) // self.sequence_size
        start = self.sequence_rank * n
        inputs = window[:, start : start + n]  # (B, N+1) -> (B, n)
        targets = window[:, start + 1 : start + n + 1]
        return self.model.loss(inputs, targets, chunk_size=self.chunk_size, offset=start)


def lr_at(step: int, recipe: Recipe) -> float:
    """Linear warm-up to ``train.lr``, then cosine decay to ``lr * min_lr_ratio`` (the schedule
    of a run whose ``train.steps`` never changed)."""
    return Schedule.of(recipe).lr_at(step)


def _cosine(step: int, start: int, end: int, high: float, floor: float) -> float:
    """Cosine from ``high`` at ``start`` down to ``floor`` at step ``end - 1`` (and after)."""
    span = max(end - start - 1, 1)  # the last step runs at the floor
    progress = min((step - start) / span, 1.0)
    return floor + (high - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class Schedule:
    """The learning rate of every step: linear warm-up to ``lr`` over ``warmup`` steps, cosine
    decay to ``floor`` at step ``steps - 1``; once ``train.steps`` changed on resume, from
    ``segment`` = (start step, lr there, new train.steps) on, a cosine from that lr to ``floor``
    at the new last step, so the learning rate never jumps. Checkpoints store it
    (``to_state``): a run resumed with the same ``train.steps`` keeps its schedule bit for bit.
    """

    lr: float
    warmup: int
    steps: int  # train.steps the warm-up-cosine was laid out for
    floor: float
    segment: tuple[int, float, int] | None = None

    @classmethod
    def of(cls, recipe: Recipe) -> Schedule:
        cfg = recipe.train
        return cls(cfg.lr, cfg.warmup_steps, cfg.steps, cfg.lr * cfg.min_lr_ratio)

    @property
    def end(self) -> int:
        """The train.steps this schedule decays to the floor for."""
        return self.segment[2] if self.segment else self.steps

    def lr_at(self, step: int) -> float:
        if self.segment is not None and step >= self.segment[0]:
            start, high, end = self.segment
            return _cosine(step, start, end, high, self.floor)
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        return _cosine(step, self.warmup, self.steps, self.lr, self.floor)

    def extended(self, step: int, steps: int) -> Schedule:
        """This schedule with ``train.steps`` changed to ``steps`` at ``step`` (steps done).

        During warm-up the cosine has not started: it is laid out for ``steps`` from the start
        (the warm-up does not depend on it). After it, the learning rate at ``step`` is kept
        and decays from there to the floor at step ``steps - 1``.
        """
        if steps == self.end:
            return self
        if self.segment is None and step <= self.warmup:
            return Schedule(self.lr, self.warmup, steps, self.floor)
        return Schedule(self.lr, self.warmup, self.steps, self.floor,
                        (step, self.lr_at(step), steps))  # fmt: skip

    def to_state(self, step: int) -> dict:
        """The checkpoint's ``scheduler`` record after ``step`` steps."""
        segment = None
        if self.segment is not None:
            start, high, end = self.segment
            segment = {"start": start, "lr": high, "steps": end}
        return {"name": "warmup-cosine", "step": step, "lr": self.lr_at(step),
                "steps": self.steps, "segment": segment}  # fmt: skip

    @classmethod
    def saved(cls, recipe: Recipe, existing) -> Schedule:
        """The schedule ``existing`` (a checkpoint) ran on (``extended`` adapts it to a changed
        ``train.steps``). Checkpoints written before schedules were stored ran on the plain
        warm-up-cosine of their recipe's ``train.steps``."""
        state = existing.state
        saved = state.get("scheduler") if isinstance(state.get("scheduler"), dict) else {}
        steps = saved.get("steps")
        if not isinstance(steps, int):
            steps = Recipe.from_saved(state["recipe"]).train.steps
        schedule = replace(cls.of(recipe), steps=steps)
        segment = saved.get("segment")
        if isinstance(segment, dict):
            try:
                start, high, end = int(segment["start"]), float(segment["lr"]), segment["steps"]
                schedule = replace(schedule, segment=(start, high, int(end)))
            except (KeyError, TypeError, ValueError):
                raise InputError(
                    f"{existing.path / 'state.json'}: scheduler.segment is not a schedule "
                    f"segment: {segment!r}"
                ) from None
        return schedule


def build_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices (embeddings and projections) only."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": recipe.train.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=recipe.train.lr, betas=tuple(recipe.train.betas))


# --------------------------------------------------------------------------- the stage


def train(
    recipe: Recipe,
    run_dir: Path,
    *,
    resume: bool = True,
    force: bool = False,
    progress: bool = True,
    strict_data: bool = False,
) -> TrainResult:
    """Train ``recipe`` into ``run_dir``, resuming from its latest checkpoint when there is one.

    Resuming on a corpus whose content changed since the checkpoint (``corpus_record``)
    continues with a warning and a ``data_changed`` record in metrics.jsonl; ``strict_data``
    refuses (InputError) instead.

    The run holds ``run_dir``'s lock (``runlock.RunLock``, taken by the main process before any
    rank writes) from start to end: a second ``train`` on the same directory, ``--no-resume
    --force`` included, raises RunLockedError (exit 75) and touches nothing.
    """
    held: list = []  # the lock, once taken (released however the run ends)
    try:
        return _train(recipe, Path(run_dir), resume, force, progress, held, strict_data)
    finally:
        for lock in held:
            lock.release()


def _take_run_lock(accelerator, run_dir: Path, held: list) -> None:
    """The main process takes the run's lock; every rank raises RunLockedError when it is held.

    When ``longnet train`` launched this process, the launcher took the lock before starting
    the workers and holds it until they end: the main process does not take it again.
    """
    from longnet_cli.core.runlock import RunLock, RunLockedError
    from longnet_cli.train.launch import launcher_holds_lock

    refusal = None
    if accelerator.is_main_process and not launcher_holds_lock(run_dir):
        try:
            held.append(RunLock(run_dir).acquire())
        except RunLockedError as err:
            refusal = str(err)
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        box = [refusal]
        broadcast_object_list(box, from_process=0)
        refusal = box[0]
    if refusal is not None:
        raise RunLockedError(refusal)


def check_inputs(recipe: Recipe):
    """The recipe's corpus, opened and checked against the recipe: (corpus, vocab_size).

    Cheap (sizes, not hashes): ``longnet train`` runs it before launching its workers too, so
    that a bad input exits 2 once, before any process starts.
    """
    from longnet_cli.data.shards import TokenizedCorpus

    corpus = TokenizedCorpus.open(Path(recipe.data.shards), verify="sizes")
    corpus.tokenizer_bytes()  # checked against its sha256: checkpoints carry a copy of it
    vocab_size = check_against_corpus(recipe, corpus)
    if recipe.train.precision == "fp16" and not torch.cuda.is_available():
        raise InputError("train.precision: fp16 needs a GPU; use bf16 or fp32 on a CPU")
    return corpus, vocab_size


def _same_corpus_version(accelerator, corpus):
    """Every rank reads the corpus version rank 0 opened: a rebuild between two ranks opening
    the corpus would otherwise give them different data (a version directory opens as a
    corpus of its own, and stays readable while a reader holds it)."""
    if accelerator.num_processes == 1:
        return corpus
    from accelerate.utils import broadcast_object_list

    from longnet_cli.data.shards import TokenizedCorpus

    chosen = broadcast_object_list([str(corpus.version_directory)], from_process=0)[0]
    if chosen == str(corpus.version_directory):
        return corpus
    return TokenizedCorpus.open(Path(chosen), verify="sizes")


def use_deterministic_kernels() -> None:
    """``train.deterministic``: deterministic kernels wherever torch has them (cuBLAS workspace,
    cuDNN); ops without one warn once instead of failing (flash-attn's backward and CUDA
    embedding backward stay non-deterministic). Call before the first CUDA operation."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def _train(
    recipe: Recipe,
    run_dir: Path,
    resume: bool,
    force: bool,
    progress: bool,
    held: list,
    strict_data: bool = False,
) -> TrainResult:
    """``train``'s body; ``held`` receives the run lock."""
    from accelerate import Accelerator

    from longnet_cli.data.windows import TrainingWindows
    from longnet_cli.runtime import keep_freed_memory

    started = time.perf_counter()
    corpus, vocab_size = check_inputs(recipe)
    init_source = _init_source(recipe, corpus)
    if recipe.train.threads:
        torch.set_num_threads(recipe.train.threads)
    if recipe.train.deterministic:
        use_deterministic_kernels()
    keep_freed_memory()
    if torch.cuda.is_available() and "LOCAL_RANK" in os.environ:
        # each rank its own GPU before the process group and any collective (NCCL needs it)
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    accelerator = Accelerator(
        mixed_precision=PRECISIONS[recipe.train.precision],
        gradient_accumulation_steps=recipe.train.grad_accum,
        cpu=not torch.cuda.is_available(),
        log_with=_trackers(recipe),
        project_dir=str(run_dir),
    )
    _take_run_lock(accelerator, run_dir, held)
    _check_shared_run_dir(accelerator, run_dir)
    corpus = _same_corpus_version(accelerator, corpus)
    existing = _prepare_run_dir(accelerator, run_dir, resume, force)
    layout = _Layout.of(accelerator, recipe)
    data = corpus_record(corpus)
    data_change = None
    schedule = Schedule.of(recipe)
    if existing is not None:
        _check_resumable(existing, recipe, corpus, layout)
        if recipe.train.steps < existing.step:
            raise InputError(
                f"train.steps is {recipe.train.steps} but checkpoint {existing.path} is at step "
                f"{existing.step}: set it to {existing.step} or more, or start over with "
                "--no-resume --force"
            )
        data_change = data_changed(existing, data)
        if data_change is not None and strict_data:
            raise InputError(
                f"the corpus {recipe.data.shards} changed since checkpoint {existing.path} "
                f"({data_change['change']}); --strict-data refuses to resume on other data: "
                "restore the corpus, or resume without --strict-data to continue on it"
            )
        if existing.step >= recipe.train.steps:
            return TrainResult(
                str(run_dir),
                "already-finished",
                existing.step,
                existing.step,
                None,
                None,
                time.perf_counter() - started,
                str(existing.path),
            )
        saved = Schedule.saved(recipe, existing)
        schedule = saved.extended(existing.step, recipe.train.steps)
        if schedule != saved and accelerator.is_main_process:
            print(
                f"train.steps changed from {saved.end} to {recipe.train.steps}: the learning "
                f"rate continues at {schedule.lr_at(existing.step):.3g} from step "
                f"{existing.step + 1} and decays to {schedule.floor:.3g} at step "
                f"{recipe.train.steps}",
                file=sys.stderr,
            )

    torch.manual_seed(recipe.train.seed)  # the same initial weights on every rank
    model = recipe.model.build(vocab_size)
    if existing is not None:
        ckpt.load_model_weights(existing.path, model)
        init_record = existing.state.get("init_from")
    elif init_source is not None:
        load_initial_weights(model, init_source)
        init_record = init_source.to_json()
    else:
        init_record = None
    flops_per_token = training_flops_per_token(model, recipe.train.seq_len)
    if layout.sequence_group is not None:
        model.use_sequence_parallel(layout.sequence_group)
    loss_module = LanguageModelLoss(
        model, recipe.train.loss_chunk, layout.sequence_rank, layout.sequence_size
    )
    optimizer = build_optimizer(model, recipe)
    loss_module, optimizer = accelerator.prepare(loss_module, optimizer)
    start = 0
    if existing is not None:
        optimizer.load_state_dict(ckpt.load_optimizer_state(existing.path, accelerator.device))
        rng = ckpt.load_rng_file(existing.path, accelerator.process_index)
        if rng is not None:
            ckpt.set_rng_state(rng)
        _restore_scaler(accelerator, existing)
        start = existing.step
    scheme = window_scheme(existing.state if existing is not None else None, corpus)
    evaluation = _Evaluation.plan(recipe, corpus, scheme)
    if evaluation is not None and evaluation.warning and accelerator.is_main_process:
        print(f"warning: {evaluation.warning}", file=sys.stderr)
    tail = scheme == WINDOWS_BEFORE_EVAL_TAIL
    windows = TrainingWindows(
        corpus,
        recipe.train.seq_len,
        seed=recipe.train.seed,
        sampling=recipe.data.sampling,
        split="all" if tail else "train",
        end=evaluation.train_end if evaluation and tail else None,
    )
    metrics = _MetricsLog(run_dir / "metrics.jsonl", accelerator.is_main_process, start)
    if data_change is not None:
        if accelerator.is_main_process:
            print(
                f"warning: the corpus {recipe.data.shards} changed since checkpoint "
                f"{existing.path} ({data_change['change']}); continuing on it from step {start} "
                "(recorded as data_changed in metrics.jsonl; --strict-data refuses instead)",
                file=sys.stderr,
            )
        metrics.write(step=start, data_changed=data_change)
    if init_record is not None and existing is None:
        if accelerator.is_main_process:
            print(f"starting from the weights of {init_source.path}", file=sys.stderr)
        metrics.write(step=0, init_from=init_record)
    peak = _measure_peak(accelerator, recipe)
    if accelerator.log_with:
        accelerator.init_trackers(
            "longnet",
            config=_flat_config(recipe.to_dict()),
            init_kwargs={"wandb": {"name": run_dir.name, "dir": str(run_dir)}},
        )
        metrics.tracker = accelerator.log
    loop = _Loop(
        layout,
        evaluation,
        accelerator,
        recipe,
        run_dir,
        model,
        loss_module,
        optimizer,
        windows,
        metrics,
        data,
        scheme,
        schedule,
    )
    loop.init_record = init_record
    if peak is not None:
        loop.flops_per_token = flops_per_token
        loop.peak_flops = peak.flops_per_s * accelerator.num_processes
    try:
        with _signals_recorded() as received:
            loop.run(start, received, progress)
    finally:
        accelerator.end_training()
    return TrainResult(
        str(run_dir),
        "finished",
        start,
        recipe.train.steps,
        loop.last_loss,
        loop.tokens_per_s,
        time.perf_counter() - started,
        str(ckpt.checkpoint_dir(run_dir) / ckpt.step_name(recipe.train.steps)),
    )


class _Loop:
    """The steps of one training run (state that the step functions share)."""

    def __init__(
        self,
        layout,
        evaluation,
        accelerator,
        recipe,
        run_dir,
        model,
        loss_module,
        optimizer,
        windows,
        metrics,
        corpus_record,
        window_scheme,
        schedule: Schedule,
    ) -> None:
        self.evaluation = evaluation
        self.window_scheme = window_scheme
        self.schedule = schedule
        self.tokenizer = windows.corpus.tokenizer_path
        self.accelerator, self.recipe, self.run_dir = accelerator, recipe, run_dir
        self.model, self.loss_module, self.optimizer = model, loss_module, optimizer
        self.windows, self.metrics, self.corpus_record = windows, metrics, corpus_record
        self.layout = layout
        self.dp_size, self.dp_rank = layout.dp_size, layout.dp_rank
        cfg = recipe.train
        self.tokens_per_step = cfg.seq_len * cfg.micro_batch_size * cfg.grad_accum * self.dp_size
        self.last_loss: float | None = None
        self.tokens_per_s: float | None = None
        self.saved_step: int | None = None  # the step of the newest checkpoint it wrote or read
        self.stopped: tuple[int, int] = (0, 0)  # a signal that stopped a step, micro-steps done
        self.init_record: dict | None = None  # train.init_from's source, kept in checkpoints
        self.flops_per_token: float | None = None  # model FLOPs per token, for mfu
        self.peak_flops: float | None = None  # measured peak of all processes' devices

    def run(self, start: int, received: list[int], progress: bool) -> None:
        from tqdm import tqdm

        cfg = self.recipe.train
        bar = tqdm(
            total=cfg.steps,
            initial=start,
            desc="train",
            unit="step",
            dynamic_ncols=True,
            disable=not (progress and self.accelerator.is_main_process),
        )
        window_start, window_steps = time.perf_counter(), 0
        self.saved_step = start if start else None  # the checkpoint it resumed from
        for step in range(start, cfg.steps):
            # A signal stops the step at its next micro-step boundary: the partial step is
            # dropped and the state after ``step`` steps saved, with the RNG state from before it.
            before = ckpt.capture_rng() if cfg.grad_accum > 1 else None
            result = self._step(step, received)
            if result is None:
                bar.close()
                self._stop_within(step, before)
            loss, grad_norm, lr = result
            done = step + 1
            window_steps += 1
            if not math.isfinite(loss):
                last = ckpt.latest_checkpoint(self.run_dir)
                where = f"last good checkpoint: {last.path}" if last else "no checkpoint yet"
                raise LongnetError(f"loss is {loss} at step {done}; stopping ({where})")
            self.last_loss = loss
            if done % self.recipe.log.every == 0 or done == cfg.steps:
                elapsed = time.perf_counter() - window_start
                self.tokens_per_s = self.tokens_per_step * window_steps / max(elapsed, 1e-9)
                self.metrics.write(
                    step=done,
                    loss=loss,
                    lr=lr,
                    grad_norm=grad_norm,
                    tokens_per_s=self.tokens_per_s,
                    tokens=done * self.tokens_per_step,
                    **self._mfu(),
                )
                bar.set_postfix(
                    loss=f"{loss:.4f}", tok_s=f"{self.tokens_per_s:,.0f}", refresh=False
                )
                window_start, window_steps = time.perf_counter(), 0
            bar.update(1)
            if self.evaluation and (done % self.recipe.eval.every == 0 or done == cfg.steps):
                self._evaluate(done)
            stop = self._signal_agreed(received)
            if done % self.recipe.checkpoint.every == 0 or done == cfg.steps or stop:
                self.save(done)
            if stop:
                bar.close()
                name = signal.Signals(stop).name
                raise TrainingInterrupted(
                    f"stopped by {name} after step {done}; checkpoint saved in "
                    f"{ckpt.checkpoint_dir(self.run_dir) / ckpt.step_name(done)}; run the same "
                    "command to resume",
                    EXIT_ON_SIGNAL.get(stop, 1),
                )
        bar.close()

    def _stop_within(self, step: int, rng: dict | None) -> None:
        """A signal arrived during step ``step`` + 1 (``self.stopped``: the signal and the
        micro-steps done): save the state after ``step`` steps unless it is saved already
        (weights and optimizer are untouched until the last micro-step; ``rng``: the RNG state
        from before the step), then raise TrainingInterrupted."""
        stop, micro = self.stopped
        name = signal.Signals(stop).name
        where = (
            f"stopped by {name} during step {step + 1} (after micro-step {micro} of "
            f"{self.recipe.train.grad_accum}; the partial step is dropped)"
        )
        final = ckpt.checkpoint_dir(self.run_dir) / ckpt.step_name(step)
        if step == 0:
            saved = "no step had completed, nothing to save; run the same command to start again"
        else:
            if self.saved_step != step:
                self.save(step, rng)
            saved = f"checkpoint {final}; run the same command to resume"
        raise TrainingInterrupted(f"{where}; {saved}", EXIT_ON_SIGNAL.get(stop, 1))

    def _step(self, step: int, received: list[int]) -> tuple[float, float, float] | None:
        """One optimizer step over grad_accum micro-batches; (loss, grad norm, lr), or None when
        a signal (agreed by every rank, checked between micro-steps) stopped it midway."""
        cfg, accelerator = self.recipe.train, self.accelerator
        lr = self.schedule.lr_at(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        total = torch.zeros((), device=accelerator.device)
        for micro in range(cfg.grad_accum):
            if micro and (stop := self._signal_agreed(received)):
                self.stopped = (stop, micro)
                return None
            window = self.windows.batch(
                step,
                micro,
                grad_accum=cfg.grad_accum,
                micro_batch_size=cfg.micro_batch_size,
                dp_rank=self.dp_rank,
                dp_size=self.dp_size,
            )
            tokens = torch.from_numpy(window).to(accelerator.device)  # (B, N+1)
            with accelerator.accumulate(self.loss_module):
                loss = self.loss_module(tokens)
                accelerator.backward(loss)
            total += loss.detach().float()
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        grad_norm = accelerator.clip_grad_norm_(self.loss_module.parameters(), max_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        mean = accelerator.reduce(total / cfg.grad_accum, reduction="mean")
        return float(mean), float(grad_norm), lr

    def _evaluate(self, step: int) -> None:
        """Score the held-out documents into metrics.jsonl, every rank its share.

        Each rank scores whole documents alone (no sequence parallelism), a share balanced by
        length, so no rank waits much longer than the longest document takes; the summed
        negative log-likelihoods, tokens and bytes are then added up over the ranks.
        """
        accelerator = self.accelerator
        world, rank = accelerator.num_processes, accelerator.process_index
        self.model.use_sequence_parallel(None)
        try:
            if world == 1:
                self.metrics.write(step=step, eval=self.evaluation.run(self.model))
                return
            share = self.evaluation.shares(world)[rank]
            sums = self.evaluation.sums(self.model, share)  # (contexts, 3): nll, tokens, bytes
        finally:
            self.model.use_sequence_parallel(self.layout.sequence_group)
        import torch.distributed as dist

        total = torch.from_numpy(sums).to(accelerator.device)
        dist.all_reduce(total)  # sum over every rank
        if accelerator.is_main_process:
            self.metrics.write(step=step, eval=self.evaluation.figures(total.cpu().numpy()))

    def _signal_agreed(self, received: list[int]) -> int:
        """The signal any rank received (all ranks stop at the same step), or 0."""
        local = received[0] if received else 0
        if self.accelerator.num_processes == 1:
            return local
        flags = self.accelerator.gather(torch.tensor([local], device=self.accelerator.device))
        return int(flags.max())

    def _mfu(self) -> dict:
        """{"mfu": model FLOPs per second over the measured peak, "peak_flops": that peak}
        (the peak recorded with every figure it divides), or {} without a peak."""
        if not (self.peak_flops and self.flops_per_token and self.tokens_per_s):
            return {}
        mfu = self.tokens_per_s * self.flops_per_token / self.peak_flops
        return {"mfu": mfu, "peak_flops": self.peak_flops}

    def save(self, step: int, rng: dict | None = None) -> None:
        """Checkpoint after ``step`` completed steps (atomic; prunes to keep_last); ``rng``:
        this rank's RNG states as ``capture_rng`` took them then (default: now)."""
        accelerator = self.accelerator
        staging = ckpt.staging_path(self.run_dir, step)
        if accelerator.is_main_process:
            staging.mkdir(parents=True, exist_ok=True)
        accelerator.wait_for_everyone()
        ckpt.write_rng_file(staging, accelerator.process_index, rng)
        if accelerator.is_main_process:
            ckpt.write_model_files(
                staging, self.model, self.optimizer, self.recipe.to_yaml(), self.tokenizer
            )  # the tokenizer too, for generate
            if accelerator.scaler is not None:  # fp16: the same on every rank
                ckpt.write_scaler_file(staging, accelerator.scaler)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            state = {
                "step": step,
                "tokens": step * self.tokens_per_step,
                "world_size": accelerator.num_processes,
                "dp_size": self.dp_size,
                "sequence_parallel": self.layout.sequence_size,
                "tokenizer_sha256": self.corpus_record["tokenizer_sha256"],
                "corpus": self.corpus_record,
                "windows": self.window_scheme,
                "scheduler": self.schedule.to_state(step),
                "loss": self.last_loss,
                "recipe": self.recipe.to_dict(),
                "recipe_source": self.recipe.source,  # the YAML file: eval names runs by it
            }
            if self.init_record is not None:
                state["init_from"] = self.init_record  # where the weights at step 0 came from
            final = ckpt.checkpoint_dir(self.run_dir) / ckpt.step_name(step)
            ckpt.finish_checkpoint(staging, final, state)
            ckpt.prune_checkpoints(self.run_dir, self.recipe.checkpoint.keep_last)
        accelerator.wait_for_everyone()
        self.saved_step = step


@dataclass
class _Layout:
    """Which rank does what: world = parallel.sequence x data-parallel degree; consecutive
    ranks form a sequence group (they read the same window, each its own chunk)."""

    dp_rank: int
    dp_size: int
    sequence_rank: int
    sequence_size: int
    sequence_group: object = None

    @classmethod
    def of(cls, accelerator, recipe: Recipe) -> _Layout:
        world, rank = accelerator.num_processes, accelerator.process_index
        size = recipe.parallel.sequence
        if world % size:
            raise InputError(
                f"parallel.sequence is {size} but the run has {world} process(es): the number "
                f"of processes must be a multiple of it (accelerate launch --num_processes "
                f"{size} ...)"
            )
        group = None
        if size > 1:
            import torch.distributed as dist

            # Every rank creates every group, in the same order (torch.distributed's rule); a
            # group of its own even when it is the whole world, so that the attention's
            # exchanges never share a communicator with DDP's gradient all-reduce.
            groups = [
                dist.new_group(list(range(g * size, (g + 1) * size))) for g in range(world // size)
            ]
            group = groups[rank // size]
        return cls(rank // size, world // size, rank % size, size, group)


# --------------------------------------------------------------------------- run directory


def _restore_scaler(accelerator, existing) -> None:
    """fp16: the gradient scaler's state (scale, growth tracker) from the checkpoint, so the
    resumed run goes on with the scale it had found; a checkpoint without one (an fp16 run
    from before scalers were saved) restarts it, with a warning."""
    if accelerator.scaler is None:
        return
    restored = ckpt.load_scaler_state(existing.path, accelerator.scaler)
    if not restored and accelerator.is_main_process:
        print(
            f"warning: checkpoint {existing.path} has no {ckpt.SCALER_FILE} (saved before "
            "fp16 scaler states were): the loss scale starts again from its initial value",
            file=sys.stderr,
        )


def _check_shared_run_dir(accelerator, run_dir: Path, patience_s: float = 10.0) -> None:
    """Every rank must see the run directory the main process writes into (several nodes: one
    filesystem they all share). The main process writes a marker there; a rank that does not
    see it within ``patience_s`` makes every rank raise InputError (exit 2)."""
    if accelerator.num_processes == 1:
        return
    import socket
    import uuid

    from accelerate.utils import broadcast_object_list, gather_object

    box = [f".shared-check-{uuid.uuid4().hex}"]
    broadcast_object_list(box, from_process=0)
    marker = run_dir / box[0]
    if accelerator.is_main_process:
        marker.write_text(f"{socket.gethostname()}\n")
    accelerator.wait_for_everyone()
    deadline = time.monotonic() + patience_s
    while not (seen := marker.exists()) and time.monotonic() < deadline:
        time.sleep(0.2)
    views = gather_object([(accelerator.process_index, socket.gethostname(), seen)])
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        marker.unlink(missing_ok=True)
    blind = [f"rank {rank} on {host}" for rank, host, saw in views if not saw]
    if blind:
        raise InputError(
            f"the run directory {run_dir} must be on a filesystem every node shares: "
            f"{', '.join(blind)} cannot see the file rank 0 wrote there; put --out on a shared "
            "filesystem (NFS, Lustre ...) mounted at the same path on every node"
        )


def _prepare_run_dir(accelerator, run_dir: Path, resume: bool, force: bool):
    """The checkpoint to resume from (None to start fresh); clears the run when asked."""
    existing = _intact_checkpoint(accelerator, run_dir) if resume else None
    has_run = bool(ckpt.list_checkpoints(run_dir)) or (run_dir / "metrics.jsonl").exists()
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
            (run_dir / "metrics.jsonl").unlink(missing_ok=True)
        accelerator.wait_for_everyone()
        existing = None
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        ckpt.remove_staging(run_dir)
    accelerator.wait_for_everyone()
    return existing


def _intact_checkpoint(accelerator, run_dir: Path):
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
                print(
                    f"warning: skipped damaged checkpoint {reason} (kept as {kept.name})",
                    file=sys.stderr,
                )
            if skipped:
                print(f"warning: resuming from {found.path}", file=sys.stderr)
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        broadcast_object_list(choice, from_process=0)
    if choice[1] is not None:
        raise InputError(choice[1])
    return None if choice[0] is None else ckpt.read_checkpoint(Path(choice[0]))


def _check_resumable(existing, recipe: Recipe, corpus, layout: _Layout) -> None:
    """Refuse to resume across a changed tokenizer, data-parallel degree or unsafe recipe change.

    The sequence-parallel degree may change (the windows depend on the data-parallel layout
    only), so a single-process checkpoint resumes in a sequence-parallel run and vice versa.
    """
    state = existing.state
    if state.get("tokenizer_sha256") != corpus.manifest["tokenizer_sha256"]:
        copy = existing.path / "tokenizer.model"
        reuse = f"; re-tokenize it with --tokenizer {copy}" if copy.is_file() else ""
        raise InputError(
            f"checkpoint {existing.path} was trained with tokenizer "
            f"{state.get('tokenizer_sha256')}, but {corpus.directory} uses "
            f"{corpus.manifest['tokenizer_sha256']}{reuse}"
        )
    if state.get("dp_size") != layout.dp_size:
        raise InputError(
            f"checkpoint {existing.path} was written by {state.get('dp_size')} data-parallel "
            f"processes, this run has {layout.dp_size}: resuming would change which windows "
            "each rank reads; resume with the same number of processes (x parallel.sequence)"
        )
    saved = Recipe.from_saved(state["recipe"], source=str(existing.path / "state.json"))
    changed = safe_to_change_on_resume(saved, recipe)
    if changed:
        raise InputError(
            f"the recipe changed since checkpoint {existing.path} in keys that cannot change on "
            f"resume: {', '.join(changed)}; restore them, or start over with --no-resume --force"
        )


def corpus_record(corpus) -> dict:
    """Which corpus a run trains on, by content: the manifest's sha256 of every shard, of the
    tokenizer, and the held-out fraction (which documents are trained on), with ``sha256``
    over them all; sizes for people. Neither paths nor modification times: re-tokenizing an
    unchanged (or merely touched) corpus gives the same record. Nothing is re-hashed here: the
    manifest's hashes were computed when the shards were written."""
    import hashlib

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


@dataclass
class _Evaluation:
    """Evaluation during training: which documents, at which contexts, which split they are
    (recorded in metrics.jsonl), and, under the pre-split scheme, where training stops."""

    corpus: object
    doc_ids: list[int]
    contexts: list[int]
    train_end: int | None  # "before-eval-tail": training windows end here (None: no cut)
    chunk_size: int
    split: str  # "heldout", "train" (training-set figures), "tail" or "all" (eval data)
    warning: str | None = None  # one line for stderr when the figures are not held-out ones
    token_bytes: object = None
    precision: str = "fp32"  # the recipe's train.precision: evaluation runs under it too

    @classmethod
    def plan(cls, recipe: Recipe, corpus, scheme: str = WINDOWS_TRAIN_SPLIT) -> _Evaluation | None:
        """``_choose``'s plan, evaluated under the recipe's precision (bf16 autocast ...)."""
        evaluation = cls._choose(recipe, corpus, scheme)
        if evaluation is not None:
            evaluation.precision = recipe.train.precision
        return evaluation

    @classmethod
    def _choose(cls, recipe: Recipe, corpus, scheme: str) -> _Evaluation | None:
        """None unless ``eval.every`` > 0. Data: ``eval.data``, else ``data.eval_shards`` (its
        first ``eval.docs`` documents), else the training corpus: under "train-split" its first
        ``eval.docs`` held-out documents (training documents, with a warning, when it holds
        none); under "before-eval-tail" its last ``eval.docs`` documents, cut from training."""
        from longnet_cli.data.shards import TokenizedCorpus
        from longnet_cli.evaluate.scorer import scorable_documents

        cfg = recipe.eval
        if not cfg.every:
            return None
        contexts = cfg.context_lengths(recipe.train.seq_len)
        chunk = recipe.train.loss_chunk
        source = cfg.data or recipe.data.eval_shards
        if source is None and scheme == WINDOWS_BEFORE_EVAL_TAIL:
            tail = scorable_documents(corpus, None)[-cfg.docs :]
            end = int(corpus.document_starts()[tail[0]]) if tail else None
            warning = (
                f"{corpus.directory} records no held-out split (tokenized before longnet "
                f"tokenize --holdout): evaluation scores its last {len(tail)} document(s), cut "
                "from training by position, not a held-out split; re-tokenize to get one"
            )
            if corpus.has_splits:
                warning = (
                    "this run started before held-out splits existed and keeps its windows: "
                    f"evaluation scores the last {len(tail)} document(s) of {corpus.directory}, "
                    "and training may read its held-out documents"
                )
            return cls(corpus, tail, contexts, end, chunk, "tail", warning)
        if source is None:
            scorable = np.asarray(scorable_documents(corpus, None), dtype=np.int64)
            heldout = scorable[corpus.heldout_mask()[scorable]] if scorable.size else scorable
            if heldout.size:
                ids = [int(i) for i in heldout[: cfg.docs]]
                return cls(corpus, ids, contexts, None, chunk, "heldout")
            ids = [int(i) for i in scorable[: cfg.docs]]
            warning = (
                f"{corpus.directory} has no held-out documents to evaluate (tokenized with "
                f"--holdout 0, or too small): evaluation scores {len(ids)} training "
                "document(s); these are training-set figures"
            )
            return cls(corpus, ids, contexts, None, chunk, "train", warning)
        eval_corpus = TokenizedCorpus.open(Path(source), verify="sizes")
        if eval_corpus.manifest["tokenizer_sha256"] != corpus.manifest["tokenizer_sha256"]:
            raise InputError(
                f"evaluation data {source} uses another tokenizer than {corpus.directory} "
                f"({eval_corpus.manifest['tokenizer_sha256']} vs "
                f"{corpus.manifest['tokenizer_sha256']})"
            )
        ids = scorable_documents(eval_corpus, cfg.docs)
        return cls(eval_corpus, ids, contexts, None, chunk, "all")

    def run(self, model: nn.Module, doc_ids: list[int] | None = None) -> dict:
        """``evaluate_model``'s figures on ``doc_ids`` (default: all of this plan's documents)."""
        from longnet_cli.evaluate.scorer import evaluate_model, token_byte_lengths

        if self.token_bytes is None:
            self.token_bytes = token_byte_lengths(self.corpus)
        figures = evaluate_model(
            model,
            self.corpus,
            self.contexts,
            None,
            doc_ids=self.doc_ids if doc_ids is None else doc_ids,
            token_bytes=self.token_bytes,
            chunk_size=self.chunk_size,
            precision=self.precision,
        )
        return {"split": self.split, "documents": len(self.doc_ids), **figures}

    def shares(self, world: int) -> list[list[int]]:
        """The documents each of ``world`` ranks scores: longest first, each to the rank with
        the least work so far (work: the tokens scored, at most the longest context)."""
        lengths = self.corpus.document_lengths()
        longest = max(self.contexts)
        work = [0] * world
        shares: list[list[int]] = [[] for _ in range(world)]
        for doc in sorted(self.doc_ids, key=lambda i: (-min(int(lengths[i]), longest), i)):
            rank = min(range(world), key=lambda r: (work[r], r))
            shares[rank].append(doc)
            work[rank] += min(int(lengths[doc]), longest)
        return shares

    def sums(self, model: nn.Module, doc_ids: list[int]) -> np.ndarray:
        """Summed (nll, tokens, bytes) per context, ascending, over ``doc_ids`` (zeros for none)."""
        from longnet_cli.evaluate.scorer import LN2

        contexts = sorted(set(self.contexts))
        sums = np.zeros((len(contexts), 3), dtype=np.float64)
        if not doc_ids:
            return sums
        figures = self.run(model, doc_ids)["contexts"]
        for row, context in enumerate(contexts):
            entry = figures[str(context)]
            tokens = entry["tokens"] or 0
            nll = (entry["loss"] or 0.0) * tokens
            nbytes = round(nll / LN2 / entry["bpb"]) if entry.get("bpb") else 0
            sums[row] = (nll, tokens, nbytes)
        return sums

    def figures(self, sums: np.ndarray) -> dict:
        """The figures of summed (nll, tokens, bytes), as ``run`` reports them."""
        from longnet_cli.evaluate.scorer import LN2

        contexts = {}
        for context, (nll, tokens, nbytes) in zip(sorted(set(self.contexts)), sums):
            loss = float(nll / tokens) if tokens else None
            ppl = None if loss is None else (math.exp(loss) if loss < 700 else math.inf)
            bpb = float(nll / LN2 / nbytes) if nbytes else None
            contexts[str(context)] = {"loss": loss, "ppl": ppl, "bpb": bpb, "tokens": int(tokens)}
        return {"split": self.split, "documents": len(self.doc_ids), "contexts": contexts}


def _trackers(recipe: Recipe) -> list[str] | None:
    """accelerate trackers to log to: tensorboard and wandb, each when asked for and
    installed (a missing one is a warning: metrics.jsonl is always written)."""
    import importlib.util

    wanted = []
    if recipe.log.tensorboard:
        if importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX"):
            wanted.append("tensorboard")
        else:
            print(
                "warning: log.tensorboard is on but tensorboard is not installed "
                "(pip install tensorboard); not logging to it",
                file=sys.stderr,
            )
    if recipe.log.wandb:
        if importlib.util.find_spec("wandb"):
            wanted.append("wandb")
        else:
            print(
                "warning: log.wandb is on but wandb is not installed (pip install wandb); "
                "not logging to it",
                file=sys.stderr,
            )
    return wanted or None


def _flat_config(values: dict, prefix: str = "") -> dict[str, int | float | str | bool]:
    """The resolved recipe as flat scalars ("model.dim": 256) for trackers' run config."""
    flat: dict[str, int | float | str | bool] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flat_config(value, f"{prefix}{key}."))
        elif isinstance(value, bool | int | float | str):
            flat[f"{prefix}{key}"] = value
        else:
            flat[f"{prefix}{key}"] = str(value)
    return flat


def _init_source(recipe: Recipe, corpus):
    """train.init_from resolved and checked against the corpus's tokenizer, or None."""
    if not recipe.train.init_from:
        return None
    source = resolve_init_source(recipe.train.init_from)
    check_tokenizer(source, corpus.manifest["tokenizer_sha256"], Path(recipe.data.shards))
    return source


def _measure_peak(accelerator, recipe: Recipe):
    """The device's matmul peak in the run's compute dtype (for ``mfu``), measured by the
    main process, which alone writes metrics; None on the other processes."""
    from longnet_cli.runtime import device_peak_flops

    if not accelerator.is_main_process:
        return None
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(
        recipe.train.precision, torch.float32
    )
    return device_peak_flops(accelerator.device, dtype)


class _MetricsLog:
    """``metrics.jsonl``: one JSON object per logged step, written by the main process.

    On resume, lines after the resumed step (logged before a crash, then lost) are dropped, so
    is a ``data_changed`` line of the resumed step (written again if the data still differs
    from the checkpoint's: one line per change, however often that resume is repeated), and
    so is a line that does not parse: the torn last line of a process killed while writing it
    (with a warning), which appending after it would otherwise glue to the next record.
    """

    def __init__(self, path: Path, active: bool, resumed_step: int) -> None:
        self.path, self.active = path, active
        self.tracker = None  # accelerate's log(values, step=...) when trackers are on
        self.started = time.perf_counter()
        self.elapsed_before = 0.0
        if active and path.exists():
            kept, torn = [], 0
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    record = None
                if not isinstance(record, dict):
                    torn += bool(line.strip())
                    continue
                step = record.get("step", 0)
                if "data_changed" in record and step == resumed_step:
                    continue  # a resume from this step writes it again if it still applies
                if isinstance(step, int | float) and step <= resumed_step:
                    kept.append(line)
                    elapsed = record.get("elapsed_s")
                    if isinstance(elapsed, int | float) and math.isfinite(elapsed):
                        self.elapsed_before = float(elapsed)
            if torn:
                print(
                    f"warning: {path}: dropped {torn} unreadable line(s) (a line torn by a "
                    "process killed while writing it)",
                    file=sys.stderr,
                )
            tmp = path.with_suffix(".jsonl.tmp")
            with open(tmp, "w", encoding="utf-8") as handle:
                handle.write("".join(f"{line}\n" for line in kept))
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)

    def write(self, **values) -> None:
        if not self.active:
            return
        values["elapsed_s"] = self.elapsed_before + time.perf_counter() - self.started
        with open(self.path, "a") as handle:
            handle.write(json.dumps(values) + "\n")
        if self.tracker is not None:
            self.tracker(_flat(values), step=values["step"])


def _flat(values: dict, prefix: str = "") -> dict[str, float]:
    """Nested metrics as flat scalars for trackers: {"eval": {"contexts": {"1024": {"loss"..."""
    flat: dict[str, float] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}/"))
        elif isinstance(value, int | float) and key != "step":
            flat[f"{prefix}{key}"] = value
    return flat


@contextmanager
def _signals_recorded() -> Iterator[list[int]]:
    """Record SIGTERM / SIGINT instead of dying, so the loop can checkpoint and stop."""
    received: list[int] = []
    previous = {}

    def record(signum, frame):
        received.append(signum)

    for sig in EXIT_ON_SIGNAL:
        with suppress(ValueError):  # not the main thread: leave signals alone
            previous[sig] = signal.signal(sig, record)
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

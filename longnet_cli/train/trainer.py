"""Stage: recipe -> checkpoints. A resumable training loop on HF accelerate.

One process, one GPU, or one process per device (``longnet train --devices N`` starts them
through ``launch.py``; ``accelerate launch`` or ``torchrun`` work too; gloo on a CPU) run the same
code. The loop itself is plain PyTorch; accelerate places the model, wraps it for data
parallelism, applies mixed precision and gradient accumulation.

Exact resume: the batch of every (step, micro-step, rank) is a pure function of the seed
(``TrainingWindows``), the learning rate a pure function of the step, and checkpoints restore
weights, optimizer state and every rank's RNG state. A run killed after a checkpoint and started
again reproduces the uninterrupted run's losses bit for bit on a CPU.

This module sets a run up, step by step, from its components: ``loss``, ``schedule``
(and the optimizer), ``distributed`` (rank layout, lock, signals), ``resume`` (the run-directory
policy, the corpus record, the window scheme), ``evaluation``, ``metrics``, ``checkpointer``
and ``loop``.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from longnet_cli.artifacts import checkpoints as ckpt
from longnet_cli.artifacts.layout import METRICS_FILE
from longnet_cli.artifacts.sharded import is_sharded
from longnet_cli.config.corpus import check_against_corpus
from longnet_cli.config.schema import Recipe
from longnet_cli.config.sections import TrainConfig
from longnet_cli.core.errors import InputError
from longnet_cli.model.flops import training_flops_per_token
from longnet_cli.train.checkpointer import Checkpointer, RunRecord
from longnet_cli.train.distributed import (
    Layout,
    check_shared_run_dir,
    same_corpus_version,
    say_once,
    signals_recorded,
    take_run_lock,
)
from longnet_cli.train.evaluation import Evaluation
from longnet_cli.train.init_from import (
    check_tokenizer,
    init_from_record,
    load_initial_weights,
    resolve_init_source,
)
from longnet_cli.train.loop import Loop
from longnet_cli.train.loss import LanguageModelLoss
from longnet_cli.train.metrics import MetricsLog, Mfu, flat_config, trackers
from longnet_cli.train.resume import (
    WINDOWS_BEFORE_EVAL_TAIL,
    ResumePoint,
    corpus_record,
    prepare_run_dir,
    restore_training_state,
    resume_point,
    saved_precision,
    window_scheme,
)
from longnet_cli.train.schedule import build_optimizer
from longnet_cli.train.sharding import check_support, shard_model, start_trivial_mesh


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
    compile_s: float | None = None  # train.compile: compiling the blocks, before the first step

    def to_dict(self) -> dict:
        return asdict(self)


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
    held: list = []  # the lock and a process group of its own, once taken (released however
    # the run ends)
    try:
        return _train(recipe, Path(run_dir), resume, force, progress, held, strict_data)
    finally:
        for lock in held:
            lock.release()


def check_inputs(recipe: Recipe):
    """The recipe's corpus, opened and checked against the recipe: (corpus, vocab_size).

    Cheap (sizes, not hashes): ``longnet train`` runs it before launching its workers too, so
    that a bad input exits 2 once, before any process starts.
    """
    from longnet_cli.data.format.reader import TokenizedCorpus

    corpus = TokenizedCorpus.open(Path(recipe.data.shards), verify="sizes")
    corpus.tokenizer_bytes()  # checked against its sha256: checkpoints carry a copy of it
    vocab_size = check_against_corpus(recipe, corpus)
    if recipe.train.precision == "fp16" and not torch.cuda.is_available():
        raise InputError("train.precision: fp16 needs a GPU; use bf16 or fp32 on a CPU")
    if recipe.parallel.shard == "fsdp":
        check_support()
    return corpus, vocab_size


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
    """``train``'s body, one set-up step after another; ``held`` receives the run lock."""
    started = time.perf_counter()
    corpus, vocab_size = check_inputs(recipe)
    init_source = _init_source(recipe, corpus)
    recipe, precision_record = _resolve_precision(recipe, run_dir, resume)
    accelerator = _start(recipe, run_dir)
    if recipe.parallel.shard == "fsdp" and (group := start_trivial_mesh()) is not None:
        held.append(group)  # one process, sharded: a mesh of one rank, destroyed at the end
    agree_on_precision(accelerator, recipe.train.precision, precision_record)
    take_run_lock(accelerator, run_dir, held)
    check_shared_run_dir(accelerator, run_dir)
    corpus = same_corpus_version(accelerator, corpus)
    existing = prepare_run_dir(accelerator, run_dir, resume, force)
    layout = Layout.of(accelerator, recipe.parallel)
    record = corpus_record(corpus)
    point = resume_point(accelerator, existing, recipe, corpus, record, layout.dp_size, strict_data)
    if point.finished:
        return TrainResult(
            run_dir=str(run_dir),
            status="already-finished",
            start_step=point.step,
            final_step=point.step,
            loss=None,
            tokens_per_s=None,
            seconds=time.perf_counter() - started,
            checkpoint=str(existing.path),
        )

    model, init_record = _build_model(recipe, vocab_size, point, init_source)
    flops_per_token = training_flops_per_token(model, recipe.train.seq_len)
    loss_module, optimizer = _prepare(accelerator, model, recipe.train, layout)
    if existing is not None:
        restore_training_state(accelerator, existing, optimizer, model, layout.sharded)
    compile_s = _compiled(accelerator, recipe.train, model, loss_module, vocab_size)
    start = point.step
    scheme = window_scheme(existing.state if existing is not None else None, corpus)
    evaluation = Evaluation.plan(recipe, corpus, scheme)
    if evaluation is not None and evaluation.warning:
        say_once(accelerator, f"warning: {evaluation.warning}")
    windows = _windows(recipe, corpus, scheme, evaluation)
    metrics = _metrics_log(accelerator, recipe, run_dir, start)
    if precision_record is not None and start == 0:
        metrics.note(step=0, precision=precision_record)
    _note_origin(accelerator, metrics, recipe, point, init_source, init_record)
    if compile_s is not None:
        metrics.note(step=start, compile_s=compile_s)
    tokens_per_step = recipe.train.tokens_per_step * layout.dp_size  # all ranks together
    run_record = RunRecord(
        recipe, layout, accelerator.num_processes, record, scheme, point.schedule, init_record
    )
    checkpointer = Checkpointer(
        accelerator,
        run_dir,
        model,
        optimizer,
        corpus.tokenizer_path,
        run_record,
        tokens_per_step=tokens_per_step,
        resumed_step=start,
    )
    loop = Loop(
        accelerator=accelerator,
        train=recipe.train,
        log=recipe.log,
        eval_every=recipe.eval.every,
        checkpoint_every=recipe.checkpoint.every,
        model=model,
        loss_module=loss_module,
        optimizer=optimizer,
        windows=windows,
        schedule=point.schedule,
        layout=layout,
        metrics=metrics,
        checkpointer=checkpointer,
        evaluation=evaluation,
        mfu=Mfu.measured(accelerator, recipe.train.precision, flops_per_token),
    )
    try:
        with signals_recorded() as received:
            loop.run(start, received, progress)
    finally:
        accelerator.end_training()
    return TrainResult(
        run_dir=str(run_dir),
        status="finished",
        start_step=start,
        final_step=recipe.train.steps,
        loss=loop.last_loss,
        tokens_per_s=loop.tokens_per_s,
        seconds=time.perf_counter() - started,
        checkpoint=str(checkpointer.path(recipe.train.steps)),
        compile_s=compile_s,
    )


def _init_source(recipe: Recipe, corpus):
    """train.init_from resolved and checked against the corpus's tokenizer, or None."""
    if not recipe.train.init_from:
        return None
    source = resolve_init_source(recipe.train.init_from)
    check_tokenizer(source, corpus.manifest["tokenizer_sha256"], Path(recipe.data.shards))
    return source


def _resolve_precision(recipe: Recipe, run_dir: Path, resume: bool):
    """``train.precision: auto`` resolved, once: a resumed run keeps its checkpoint's precision
    (no new measurement that could switch it); a new run measures fp32's and bf16's matmul
    peaks on its device (``runtime.measure_auto_precision``). Returns the recipe with the
    resolved precision (what checkpoints record) and the measurement (None: none was made)."""
    import dataclasses

    from longnet_cli.runtime import measure_auto_precision

    if recipe.train.precision != "auto":
        return recipe, None
    resolved = saved_precision(run_dir) if resume else None
    record = None
    if resolved is None:
        if recipe.train.threads:
            torch.set_num_threads(recipe.train.threads)  # the peaks at the run's thread count
        record = measure_auto_precision(_own_device())
        resolved = record["resolved"]
    train = dataclasses.replace(recipe.train, precision=resolved)
    return dataclasses.replace(recipe, train=train), record


def _own_device() -> torch.device:
    """The device this process will train on (accelerate's choice: its local GPU, else CPU)."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def agree_on_precision(accelerator, precision: str, record: dict | None) -> None:
    """Every rank of a run must train in one precision: ranks that each resolved
    ``train.precision: auto`` from their own measurement and disagree stop the run (exit 2)."""
    if record is None or accelerator.num_processes == 1:
        return
    from accelerate.utils import gather_object

    chosen = sorted(set(gather_object([precision])))
    if len(chosen) > 1:
        raise InputError(
            f"train.precision: auto resolved to {' and '.join(chosen)} on different ranks "
            "(their matmul peaks differ); set train.precision to one of them"
        )


def _start(recipe: Recipe, run_dir: Path):
    """This process's settings (threads, deterministic kernels, allocator, its GPU) and its
    ``Accelerator``: mixed precision, gradient accumulation, trackers."""
    from accelerate import Accelerator

    from longnet_cli.runtime import PRECISIONS, keep_freed_memory

    if recipe.train.threads:
        torch.set_num_threads(recipe.train.threads)
    if recipe.train.deterministic:
        use_deterministic_kernels()
    keep_freed_memory()
    if torch.cuda.is_available() and "LOCAL_RANK" in os.environ:
        # each rank its own GPU before the process group and any collective (NCCL needs it)
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    # sharded: FSDP's policy casts (train/sharding.py), accelerate's autocast stays off
    sharded = recipe.parallel.shard == "fsdp"
    return Accelerator(
        mixed_precision="no" if sharded else PRECISIONS[recipe.train.precision].mixed_precision,
        gradient_accumulation_steps=recipe.train.grad_accum,
        cpu=not torch.cuda.is_available(),
        log_with=trackers(recipe.log),
        project_dir=str(run_dir),
    )


def _build_model(recipe: Recipe, vocab_size: int, point: ResumePoint, init_source):
    """The model with the run's initial weights: the checkpoint's when resuming, else
    train.init_from's, else random from ``train.seed`` (the same on every rank); and the
    ``init_from`` record checkpoints keep (None: random weights)."""
    torch.manual_seed(recipe.train.seed)  # the same initial weights on every rank
    model = recipe.model.build(vocab_size)
    if point.existing is not None:
        if not is_sharded(
            point.existing.path
        ):  # sharded: read once placed (restore_training_state)
            ckpt.load_model_weights(point.existing.path, model)
        return model, point.existing.state.get("init_from")
    if init_source is not None:
        added = load_initial_weights(model, init_source)
        return model, init_from_record(init_source, added)
    return model, None


def _prepare(accelerator, model, train: TrainConfig, layout: Layout):
    """The loss module and optimizer, prepared by accelerate (placed, wrapped for data
    parallelism; or, sharded, the model placed and sharded over every rank and the optimizer
    built on its shards); the model's attention sequence-parallel over the rank's group when it
    has one."""
    if layout.sequence_group is not None:
        model.use_sequence_parallel(layout.sequence_group)
    loss_module = LanguageModelLoss(
        model, train.loss_chunk, layout.sequence_rank, layout.sequence_size
    )
    if layout.sharded:
        shard_model(model, accelerator.device, train.precision)
        return loss_module, accelerator.prepare(build_optimizer(model, train))
    return accelerator.prepare(loss_module, build_optimizer(model, train))


def _compiled(accelerator, train: TrainConfig, model, loss_module, vocab_size: int) -> float | None:
    """``train.compile``: the blocks compiled and warmed up on one window's shape before the
    first step (``compiled.warm_up``); the seconds it took, or None when not compiling (not
    asked, or not possible here: then a warning, and the run trains eager)."""
    if not train.compile:
        return None
    from longnet_cli.train.compiled import compile_blocks, eager_instead, warm_up

    device = accelerator.device
    warning = eager_instead(device, "train.compile")
    if warning is not None:
        say_once(accelerator, warning)
        return None
    compile_blocks(model)
    shape = (train.micro_batch_size, train.seq_len + 1)
    return warm_up(loss_module, shape, vocab_size, device)


def _windows(recipe: Recipe, corpus, scheme: str, evaluation: Evaluation | None):
    """The training windows of the run's window scheme (``resume.window_scheme``)."""
    from longnet_cli.data.windows import TrainingWindows

    tail = scheme == WINDOWS_BEFORE_EVAL_TAIL
    return TrainingWindows(
        corpus,
        recipe.train.seq_len,
        seed=recipe.train.seed,
        sampling=recipe.data.sampling,
        split="all" if tail else "train",
        end=evaluation.train_end if evaluation and tail else None,
    )


def _metrics_log(accelerator, recipe: Recipe, run_dir: Path, start: int) -> MetricsLog:
    """metrics.jsonl, resumed at ``start``, and the trackers, started with the run's name and
    its resolved recipe as config."""
    tracker = None
    if accelerator.log_with:
        accelerator.init_trackers(
            "longnet",
            config=flat_config(recipe.to_dict()),
            init_kwargs={"wandb": {"name": run_dir.name, "dir": str(run_dir)}},
        )
        tracker = accelerator.log
    return MetricsLog(run_dir / METRICS_FILE, accelerator.is_main_process, start, tracker)


def _note_origin(accelerator, metrics, recipe: Recipe, point: ResumePoint, init_source,
                 init_record) -> None:  # fmt: skip
    """Say, on stderr and in metrics.jsonl, that the corpus changed since the checkpoint, or
    where a new run's initial weights came from."""
    if point.data_change is not None:
        say_once(
            accelerator,
            f"warning: the corpus {recipe.data.shards} changed since checkpoint "
            f"{point.existing.path} ({point.data_change['change']}); continuing on it from step "
            f"{point.step} (recorded as data_changed in metrics.jsonl; --strict-data refuses "
            "instead)",
        )
        metrics.note(step=point.step, data_changed=point.data_change)
    if init_record is not None and point.existing is None:
        added = init_record.get("added") or []
        also = (
            f"; {len(added)} parameters it lacks start at their initial value (init_from.added "
            "in metrics.jsonl)"
            if added
            else ""
        )
        say_once(accelerator, f"starting from the weights of {init_source.path}{also}")
        metrics.note(step=0, init_from=init_record)

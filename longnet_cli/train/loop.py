"""The training loop: one optimizer step after another, calling the run's components.

Each step sets the schedule's learning rate, accumulates ``grad_accum`` micro-batches (the
windows a pure function of seed, step, micro-step and rank), clips and steps; then, when due,
logs, evaluates and checkpoints. A signal stops the run at a micro-step boundary with a
checkpoint (``distributed.signals_recorded``); a non-finite loss stops it naming the last good
checkpoint.

The host never waits for the device between logging steps: windows go to a GPU from pinned
memory without blocking, each step's loss and gradient norm stay on the device until a logging
step or a checkpoint reads them back (all the steps since the last read, at once), and ranks
agree on signals without a blocking read (``distributed.SignalAgreement``). A non-finite loss
is therefore found at the next logging step or save, always before a checkpoint could keep it,
and reported with the step it happened at. On a CPU the values are the same, read later.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from longnet_cli.artifacts import checkpoints as ckpt
from longnet_cli.config.sections import LogConfig, TrainConfig
from longnet_cli.core.errors import LongnetError
from longnet_cli.train.checkpointer import Checkpointer
from longnet_cli.train.distributed import Layout, SignalAgreement, interrupted, signal_name
from longnet_cli.train.evaluation import Evaluation, summed_over_ranks
from longnet_cli.train.metrics import MetricsLog, Mfu, Throughput
from longnet_cli.train.schedule import Schedule
from longnet_cli.train.sharding import clip_grad_norm


@dataclass(frozen=True)
class Stop:
    """A signal (agreed by every rank) that stopped a step after ``micro`` micro-steps."""

    signum: int
    micro: int


@dataclass(kw_only=True, eq=False)
class Loop:
    """The steps of one training run, given every component it calls."""

    accelerator: Any
    train: TrainConfig  # steps, batch shape, accumulation, clipping
    log: LogConfig  # log.every
    eval_every: int
    checkpoint_every: int
    model: nn.Module
    loss_module: nn.Module  # the prepared (data-parallel) LanguageModelLoss
    optimizer: Any
    windows: Any  # data.windows.TrainingWindows
    schedule: Schedule
    layout: Layout
    metrics: MetricsLog
    checkpointer: Checkpointer
    evaluation: Evaluation | None = None
    mfu: Mfu | None = None  # the main process's; None elsewhere
    last_loss: float | None = field(default=None, init=False)
    tokens_per_s: float | None = field(default=None, init=False)  # the last logged
    # steps done, not read back yet: (step, loss, grad norm) as device tensors
    unread: list[tuple[int, torch.Tensor, torch.Tensor]] = field(default_factory=list, init=False)
    signals: SignalAgreement | None = field(default=None, init=False)

    @property
    def tokens_per_step(self) -> int:
        """Tokens one optimizer step trains on, over every data-parallel rank."""
        return self.checkpointer.tokens_per_step

    def run(self, start: int, received: list[int], progress: bool) -> None:
        """Steps ``start`` .. ``train.steps``; ``received``: the signals recorded so far."""
        self.signals = SignalAgreement(self.accelerator.num_processes)
        self.run_steps(start, received, progress)
        self.signals.settle()  # every rank started the same all-reduces: the last one ends here

    def run_steps(self, start: int, received: list[int], progress: bool) -> None:
        """``run``'s steps, with ``signals`` set up."""
        steps = self.train.steps
        bar = self.progress_bar(start, progress)
        throughput = Throughput(self.tokens_per_step)
        for step in range(start, steps):
            # A signal stops the step at a micro-step boundary (the next one; several ranks: the
            # one after, ``SignalAgreement``): the partial step is dropped and the state after
            # ``step`` steps saved, with the RNG state from before it.
            before = ckpt.capture_rng() if self.train.grad_accum > 1 else None
            outcome = self.step(step, received)
            if isinstance(outcome, Stop):
                bar.close()
                self.stop_within(step, outcome, before)
            loss, grad_norm, lr = outcome
            done = step + 1
            throughput.step()
            self.unread.append((done, loss, grad_norm))
            if self.due(done, self.log.every):
                self.log_step(done, lr, throughput, bar)
            bar.update(1)
            if self.evaluation and self.due(done, self.eval_every):
                self.read_back()  # as before: a non-finite loss stops the run unevaluated
                self.evaluate(done)
            stop = self.signals.agreed(received)
            if self.due(done, self.checkpoint_every) or stop:
                self.read_back()  # a non-finite loss stops the run before it is saved
                self.checkpointer.save(done, self.last_loss)
            if stop:
                bar.close()
                raise interrupted(
                    stop,
                    f"stopped by {signal_name(stop)} after step {done}; checkpoint saved in "
                    f"{self.checkpointer.path(done)}; run the same command to resume",
                )
        bar.close()

    def due(self, done: int, every: int) -> bool:
        """Whether something done ``every`` steps is due after ``done`` steps (and at the end)."""
        return done % every == 0 or done == self.train.steps

    def progress_bar(self, start: int, progress: bool):
        from tqdm import tqdm

        return tqdm(
            total=self.train.steps,
            initial=start,
            desc="train",
            unit="step",
            dynamic_ncols=True,
            disable=not (progress and self.accelerator.is_main_process),
        )

    def step(
        self, step: int, received: list[int]
    ) -> tuple[torch.Tensor, torch.Tensor, float] | Stop:
        """One optimizer step over grad_accum micro-batches; (loss, grad norm, lr), the first two
        on the device, or the Stop of a signal (agreed by every rank, checked between
        micro-steps) that stopped it midway."""
        cfg, accelerator = self.train, self.accelerator
        lr = self.schedule.lr_at(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        total = torch.zeros((), device=accelerator.device)
        for micro in range(cfg.grad_accum):
            if micro and (stop := self.signals.agreed(received)):
                return Stop(stop, micro)
            tokens = self.tokens(step, micro)  # (B, N+1)
            with accelerator.accumulate(self.loss_module):
                loss = self.loss_module(tokens)
                accelerator.backward(loss)
            total += loss.detach().float()
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        if self.layout.sharded:  # DTensor gradients: their norm is reduced over the mesh
            grad_norm = clip_grad_norm(self.loss_module.parameters(), max_norm)
        else:
            grad_norm = accelerator.clip_grad_norm_(self.loss_module.parameters(), max_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        mean = accelerator.reduce(total / cfg.grad_accum, reduction="mean")
        grad_norm = torch.as_tensor(grad_norm, device=mean.device)
        return mean.detach(), grad_norm.detach(), lr

    def tokens(self, step: int, micro: int) -> torch.Tensor:
        """This rank's micro-batch of ``step``, ``micro`` on the device: (B, N+1) int64.

        On CUDA the windows are read into pinned memory and copied without the host waiting;
        torch's caching host allocator keeps the buffer until the copy is done.
        """
        cfg, device = self.train, self.accelerator.device
        where = {
            "grad_accum": cfg.grad_accum,
            "micro_batch_size": cfg.micro_batch_size,
            "dp_rank": self.layout.dp_rank,
            "dp_size": self.layout.dp_size,
        }
        if device.type != "cuda":
            return torch.from_numpy(self.windows.batch(step, micro, **where)).to(device)
        shape = (cfg.micro_batch_size, self.windows.window_tokens)
        host = torch.empty(shape, dtype=torch.int64, pin_memory=True)
        self.windows.batch(step, micro, out=host.numpy(), **where)
        return host.to(device, non_blocking=True)

    def read_back(self) -> tuple[float, float] | None:
        """The loss and gradient norm of the steps not read back yet, in one transfer: the
        last one's (None: none unread). A non-finite loss among them stops the run."""
        if not self.unread:
            return None
        values = torch.stack(
            [torch.stack((loss.double(), norm.double())) for _, loss, norm in self.unread]
        ).tolist()  # float32 -> float64 -> float: the values float() gives
        steps = [done for done, _, _ in self.unread]
        self.unread.clear()
        for done, (loss, _) in zip(steps, values):
            self.check_finite(loss, done)
        self.last_loss, grad_norm = values[-1]
        return self.last_loss, grad_norm

    def check_finite(self, loss: float, done: int) -> None:
        """A non-finite loss stops the run (LongnetError), naming the last good checkpoint."""
        if not math.isfinite(loss):
            last = ckpt.latest_checkpoint(self.checkpointer.run_dir)
            where = f"last good checkpoint: {last.path}" if last else "no checkpoint yet"
            raise LongnetError(f"loss is {loss} at step {done}; stopping ({where})")

    def log_step(self, done: int, lr: float, throughput: Throughput, bar) -> None:
        """The step's record in metrics.jsonl (and the trackers) and on the progress bar."""
        loss, grad_norm = self.read_back()  # waits for the device: throughput counts it
        self.tokens_per_s = throughput.measure()
        mfu = self.mfu.figures(self.tokens_per_s) if self.mfu is not None else {}
        self.metrics.write(
            step=done,
            loss=loss,
            lr=lr,
            grad_norm=grad_norm,
            tokens_per_s=self.tokens_per_s,
            tokens=done * self.tokens_per_step,
            **mfu,
        )
        bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{self.tokens_per_s:,.0f}", refresh=False)
        throughput.restart()

    def stop_within(self, step: int, stop: Stop, rng: dict | None) -> None:
        """A signal arrived during step ``step`` + 1: save the state after ``step`` steps unless
        it is saved already (weights and optimizer are untouched until the last micro-step;
        ``rng``: the RNG state from before the step), then raise TrainingInterrupted."""
        where = (
            f"stopped by {signal_name(stop.signum)} during step {step + 1} (after micro-step "
            f"{stop.micro} of {self.train.grad_accum}; the partial step is dropped)"
        )
        if step == 0:
            saved = "no step had completed, nothing to save; run the same command to start again"
        else:
            self.read_back()  # a non-finite loss stops the run before it is saved
            if self.checkpointer.saved_step != step:
                self.checkpointer.save(step, self.last_loss, rng)
            saved = f"checkpoint {self.checkpointer.path(step)}; run the same command to resume"
        raise interrupted(stop.signum, f"{where}; {saved}")

    def evaluate(self, step: int) -> None:
        """Score the evaluation documents into metrics.jsonl, every rank its share.

        Each rank scores whole documents alone (no sequence parallelism), a share balanced by
        length, so no rank waits much longer than the longest document takes; the summed
        negative log-likelihoods, tokens and bytes are then added up over the ranks. A sharded
        model gathers each block's parameters from every rank as it runs, so there every rank
        scores every document, in step with the others (each then holds the whole sums).
        """
        accelerator, evaluation = self.accelerator, self.evaluation
        world, rank = accelerator.num_processes, accelerator.process_index
        if self.layout.sharded:
            world = 1
        self.model.use_sequence_parallel(None)
        try:
            share = evaluation.shares(world)[rank] if world > 1 else None  # None: all of them
            stats = evaluation.score(self.model, share)
        finally:
            self.model.use_sequence_parallel(self.layout.sequence_group)
        if world > 1:
            stats = summed_over_ranks(stats, accelerator.device)
        if accelerator.is_main_process:
            self.metrics.write(step=step, eval=evaluation.figures(stats))

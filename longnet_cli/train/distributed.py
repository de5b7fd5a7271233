"""What the ranks of one run agree on: who does what (``Layout``), the run's lock, the corpus
version and run directory they share, and the signal that stops them all at the same step.

A single process skips every collective here. ``launch.py`` starts the processes; this module
is what they do together once started.
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from longnet_cli.config.sections import ParallelConfig
from longnet_cli.core.errors import InputError, LongnetError

EXIT_ON_SIGNAL = {signal.SIGTERM: 143, signal.SIGINT: 130}


class TrainingInterrupted(LongnetError):
    """SIGTERM or Ctrl-C: a checkpoint was saved; running the same command resumes."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class Layout:
    """Which rank does what: world = parallel.sequence x data-parallel degree; consecutive
    ranks form a sequence group (they read the same window, each its own chunk); ``shard``:
    parallel.shard ("fsdp": the model's state is sharded over the whole world)."""

    dp_rank: int
    dp_size: int
    sequence_rank: int
    sequence_size: int
    sequence_group: object = None
    shard: str = "none"

    @property
    def sharded(self) -> bool:
        """Whether parameters, gradients and optimizer state are sharded (``sharding.py``)."""
        return self.shard == "fsdp"

    @classmethod
    def of(cls, accelerator, parallel: ParallelConfig) -> Layout:
        world, rank = accelerator.num_processes, accelerator.process_index
        size = parallel.sequence
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
        return cls(rank // size, world // size, rank % size, size, group, parallel.shard)


def take_run_lock(accelerator, run_dir: Path, held: list) -> None:
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


def same_corpus_version(accelerator, corpus):
    """Every rank reads the corpus version rank 0 opened: a rebuild between two ranks opening
    the corpus would otherwise give them different data (a version directory opens as a
    corpus of its own, and stays readable while a reader holds it)."""
    if accelerator.num_processes == 1:
        return corpus
    from accelerate.utils import broadcast_object_list

    from longnet_cli.data.format.reader import TokenizedCorpus

    chosen = broadcast_object_list([str(corpus.version_directory)], from_process=0)[0]
    if chosen == str(corpus.version_directory):
        return corpus
    return TokenizedCorpus.open(Path(chosen), verify="sizes")


def check_shared_run_dir(accelerator, run_dir: Path, patience_s: float = 10.0) -> None:
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


@contextmanager
def signals_recorded() -> Iterator[list[int]]:
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


class SignalAgreement:
    """The signal that stops every rank at the same micro-step boundary (0: none yet).

    One process reads its own record. Several agree by an all-reduce (max) over a gloo group of
    their own, on a CPU tensor, started at one boundary and read at the next: no rank waits
    for it, and reading it never waits for the GPU (an all-gather read back from the device at
    every boundary would). Every rank calls ``agreed`` at the same boundaries, so every rank
    gets the same answer there: a signal stops the run one boundary after it was recorded.
    """

    def __init__(self, world_size: int) -> None:
        self.world_size = world_size
        self.group = None
        self.pending = None  # (work, flag): the all-reduce started at the last boundary
        if world_size > 1:
            import torch.distributed as dist

            self.group = dist.new_group(backend="gloo")  # every rank, in the same order

    def agreed(self, received: list[int]) -> int:
        """At a boundary: the signal the ranks agreed on at the previous one, or 0."""
        local = received[0] if received else 0
        if self.world_size == 1:
            return local
        import torch
        import torch.distributed as dist

        signum = self.settle()
        flag = torch.tensor([local], dtype=torch.int64)
        work = dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.group, async_op=True)
        self.pending = (work, flag)
        return signum

    def settle(self) -> int:
        """Wait for the all-reduce in flight (if any): the signal it agreed on, or 0."""
        if self.pending is None:
            return 0
        work, flag = self.pending
        self.pending = None
        work.wait()
        return int(flag[0])


def interrupted(signum: int, message: str) -> TrainingInterrupted:
    """The TrainingInterrupted a stop by ``signum`` raises: its message and exit code."""
    return TrainingInterrupted(message, EXIT_ON_SIGNAL.get(signum, 1))


def signal_name(signum: int) -> str:
    """ "SIGTERM" for signal.SIGTERM ..."""
    return signal.Signals(signum).name


def say_once(accelerator, message: str) -> None:
    """``message`` on stderr, from the main process only (one line for the whole run)."""
    if accelerator.is_main_process:
        print(message, file=sys.stderr)

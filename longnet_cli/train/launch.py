"""Starting a training run's processes: one per device, through torch.distributed's launcher.

``longnet train`` runs in one of three ways:

- under a launcher that already started one process per device (``accelerate launch``,
  ``torchrun``, MPI, or ``srun`` with one task per device): each process trains as its rank;
- alone, when the layout is one process (``--devices auto`` on a machine without GPUs): it
  trains in this process;
- as the launcher: it plans the layout (world = devices x nodes = ``parallel.sequence`` x the
  data-parallel degree; a layout that does not fit exits 2 before any work), takes the run's
  lock, and starts one worker per device through torch.distributed's elastic agent
  (``elastic_launch``, the engine of ``torchrun``). Each worker is ``python -m longnet_cli
  train ...`` again, now under a launcher.

How the launcher and its workers talk: the workers inherit the terminal (rank 0's progress bar
and summary are the only ones printed); ``LONGNET_LAUNCHER`` carries the launcher's pid (a
worker dies with its launcher, as a single process's work dies with it) and
``LONGNET_LAUNCHER_LOCK`` the run directory whose lock the launcher holds (rank 0 does not
take it again); a worker that fails writes its one-line error and exit code into the error file
torch.distributed gives it (``TORCHELASTIC_ERROR_FILE``), from which the launcher names the
first rank that failed. SIGTERM / SIGINT to the launcher reach every worker; they save a
checkpoint together and the launcher exits 143 / 130 as a single process does.

Multi-node: one launcher per node (``--nnodes``, ``--node-rank``, ``--master-addr``,
``--master-port``, or the environment of an ``srun`` step with one task per node); node 0's
launcher holds the run lock and hosts the rendezvous.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from longnet_cli.core.errors import InputError, LongnetError

DEVICES_ENV = "LONGNET_DEVICES"
LAUNCHER_ENV = "LONGNET_LAUNCHER"  # the launcher's pid, in its workers' environment
LAUNCHER_LOCK_ENV = "LONGNET_LAUNCHER_LOCK"  # the run directory whose lock the launcher holds
DEFAULT_MASTER_PORT = 29500  # torchrun's
SHUTDOWN_TIMEOUT_S = 600  # how long stopped workers get to save before they are killed
EXIT_ON_SIGNAL = {signal.SIGTERM: 143, signal.SIGINT: 130}


class WorkerFailed(LongnetError):
    """A worker failed: the command exits with its code (1 for a crash, 2 for bad input ...)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# --------------------------------------------------------------------------- environment


def under_launcher(env: Mapping[str, str] = os.environ) -> bool:
    """Whether this process is one of several that a launcher started (torchrun, accelerate,
    MPI, or an ``srun`` step with more tasks than nodes, i.e. one task per device)."""
    if _int(env, "WORLD_SIZE") > 1 or "TORCHELASTIC_RUN_ID" in env or "LOCAL_RANK" in env:
        return True
    if max(_int(env, name) for name in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE")) > 1:
        return True
    tasks, nodes = _int(env, "SLURM_STEP_NUM_TASKS"), _int(env, "SLURM_STEP_NUM_NODES")
    return "SLURM_PROCID" in env and tasks > max(nodes, 1)


def adopt_slurm_ranks(env: dict[str, str] = os.environ) -> None:  # type: ignore[assignment]
    """Under ``srun`` with one task per device, give torch.distributed its RANK, WORLD_SIZE,
    LOCAL_RANK from SLURM's variables (the job script exports MASTER_ADDR / MASTER_PORT)."""
    if "RANK" in env or "SLURM_PROCID" not in env or not under_launcher(env):
        return
    if "MASTER_ADDR" not in env:
        raise InputError(
            "under srun with one task per device, export MASTER_ADDR (the first node's "
            "hostname) and MASTER_PORT in the job script, or run one task per node "
            "(pipelines/slurm.sh)"
        )
    env["RANK"] = env["SLURM_PROCID"]
    env["WORLD_SIZE"] = env["SLURM_STEP_NUM_TASKS"]
    env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
    env.setdefault("MASTER_PORT", str(DEFAULT_MASTER_PORT))


def global_rank(env: Mapping[str, str] = os.environ) -> int:
    """This process's rank as its launcher set it (0 when alone)."""
    for name in ("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK"):
        if name in env:
            return _int(env, name)
    return 0


def _int(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env.get(name, "") or 0)
    except ValueError:
        return 0


def visible_gpus() -> int:
    """CUDA devices this process can use (0 without CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


# --------------------------------------------------------------------------- the plan


@dataclass
class LaunchPlan:
    """Processes per node x nodes, where node 0's rendezvous is, and on which device kind."""

    nproc_per_node: int
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str | None = None
    master_port: int | None = None
    device: str = "cpu"  # "cuda" or "cpu" (gloo)

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes

    @property
    def in_process(self) -> bool:
        """One process on one node: train here, as without a launcher."""
        return self.world_size == 1


def parse_devices(text: str | int | None) -> int | None:
    """``--devices``: a positive count, or ``auto`` (None)."""
    if text is None or str(text).strip().lower() in ("", "auto"):
        return None
    try:
        value = int(text)
    except ValueError:
        raise InputError(f"--devices must be a positive number or auto, got {text!r}") from None
    if value < 1:
        raise InputError(f"--devices must be a positive number or auto, got {text!r}")
    return value


def plan_launch(
    sequence: int,
    devices: int | None,
    *,
    gpus: int,
    nnodes: int | None = None,
    node_rank: int | None = None,
    master_addr: str | None = None,
    master_port: int | None = None,
    env: Mapping[str, str] = os.environ,
) -> LaunchPlan:
    """The processes to start for a recipe with ``parallel.sequence`` = ``sequence``.

    ``devices`` None means every visible GPU (``gpus``), or one process without GPUs; an
    explicit count on a machine without GPUs starts that many CPU (gloo) processes. Node
    settings not given come from an ``srun`` step with one task per node (SLURM_STEP_NUM_NODES,
    SLURM_NODEID) and MASTER_ADDR / MASTER_PORT. Raises InputError (exit 2) naming an override
    that fits when the world is not a multiple of ``sequence``.
    """
    slurm_nodes = _int(env, "SLURM_STEP_NUM_NODES") if "SLURM_PROCID" in env else 0
    if nnodes is None:
        nnodes = slurm_nodes if slurm_nodes > 1 else 1
    if node_rank is None:
        node_rank = _int(env, "SLURM_NODEID") if nnodes > 1 and slurm_nodes > 1 else 0
    if nnodes < 1 or not 0 <= node_rank < nnodes:
        raise InputError(f"--node-rank must be in [0, {nnodes}) for --nnodes {nnodes}")
    if nnodes > 1:
        master_addr = master_addr or env.get("MASTER_ADDR")
        if not master_addr:
            raise InputError(
                f"--nnodes {nnodes} needs --master-addr (node 0's address, reachable from "
                "every node) or MASTER_ADDR"
            )
        master_port = master_port or _int(env, "MASTER_PORT") or DEFAULT_MASTER_PORT
    if devices is not None and gpus and devices > gpus:
        raise InputError(
            f"--devices {devices}, but this machine has {gpus} GPU(s): use --devices {gpus} "
            "or fewer (per node)"
        )
    per_node = devices if devices is not None else max(gpus, 1)
    plan = LaunchPlan(per_node, nnodes, node_rank, master_addr, master_port)
    plan.device = "cuda" if gpus else "cpu"
    world = plan.world_size
    if world % sequence:
        raise InputError(_layout_advice(sequence, devices, gpus, nnodes, world))
    return plan


def _layout_advice(sequence: int, devices: int | None, gpus: int, nnodes: int, world: int) -> str:
    """One line: what the recipe needs, what this launch gives, and overrides that fit."""
    per_node = sequence // math.gcd(sequence, nnodes)  # the fewest devices per node that fit
    nodes = f" x {nnodes} nodes" if nnodes > 1 else ""
    if devices is None and not gpus:
        given = "this machine has no GPU, so --devices auto starts 1 process"
    elif devices is None:
        given = f"--devices auto starts {gpus} (one per GPU){nodes} = {world}"
    else:
        given = f"--devices {devices}{nodes} = {world} process(es)"
    fits = math.gcd(world, sequence)
    device_fix = f"--devices {per_node}" + (" (CPU processes)" if not gpus else "")
    if gpus and per_node > gpus:
        device_fix = f"{per_node} GPUs per node (or more nodes)"
    return (
        f"parallel.sequence is {sequence}: the run needs a multiple of {sequence} processes, "
        f"but {given}; use {device_fix}, or --set parallel.sequence={fits}"
    )


# --------------------------------------------------------------------------- the workers' side


def worker_setup(env: Mapping[str, str] = os.environ) -> None:
    """In a worker of ``longnet train``'s own launch: die with the launcher (as a single
    process's work dies with it: no worker trains on without the lock holder)."""
    launcher = _int(env, LAUNCHER_ENV)
    if not launcher or not sys.platform.startswith("linux"):
        return
    import ctypes
    import ctypes.util

    pr_set_pdeathsig = 1
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(pr_set_pdeathsig, int(signal.SIGKILL))
    except (OSError, AttributeError):
        return
    if os.getppid() != launcher:  # the launcher ended before the call above
        os._exit(1)


def launched_by_longnet(env: Mapping[str, str] = os.environ) -> bool:
    """Whether this process is a worker that ``longnet train`` started (its parent)."""
    launcher = _int(env, LAUNCHER_ENV)
    return bool(launcher) and launcher == os.getppid()


def launcher_holds_lock(run_dir: Path, env: Mapping[str, str] = os.environ) -> bool:
    """Whether this process's parent is a ``longnet train`` launcher holding ``run_dir``'s lock."""
    locked = env.get(LAUNCHER_LOCK_ENV)
    if not locked or not launched_by_longnet(env):
        return False
    return Path(locked) == Path(run_dir).resolve()


def report_error(line: str, exit_code: int, env: Mapping[str, str] = os.environ) -> None:
    """Write a failing worker's one-line error where torch.distributed's launcher reads it."""
    path = env.get("TORCHELASTIC_ERROR_FILE")
    if not path or os.path.exists(path):
        return
    now = time.time()
    record = {
        "message": line,
        "timestamp": int(now),
        "longnet": {"time": now, "exit_code": exit_code},
    }
    try:
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(record, handle)
    except OSError:
        pass


# --------------------------------------------------------------------------- the launcher's side


def launch(plan: LaunchPlan, worker_args: Sequence[str], run_dir: Path) -> None:
    """Start ``python -m longnet_cli train <worker_args>`` once per device of this node and wait.

    Node 0's launcher holds ``run_dir``'s lock for the whole run (RunLockedError, exit 75,
    before any worker starts). Raises WorkerFailed with the first failing rank's line and exit
    code, or the interrupted workers' line with 143 / 130 after SIGTERM / SIGINT.
    """
    import logging
    import shutil
    import tempfile
    import uuid

    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    from longnet_cli.core.runlock import RunLock

    for name in list(logging.root.manager.loggerDict):  # each has its own level: quiet them all
        if name.startswith("torch.distributed.elastic"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    lock = RunLock(run_dir).acquire() if plan.node_rank == 0 else None
    log_dir = Path(tempfile.mkdtemp(prefix="longnet-launch-"))
    environment = {LAUNCHER_ENV: str(os.getpid())}
    if lock is not None:
        environment[LAUNCHER_LOCK_ENV] = str(Path(run_dir).resolve())
    if plan.device == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        threads = max(1, (os.cpu_count() or 1) // plan.nproc_per_node)
        environment["OMP_NUM_THREADS"] = str(threads)
    if plan.nnodes == 1:
        rendezvous = {"rdzv_backend": "c10d", "rdzv_endpoint": "localhost:0"}
        run_id = uuid.uuid4().hex
    else:
        rendezvous = {
            "rdzv_backend": "static",
            "rdzv_endpoint": f"{plan.master_addr}:{plan.master_port}",
            "rdzv_configs": {"rank": plan.node_rank, "timeout": 900},
        }
        run_id = f"longnet-{plan.master_addr}-{plan.master_port}"
    config = LaunchConfig(
        min_nodes=plan.nnodes,
        max_nodes=plan.nnodes,
        nproc_per_node=plan.nproc_per_node,
        run_id=run_id,
        max_restarts=0,
        monitor_interval=0.2,
        logs_specs=DefaultLogsSpecs(log_dir=str(log_dir)),
        signals_to_handle="SIGTERM,SIGINT,SIGHUP,SIGQUIT",
        shutdown_timeout=int(os.environ.get("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", SHUTDOWN_TIMEOUT_S)),
        **rendezvous,
    )
    saved = {name: os.environ.get(name) for name in environment}
    os.environ.update(environment)
    try:
        elastic_launch(config, sys.executable)("-m", "longnet_cli", "train", *worker_args)
    except ChildFailedError as err:
        raise _first_failure(err.failures) from None
    except SignalException as err:
        raise _interrupted(err.sigval, log_dir, plan) from None
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if lock is not None:
            lock.release()
        shutil.rmtree(log_dir, ignore_errors=True)


def _reported(failure) -> tuple[str | None, int | None, float]:
    """A failed worker's (line, exit code, time) as it reported them (None when it did not)."""
    data = failure.error_file_data if isinstance(failure.error_file_data, dict) else {}
    own = data.get("longnet") if isinstance(data.get("longnet"), dict) else None
    if own is None:
        return None, None, float(failure.timestamp)
    return str(data.get("message")), int(own.get("exit_code", 1)), float(own.get("time", 0))


def _first_failure(failures: Mapping[int, object]) -> WorkerFailed:
    """The rank that failed first (the cause; the others stopped because of it)."""
    ranked = sorted(failures.items(), key=lambda item: (_reported(item[1])[2], item[0]))
    rank, failure = ranked[0]
    line, code, _ = _reported(failure)
    exitcode = failure.exitcode
    if line is None:
        if exitcode < 0:
            line = f"killed by {signal.Signals(-exitcode).name}"
        else:
            line = f"exit {exitcode} (its error is in the output above)"
        code = 1
    line = line.removeprefix("error: ")
    if code in EXIT_ON_SIGNAL.values() or code == 2:  # interrupted, or bad input every rank saw
        return WorkerFailed(line, code)
    stopped = "; the other ranks were stopped"
    return WorkerFailed(f"rank {rank} failed: {line}{stopped}", 1)


def _interrupted(sigval, log_dir: Path, plan: LaunchPlan) -> WorkerFailed:
    """The launcher was signalled: every worker got the signal and (normally) saved."""
    signum = int(sigval)
    name = signal.Signals(signum).name
    code = EXIT_ON_SIGNAL.get(signum, 128 + signum)
    for path in sorted(log_dir.glob("*/attempt_*/0/error.json")):
        try:
            message = json.loads(path.read_text()).get("message")
        except (OSError, ValueError):
            continue
        if message:
            return WorkerFailed(str(message).removeprefix("error: "), code)
    return WorkerFailed(
        f"stopped by {name} before the workers saved a checkpoint; run the same command to "
        "resume from the latest one",
        code,
    )

"""One writer per run directory: the exclusive lock ``longnet train`` holds on its run.

The lock is ``flock(2)`` on ``RUN_DIR/.train.lock``: the kernel releases it when its holder
exits, however it exits (SIGKILL and power loss included), so a stale lock never blocks the next
run, and the file's existence means nothing. The holder writes ``host pid=... started=...`` into
the file so that a refused run can say who holds it. Readers (``eval``, ``runs``, ``inspect``)
never take it: checkpoints are renamed into place whole, so they never see half of one.

Network filesystems: on Linux, flock on NFSv4 is carried out as a whole-file POSIX lock that the
server arbitrates, so it holds across clients; where the filesystem cannot lock at all (some
FUSE or parallel filesystems mounted without lock support) the run goes on without the lock and
says so on stderr.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import sys
import time
from pathlib import Path
from typing import IO

from longnet_cli.errors import LongnetError

LOCK_FILE = ".train.lock"
LOCKED_EXIT = 75  # EX_TEMPFAIL: try again later (the pipelines use it too)


class RunLockedError(LongnetError):
    """Another process is training into the run directory (exit code 75)."""

    exit_code = LOCKED_EXIT


class RunLock:
    """An exclusive, non-blocking flock on ``run_dir/.train.lock``, held until ``release``."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self.handle: IO[str] | None = None

    def acquire(self) -> RunLock:
        """Take the lock or raise RunLockedError naming the holder; creates ``run_dir``."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 (held past this call)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "an unknown process"
            handle.close()
            raise RunLockedError(
                f"{self.path.parent} is being trained by {holder} (lock {self.path}); not "
                f"starting (exit {LOCKED_EXIT}): wait for that run, or train into another --out"
            ) from None
        except OSError as err:
            if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                handle.close()
                raise
            print(
                f"warning: {self.path}: this filesystem cannot lock ({err.strerror}); nothing "
                "stops a second run from writing into the same directory",
                file=sys.stderr,
            )
        handle.seek(0)
        handle.truncate()
        started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        handle.write(f"{socket.gethostname()} pid={os.getpid()} started={started}\n")
        handle.flush()
        self.handle = handle
        return self

    def release(self) -> None:
        """Give the lock back (also done by the kernel when the process ends)."""
        if self.handle is not None:
            fcntl.flock(self.handle, fcntl.LOCK_UN)
            self.handle.close()
            self.handle = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

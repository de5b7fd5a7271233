"""One writer per directory: the exclusive locks ``longnet train`` (its run) and ``tokenize`` hold.

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
from collections.abc import Callable
from pathlib import Path
from typing import IO

from longnet_cli.core.errors import LongnetError

LOCK_FILE = ".train.lock"
LOCKED_EXIT = 75  # EX_TEMPFAIL: try again later (the pipelines use it too)


class RunLockedError(LongnetError):
    """Another process is training into the run directory (exit code 75)."""

    exit_code = LOCKED_EXIT


class DirectoryLock:
    """An exclusive, non-blocking flock on a lock file, held until ``release``.

    ``refuse(holder)`` builds the error raised when another process holds it (``holder``: the
    line that process wrote into the file: host, pid, start time). Shared by ``longnet train``
    (``RunLock``) and ``longnet tokenize`` (its output directory's lock).
    """

    def __init__(
        self, path: Path, refuse: Callable[[str], LongnetError], record_holder: bool = True
    ) -> None:
        """``record_holder`` False leaves the lock file untouched (for an output directory that
        a no-op run must not modify)."""
        self.path = Path(path)
        self.refuse = refuse
        self.record_holder = record_holder
        self.handle: IO[str] | None = None

    def acquire(self) -> DirectoryLock:
        """Take the lock or raise ``refuse(holder)``; creates the lock file's directory."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 (held past this call)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "an unknown process"
            handle.close()
            raise self.refuse(holder) from None
        except OSError as err:
            if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                handle.close()
                raise
            print(
                f"warning: {self.path}: this filesystem cannot lock ({err.strerror}); nothing "
                "stops a second run from writing into the same directory",
                file=sys.stderr,
            )
        self.handle = handle
        if not self.record_holder:
            return self
        handle.seek(0)
        handle.truncate()
        started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        handle.write(f"{socket.gethostname()} pid={os.getpid()} started={started}\n")
        handle.flush()
        return self

    def release(self) -> None:
        """Give the lock back (also done by the kernel when the process ends)."""
        if self.handle is not None:
            fcntl.flock(self.handle, fcntl.LOCK_UN)
            self.handle.close()
            self.handle = None

    def __enter__(self) -> DirectoryLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


class RunLock(DirectoryLock):
    """The training lock of ``run_dir``: RunLockedError (exit 75) names its holder."""

    def __init__(self, run_dir: Path) -> None:
        path = Path(run_dir) / LOCK_FILE

        def refuse(holder: str) -> RunLockedError:
            return RunLockedError(
                f"{path.parent} is being trained by {holder} (lock {path}); not starting "
                f"(exit {LOCKED_EXIT}): wait for that run, or train into another --out"
            )

        super().__init__(path, refuse)

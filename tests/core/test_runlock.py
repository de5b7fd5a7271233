"""``core.runlock``: one writer per directory; a second one is refused, naming the holder."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from longnet_cli.core.errors import LongnetError
from longnet_cli.core.runlock import LOCK_FILE, LOCKED_EXIT, DirectoryLock, RunLock, RunLockedError


def test_a_second_lock_is_refused_with_the_holder_named(tmp_path):
    path = tmp_path / "out" / ".lock"
    with DirectoryLock(path, lambda holder: LongnetError(f"held by {holder}")):
        assert f"pid={os.getpid()}" in path.read_text()
        with pytest.raises(LongnetError, match=f"held by .*pid={os.getpid()}"):
            DirectoryLock(path, lambda holder: LongnetError(f"held by {holder}")).acquire()
    with DirectoryLock(path, lambda holder: LongnetError(holder)):  # released: free again
        pass


def test_record_holder_false_leaves_the_file_as_it_was(tmp_path):
    path = tmp_path / ".lock"
    path.write_text("a previous holder\n")
    with DirectoryLock(path, LongnetError, record_holder=False):
        assert path.read_text() == "a previous holder\n"


def test_run_lock_held_by_another_process_exits_75(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from longnet_cli.core.runlock import RunLock; "
         f"lock = RunLock({str(tmp_path)!r}).acquire(); print('locked', flush=True); "
         "time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError) as refused:
            RunLock(tmp_path).acquire()
        assert refused.value.exit_code == LOCKED_EXIT == 75
        assert f"pid={holder.pid}" in str(refused.value)
        assert str(tmp_path / LOCK_FILE) in str(refused.value)
    finally:
        holder.kill()
        holder.wait()
    RunLock(tmp_path).acquire().release()  # the kernel released it with its holder

"""gradloop.filelock: one holder at a time across processes, and a killed holder frees the lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from gradloop.filelock import FileLock

HOLD = """
import sys, time
from gradloop.filelock import FileLock
lock = FileLock(sys.argv[1], note_holder=True)
assert lock.acquire(blocking=False)
print("held", flush=True)
time.sleep(60)
"""


def test_a_second_process_cannot_take_a_held_lock_until_the_holder_is_killed(tmp_path: Path) -> None:
    path = tmp_path / "pool.lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        mine = FileLock(path)
        assert not mine.acquire(blocking=False)
        assert path.read_text() == str(holder.pid)  # the holder wrote its pid for a person looking
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(10)
        deadline = time.monotonic() + 10
        while not mine.acquire(blocking=False):
            assert time.monotonic() < deadline, "the kernel did not drop a killed holder's lock"
            time.sleep(0.05)
        mine.close()
    finally:
        holder.kill()
        holder.wait(10)


def test_a_forked_child_takes_its_own_lock_rather_than_sharing_the_parents(tmp_path: Path) -> None:
    lock = FileLock(tmp_path / "write.lock")
    with lock:
        pid = os.fork()
        if pid == 0:  # the child: the parent holds the lock, so a non-blocking try must fail
            os._exit(0 if not lock.acquire(blocking=False) else 1)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert lock.acquire(blocking=False)  # released on leaving the with block
    lock.close()

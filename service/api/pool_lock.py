"""The job pool's lock: of the API processes of one service, the one holding it runs the jobs.

An flock on `{state_dir}/pool.lock`, which the kernel releases when its holder exits, however it
exits; see api/workers.py for how `serve --workers N` uses it.
"""

from __future__ import annotations

from pathlib import Path

from gradloop.filelock import FileLock

POOL_LOCK_NAME = "pool.lock"


class PoolLock:
    """An exclusive, non-blocking file lock held by at most one process."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = FileLock(path, note_holder=True)
        self._held = False

    def acquire(self) -> bool:
        self._held = self._lock.acquire(blocking=False)
        return self._held

    def release(self) -> None:
        if self._held:
            self._lock.close()  # closing the descriptor drops the lock
            self._held = False


__all__ = ["POOL_LOCK_NAME", "PoolLock"]

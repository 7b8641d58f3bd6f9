"""The one file lock: an exclusive flock on a lock file, between processes.

flock is what every lock here needs: the kernel drops it when its holder exits, however it
exits (kill -9 included), so a crashed process never leaves a stale lock behind. The
descriptor is opened per process, because a descriptor inherited through fork would share
the parent's lock instead of taking its own.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType


class FileLock:
    """`with FileLock(path):` waits for the lock; `acquire(blocking=False)` only tries."""

    def __init__(self, path: str | os.PathLike[str], *, note_holder: bool = False) -> None:
        self.path = Path(path)
        self._note_holder = note_holder  # write the holder's pid into the file, for a person looking
        self._fd = -1
        self._pid: int | None = None

    def _descriptor(self) -> int:
        if self._pid != os.getpid():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
            self._pid = os.getpid()
        return self._fd

    def acquire(self, *, blocking: bool = True) -> bool:
        fd = self._descriptor()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        if self._note_holder:
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
        return True

    def release(self) -> None:
        if self._pid == os.getpid():
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        """Release by closing this process's descriptor (a lock held through it goes with it)."""
        if self._pid == os.getpid():
            os.close(self._fd)
            self._pid = None
            self._fd = -1

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

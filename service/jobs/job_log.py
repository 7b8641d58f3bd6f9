"""A job's log with a size limit, fed by the fork server from a pipe per job.

A job writes its stdout and stderr (its own, its native code's and its subprocesses') into a
pipe; the fork server reads every job's pipe and appends what it reads to the job's `job.log`.
Once the file reaches the operator's limit (`gradloop serve --max-log-bytes`) one last line says
that the log was cut, and later output is read and dropped: the job goes on, and the disk a job
may fill with its output stays bounded. The limit is for the file, across attempts: a job
re-queued after its log was cut keeps writing nowhere.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_MAX_LOG_BYTES = 64 * 1024 * 1024
READ_CHUNK = 65536
# What a process that has exited can have left unread: its pipe's buffer (64 KiB on Linux, up
# to 1 MiB when a job enlarged it); reading stops there even if a process it started goes on.
DRAIN_CHUNKS = 16


def cut_line(max_bytes: int) -> bytes:
    return (
        f"gradloop: this log reached its limit of {max_bytes} bytes (gradloop serve --max-log-bytes); "
        "the job goes on, but its further output is not kept\n"
    ).encode()


class CappedLog:
    """Appends to one log file up to `max_bytes`, then writes the cut line once and drops the rest."""

    def __init__(self, path: str | Path, max_bytes: int):
        self.max_bytes = max_bytes
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.size = os.fstat(self.fd).st_size
        self.cut = self.size >= max_bytes  # an earlier attempt filled it (and wrote the cut line)
        self.dropped = 0

    def write(self, data: bytes) -> None:
        if self.cut:
            self.dropped += len(data)
            return
        room = self.max_bytes - self.size
        if len(data) <= room:
            self._append(data)
            return
        kept = data[:room]
        end = kept.rfind(b"\n")
        kept = kept[: end + 1] if end >= 0 else kept  # whole lines, when the part that fits has any
        self._append(kept)
        self.dropped += len(data) - len(kept)
        self._append((b"" if not kept or kept.endswith(b"\n") else b"\n") + cut_line(self.max_bytes))
        self.cut = True

    def _append(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                written = os.write(self.fd, view)
            except OSError:
                return  # a full disk: the job's output is lost, not the job
            view = view[written:]
            self.size += written

    def close(self) -> None:
        os.close(self.fd)


@dataclass
class _Stream:
    job_id: str
    log: CappedLog
    pid: int | None = None


@dataclass
class LogPump:
    """The read ends of the jobs' output pipes, each copied into its job's capped log."""

    max_bytes: int
    streams: dict[int, _Stream] = field(default_factory=dict)  # pipe read end -> stream

    def open_pipe(self, job_id: str, path: str | Path) -> tuple[int, int]:
        """A pipe for one job's output: returns (read end, write end); the caller hands the
        write end to the job and closes it here, then calls attach()."""
        read_end, write_end = os.pipe()
        os.set_blocking(read_end, False)
        self.streams[read_end] = _Stream(job_id, CappedLog(path, self.max_bytes))
        return read_end, write_end

    def attach(self, read_end: int, pid: int) -> None:
        self.streams[read_end].pid = pid

    def fds(self) -> list[int]:
        return list(self.streams)

    def pump(self, readable: list[int]) -> None:
        """Copy what is there now from each readable pipe; close those at end of file."""
        for fd in readable:
            if fd in self.streams:
                self._read(fd, chunks=1)

    def drain_pid(self, pid: int) -> None:
        """Copy everything the (now exited) process `pid` left in its pipe, so its log is
        complete before anyone is told it exited. The pipe stays open while something else
        (a process it started) still holds the write end."""
        for fd, stream in list(self.streams.items()):
            if stream.pid == pid:
                self._read(fd, chunks=DRAIN_CHUNKS)

    def close_in_child(self, own: int) -> None:
        """In a freshly forked job: the other jobs' pipes and logs are not its business. It
        keeps the read end of its own pipe, and never reads it: should the fork server die,
        the job's writes then wait (until the service stops it and re-queues it) instead of
        failing with a broken pipe, which would fail a job that did nothing wrong."""
        for fd, stream in self.streams.items():
            if fd != own:
                os.close(fd)
            os.close(stream.log.fd)

    def close_all(self) -> None:
        for fd in list(self.streams):
            if fd in self.streams:
                self._read(fd, chunks=DRAIN_CHUNKS)
            self._close(fd)

    def _read(self, fd: int, *, chunks: int) -> None:
        stream = self.streams[fd]
        for _ in range(chunks):
            try:
                data = os.read(fd, READ_CHUNK)
            except BlockingIOError:
                return
            if not data:
                self._close(fd)
                return
            stream.log.write(data)

    def _close(self, fd: int) -> None:
        stream = self.streams.pop(fd, None)
        if stream is not None:
            os.close(fd)
            stream.log.close()

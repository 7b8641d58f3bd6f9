"""An MlflowClient in a child process, so that writing to the store never holds our GIL.

Logging 1000 metrics into the sqlite store costs MLflow ~130 ms of Python (SQLAlchemy ORM);
done on a thread of the training process, that time is taken from the training thread by the
GIL. `RemoteClient` forwards the few calls the sender makes (metric lines, log_artifact(s),
set_terminated, ...) over a pair of pipes to `python -m gradloop.tracking.remote`, which owns
the real client, and re-raises a failure there as an MlflowException with the same error
code. The same process counts CPU runs' histograms (histfile, numpy), for the same reason. A
plain subprocess rather than multiprocessing's spawn: spawn re-imports the user's
main script in the child, and a script without a `__main__` guard would train again there.
The child ignores SIGINT/SIGTERM (a Ctrl-C to the process group must not kill it before the
run flushes) and exits when its pipe closes, so it never outlives its parent. Calls that
need live objects of this process (log_model) stay in-process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from multiprocessing.connection import Connection
from typing import Any

ALLOWED = frozenset(
    {
        "log_journal_lines",
        "count_histograms",
        "log_batch",
        "log_artifact",
        "log_artifacts",
        "set_terminated",
        "set_tag",
        "update_run",
    }
)


def serve(conn_in: Connection, conn_out: Connection, uri: str) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from gradloop.tracking.mlflow_store import open_client

    client = None
    while True:
        try:
            msg = conn_in.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        method, args, kwargs = msg
        try:
            if method not in ALLOWED:
                raise AttributeError(f"{method} is not forwarded")
            if client is None and method != "count_histograms":
                client = open_client(uri)
            result = None
            if method == "log_journal_lines":
                log_journal_lines(client, *args)
            elif method == "count_histograms":
                from gradloop.tracking.histfile import count_and_write

                result = count_and_write(*args)
            else:
                getattr(client, method)(*args, **kwargs)
            conn_out.send(("ok", result))
        except Exception as exc:  # the parent decides whether to retry; it needs the code
            conn_out.send(("err", type(exc).__name__, getattr(exc, "error_code", None), str(exc)[:2000]))


def log_journal_lines(client: Any, run_id: str, lines: bytes) -> None:
    """Log metrics.jsonl lines as they are: the parent sends the bytes it wrote to the journal,
    so building and pickling the Metric objects (per point, in Python) happens here, not on a
    thread that shares the training thread's GIL. (MlflowClient.log_batch splits what is
    above MLflow's 1000 metrics per request.)"""
    from mlflow.entities import Metric

    from gradloop.tracking.jsonl import Record

    metrics = []
    for line in lines.split(b"\n"):
        record = Record.from_line(line)
        metrics += [Metric(key, value, record.ts, record.step) for key, value in record.metrics.items()]
    client.log_batch(run_id, metrics=metrics, synchronous=True)


class RemoteClient:
    """Duck-types the MlflowClient methods in ALLOWED; one call at a time."""

    def __init__(self, uri: str):
        self.uri = uri
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._to: Connection | None = None
        self._from: Connection | None = None
        self._spawn()

    def _spawn(self) -> None:
        down_r, down_w = os.pipe()  # parent -> child
        up_r, up_w = os.pipe()  # child -> parent
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "gradloop.tracking.remote", str(down_r), str(up_w), self.uri],
            pass_fds=(down_r, up_w),
            stdin=subprocess.DEVNULL,
            start_new_session=False,
        )
        os.close(down_r)
        os.close(up_w)
        self._to = Connection(down_w, readable=False)
        self._from = Connection(up_r, writable=False)

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if method not in ALLOWED:
            raise AttributeError(method)
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._close_pipes()
                self._spawn()  # it died (OOM, a crash): the sender's retry gets a fresh one
            assert self._to is not None and self._from is not None
            try:
                self._to.send((method, args, kwargs))
                reply = self._from.recv()
            except (EOFError, OSError) as exc:
                self._close_pipes()
                raise ConnectionError(f"the MLflow sender process went away: {exc}") from exc
        if reply[0] == "err":
            _, name, code, message = reply
            raise _exception(name, code, message)
        return reply[1]

    def __getattr__(self, method: str) -> Any:
        if method in ALLOWED:
            return lambda *args, **kwargs: self.call(method, *args, **kwargs)
        raise AttributeError(method)

    def _close_pipes(self) -> None:
        for conn in (self._to, self._from):
            if conn is not None:
                conn.close()
        self._to = self._from = None

    def kill(self) -> None:
        """Stop the child now, even while a call is in flight (the end-of-run deadline passed)."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()

    def close(self, timeout: float = 5.0) -> None:
        with self._lock:
            if self._to is not None:
                try:
                    self._to.send(None)
                except OSError:
                    pass
            self._close_pipes()
            if self._proc is not None:
                try:
                    self._proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait(2)
                self._proc = None


_shared: dict[str, RemoteClient] = {}
_shared_lock = threading.Lock()


def shared_client(uri: str) -> RemoteClient:
    """One child per store for the whole process: starting one (importing MLflow) costs
    seconds of CPU, which runs one after another (sweeps, `gradloop run a b`) pay only once.
    It exits with this process (its pipe closes)."""
    with _shared_lock:
        client = _shared.get(uri)
        if client is None:
            client = _shared[uri] = RemoteClient(uri)
        return client


def _exception(name: str, code: str | None, message: str) -> Exception:
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import ErrorCode

    if code:
        try:
            return MlflowException(f"{name}: {message}", error_code=ErrorCode.Value(code))
        except ValueError:
            pass
    return RuntimeError(f"{name}: {message}")


if __name__ == "__main__":
    serve(Connection(int(sys.argv[1]), writable=False), Connection(int(sys.argv[2]), readable=False), sys.argv[3])

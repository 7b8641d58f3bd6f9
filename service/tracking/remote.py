"""The store's process: an MlflowClient in a child process, so MLflow never runs in the training one.

`RemoteClient(uri)` starts a Python process running this module's `main` at once; the child imports
MLflow and opens the store (a new sqlite file gets its tables) while the training process
builds its data and model, then answers the sender's calls over a pair of pipes: the run's
creation, metric lines and ops (params, tags, artifacts, plots, the model, system metrics,
the final status). A failure there comes back as a `StoreError` with
MLflow's error code, so the sender can tell a refusal from an outage without importing MLflow.

A plain subprocess rather than multiprocessing's spawn: spawn re-imports the user's main
script in the child, and a script without a `__main__` guard would train again there. The
child ignores SIGINT/SIGTERM (a Ctrl-C to the process group must not kill it before the run
flushes) and exits when its pipe closes, so it never outlives its parent by more than the call
in hand. The parent waits for it at exit (`close_shared`, registered with atexit), so that it
is reaped and its CPU time counts among the parent's children. MLflow's own log lines about
requests that failed (e.g. its system-metrics thread while the server is down) are silenced
there: the sender's warning says what did not arrive.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import subprocess
import sys
import threading
from multiprocessing.connection import Connection
from typing import Any

from gradloop.lifecycle import ignore_signals

ALLOWED = frozenset({"start_run", "log_lines", "op", "ping"})

# Error codes MLflow uses for requests that a retry cannot fix.
PERMANENT_CODES = frozenset(
    {
        "INVALID_PARAMETER_VALUE",
        "RESOURCE_DOES_NOT_EXIST",
        "INVALID_STATE",
        "PERMISSION_DENIED",
        "UNAUTHENTICATED",
        "BAD_REQUEST",
        "RESOURCE_ALREADY_EXISTS",
        "FEATURE_DISABLED",
    }
)


class StoreError(Exception):
    """A call the store's process could not do; `code` is MLflow's error code, if it gave one."""

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        self.error_code = code

    @property
    def permanent(self) -> bool:
        return self.error_code in PERMANENT_CODES


def is_permanent(exc: BaseException) -> bool:
    """True for an error that sending the same request again would meet again."""
    return getattr(exc, "error_code", None) in PERMANENT_CODES


class _Child:
    """What the child process does with each call (it owns the client)."""

    def __init__(self, uri: str):
        self.uri = uri
        self.client: Any = None
        self.monitors: dict[str, Any] = {}

    def open(self) -> Any:
        if self.client is None:
            from gradloop.tracking.mlflow_store import open_client  # MLflow: in the store's process only

            self.client = open_client(self.uri)
        return self.client

    def ping(self) -> None:
        self.open()

    def start_run(self, spec: dict[str, Any]) -> dict[str, str]:
        from gradloop.tracking.mlflow_store import start_run  # MLflow: in the store's process only

        started = start_run(self.open(), self.uri, spec)
        # What the end of the run will need (matplotlib for the plots, torch and mlflow.pytorch
        # for the model) is imported now, while this process waits for metrics anyway, so that
        # the end of the run does not wait for the imports.
        if spec.get("warm"):
            threading.Thread(target=_import_all, args=(spec["warm"],), daemon=True).start()
        return started

    def log_lines(self, run_id: str, lines: bytes) -> int:
        from gradloop.tracking.mlflow_store import log_lines  # MLflow: in the store's process only

        return log_lines(self.open(), run_id, lines)

    def op(self, run_id: str, name: str, args: dict[str, Any]) -> None:
        if name == "system_metrics":  # a thread of this process: it lives as long as the run
            self.system_metrics(run_id, **args)
            return
        from gradloop.tracking.mlflow_store import run_op  # MLflow: in the store's process only

        run_op(self.open(), run_id, name, args)

    def system_metrics(self, run_id: str, start: bool, resumed: bool = False) -> None:
        monitor = self.monitors.pop(run_id, None)
        if monitor is not None:
            monitor.finish()
        if start:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor  # (as above)

            monitor = SystemMetricsMonitor(run_id, resume_logging=resumed, tracking_uri=self.uri)
            monitor.start()
            self.monitors[run_id] = monitor


def _import_all(modules: list[str]) -> None:
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception:
            pass  # the op that needs it reports the error


def serve(conn_in: Connection, conn_out: Connection, uri: str) -> None:
    ignore_signals(signal.SIGINT, signal.SIGTERM)  # this process's parent ends it
    # mlflow.pytorch imports pytorch_lightning, where it is installed, for an autologging
    # callback this process never uses; with it come torchmetrics, torchvision and torch._dynamo,
    # more CPU than everything else this process does. Marked absent, mlflow.pytorch skips it.
    # (None in sys.modules is the import system's "absent" marker; typeshed types it as modules only.)
    sys.modules.setdefault("pytorch_lightning", None)  # type: ignore[arg-type]
    for name in ("mlflow.system_metrics", "mlflow.utils.requests_utils", "mlflow.store.db.utils", "alembic"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    child = _Child(uri)
    try:
        child.open()  # import MLflow and open the store now, before the first call
    except Exception:
        pass  # (a server that is down; each call tries again and reports the error)
    while True:
        try:
            msg = conn_in.recv()
        except (EOFError, OSError):
            break
        if msg is None:
            break
        method, args, kwargs = msg
        try:
            if method not in ALLOWED:
                raise AttributeError(f"{method} is not forwarded")
            reply: tuple = ("ok", getattr(child, method)(*args, **kwargs))
        except Exception as exc:  # the parent decides whether to retry; it needs the code
            reply = ("err", type(exc).__name__, getattr(exc, "error_code", None), str(exc)[:2000])
        try:
            conn_out.send(reply)
        except OSError:
            break
    for monitor in child.monitors.values():
        try:
            monitor.finish()
        except Exception:
            pass


_CHILD_MAIN = "import sys; from gradloop.tracking.remote import main; main(sys.argv[1:])"


class RemoteClient:
    """The parent's end: one call at a time, from the sender's thread."""

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
            # -c, not -m: gradloop.tracking imports this module, and runpy warns when running a
            # module its package has already imported.
            [sys.executable, "-c", _CHILD_MAIN, str(down_r), str(up_w), self.uri],
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
                self._spawn()  # it died (OOM, a crash, killed at a deadline): a fresh one
            assert self._to is not None and self._from is not None
            try:
                self._to.send((method, args, kwargs))
                reply = self._from.recv()
            except (EOFError, OSError) as exc:
                self._close_pipes()
                raise StoreError(f"the MLflow store process went away: {exc}") from exc
        if reply[0] == "err":
            _, name, code, message = reply
            raise StoreError(f"{name}: {message}", code)
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
    """One store process per store for the whole process, started on first use: importing
    MLflow costs seconds of CPU, which runs one after another (sweeps, `gradloop run a b`) pay
    only once. Entry points wait for them at exit (close_shared); otherwise each ends when this
    process does (its pipe closes)."""
    with _shared_lock:
        client = _shared.get(uri)
        if client is None:
            client = _shared[uri] = RemoteClient(uri)
        return client


def close_shared(timeout: float = 5.0) -> None:
    """End every store process this process started and wait for each to exit: reaped, it
    leaves no zombie, and its CPU time counts as this process's children's (the CLI's
    resource usage then says what a tracked run cost). Any later call starts a fresh one."""
    with _shared_lock:
        clients = list(_shared.values())
        _shared.clear()
    for client in clients:
        client.close(timeout)


def main(argv: list[str]) -> None:
    serve(Connection(int(argv[0]), writable=False), Connection(int(argv[1]), readable=False), argv[2])
    # Every call was answered and nothing is buffered: skip the interpreter's teardown of
    # MLflow, torch and matplotlib, which the parent waiting to reap this process would wait for.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])

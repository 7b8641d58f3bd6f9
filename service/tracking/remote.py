"""The store's process: an MlflowClient in a child process, so MLflow never runs in the training one.

`RemoteClient(uri)` starts a Python process running this module's `main` at once; the child imports
MLflow and opens the store (a new sqlite file gets its tables) while the training process
builds its data and model, then answers the sender's calls over a pair of pipes: the run's
creation, metric lines and ops (params, tags, artifacts, plots, the model, system metrics,
the final status). A failure there comes back as a `StoreError` with
MLflow's error code, so the sender can tell a refusal from an outage without importing MLflow.

The end of a run's slow ops (plots, histograms, the model, the log files)
are handed over with `background`: the child accepts them at once and does them whenever no
call is waiting, so the run's end does not wait for them. tracking.json lists them as owed
until they are done, and names this process (`background_pid`); the child rewrites it as it
goes, so `gradloop sync` sends exactly what a killed child left. A child whose parent has
gone still finishes what it accepted, then exits.

A plain subprocess rather than multiprocessing's spawn: spawn re-imports the user's main
script in the child, and a script without a `__main__` guard would train again there. The
child ignores SIGINT/SIGTERM (a Ctrl-C to the process group must not kill it before the run
flushes) and exits when its pipe closes, so it never outlives its parent by more than the call
in hand. `close_shared` ends it at the end of a command without waiting for its background work
(`wait_idle` waits for that). MLflow's own log lines about
requests that failed (e.g. its system-metrics thread while the server is down) are silenced
there: the sender's warning says what did not arrive.
"""

from __future__ import annotations

import collections
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from gradloop.filelock import FileLock
from gradloop.lifecycle import ignore_signals
from gradloop.tracking.state import STATE_NAME, TrackingState

STORE_NICENESS = 10  # added to the store process's niceness (lower CPU priority than training)

ALLOWED = frozenset({"start_run", "log_lines", "op", "ping", "background", "wait_idle"})

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


@dataclass
class _Handover:
    """One run's end-of-run ops, accepted by `background` and done in order."""

    run_dir: Path
    run_id: str
    ops: collections.deque[dict[str, Any]]


class _Child:
    """What the child process does with each call (it owns the client)."""

    def __init__(self, uri: str):
        self.uri = uri
        self.client: Any = None
        self.monitors: dict[str, Any] = {}
        self.handovers: collections.deque[_Handover] = collections.deque()

    def open(self) -> Any:
        if self.client is None:
            from gradloop.tracking.mlflow_store import open_client  # MLflow: in the store's process only

            self.client = open_client(self.uri)
        return self.client

    def ping(self) -> None:
        self.open()

    def start_run(self, spec: dict[str, Any]) -> dict[str, str]:
        from gradloop.tracking.mlflow_store import start_run  # MLflow: in the store's process only

        return start_run(self.open(), self.uri, spec)

    def log_lines(self, run_id: str, lines: bytes) -> int:
        from gradloop.tracking.mlflow_store import log_lines  # MLflow: in the store's process only

        return log_lines(self.open(), run_id, lines)

    def op(self, run_id: str, name: str, args: dict[str, Any]) -> None:
        if name == "system_metrics":  # a thread of this process: it lives as long as the run
            self.system_metrics(run_id, **args)
            return
        from gradloop.tracking.mlflow_store import run_op  # MLflow: in the store's process only

        run_op(self.open(), run_id, name, args)

    def background(self, run_dir: str, run_id: str, ops: list[dict[str, Any]]) -> int:
        """Accept a run's end-of-run ops (already listed as owed in its tracking.json); they are
        done between calls (`work`). Returns this process's pid."""
        self.handovers.append(_Handover(Path(run_dir), run_id, collections.deque(ops)))
        return os.getpid()

    def wait_idle(self) -> None:
        """Answer once every accepted op is done (or failed and left in tracking.json)."""
        while self.work():
            pass

    def work(self) -> bool:
        """Do one accepted op; False when there is none."""
        if not self.handovers:
            return False
        handover = self.handovers[0]
        op = handover.ops.popleft()
        done = True
        try:
            with warnings.catch_warnings():  # (nobody may be reading this process's stderr now)
                warnings.simplefilter("ignore")
                self.op(handover.run_id, op["name"], op.get("args", {}))
        except Exception as exc:
            # Still owed, for `gradloop sync`; unless MLflow refused it, which it would again
            # (dropped, as the sender drops a refused request).
            done = is_permanent(exc)
        if not handover.ops:
            self.handovers.popleft()
        _record_progress(handover, op if done else None)
        return True

    def system_metrics(self, run_id: str, start: bool, resumed: bool = False, node_id: str | None = None) -> None:
        """Start (or stop) MLflow's monitor of this machine for the run; `node_id` puts this
        machine's keys under `system/<node_id>/` (a run of several machines)."""
        monitor = self.monitors.pop(run_id, None)
        if monitor is not None:
            monitor.finish()
        if start:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor  # (as above)

            monitor = SystemMetricsMonitor(run_id, resume_logging=resumed, node_id=node_id, tracking_uri=self.uri)
            monitor.start()
            self.monitors[run_id] = monitor


def _record_progress(handover: _Handover, done: dict[str, Any] | None) -> None:
    """Rewrite the run's tracking.json: the op just done is no longer owed, and once the last
    one is through this process is no longer on it. Under the run directory's lock, against
    a `gradloop sync` of the same directory."""
    with FileLock(handover.run_dir / (STATE_NAME + ".lock")):
        state = TrackingState.load(handover.run_dir)
        if state is None or state.run_id != handover.run_id:
            return  # (the directory was reused for another run meanwhile)
        if done is not None and done in state.pending_ops:
            state.pending_ops.remove(done)
        if not handover.ops:
            state.background_pid = None
        state.save(handover.run_dir)


def serve(conn_in: Connection, conn_out: Connection, uri: str) -> None:
    # This process's parent ends it; and it may outlive a parent in a terminal that closes,
    # to finish the ops it accepted.
    ignore_signals(signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    # Training comes first: when the cores are all busy (DataLoader workers beside the training
    # process), this process's work (MLflow's import, the store's writes) waits, it never delays
    # a step. On a free core it runs as fast as before.
    try:
        os.nice(STORE_NICENESS)
    except OSError:
        pass
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
            # Accepted end-of-run ops are done one at a time while no call waits.
            while child.handovers and not conn_in.poll(0):
                child.work()
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
    child.wait_idle()  # the parent has gone or is done with this process: finish what was accepted


_CHILD_MAIN = "import sys; from gradloop.tracking.remote import main; main(sys.argv[1:])"


class _Forked:
    """What RemoteClient needs of a store process it forked (the subset of Popen it uses)."""

    def __init__(self, pid: int):
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                self.returncode = 0
                return self.returncode
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"store process {self.pid}", timeout or 0.0)
            time.sleep(0.01)
        assert self.returncode is not None
        return self.returncode

    def kill(self) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _fork_child(down_r: int, up_w: int, uri: str) -> _Forked:
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return _Forked(pid)
    try:  # the store process: nothing of its parent's but the two pipe ends (as Popen leaves it)
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        keep = sorted({0, 1, 2, down_r, up_w})
        for low, high in zip(keep, keep[1:] + [os.sysconf("SC_OPEN_MAX")]):
            os.closerange(low + 1, high)
        main([str(down_r), str(up_w), uri])
    finally:
        os._exit(0)


class RemoteClient:
    """The parent's end: one call at a time, from the sender's thread."""

    def __init__(self, uri: str, *, fork: bool = False):
        self.uri = uri
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | _Forked | None = None
        self._to: Connection | None = None
        self._from: Connection | None = None
        self._spawn(fork)

    def _spawn(self, fork: bool = False) -> None:
        down_r, down_w = os.pipe()  # parent -> child
        up_r, up_w = os.pipe()  # child -> parent
        if fork:
            self._proc = _fork_child(down_r, up_w, self.uri)
            os.close(down_r)
            os.close(up_w)
            self._to = Connection(down_w, readable=False)
            self._from = Connection(up_r, writable=False)
            return
        self._proc = subprocess.Popen(
            # -c, not -m: gradloop.tracking imports this module, and runpy warns when running a
            # module its package has already imported.
            [sys.executable, "-c", _CHILD_MAIN, str(down_r), str(up_w), self.uri],
            pass_fds=(down_r, up_w),
            # Not the parent's output: it may outlive the parent (finishing the end-of-run ops),
            # and a pipe it held open would keep `gradloop run | tee` waiting for it. Its calls'
            # errors come back over the pipe.
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
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

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def close(self, timeout: float | None = 5.0) -> None:
        """End the child: it finishes the ops it accepted, then exits. With a timeout, wait that
        long for it and kill it after; with None, leave it to finish on its own."""
        with self._lock:
            if self._to is not None:
                try:
                    self._to.send(None)
                except OSError:
                    pass
            self._close_pipes()
            if self._proc is not None and timeout is not None:
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


def start_forked(uri: str) -> None:
    """Start this process's store process for `uri` by forking it, so that it has MLflow
    imported already (the job service's fork server imports it once for all jobs): a short
    job's end then does not wait for a fresh interpreter to import MLflow. Only right after a
    fork of a single-threaded process that has used neither MLflow's store nor torch's thread
    pools (a job's process, before it runs the job): the store process inherits this process's
    memory, MLflow's cached stores and their connections included. A store process started
    again later (after a crash) is a fresh interpreter, as everywhere else."""
    with _shared_lock:
        if uri not in _shared:
            _shared[uri] = RemoteClient(uri, fork=True)


def close_shared(timeout: float | None = None) -> None:
    """End every store process this process started. Each finishes the end-of-run ops it
    accepted on its own (the user does not wait for them; tracking.json says what is owed
    until they are done); with a timeout, wait that long for each and kill it after. Any later
    call starts a fresh one."""
    with _shared_lock:
        clients = list(_shared.values())
        _shared.clear()
    for client in clients:
        client.close(timeout)


def wait_idle(timeout: float | None = None) -> bool:
    """Wait until the store processes of this process have done every end-of-run op they
    accepted (plots, histograms, the model, logs). False when `timeout` passed first."""
    with _shared_lock:
        clients = list(_shared.values())
    done = threading.Event()

    def wait_all() -> None:
        for client in clients:
            try:
                client.wait_idle()
            except StoreError:
                pass  # (a process that went away has nothing left to wait for)
        done.set()

    threading.Thread(target=wait_all, name="gradloop-wait-idle", daemon=True).start()
    return done.wait(timeout)


def main(argv: list[str]) -> None:
    serve(Connection(int(argv[0]), writable=False), Connection(int(argv[1]), readable=False), argv[2])
    # Every call was answered and nothing is buffered: skip the interpreter's teardown of
    # MLflow, torch and matplotlib, which the parent waiting to reap this process would wait for.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])

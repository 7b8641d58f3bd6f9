"""A fork server: one process that imports torch, MLflow and the plugins once, then forks a
child per job, so that a job's first step comes in well under a second instead of after the
~3 s a cold interpreter spends importing.

It is started by the pool (`python -m gradloop.jobs.forkserver --store TAG`) and speaks JSON
lines: its settings, then commands, on stdin; events on stdout.
  in:  WorkerSettings as JSON (the first line) |
       {"op": "start", "job_id", "attempt", "worker_id", "env": {...}, "ranks": bool}
  out: {"event": "ready"} | {"event": "started", "job_id", "pid"} |
       {"event": "exited", "job_id", "pid", "code", "signal"[, "error"]}
The settings hold the database URL, password included: they travel through the pipe, never on
the command line, which every local user can read (`ps`). TAG only names the database (see
store_tag) so that a later service can recognise this server's orphaned jobs.
Each child gets its own process group (so SIGTERM/SIGKILL reach the job and anything it
spawned, e.g. DataLoader workers); its stdout and stderr go into a pipe that this server copies
into the job's log, up to the operator's size limit (job_log.py). A child's log is complete
before its exit is reported. The server stays single-threaded and never runs torch ops itself:
forking a process with live thread pools is what makes fork unsafe. When its stdin closes (the
service died), it stops its children.
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import signal
import socket
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import make_url

from gradloop import registry
from gradloop.jobs.job_log import LogPump
from gradloop.jobs.records import Fence, capped_text
from gradloop.jobs.worker import LOG_ERROR_BYTES, WorkerSettings, job_dir, log_path, run_job
from gradloop.lifecycle import default_signals, ignore_signals, stop_on_signals
from gradloop.tracking import resolve_uri
from gradloop.tracking.remote import start_forked

if TYPE_CHECKING:
    from gradloop.jobs.records import JobRecord

STOP_GRACE_S = 30.0


def preload(tracking_uri: str | None = None) -> None:
    """Import what every job needs, so a forked child starts warm; create the service's MLflow
    store now rather than in the first job (a fresh store takes seconds to set up)."""
    import torch  # noqa: F401  (imported for the children)

    # torch._dynamo: torch.optim imports it lazily on the first optimizer (~2 s here).
    modules = (
        "torch._dynamo",
        "mlflow",
        "mlflow.tracking",
        "mlflow.store.tracking.sqlalchemy_store",
        "mlflow.store.db.utils",
        "gradloop.dispatch",
        "gradloop.build",
        "gradloop.optim",
        "gradloop.trainer",
        "gradloop.tracking",
        "gradloop.tracking.tracking_observer",
        "sklearn.datasets",
    )
    for module in modules:
        try:
            __import__(module)
        except Exception as exc:  # a missing optional piece costs start-up time, nothing else
            print(f"gradloop fork server: could not preload {module}: {exc}", file=sys.stderr, flush=True)
    for reg in registry.REGISTRIES.values():
        reg.names()
    if tracking_uri:
        _prepare_tracking_store(tracking_uri)


def _prepare_tracking_store(uri: str) -> None:
    """Create the MLflow store's tables in a throwaway child: this process must not hold a
    database connection that every forked job would then share."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            from gradloop.tracking.mlflow_store import open_client  # MLflow: in this throwaway child only

            open_client(uri)
        except BaseException as exc:
            print(f"gradloop fork server: MLflow store {uri} not ready: {exc}", file=sys.stderr, flush=True)
            code = 1
        finally:
            os._exit(code)
    os.waitpid(pid, 0)


def _emit(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def store_tag(db_url: str) -> str:
    """What names the job database on the fork server's command line: a hash of its URL
    without the password (the command line is public; the URL and the hash of a password are not)."""
    public = make_url(db_url).set(password=None).render_as_string(hide_password=False)
    return hashlib.sha256(public.encode()).hexdigest()[:16]


def forkserver_command(db_url: str) -> list[str]:
    return [sys.executable, "-m", "gradloop.jobs.forkserver", "--store", store_tag(db_url)]


def _read_settings(fd: int) -> tuple[WorkerSettings | None, bytes]:
    """The first line on stdin; returns it parsed (None if stdin closed first) and what came after."""
    buffer = b""
    while b"\n" not in buffer:
        chunk = os.read(fd, 65536)
        if not chunk:
            return None, b""
        buffer += chunk
    line, rest = buffer.split(b"\n", 1)
    return WorkerSettings.from_json(line.decode()), rest


def _child(settings: WorkerSettings, command: dict[str, Any], output: int) -> None:
    """In the forked child: new process group, output into the log pipe, run the job, never return."""
    code = 1
    try:
        os.setpgid(0, 0)
        default_signals(signal.SIGTERM, signal.SIGINT, signal.SIGCHLD)
        job_id = command["job_id"]
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(output, 1)
        os.dup2(output, 2)
        os.close(output)
        os.close(null)
        sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
        sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
        os.environ.update(command.get("env") or {})
        if settings.tracking_uri and not command.get("ranks"):
            # The job's MLflow store process, forked now while this process is still a copy of
            # the fork server (one thread, MLflow imported, no store opened): it starts without
            # importing MLflow, so a short job's end does not wait for that import. Not for a
            # job whose ranks run in processes of their own: rank 0 has its own store process.
            try:
                start_forked(resolve_uri(settings.tracking_uri))
            except OSError as exc:  # (the job starts its own later, as anywhere else)
                print(f"gradloop: no early MLflow store process: {exc}", file=sys.stderr, flush=True)
        with stop_on_signals(signals=(signal.SIGTERM,)) as stop:  # the pool's cancel: stop at a step boundary
            code = run_job(settings, job_id, Fence(int(command["attempt"]), command["worker_id"]), stop)
    except BaseException as exc:
        print(capped_text("".join(traceback.format_exception(exc)), LOG_ERROR_BYTES), file=sys.stderr)
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def serve(settings: WorkerSettings, pending: bytes = b"") -> None:
    """Run commands from stdin (`pending`: what was read after the settings) until it closes."""
    preload(settings.tracking_uri)
    children: dict[int, str] = {}
    logs = LogPump(settings.max_log_bytes)
    _emit({"event": "ready", "pid": os.getpid()})
    buffer = pending
    stdin = sys.stdin.fileno()
    while True:
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if line.strip():
                command = json.loads(line)
                if command.get("op") == "start":
                    _start(settings, command, children, logs)
        _reap(children, logs)
        readable, _, _ = select.select([stdin, *logs.fds()], [], [], 0.05)
        logs.pump([fd for fd in readable if fd != stdin])
        if stdin in readable:
            chunk = os.read(stdin, 65536)
            if not chunk:
                break  # the service is gone
            buffer += chunk
    _stop_children(children, logs)
    logs.close_all()


def _start(settings: WorkerSettings, command: dict[str, Any], children: dict[int, str], logs: LogPump) -> None:
    job_id = command["job_id"]
    try:
        job_dir(settings.jobs_dir, job_id).mkdir(parents=True, exist_ok=True)
        read_end, write_end = logs.open_pipe(job_id, log_path(settings.jobs_dir, job_id))
    except OSError as exc:
        error = f"the job's log could not be opened: {exc}"
        _emit({"event": "exited", "job_id": job_id, "pid": None, "code": None, "signal": None, "error": error})
        return
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        logs.close_in_child(own=read_end)
        _child(settings, command, write_end)
    os.close(write_end)  # the child holds it now: its pipe ends when the job (and what it started) is gone
    logs.attach(read_end, pid)
    try:
        os.setpgid(pid, pid)  # also here, so a signal sent right after "started" reaches it
    except OSError:
        pass  # the child already did it, or has already exited
    children[pid] = job_id
    _emit({"event": "started", "job_id": job_id, "pid": pid})


def _reap(children: dict[int, str], logs: LogPump, *, report: bool = True) -> None:
    """Collect exited children; report each exit (once its log has everything it wrote)."""
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        job_id = children.pop(pid, None)
        if job_id is None:
            continue
        logs.drain_pid(pid)
        if report:
            _emit(
                {
                    "event": "exited",
                    "job_id": job_id,
                    "pid": pid,
                    "code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
                    "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
                }
            )


def _stop_children(children: dict[int, str], logs: LogPump) -> None:
    """The service died: ask every job to checkpoint and stop, then make sure they are gone.
    Their output is still copied meanwhile: a job blocked on a full pipe could not stop."""
    for pid in list(children):
        _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    while children and time.monotonic() < deadline:
        _reap(children, logs, report=False)
        readable, _, _ = select.select(logs.fds(), [], [], 0.05)
        logs.pump(readable)
    for pid in list(children):
        _signal_group(pid, signal.SIGKILL)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


# -- job processes that outlived their service ---------------------------------------------


def is_job_process(pid: int, db_url: str) -> bool:
    """True when `pid` is a job child of a fork server on this database: it leads its own
    process group and its command line is the fork server's with this database's tag. A pid
    reused by another program fails this check, so it is never signalled. (Linux /proc; where
    there is none, nothing is recognised and fencing alone stops a stale attempt.)"""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return (
            state != "Z"
            and os.getpgid(pid) == pid
            and b"gradloop.jobs.forkserver" in cmdline
            and store_tag(db_url).encode() in cmdline.split(b"\0")
        )
    except (OSError, IndexError):
        return False


def stop_local_orphans(jobs: Sequence[JobRecord], db_url: str, grace_s: float) -> list[int]:
    """Stop the job processes on this host that still run `jobs` although their service is gone.

    They were told to checkpoint and stop when their fork server lost its service; give them
    the grace period to record that (they go back to the queue themselves), then SIGKILL their
    process groups. Returns the pids that were found."""
    host = socket.gethostname()
    pids = [job.pid for job in jobs if job.pid and job.host == host and is_job_process(job.pid, db_url)]
    for pid in pids:
        _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [pid for pid in alive if is_job_process(pid, db_url)]
    for pid in alive:
        _signal_group(pid, signal.SIGKILL)
    # A SIGKILLed process is gone once the kernel has reaped it; wait for that, briefly.
    deadline = time.monotonic() + 5
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [pid for pid in alive if is_job_process(pid, db_url)]
    return pids


def main() -> None:
    # Ctrl-C in the service's terminal reaches this process group too; the service decides.
    ignore_signals(signal.SIGINT)
    settings, pending = _read_settings(sys.stdin.fileno())
    if settings is not None:  # (None: the service went away before sending them)
        serve(settings, pending)


if __name__ == "__main__":
    main()

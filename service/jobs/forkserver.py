"""A fork server: one process that imports torch, MLflow and the plugins once, then forks a
child per job, so that a job's first step comes in well under a second instead of after the
~3 s a cold interpreter spends importing.

It is started by the pool (`python -m gradloop.jobs.forkserver SETTINGS_JSON`) and speaks JSON
lines: commands on stdin, events on stdout.
  in:  {"op": "start", "job_id", "attempt", "worker_id", "env": {...}}
  out: {"event": "ready"} | {"event": "started", "job_id", "pid"} |
       {"event": "exited", "job_id", "pid", "code", "signal"}
Each child gets its own process group (so SIGTERM/SIGKILL reach the job and anything it
spawned, e.g. DataLoader workers) and writes stdout/stderr to the job's log. The server stays
single-threaded and never runs torch ops itself: forking a process with live thread pools is
what makes fork unsafe. When its stdin closes (the service died), it stops its children.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gradloop.jobs.records import Fence
from gradloop.jobs.worker import WorkerSettings, job_dir, log_path, run_job
from gradloop.lifecycle import default_signals, ignore_signals, stop_on_signals

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
    from gradloop import registry

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
            from gradloop.tracking.mlflow_store import open_client

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


def _child(settings: WorkerSettings, command: dict[str, Any]) -> None:
    """In the forked child: new process group, log redirection, run the job, never return."""
    code = 1
    try:
        os.setpgid(0, 0)
        default_signals(signal.SIGTERM, signal.SIGINT, signal.SIGCHLD)
        job_id = command["job_id"]
        job_dir(settings.jobs_dir, job_id).mkdir(parents=True, exist_ok=True)
        fd = os.open(log_path(settings.jobs_dir, job_id), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        os.close(null)
        sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
        sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
        os.environ.update(command.get("env") or {})
        with stop_on_signals(signals=(signal.SIGTERM,)) as stop:  # the pool's cancel: stop at a step boundary
            code = run_job(settings, job_id, Fence(int(command["attempt"]), command["worker_id"]), stop)
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def serve(settings: WorkerSettings) -> None:
    preload(settings.tracking_uri)
    children: dict[int, str] = {}
    _emit({"event": "ready", "pid": os.getpid()})
    buffer = b""
    stdin = sys.stdin.fileno()
    while True:
        _reap(children)
        readable, _, _ = select.select([stdin], [], [], 0.05)
        if not readable:
            continue
        chunk = os.read(stdin, 65536)
        if not chunk:
            break  # the service is gone
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if not line.strip():
                continue
            command = json.loads(line)
            if command.get("op") == "start":
                sys.stdout.flush()
                sys.stderr.flush()
                pid = os.fork()
                if pid == 0:
                    _child(settings, command)
                try:
                    os.setpgid(pid, pid)  # also here, so a signal sent right after "started" reaches it
                except OSError:
                    pass  # the child already did it, or has already exited
                children[pid] = command["job_id"]
                _emit({"event": "started", "job_id": command["job_id"], "pid": pid})
    _stop_children(children)


def _reap(children: dict[int, str]) -> None:
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
        _emit(
            {
                "event": "exited",
                "job_id": job_id,
                "pid": pid,
                "code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
                "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
            }
        )


def _stop_children(children: dict[int, str]) -> None:
    """The service died: ask every job to checkpoint and stop, then make sure they are gone."""
    for pid in list(children):
        _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    while children and time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid:
            children.pop(pid, None)
        else:
            time.sleep(0.05)
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
    process group and its command line is the fork server's with this database URL. A pid
    reused by another program fails this check, so it is never signalled. (Linux /proc; where
    there is none, nothing is recognised and fencing alone stops a stale attempt.)"""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return (
            state != "Z"
            and os.getpgid(pid) == pid
            and b"gradloop.jobs.forkserver" in cmdline
            and db_url.encode() in cmdline
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
    serve(WorkerSettings.from_json(sys.argv[1]))


if __name__ == "__main__":
    main()

"""The service side of running jobs: claim, start, heartbeat, cancel, reap.

One thread owns this loop; it starts jobs through the fork server and learns of their exits
from it. When the fork server itself dies, the jobs it ran are stopped and go back to the
queue (each a lost attempt: a job that keeps taking its fork server down ends failed). At every
tick it
  - records the outcome of jobs whose process exited without recording one itself (a crash,
    an out-of-memory kill, a segfault): failed with the exit reason and the log's last lines;
  - sends SIGTERM to the process group of a job being cancelled, SIGKILL after the grace period;
  - renews the leases it holds (a lost lease means another service took the job: kill ours);
  - re-queues jobs whose lease expired elsewhere (a dead host), and claims queued jobs while it
    has room: fewer than max_concurrent jobs, and free slots for the job's processes (`slots`:
    processes at once on this host; a distributed job takes one per rank, see claims.py).
The API calls wake() after a submit or a cancel so neither waits for the next tick.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gradloop.jobs.claims import claim_next, renew, requeue_expired
from gradloop.jobs.forkserver import forkserver_command, is_job_process, stop_local_orphans
from gradloop.jobs.models import JobState
from gradloop.jobs.records import Fence, JobRecord, StaleAttemptError
from gradloop.jobs.store import JobStore
from gradloop.jobs.worker import WorkerSettings, close_job_runs, log_path, runs_ranks

LOG_TAIL_LINES = 20
# The API's bearer tokens, the settings (tokens included) that serve --workers hands its
# processes, and where they keep their metrics: never passed on to job processes.
# The job database's URL reaches the fork server through its stdin (never its command line).
SERVICE_ONLY_ENV = frozenset(
    {"GRADLOOP_API_TOKEN", "GRADLOOP_SERVICE_SETTINGS", "PROMETHEUS_MULTIPROC_DIR", "GRADLOOP_DB"}
)


@dataclass
class PoolSettings:
    max_concurrent: int = 1
    slots: int | None = None  # processes at once on this host (None: only max_concurrent limits)
    lease_s: float = 30.0
    cancel_grace_s: float = 30.0
    tick_s: float = 0.25
    gpus: list[str] = field(default_factory=list)  # slot i runs on gpus[i % len(gpus)] when set
    worker_id: str = ""


@dataclass
class _Running:
    job_id: str
    fence: Fence
    slots: tuple[int, ...]  # the host slots its processes hold (one per rank)
    started: float
    pid: int | None = None
    term_sent: float | None = None
    killed: bool = False


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def signal_name(sig: int) -> str:
    return signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else f"signal {sig}"


_SIGNAL_HINTS: dict[int, str] = {
    signal.SIGKILL: " (the kernel's out-of-memory killer sends this too)",
    signal.SIGSEGV: " (a segmentation fault: a crash in native code)",
    signal.SIGABRT: " (aborted by native code)",
}


def exit_reason(code: int | None, sig: int | None) -> str:
    if sig is not None:
        name = signal_name(sig)
        hint = _SIGNAL_HINTS.get(sig, "")
        return f"the job's process was killed by {name}{hint}"
    return f"the job's process exited with code {code} before recording an outcome"


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> list[str]:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 16384))
            data = fh.read().decode("utf-8", "replace")
    except OSError:
        return []
    return data.splitlines()[-lines:]


class WorkerPool:
    def __init__(
        self,
        store: JobStore,
        worker_settings: WorkerSettings,
        settings: PoolSettings,
        *,
        on_job_end: Callable[[JobRecord], None] | None = None,
    ):
        self.store = store
        self.worker_settings = worker_settings
        self.settings = settings
        if not settings.worker_id:
            settings.worker_id = default_worker_id()
        self.worker_id = settings.worker_id
        self.max_jobs = max(1, settings.max_concurrent)
        self.slots = settings.slots if settings.slots is not None else self.max_jobs
        self.on_job_end = on_job_end
        self._running: dict[str, _Running] = {}
        self._messages: queue.Queue[dict[str, Any]] = queue.Queue()
        self._proc: subprocess.Popen[bytes] | None = None
        self._ready = threading.Event()
        self._draining = threading.Event()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_heartbeat = 0.0
        self._last_sweep = 0.0
        self.zygote_stderr: deque[str] = deque(maxlen=50)

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        """Recover what a previous run of this service left, start the fork server and loop."""
        self._recover()
        self._start_forkserver()
        self._thread = threading.Thread(target=self._loop, name="gradloop-pool", daemon=True)
        self._thread.start()

    def _recover(self) -> None:
        """Re-queue the jobs a previous run of this service (or a dead one) left running.

        A service killed with SIGKILL leaves its job processes behind: the fork server tells
        them to checkpoint and stop, and they record themselves queued. Those still alive on
        this host are waited for (then killed) before anything is re-queued, so that an old
        attempt never writes checkpoints or MLflow data next to the new one.
        On SQLite the state directory belongs to this one service: whatever was running when it
        last stopped has no worker any more. On PostgreSQL other services may be alive; their
        jobs are only taken over once their leases expire (or, when this service was restarted
        under the same --worker-id, at once)."""
        try:
            active = self.store.active_jobs()
        except Exception as exc:
            print(f"gradloop pool: could not read running jobs at start-up: {exc}", file=sys.stderr, flush=True)
            active = []
        now = time.time()
        mine = [
            job
            for job in active
            if self.store.is_sqlite or job.worker_id == self.worker_id or (job.lease_expires_at or 0) < now
        ]
        stop_local_orphans(mine, self.worker_settings.db_url, self.settings.cancel_grace_s)
        if self.store.is_sqlite:
            self._requeue(all_active=True)
        else:
            self._requeue(worker_id=self.worker_id)
            self._requeue()

    def drain(self, grace_s: float | None = None) -> bool:
        """Stop claiming and ask running jobs to checkpoint and stop; they record themselves
        queued and resume at the next start. Waits up to the grace period; True when none is
        left running. The API answers 503 to submits from now on."""
        self._draining.set()
        grace = self.settings.cancel_grace_s if grace_s is None else grace_s
        for run in list(self._running.values()):
            self._signal(run, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while self._running and time.monotonic() < deadline and self._thread and self._thread.is_alive():
            time.sleep(0.05)
        return not self._running

    @property
    def draining(self) -> bool:
        return self._draining.is_set()

    def stop(self, grace_s: float | None = None) -> None:
        """Drain (see drain()), then kill what is left and stop the fork server and the loop."""
        self.drain(grace_s)
        for run in list(self._running.values()):
            self._signal(run, signal.SIGKILL)
        self._stopped.set()
        self._messages.put({"event": "wake"})
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._proc is not None:
            try:
                self._proc.stdin.close()  # type: ignore[union-attr]
                self._proc.wait(timeout=5)
            except Exception:
                self._proc.kill()
        # Anything still marked running by us is re-queued now rather than after its lease.
        for run in list(self._running.values()):
            self._finish_lost(run, None, signal.SIGKILL, requeue=True)

    def wake(self) -> None:
        self._messages.put({"event": "wake"})

    def alive(self) -> bool:
        return bool(
            self._thread
            and self._thread.is_alive()
            and self._proc
            and self._proc.poll() is None
            and self._ready.is_set()
        )

    def running_jobs(self) -> list[str]:
        return list(self._running)

    # -- fork server --------------------------------------------------------------------
    def _start_forkserver(self) -> None:
        self._ready.clear()
        # Jobs run what a client sent: they get the service's environment minus its secrets.
        env = {k: v for k, v in os.environ.items() if k not in SERVICE_ONLY_ENV}
        self._proc = subprocess.Popen(
            forkserver_command(self.worker_settings.db_url),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            start_new_session=True,  # the service's Ctrl-C must not reach jobs directly
        )
        proc = self._proc
        assert proc.stdin is not None
        try:  # its first line: the settings, database URL and all (see forkserver.py)
            proc.stdin.write((self.worker_settings.to_json() + "\n").encode())
            proc.stdin.flush()
        except OSError:
            pass  # it died at once: its reader reports the exit, and the loop starts another
        threading.Thread(target=self._read_events, args=(proc,), name="gradloop-forkserver-out", daemon=True).start()
        threading.Thread(target=self._read_stderr, args=(proc,), name="gradloop-forkserver-err", daemon=True).start()

    def _read_events(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            try:
                self._messages.put(json.loads(line))
            except ValueError:
                self.zygote_stderr.append(line.decode("utf-8", "replace").rstrip())
        self._messages.put({"event": "forkserver-exit", "proc": id(proc)})

    def _read_stderr(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            text = line.decode("utf-8", "replace").rstrip()
            self.zygote_stderr.append(text)
            print(text, file=sys.stderr, flush=True)

    def wait_ready(self, timeout: float = 60.0) -> bool:
        return self._ready.wait(timeout)

    # -- the loop -----------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stopped.is_set():
            try:
                message = self._messages.get(timeout=self.settings.tick_s)
            except queue.Empty:
                message = None
            try:
                while message is not None:
                    self._handle(message)
                    message = self._messages.get_nowait()
            except queue.Empty:
                pass
            if self._stopped.is_set():
                break
            try:
                self._tick()
            except Exception as exc:  # a database hiccup must not end the loop
                print(f"gradloop pool: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
                time.sleep(self.settings.tick_s)

    def _handle(self, message: dict[str, Any]) -> None:
        kind = message.get("event")
        if kind == "ready":
            self._ready.set()
        elif kind == "started":
            run = self._running.get(message["job_id"])
            if run is not None:
                run.pid = int(message["pid"])
                if run.term_sent is not None:  # cancelled or draining before the pid was known
                    self._signal(run, signal.SIGTERM, force=True)
        elif kind == "exited":
            run = self._running.pop(message["job_id"], None)
            if run is not None:
                self._finish_lost(run, message.get("code"), message.get("signal"), note=message.get("error"))
        elif kind == "forkserver-exit":
            if self._stopped.is_set() or (self._proc is not None and id(self._proc) != message.get("proc")):
                return
            # Its children lost the process that reaps them and keeps their logs: stop them. The
            # jobs did nothing wrong; each goes back to the queue for its next attempt.
            reason = f"the fork server died ({self._forkserver_exit()})"
            for run in list(self._running.values()):
                self._kill_orphan(run)
                self._running.pop(run.job_id, None)
                self._finish_lost(run, None, signal.SIGKILL, note=reason, requeue=True)
            if not self._draining.is_set():
                self._start_forkserver()

    def _forkserver_exit(self) -> str:
        """How the fork server ended (its output has closed; it exits, or is made to)."""
        proc = self._proc
        if proc is None:
            return "not started"
        try:
            code = proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        return f"killed by {signal_name(-code)}" if code < 0 else f"exit code {code}"

    def _kill_orphan(self, run: _Running) -> None:
        """SIGKILL a job of the dead fork server, found by the pid it recorded when the server's
        "started" never came."""
        if run.pid is None:
            job = self.store.get(run.job_id)
            if (
                job is not None
                and job.fence == run.fence
                and job.pid
                and job.host == socket.gethostname()
                and is_job_process(job.pid, self.worker_settings.db_url)
            ):
                run.pid = job.pid
        self._signal(run, signal.SIGKILL)

    def _tick(self) -> None:
        now = time.monotonic()
        self._enforce_cancels(now)
        if now - self._last_heartbeat >= self.settings.lease_s / 3:
            self._last_heartbeat = now
            self._heartbeat()
        if now - self._last_sweep >= max(1.0, self.settings.lease_s / 2):
            self._last_sweep = now
            self._requeue()
        if not self._draining.is_set() and self._ready.is_set():
            self._claim()

    def _claim(self) -> None:
        while len(self._running) < self.max_jobs:
            held = {slot for run in self._running.values() for slot in run.slots}
            free = [slot for slot in range(self.slots) if slot not in held]
            job = claim_next(
                self.store, self.worker_id, self.settings.lease_s, free_slots=len(free), host_slots=self.slots
            )
            if job is None:
                return
            run = _Running(job.id, job.fence, tuple(free[: job.procs]), time.monotonic())
            self._running[job.id] = run
            env = {}
            if self.settings.gpus:
                gpus = self.settings.gpus
                # One GPU per rank (rank i takes the i-th visible one), each slot's own.
                env["CUDA_VISIBLE_DEVICES"] = ",".join(dict.fromkeys(gpus[slot % len(gpus)] for slot in run.slots))
            command = {
                "op": "start",
                "job_id": job.id,
                "attempt": job.attempt,
                "worker_id": self.worker_id,
                "env": env,
                "ranks": runs_ranks(job.config),
            }
            try:
                assert self._proc is not None and self._proc.stdin is not None
                self._proc.stdin.write((json.dumps(command) + "\n").encode())
                self._proc.stdin.flush()
            except (OSError, AssertionError):
                self._running.pop(job.id, None)
                self._finish_lost(run, None, None, note="the fork server is not running", requeue=True)
                return

    def _enforce_cancels(self, now: float) -> None:
        if not self._running:
            return
        statuses = self.store.statuses(list(self._running))
        for job_id, run in list(self._running.items()):
            status = statuses.get(job_id)
            if status == JobState.cancelling.value and run.term_sent is None:
                self._signal(run, signal.SIGTERM)
            if run.term_sent is not None and not run.killed and now - run.term_sent >= self.settings.cancel_grace_s:
                self._signal(run, signal.SIGKILL)

    def _heartbeat(self) -> None:
        for job_id, run in list(self._running.items()):
            try:
                renew(self.store, job_id, run.fence, self.settings.lease_s)
            except StaleAttemptError:
                # Someone re-queued or re-claimed it (we were too slow): this copy must not go on.
                self._signal(run, signal.SIGKILL)

    def _requeue(self, all_active: bool = False, worker_id: str | None = None) -> None:
        try:
            done = requeue_expired(self.store, worker_id=worker_id, all_active=all_active)
        except Exception as exc:
            print(f"gradloop pool: re-queueing expired jobs failed: {exc}", file=sys.stderr, flush=True)
            return
        for job_id in done:
            job = self.store.get(job_id)
            if job is not None and job.terminal:
                self._ended_here(job)

    def _ended_here(self, job: JobRecord) -> None:
        """A job ended without its process recording it (lost, crashed, cancelled while lost):
        close its MLflow run, which nobody else will (off this thread: MLflow is slow to load)."""
        status = "KILLED" if job.status == JobState.cancelled.value else "FAILED"
        threading.Thread(
            target=close_job_runs, args=(job, self.worker_settings, status), name="gradloop-close-run", daemon=True
        ).start()

    # -- signals and outcomes -----------------------------------------------------------
    def _signal(self, run: _Running, sig: int, force: bool = False) -> None:
        if sig == signal.SIGTERM and run.term_sent is not None and not force:
            return
        if sig == signal.SIGTERM and run.term_sent is None:
            run.term_sent = time.monotonic()
        if sig == signal.SIGKILL:
            run.killed = True
        if run.pid is None:
            return  # sent when the fork server reports the pid
        try:
            os.killpg(run.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def _finish_lost(
        self, run: _Running, code: int | None, sig: int | None, *, note: str | None = None, requeue: bool = False
    ) -> None:
        """The job's process is gone; if it did not record an outcome, record one for it.

        `requeue`: it was stopped for a reason of the service's (a stop, its fork server's
        death), so the attempt counts as lost and the job goes back to the queue, unless that
        was its last attempt. Otherwise (a crash of its own) it fails."""
        job = self.store.get(run.job_id)
        if job is None:
            return
        if job.status in (JobState.running.value, JobState.cancelling.value) and job.fence == run.fence:
            reason = note or exit_reason(code, sig)
            lost = requeue or self._draining.is_set()
            attempt = f"attempt {job.lost_attempts + 1} of {job.max_attempts} was lost: {reason}"
            if job.status == JobState.cancelling.value:
                status, kind, message = JobState.cancelled.value, "Cancelled", reason
            elif lost and job.lost_attempts + 1 < job.max_attempts:
                status, kind, message = JobState.queued.value, "WorkerLost", f"re-queued: {attempt}"
            elif lost:
                status, kind, message = JobState.failed.value, "WorkerLost", attempt
            else:
                status, kind, message = JobState.failed.value, "WorkerExited", reason
            error = {
                "type": kind,
                "message": message,
                "step": (job.progress or {}).get("step"),
                "exit_code": code,
                "signal": sig,
                "log_tail": log_tail(log_path(self.worker_settings.jobs_dir, run.job_id)),
            }
            try:
                job = self.store.finish(run.job_id, run.fence, status, error=error, lost=lost)
            except StaleAttemptError:
                job = self.store.get(run.job_id) or job
            else:
                if job.terminal:
                    self._ended_here(job)
        if self.on_job_end is not None and job.terminal:
            try:
                self.on_job_end(job)
            except Exception:
                pass

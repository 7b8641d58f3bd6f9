"""Helpers for the durability tests: crashing a `gradloop serve` process tree for real, a fresh
PostgreSQL schema per test, and counting how often each job ran to completion from what the
job left behind (its event log, its log file, its MLflow runs) rather than from its status."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

from tests.support.api_service import Service, iris_config
from tests.support.postgres import drop_pg_schema, fresh_pg_schema  # noqa: F401  (re-exported for the durability tests)


def slow_iris(name: str, steps: int) -> dict[str, Any]:
    """Iris for `steps` optimizer steps (8 per epoch) with a checkpoint every 20: long enough
    to be killed mid-run, and every resume is visible in the step it restarts from."""
    config = iris_config(name, epochs=-(-steps // 8), max_steps=steps, checkpoint_every_steps=20, keep_checkpoints=3)
    config["tracking"]["experiment"] = "durability"
    return config


# -- processes --------------------------------------------------------------------------


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def descendants(pid: int) -> list[int]:
    tree, found, todo = _children(), [], [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def crash_host(service: Service) -> list[int]:
    """What a host dying looks like: the service, its fork server and every job process stop
    at the same instant (frozen first, so nothing forks or writes in between), then vanish."""
    procs = [service.proc.pid, *descendants(service.proc.pid)]
    for pid in procs:
        _send(pid, signal.SIGSTOP)
    for pid in procs:
        _send(pid, signal.SIGKILL)
    service.proc.wait(timeout=10)
    release(service)
    return procs


def crash_service_only(service: Service) -> None:
    """kill -9 of the service process alone: its fork server and job processes are orphaned."""
    service.proc.kill()
    service.proc.wait(timeout=10)
    release(service)


def release(service: Service) -> None:
    """Close the test's side of a service whose process is gone."""
    service.http.close()
    service._log.close()


def freeze(pids: list[int]) -> None:
    for pid in pids:
        _send(pid, signal.SIGSTOP)


def thaw(pids: list[int]) -> None:
    for pid in pids:
        _send(pid, signal.SIGCONT)


def _send(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def wait_until(predicate: Any, timeout: float, what: str, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


# -- what a job left behind -------------------------------------------------------------


def sqlite_job_row(state_dir: Path, job_id: str) -> dict[str, Any]:
    with sqlite3.connect(state_dir / "jobs.db") as db:
        db.row_factory = sqlite3.Row
        return dict(db.execute("SELECT * FROM gradloop_jobs WHERE id = ?", (job_id,)).fetchone())


def completions(service: Service, job_id: str, jobs_dir: Path) -> dict[str, int]:
    """How many times the job reached its end, counted three independent ways."""
    events = service.http.get(f"/v1/jobs/{job_id}/events").text
    log = (jobs_dir / job_id / "job.log").read_text()
    return {
        "succeeded_events": events.count('"status": "succeeded"'),
        "succeeded_log_lines": log.count(f"gradloop: job {job_id} succeeded"),
        "attempts_started": len(re.findall(rf"gradloop: job {job_id} attempt \d+ starting", log)),
    }


def mlflow_runs(tracking_uri: str, job_id: str) -> list[Any]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name("durability")
    if experiment is None:
        return []
    return client.search_runs([experiment.experiment_id], filter_string=f"tags.`gradloop.job_id` = '{job_id}'")

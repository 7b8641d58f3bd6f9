"""`gradloop serve --workers 2`: two API processes on one port, one job pool between them.

A real uvicorn supervisor with its worker processes; jobs are real training runs."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import httpx
import psutil
import pytest

from gradloop.jobs.engine import sqlite_url
from gradloop.jobs.store import JobStore
from tests.support.api_service import Service, iris_config

pytestmark = [pytest.mark.server, pytest.mark.timeout(240)]


def _workers(svc: Service) -> list[psutil.Process]:
    """uvicorn's worker processes: the supervisor's children started by multiprocessing."""
    return [p for p in psutil.Process(svc.proc.pid).children() if "spawn_main" in " ".join(p.cmdline())]


def _pool_holder(svc: Service, timeout: float = 60) -> psutil.Process:
    """The one worker whose descendants include a fork server (it runs the job pool)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        holders = [
            w
            for w in _workers(svc)
            if any("gradloop.jobs.forkserver" in " ".join(c.cmdline()) for c in w.children(recursive=True))
        ]
        if len(holders) == 1 and len(_workers(svc)) == 2:
            return holders[0]
        assert len(holders) <= 1, "two processes of one service run a job pool"
        time.sleep(0.2)
    raise AssertionError(f"no single pool holder among {[w.pid for w in _workers(svc)]}")


def _run_jobs(svc: Service, n: int, tag: str) -> None:
    ids = []
    for i in range(n):
        # A fresh connection per submit, so the kernel hands them to either process.
        with httpx.Client(base_url=svc.url, timeout=30) as http:
            response = http.post("/v1/jobs", json=iris_config(f"{tag}-{i}", tracking=False))
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])
    for job_id in ids:
        assert svc.wait_for(job_id)["status"] == "succeeded"


def _accepted_submits(exposition: str) -> float:
    found = re.findall(r"^gradloop_http_requests_total\{([^}]*)\} ([0-9.e+]+)$", exposition, re.M)
    return sum(
        float(v)
        for labels, v in found
        if 'method="POST"' in labels and 'route="/v1/jobs"' in labels and 'status="202"' in labels
    )


def test_two_api_processes_share_one_job_pool_and_survive_its_death(tmp_path: Path) -> None:
    svc = Service(tmp_path, extra_args=["--workers", "2", "--max-concurrent", "1"]).wait_ready()
    try:
        holder = _pool_holder(svc)
        assert (svc.state_dir / "pool.lock").read_text() == str(holder.pid)
        # Ready once the pool's fork server is up (until then its process answers 503); the
        # other process reports the workers as in another process.
        readiness: list[tuple[int, str]] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (len(readiness) < 12 or any(code != 200 for code, _ in readiness[-12:])):
            with httpx.Client(base_url=svc.url, timeout=30) as http:
                response = http.get("/readyz")
            readiness.append((response.status_code, response.json().get("workers") or response.json().get("detail")))
            time.sleep(0.1)
        assert all(code == 200 for code, _ in readiness[-12:]), readiness[-12:]
        assert {workers for _, workers in readiness[-12:]} <= {"ok", "in another process"}

        _run_jobs(svc, 4, "before")  # queued by either process, run by the pool
        # Whichever process answers /metrics, it counts the submits that both answered.
        seen = set()
        for _ in range(8):
            with httpx.Client(base_url=svc.url, timeout=30) as http:
                seen.add(_accepted_submits(http.get("/metrics").text))
        assert seen == {4.0}

        # The pool's process dies: uvicorn replaces it and the replacement takes the lock.
        os.kill(holder.pid, signal.SIGKILL)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                replacement = _pool_holder(svc, timeout=1)
                if replacement.pid != holder.pid:
                    break
            except (AssertionError, psutil.NoSuchProcess):
                pass
            time.sleep(0.3)
        else:
            raise AssertionError("no process took over the job pool after its holder was killed")
        _run_jobs(svc, 2, "after")
        # A long job still training when the service is told to stop: drained back to the queue.
        long_job = svc.submit(iris_config("long", epochs=5_000, tracking=False)).json()["id"]
        svc.wait_for(long_job, {"running"}, step_at_least=1)
        tree = [svc.proc.pid] + [p.pid for p in psutil.Process(svc.proc.pid).children(recursive=True)]
    finally:
        svc.stop()
    assert svc.proc.returncode is not None
    store = JobStore(sqlite_url(svc.state_dir))
    try:
        assert store.get(long_job).status == "queued"
    finally:
        store.close()
    time.sleep(1)
    left = [pid for pid in tree if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    assert not left, f"processes outlived the service: {left}"

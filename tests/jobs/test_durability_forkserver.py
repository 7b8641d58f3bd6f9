"""The fork server of a real `gradloop serve`: killed with SIGKILL while a job runs, its job goes
back to the queue as a lost attempt, resumes from its checkpoint and succeeds; a job that loses
its last attempt that way fails with the reason. And the job database's URL, password included,
is on no command line of the service's process tree (every local user can read those)."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from sqlalchemy import create_engine, text

from gradloop.jobs.forkserver import is_job_process
from tests.support.api_service import TERMINAL, Service
from tests.support.durability import (
    alive,
    drop_pg_schema,
    fresh_pg_schema,
    slow_iris,
    sqlite_job_row,
    wait_until,
)

pytestmark = [pytest.mark.server, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    svc = Service(
        tmp_path_factory.mktemp("svc"),
        extra_args=["--max-concurrent", "1", "--cancel-grace", "15", "--max-attempts", "2"],
    )
    try:
        yield svc.wait_ready()
    finally:
        svc.stop()


def forkserver_pid(service: Service) -> int | None:
    for child in psutil.Process(service.proc.pid).children():
        try:
            if "gradloop.jobs.forkserver" in " ".join(child.cmdline()):
                return child.pid
        except psutil.NoSuchProcess:
            continue
    return None


def _holding(service: Service, job_id: str, attempt: int) -> dict:
    """The job's row once attempt `attempt` runs in its process and the job has a checkpoint
    (every 20 steps)."""

    def holding() -> dict | None:
        job = service.job(job_id)
        assert job["status"] not in TERMINAL, job
        row = sqlite_job_row(service.state_dir, job_id)
        step = (job["progress"] or {}).get("step") or 0
        ready = job["status"] == "running" and row["attempt"] == attempt and row["pid"] and step >= 24
        return row if ready else None

    return wait_until(holding, 120, f"attempt {attempt} to run past a checkpoint")


def _kill_forkserver(service: Service, job_pid: int) -> None:
    server = wait_until(lambda: forkserver_pid(service), 30, "the fork server")
    assert job_pid in [c.pid for c in psutil.Process(server).children()]
    os.kill(server, signal.SIGKILL)


def _state_events(service: Service, job_id: str) -> list[dict]:
    with service.http.stream("GET", f"/v1/jobs/{job_id}/events", timeout=120) as response:
        lines = [line for line in response.iter_lines() if line.startswith("data:")]
    events = [json.loads(line[len("data:") :]) for line in lines]
    return [e for e in events if "status" in e]


def test_killed_fork_server_requeues_its_job_which_resumes_and_succeeds(service: Service) -> None:
    # The job writes to its log on every step, also while its fork server (the log's reader)
    # is gone and the service has yet to stop it.
    config = slow_iris("forkserver-dies", 160)
    config["loss"] = {"name": "noisy_loss", "options": {"bytes_per_call": 200}}
    job_id = service.submit(config).json()["id"]
    old_pid = _holding(service, job_id, attempt=1)["pid"]
    _kill_forkserver(service, old_pid)

    done = service.wait_for(job_id, timeout=180)
    assert done["status"] == "succeeded", service.log(job_id)
    assert done["attempt"] == 2 and done["error"] is None
    assert done["progress"]["step"] == done["progress"]["total_steps"] == 160
    assert not alive(old_pid)  # the first attempt's process was stopped, not left running
    row = sqlite_job_row(service.state_dir, job_id)
    assert row["lost_attempts"] == 1
    states = _state_events(service, job_id)
    requeued = next(e for e in states if e["status"] == "queued" and e.get("error"))
    assert requeued["error"]["type"] == "WorkerLost"
    assert requeued["error"]["message"].startswith("re-queued: attempt 1 of 2 was lost: the fork server died")
    assert "SIGKILL" in requeued["error"]["message"]
    assert [e["status"] for e in states if e["status"] in ("running", "succeeded")] == [
        "running",
        "running",
        "succeeded",
    ]
    assert "resumes from" in service.log(job_id)


def test_a_job_whose_last_attempt_dies_with_its_fork_server_fails_with_the_reason(service: Service) -> None:
    job_id = service.submit(slow_iris("forkserver-dies-twice", 400)).json()["id"]
    for attempt in (1, 2):
        _kill_forkserver(service, _holding(service, job_id, attempt)["pid"])

    failed = service.wait_for(job_id, timeout=60)
    assert failed["status"] == "failed" and failed["attempt"] == 2
    assert failed["error"]["type"] == "WorkerLost"
    assert failed["error"]["message"].startswith("attempt 2 of 2 was lost: the fork server died (killed by SIGKILL)")
    # The service is whole again: a new fork server runs the next job.
    after = service.submit(slow_iris("after", 8)).json()["id"]
    assert service.wait_for(after, timeout=120)["status"] == "succeeded"


def _pg_row(db: str, job_id: str) -> dict:
    engine = create_engine(db)
    try:
        with engine.connect() as conn:
            query = text("SELECT * FROM gradloop_jobs WHERE id = :id")
            return dict(conn.execute(query, {"id": job_id}).mappings().one())
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_the_database_password_is_on_no_command_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db, schema = fresh_pg_schema()
    secret = "s3cret-pw-4711"
    db_with_password = db.replace("postgres@", f"postgres:{secret}@", 1)  # (trust auth ignores it)
    assert secret in db_with_password
    monkeypatch.setenv("GRADLOOP_DB", db_with_password)  # the service reads its URL from there
    service = Service(tmp_path, extra_args=["--max-concurrent", "1"])
    try:
        service.wait_ready()
        job_id = service.submit(slow_iris("secret", 400)).json()["id"]
        service.wait_for(job_id, {"running"}, timeout=120, step_at_least=2)
        job_pid = _pg_row(db, job_id)["pid"]
        server = forkserver_pid(service)
        assert server is not None and job_pid in [c.pid for c in psutil.Process(server).children()]
        for pid in (service.proc.pid, server, job_pid):
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            assert secret.encode() not in cmdline and b"postgresql" not in cmdline, cmdline
        for pid in (server, job_pid):  # nor in what the fork server and the job inherit
            assert secret.encode() not in Path(f"/proc/{pid}/environ").read_bytes()
        # The job's process is still recognised as this database's, and only by that database.
        assert is_job_process(job_pid, db_with_password)
        assert not is_job_process(job_pid, db.replace("/test?", "/other?"))
        assert not is_job_process(service.proc.pid, db_with_password)
        service.http.post(f"/v1/jobs/{job_id}/cancel")
        assert service.wait_for(job_id, timeout=60)["status"] == "cancelled"
    finally:
        service.stop()
        drop_pg_schema(schema)

"""One `gradloop serve` on SQLite, stopped the three ways a service stops: SIGTERM (drain: 503 on
submit, jobs checkpoint and wait in the queue), kill -9 of the service alone (its job processes
are orphaned) and a whole-host crash (everything killed at once). After each restart on the same
state directory every job must end succeeded exactly once with its full step count, resumed from
its checkpoint into the same MLflow run, which ends FINISHED."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.api_service import Service
from tests.support.durability import (
    alive,
    completions,
    crash_host,
    crash_service_only,
    mlflow_runs,
    release,
    slow_iris,
    sqlite_job_row,
    wait_until,
)

pytestmark = [pytest.mark.server, pytest.mark.timeout(600)]  # three service starts and two long jobs

GRACE_S = 15
ARGS = ["--max-concurrent", "1", "--cancel-grace", str(GRACE_S)]
# Jobs that are stopped mid-run: long enough to still be running once their MLflow run exists.
LONG_STEPS = 800


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[[], Service]]:
    """Starts a service on the test's state directory; any still running at the end is stopped
    (a failed test must not leave a service behind to run jobs in the next test's directories)."""
    started: list[Service] = []

    def start_one() -> Service:
        service = Service(tmp_path, extra_args=ARGS)
        started.append(service)
        return service.wait_ready()

    yield start_one
    for service in started:
        if service.proc.poll() is None:
            service.stop()


def _running_past_checkpoint(service: Service, job_id: str, step: int = 40) -> dict:
    """The job trains past a checkpoint and its MLflow run exists. (The run is created by the
    job's store process, which imports MLflow: on a busy machine that takes longer than 40 steps
    of iris. A job crashed before then has no run to resume into, and these tests are about
    resuming into one.)"""
    service.wait_for(job_id, {"running"}, timeout=90, step_at_least=step)

    def with_run() -> dict | None:
        job = service.job(job_id)
        assert job["status"] == "running", f"the job ended before its MLflow run was created: {job}"
        return job if job["mlflow"]["run_id"] else None

    return wait_until(with_run, 240, "the job's MLflow run to exist")  # (tens of seconds on a busy machine)


def _check_done_once(service: Service, job_id: str, steps: int, *, resumed: bool) -> dict:
    job = service.wait_for(job_id, timeout=120)
    assert job["status"] == "succeeded", service.log(job_id)
    assert job["progress"]["step"] == job["progress"]["total_steps"] == steps
    counts = completions(service, job_id, service.state_dir / "jobs")
    assert counts["succeeded_events"] == 1 and counts["succeeded_log_lines"] == 1, counts
    runs = mlflow_runs(service.tracking_uri, job_id)
    # one MLflow run per job: a resumed attempt continues the run of the checkpoint
    assert [r.info.status for r in runs] == ["FINISHED"], [(r.info.run_id, r.info.status) for r in runs]
    assert runs[0].info.run_id == job["mlflow"]["run_id"]
    assert ("gradloop.resumed_from_step" in runs[0].data.tags) == resumed
    if resumed:
        assert int(runs[0].data.tags["gradloop.resumed_from_step"]) >= 20
        assert "resumes from" in service.log(job_id)
    return job


def test_sigterm_drains_with_503_and_jobs_resume_after_restart(start: Callable[[], Service]) -> None:
    service = start()
    long = service.submit(slow_iris("drained", LONG_STEPS)).json()
    waiting = service.submit(slow_iris("waiting", 24)).json()
    _running_past_checkpoint(service, long["id"])

    service.proc.send_signal(signal.SIGTERM)
    refused = service.submit(slow_iris("too-late", 8))
    assert refused.status_code == 503 and refused.headers["content-type"].startswith("application/problem+json")
    assert refused.headers["retry-after"] == "5"
    assert service.http.get(f"/v1/jobs/{long['id']}").status_code == 200  # reads still answer while draining
    try:
        service.proc.wait(timeout=GRACE_S + 10)  # the grace period, plus uvicorn's 5 s for open connections
    except subprocess.TimeoutExpired:
        pytest.fail(f"the service did not exit within its grace period:\n{service.log_file.read_text()[-3000:]}")
    release(service)

    row = sqlite_job_row(service.state_dir, long["id"])
    assert row["status"] == "queued" and row["attempt"] == 1 and row["lost_attempts"] == 0  # a drain uses no attempt up
    assert row["checkpoint_path"] and Path(row["checkpoint_path"]).exists()
    assert '"Interrupted"' in row["error"]
    assert sqlite_job_row(service.state_dir, waiting["id"])["status"] == "queued"  # never started, still waits
    assert [r.info.status for r in mlflow_runs(service.tracking_uri, long["id"])] == ["KILLED"]

    again = start()
    done = _check_done_once(again, long["id"], LONG_STEPS, resumed=True)
    assert done["attempt"] == 2 and done["error"] is None
    _check_done_once(again, waiting["id"], 24, resumed=False)


def test_kill9_of_the_service_then_of_the_host_loses_and_repeats_nothing(start: Callable[[], Service]) -> None:
    service = start()
    expected = {"first": LONG_STEPS, "second": LONG_STEPS, "third": 40}
    jobs = {name: service.submit(slow_iris(name, steps)).json()["id"] for name, steps in expected.items()}
    _running_past_checkpoint(service, jobs["first"])

    # 1. kill -9 of the service alone: the job's process outlives it, is told by its fork
    #    server to checkpoint and stop, and must be gone before the next attempt starts.
    orphan = sqlite_job_row(service.state_dir, jobs["first"])["pid"]
    crash_service_only(service)
    second_life = start()
    assert not alive(orphan)
    first = second_life.wait_for(jobs["first"], timeout=120)
    assert first["status"] == "succeeded" and first["attempt"] == 2

    # 2. the host dies: service, fork server and the job's process in one instant.
    _running_past_checkpoint(second_life, jobs["second"])
    killed = crash_host(second_life)
    wait_until(lambda: not any(alive(pid) for pid in killed), 10, "the killed processes to be gone")
    running = sqlite_job_row(second_life.state_dir, jobs["second"])
    assert running["status"] == "running"  # nobody was left to record anything

    third_life = start()
    second = _check_done_once(third_life, jobs["second"], expected["second"], resumed=True)
    assert second["attempt"] == 2
    assert sqlite_job_row(third_life.state_dir, jobs["second"])["lost_attempts"] == 1
    _check_done_once(third_life, jobs["first"], expected["first"], resumed=True)
    _check_done_once(third_life, jobs["third"], expected["third"], resumed=False)
    listed = third_life.http.get("/v1/jobs", params={"limit": 200}).json()["jobs"]
    assert sorted(j["id"] for j in listed) == sorted(jobs.values())  # none lost, none added
    assert {j["status"] for j in listed} == {"succeeded"}

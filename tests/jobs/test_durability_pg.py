"""Two `gradloop serve` processes sharing one queue on the real PostgreSQL (a fresh schema per
test), one jobs directory (the "shared volume") and one MLflow store: twenty jobs each run to
completion exactly once while one host crashes; a job whose worker froze past its lease is taken
over, the frozen attempt is fenced off when it wakes, and a job that keeps losing its workers
fails after max_attempts with the reason.

Run with -s to see the measured time for a dead worker's job to resume elsewhere."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.support.api_service import Service
from tests.support.durability import (
    alive,
    completions,
    crash_host,
    descendants,
    drop_pg_schema,
    freeze,
    fresh_pg_schema,
    mlflow_runs,
    slow_iris,
    thaw,
    wait_until,
)
from tests.support.empty_store import put_empty_store

# A job's MLflow run can take tens of seconds to appear when other tests load the machine.
WAIT_FOR_RUN_S = 240

pytestmark = [pytest.mark.postgres, pytest.mark.server, pytest.mark.timeout(480)]

LEASE_S = 3


class Cluster:
    """Services on one database, jobs dir, data root and MLflow store, each with its own state dir."""

    def __init__(self, base: Path, db: str):
        self.base, self.db = base, db
        self.jobs_dir = base / "shared-jobs"
        self.data_root = base / "shared-data"
        self.data_root.mkdir(parents=True, exist_ok=True)
        self.tracking_uri = f"sqlite:///{put_empty_store(base / 'mlflow.db')}"
        self.services: dict[str, Service] = {}

    def start(self, name: str, *, max_concurrent: int = 1, max_attempts: int = 3) -> Service:
        args = [
            "--db",
            self.db,
            "--jobs-dir",
            str(self.jobs_dir),
            # One data root for all: a job submitted to one service runs on any, and each checks
            # the job's data.root against its own root before it runs the job.
            "--data-root",
            str(self.data_root),
            "--tracking-uri",
            self.tracking_uri,
            "--worker-id",
            name,
            "--lease",
            str(LEASE_S),
            "--max-concurrent",
            str(max_concurrent),
            "--max-attempts",
            str(max_attempts),
            "--cancel-grace",
            "10",
        ]
        service = Service(self.base / name, extra_args=args)
        service.tracking_uri = self.tracking_uri
        self.services[name] = service
        return service

    def row(self, job_id: str) -> dict:
        engine = create_engine(self.db)
        try:
            with engine.connect() as conn:
                return dict(
                    conn.execute(text("SELECT * FROM gradloop_jobs WHERE id = :id"), {"id": job_id}).mappings().one()
                )
        finally:
            engine.dispose()

    def events(self, job_id: str) -> list[dict]:
        engine = create_engine(self.db)
        try:
            with engine.connect() as conn:
                rows = (
                    conn.execute(
                        text("SELECT seq, ts, type, data FROM gradloop_job_events WHERE job_id = :id ORDER BY seq"),
                        {"id": job_id},
                    )
                    .mappings()
                    .all()
                )
        finally:
            engine.dispose()
        return [{**r, "data": r["data"] if isinstance(r["data"], dict) else json.loads(r["data"])} for r in rows]

    def stop(self) -> None:
        for service in self.services.values():
            if service.proc.poll() is None:
                service.stop()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    db, schema = fresh_pg_schema()
    group = Cluster(tmp_path, db)
    try:
        yield group
    finally:
        group.stop()
        drop_pg_schema(schema)


def _holding(
    cluster: Cluster, job_id: str, worker: str | None = None, *, attempt: int | None = None, step: int = 40
) -> dict | None:
    row = cluster.row(job_id)
    assert row["status"] not in ("succeeded", "failed", "cancelled"), (
        f"job {job_id} ended before the test could interrupt it: {row}"
    )
    progress = row["progress"] or {}
    if row["status"] != "running" or (progress.get("step") or 0) < step:
        return None
    if not row["mlflow_run_id"]:
        # Its MLflow run is created by the job's store process, which imports MLflow: on a busy
        # machine that takes longer than 40 steps. These tests crash a job to see it resume into
        # its run, so the run must exist first.
        return None
    if worker is not None and row["worker_id"] != worker:
        return None
    if attempt is not None and row["attempt"] != attempt:
        return None
    return row


@pytest.mark.timeout(720)  # twenty jobs, each with its MLflow run, on a machine other tests may share
def test_twenty_jobs_on_two_services_run_once_while_one_host_dies(cluster: Cluster) -> None:
    a, b = cluster.start("svc-a", max_concurrent=2), cluster.start("svc-b", max_concurrent=2)
    a.wait_ready(), b.wait_ready()
    # Two long jobs first, so that a crash comes mid-job; then eighteen short ones, submitted
    # to both services in turn.
    specs = [("long-0", 800), ("long-1", 800)] + [(f"short-{i}", 24) for i in range(18)]
    ids: dict[str, int] = {}
    for i, (name, steps) in enumerate(specs):
        answer = (a if i % 2 else b).submit(slow_iris(name, steps), headers={"Idempotency-Key": f"job-{i}"})
        assert answer.status_code == 202, answer.text
        ids[answer.json()["id"]] = steps
    longs = list(ids)[:2]
    row = wait_until(
        lambda: next((r for j in longs if (r := _holding(cluster, j))), None),
        WAIT_FOR_RUN_S,
        "a long job to train past a checkpoint",
    )
    victim, dead_name = row["id"], row["worker_id"]
    dead, survivor = (a, b) if dead_name == "svc-a" else (b, a)
    survivor_name = "svc-b" if dead is a else "svc-a"
    killed_at = time.time()
    crash_host(dead)
    taken = wait_until(
        lambda: _holding(cluster, victim, survivor_name, attempt=2, step=1),
        60,
        "the survivor to take the job over",
        every=0.02,
    )
    assert taken["lost_attempts"] == 1
    b = survivor

    for job_id, steps in ids.items():
        job = b.wait_for(job_id, timeout=150)
        assert job["status"] == "succeeded", b.log(job_id)
        assert job["progress"]["step"] == steps
        counts = completions(b, job_id, cluster.jobs_dir)
        # (a crash can fall between committing the outcome and printing it to the log)
        assert counts["succeeded_events"] == 1 and counts["succeeded_log_lines"] <= 1, (job_id, counts)
        runs = mlflow_runs(cluster.tracking_uri, job_id)
        statuses = sorted(r.info.status for r in runs)
        # One FINISHED run per job. A job that the dead host was running before its first
        # checkpoint starts over in a new run; the lost attempt's run is closed as KILLED,
        # never left RUNNING.
        assert statuses.count("FINISHED") == 1 and set(statuses) <= {"FINISHED", "KILLED"}, (
            job_id,
            [(r.info.run_id, r.info.status) for r in runs],
        )
        if job_id == victim:
            assert statuses == ["FINISHED"]  # resumed from its checkpoint into the same run
    listed = b.http.get("/v1/jobs", params={"limit": 200}).json()["jobs"]
    assert sorted(j["id"] for j in listed) == sorted(ids)  # twenty recorded, none lost or added

    # The job taken over resumed from its checkpoint, into the same MLflow run, as attempt 2.
    events = cluster.events(victim)
    claims = [e for e in events if e["type"] == "state" and e["data"].get("status") == "running"]
    assert [(c["data"]["attempt"], c["data"]["worker"]) for c in claims] == [(1, dead_name), (2, survivor_name)]
    after = [e for e in events if e["type"] == "progress" and e["ts"] >= claims[1]["ts"]]
    start_step = after[0]["data"]["step"]  # the observer's start event: the step it resumes from
    assert start_step >= 20 and start_step % 20 == 0  # a checkpoint's step (every 20)
    resumed_at = next(e for e in after if e["data"]["step"] > start_step)
    assert resumed_at["data"]["step"] == start_step + 1
    assert "resumes from" in b.log(victim)
    run = mlflow_runs(cluster.tracking_uri, victim)[0]
    assert int(run.data.tags["gradloop.resumed_from_step"]) == start_step
    requeued = next(
        e for e in events if e["type"] == "state" and e["data"].get("status") == "queued" and e["ts"] > killed_at
    )
    print(
        f"\n[durability] dead worker's job re-queued {requeued['ts'] - killed_at:.2f} s after kill -9, "
        f"re-claimed elsewhere {claims[1]['ts'] - killed_at:.2f} s after kill -9 "
        f"(lease {LEASE_S} s), first resumed step after {resumed_at['ts'] - killed_at:.2f} s; "
        f"jobs lost 0, duplicated 0 of {len(ids)}"
    )


def test_late_heartbeat_is_fenced_and_lost_attempts_end_in_failure(cluster: Cluster) -> None:
    a = cluster.start("svc-a", max_attempts=2)
    b = cluster.start("svc-b", max_attempts=2)
    a.wait_ready(), b.wait_ready()
    job_id = a.submit(slow_iris("frozen", 800)).json()["id"]
    first = wait_until(lambda: _holding(cluster, job_id), WAIT_FOR_RUN_S, "the job to train past a checkpoint")
    holder, other = (a, b) if first["worker_id"] == "svc-a" else (b, a)
    other_name = "svc-b" if holder is a else "svc-a"

    # The holder freezes (a stalled VM, a partition): its heartbeats stop, its job stops writing.
    frozen = [holder.proc.pid, *descendants(holder.proc.pid)]
    old_pid = first["pid"]
    assert old_pid in frozen
    freeze(frozen)
    try:
        second = wait_until(
            lambda: _holding(cluster, job_id, other_name, attempt=2, step=first["progress"]["step"] + 1),
            60,
            "the other service to take over",
        )
    finally:
        thaw(frozen)
    # Woken up, the old attempt's next write is refused: it exits without writing again.
    wait_until(lambda: not alive(old_pid), 30, "the fenced attempt's process to exit")
    row = cluster.row(job_id)
    assert row["attempt"] == 2 and row["worker_id"] == other_name and row["lost_attempts"] == 1
    assert (row["progress"] or {}).get("step", 0) >= second["progress"]["step"]  # never moved backwards by the old one

    # Now the second worker's host dies too: with max_attempts 2 the job fails, with the reason.
    wait_until(
        lambda: _holding(cluster, job_id, other_name, step=second["progress"]["step"] + 1),
        60,
        "the new attempt to go on",
    )
    crash_host(other)
    failed = holder.wait_for(job_id, timeout=60)
    assert failed["status"] == "failed" and failed["attempt"] == 2
    assert failed["error"]["type"] == "WorkerLost"
    assert "attempt 2 of 2 was lost: its worker stopped sending heartbeats" in failed["error"]["message"]
    counts = completions(holder, job_id, cluster.jobs_dir)
    assert counts["succeeded_events"] == 0 and counts["succeeded_log_lines"] == 0 and counts["attempts_started"] == 2
    # Its MLflow run (continued by attempt 2) is closed by the service that failed the job.
    statuses = wait_until(
        lambda: (s := [r.info.status for r in mlflow_runs(cluster.tracking_uri, job_id)]) and "RUNNING" not in s and s,
        30,
        "the job's MLflow run to be closed",
    )
    assert statuses == ["FAILED"]

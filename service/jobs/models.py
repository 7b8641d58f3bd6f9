"""The job store's tables: one row per job, and an append-only event log per job.

Timestamps are float seconds since the epoch (UTC): portable between SQLite and PostgreSQL and
cheap to compare in lease arithmetic; the API renders them as ISO 8601.

Fencing (issue 5): `attempt` counts claims. Every write a worker makes names the attempt and
the worker id it holds; once the job is re-queued or claimed again, those no longer match and the
write is refused, so a worker whose lease ran out cannot overwrite its successor.
`lost_attempts` counts only the attempts whose worker vanished (a crash, a dead host, a killed
service): those are what `max_attempts` limits. A job drained by a graceful stop goes back to the
queue without using one up. `host` is where the current attempt runs, so that a service restarting
on that host can find the attempt's process if it outlived its service. `procs` is how many
processes the job starts (its ranks, or 1): what it takes of a host's slots when claimed.
"""

from __future__ import annotations

from enum import Enum

from sqlalchemy import JSON, Column, Float, ForeignKey, Index, Integer, MetaData, String, Table, Text

metadata = MetaData()


class JobState(str, Enum):
    queued = "queued"
    running = "running"
    cancelling = "cancelling"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


TERMINAL_STATES = frozenset({JobState.succeeded.value, JobState.failed.value, JobState.cancelled.value})
ACTIVE_STATES = frozenset({JobState.running.value, JobState.cancelling.value})

jobs = Table(
    "gradloop_jobs",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("status", String(16), nullable=False),
    Column("priority", Integer, nullable=False, default=0),
    Column("name", String(100), nullable=False),
    Column("device", String(16), nullable=False),
    Column("config", JSON, nullable=False),
    Column("request_hash", String(64), nullable=False),
    Column("idempotency_key", String(200), nullable=True, unique=True),
    Column("attempt", Integer, nullable=False, default=0),
    Column("max_attempts", Integer, nullable=False, default=3),
    Column("lost_attempts", Integer, nullable=False, default=0),
    Column("procs", Integer, nullable=False, default=1),
    Column("created_at", Float, nullable=False),
    Column("started_at", Float),
    Column("finished_at", Float),
    Column("cancel_requested_at", Float),
    # lease: who runs it and until when, renewed by heartbeat
    Column("worker_id", String(200)),
    Column("pid", Integer),
    Column("host", String(255)),
    Column("heartbeat_at", Float),
    Column("lease_expires_at", Float),
    # what the running job reports
    Column("progress", JSON),
    Column("metrics", JSON),
    Column("error", JSON),
    Column("mlflow_experiment_id", String(64)),
    Column("mlflow_run_id", String(64)),
    Column("run_dir", Text),
    Column("checkpoint_path", Text),
    Column("log_path", Text),
    # last event sequence number handed out for this job (events are numbered 1, 2, ... per job)
    Column("event_seq", Integer, nullable=False, default=0),
    Index("ix_gradloop_jobs_queue", "status", "priority", "created_at"),
    Index("ix_gradloop_jobs_created", "created_at", "id"),
)

job_events = Table(
    "gradloop_job_events",
    metadata,
    Column("job_id", String(36), ForeignKey("gradloop_jobs.id", ondelete="CASCADE"), primary_key=True),
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("ts", Float, nullable=False),
    Column("type", String(32), nullable=False),
    Column("data", JSON, nullable=False),
)

"""What the job store hands out and refuses with: job records, events, fences, cursors and errors."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from gradloop.errors import GradloopError
from gradloop.jobs.models import TERMINAL_STATES


class JobNotFoundError(GradloopError, LookupError):
    """No job has this id."""

    def __init__(self, job_id: str):
        super().__init__(f"no job has id {job_id!r}; list jobs with GET /v1/jobs")

    def __str__(self) -> str:
        return self.args[0]


class JobConflictError(GradloopError):
    """The job's state does not allow this (e.g. cancelling a finished job)."""


class IdempotencyConflictError(GradloopError, ValueError):
    """An Idempotency-Key was used before with a different request body."""


class StaleAttemptError(Exception):
    """A worker wrote for an attempt it no longer holds (the job was re-queued or re-claimed)."""


@dataclass(frozen=True)
class Fence:
    """What a worker holds while it runs a job: the claim's attempt number and its own id."""

    attempt: int
    worker_id: str


class JobRecord(BaseModel):
    """One job as stored."""

    id: str
    status: str
    priority: int
    name: str
    device: str
    config: dict[str, Any]
    request_hash: str
    idempotency_key: str | None = None
    attempt: int
    max_attempts: int
    lost_attempts: int = 0
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    cancel_requested_at: float | None = None
    worker_id: str | None = None
    pid: int | None = None
    host: str | None = None
    heartbeat_at: float | None = None
    lease_expires_at: float | None = None
    progress: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    mlflow_experiment_id: str | None = None
    mlflow_run_id: str | None = None
    run_dir: str | None = None
    checkpoint_path: str | None = None
    log_path: str | None = None
    event_seq: int = 0

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATES

    @property
    def fence(self) -> Fence:
        return Fence(self.attempt, self.worker_id or "")


class JobEvent(BaseModel):
    job_id: str
    seq: int
    ts: float
    type: str
    data: dict[str, Any]


def encode_cursor(created_at: float, job_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([created_at, job_id]).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        created, job_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        return float(created), str(job_id)
    except Exception:
        raise InvalidCursorError(
            "cursor is not one this service handed out; use the next_cursor of the previous page"
        ) from None


class InvalidCursorError(GradloopError, ValueError):
    """A list cursor that this service did not produce."""

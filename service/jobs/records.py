"""What the job store hands out and refuses with: job records, events, fences, cursors and errors,
and the size limit on a job's stored error."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
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
    procs: int = 1
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


# A job's error is stored in its row and in its events, and every list of jobs returns it: it
# stays a few KiB, however long the exception's text (the job's log has more of it).
MAX_ERROR_BYTES = 4096
_MESSAGE_BYTES = 2048  # of the error's message
_LINES_BYTES = 768  # of each list of lines (log tail, traceback)
_FIELD_BYTES = 128  # of any other text (the type's name)
SEE_LOG = "see the job log"


def capped_text(text: str, limit: int, hint: str = "") -> str:
    """`text` if it takes at most `limit` bytes as JSON, else its start and a marker saying
    how many bytes were cut: "... (N more bytes[, hint])"."""
    if _json_len(text) <= limit:
        return text

    def shortened(keep: int) -> str:
        cut = len(text[keep:].encode("utf-8", "replace"))
        return f"{text[:keep]}... ({cut} more bytes{', ' + hint if hint else ''})"

    low, high = 0, min(len(text), limit)  # the longest start that fits, by bisection
    while low < high:
        middle = (low + high + 1) // 2
        if _json_len(shortened(middle)) <= limit:
            low = middle
        else:
            high = middle - 1
    return shortened(low)


def capped_lines(lines: list[Any], limit: int, hint: str = "") -> list[str]:
    """The last of `lines` that fit in `limit` bytes as JSON, each capped too; a first line
    says how many bytes were left out."""
    kept: list[str] = []
    size = 2
    cut = 0
    for line in reversed([str(x) for x in lines]):
        piece = capped_text(line, max(limit // 4, 16), hint)
        if cut or size + _json_len(piece) + 1 > limit - 64:
            cut += len(line.encode("utf-8", "replace"))
            continue
        kept.append(piece)
        size += _json_len(piece) + 1
    kept.reverse()
    if cut:
        kept.insert(0, f"... ({cut} more bytes{', ' + hint if hint else ''})")
    return kept


def cap_error(error: Mapping[str, Any]) -> dict[str, Any]:
    """A job's error as stored: its texts capped (see MAX_ERROR_BYTES); numbers pass as they are."""
    out: dict[str, Any] = {}
    for key, value in error.items():
        if isinstance(value, str):
            out[key] = capped_text(value, _MESSAGE_BYTES if key == "message" else _FIELD_BYTES, SEE_LOG)
        elif isinstance(value, (list, tuple)):
            out[key] = capped_lines(list(value), _LINES_BYTES, SEE_LOG)
        elif value is None or isinstance(value, (bool, int, float)):
            out[key] = value
        else:  # nothing the service writes; kept short all the same
            out[key] = capped_text(json.dumps(value, default=str), _FIELD_BYTES, SEE_LOG)
    if _json_len(out) > MAX_ERROR_BYTES:  # many keys: keep the ones a reader needs
        out = {k: out[k] for k in ("type", "message", "step", "exit_code", "signal") if k in out}
    return out


def _json_len(value: Any) -> int:
    return len(json.dumps(value))


class InvalidCursorError(GradloopError, ValueError):
    """A list cursor that this service did not produce."""

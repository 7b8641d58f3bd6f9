"""What the HTTP API answers: pydantic models of a job as clients see it."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Literal

from fastapi.responses import Response
from pydantic import BaseModel, Field

from gradloop.jobs.records import JobRecord

JobStatus = Literal["queued", "running", "cancelling", "succeeded", "failed", "cancelled"]


class Progress(BaseModel):
    epoch: int | None = None
    epochs: int | None = None
    step: int | None = None
    total_steps: int | None = None
    eta_s: float | None = Field(None, description="seconds to the last step at the recent pace")


class JobErrorOut(BaseModel):
    type: str
    message: str
    step: int | None = None
    exit_code: int | None = None
    signal: int | None = None
    log_tail: list[str] | None = None
    traceback: list[str] | None = None


class MlflowOut(BaseModel):
    experiment_id: str | None = None
    run_id: str | None = None
    url: str | None = Field(None, description="the run in the MLflow UI, when the service knows the UI's address")


class JobLinks(BaseModel):
    self: str
    events: str
    logs: str
    cancel: str


class JobOut(BaseModel):
    id: str
    status: JobStatus
    name: str
    priority: int
    device: str
    attempt: int
    max_attempts: int
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    progress: Progress = Field(default_factory=Progress)
    metrics: dict[str, float | None] = Field(
        default_factory=dict,
        description="last value of each metric; null when it was not finite (NaN or infinity: JSON has neither)",
    )
    error: JobErrorOut | None = None
    mlflow: MlflowOut = Field(default_factory=MlflowOut)
    run_dir: str | None = None
    checkpoint_path: str | None = None
    links: JobLinks
    config: dict[str, Any] | None = Field(None, description="the validated config (in GET /v1/jobs/{id} only)")


class JobPage(BaseModel):
    jobs: list[JobOut]
    next_cursor: str | None = Field(None, description="pass as ?cursor= for the next page; null on the last page")


def _time(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, tz=timezone.utc)


def mlflow_url(ui: str | None, experiment_id: str | None, run_id: str | None) -> str | None:
    """The run's model-metrics charts in the MLflow UI the service was told about (--mlflow-ui)."""
    if not (ui and experiment_id and run_id):
        return None
    from gradloop.tracking import run_url  # (no MLflow import: only the address's shape)

    return run_url(ui, experiment_id, run_id)


def job_out(job: JobRecord, *, mlflow_ui: str | None = None, with_config: bool = False) -> JobOut:
    base = f"/v1/jobs/{job.id}"
    error = None
    if job.error and job.error.get("type"):
        error = JobErrorOut.model_validate({k: v for k, v in job.error.items() if k in JobErrorOut.model_fields})
    return JobOut(
        id=job.id,
        status=job.status,
        name=job.name,
        priority=job.priority,
        device=job.device,
        attempt=job.attempt,
        max_attempts=job.max_attempts,
        created_at=_time(job.created_at),
        started_at=_time(job.started_at),
        finished_at=_time(job.finished_at),
        progress=Progress.model_validate({k: v for k, v in (job.progress or {}).items() if k in Progress.model_fields}),
        metrics={
            k: None if v is None else float(v)
            for k, v in (job.metrics or {}).items()
            if v is None or isinstance(v, (int, float))
        },
        error=error,
        mlflow=MlflowOut(
            experiment_id=job.mlflow_experiment_id,
            run_id=job.mlflow_run_id,
            url=mlflow_url(mlflow_ui, job.mlflow_experiment_id, job.mlflow_run_id),
        ),
        run_dir=job.run_dir,
        checkpoint_path=job.checkpoint_path,
        links=JobLinks(self=base, events=f"{base}/events", logs=f"{base}/logs", cancel=f"{base}/cancel"),
        config=job.config if with_config else None,
    )


def json_response(model: BaseModel, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    """`model` as JSON, serialised by pydantic-core in one pass. Returning a model from a route
    with a response_model makes FastAPI validate it again and encode it twice over; this is
    the same document (non-finite floats become null) at a fraction of the cost."""
    return Response(model.model_dump_json(), status_code=status_code, headers=headers, media_type="application/json")

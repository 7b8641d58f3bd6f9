"""The job service's settings: one pydantic model shared by `gradloop serve`, the app factory
and the tests, so every knob has one name and one default."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, Field

from gradloop.http_policy import HttpPolicy
from gradloop.jobs.job_log import DEFAULT_MAX_LOG_BYTES
from gradloop.limits import ServiceLimits

DEFAULT_PORT = 8000
DEFAULT_STATE_DIR = "gradloop-state"


class ServiceSettings(BaseModel):
    state_dir: Path = Field(Path(DEFAULT_STATE_DIR), description="job store (SQLite), job logs and run directories")
    db: str | None = Field(None, description="database URL; default: SQLite in the state dir")
    jobs_dir: Path | None = Field(
        None, description="per-job directories (shared volume across hosts); default: STATE_DIR/jobs"
    )
    data_root: Path = Field(
        default_factory=lambda: Path(os.environ.get("GRADLOOP_DATA_ROOT") or "."),
        description="configs' data paths must stay under it",
    )
    tracking_uri: str | None = Field(
        None, description="MLflow store for jobs that name none; default: sqlite in the state dir"
    )
    allowed_tracking_uris: list[str] = Field(
        default_factory=list, description="tracking servers a job may name instead of the service's store, exactly"
    )
    mlflow_ui: str | None = Field(None, description="MLflow UI address, for links to a job's run")
    tokens: list[str] = Field(default_factory=list, description="accepted bearer tokens; empty: no auth")
    max_body_bytes: int = Field(1024 * 1024, ge=1)
    max_concurrent: int | None = Field(
        None, ge=0, description="jobs at once; default: one per visible GPU, else 1; 0: no workers"
    )
    slots: int | None = Field(
        None,
        ge=1,
        description="processes this host runs at once (a job takes one per rank); "
        "default: one per visible GPU, else one per CPU",
    )
    lease_s: float = Field(30.0, gt=0)
    cancel_grace_s: float = Field(30.0, ge=0)
    max_attempts: int = Field(3, ge=1)
    worker_id: str | None = None
    max_log_bytes: int = Field(
        DEFAULT_MAX_LOG_BYTES, ge=1, description="a job's log stops growing there, with a line saying so"
    )
    limits: ServiceLimits = Field(
        default_factory=ServiceLimits, description="ceilings on what one submitted job may ask for"
    )
    public_metrics: bool = Field(
        False, description="with tokens set, still answer /metrics, /readyz and the API docs without one"
    )
    header_timeout_s: float = Field(10.0, gt=0, description="a request's headers must arrive within this")
    body_timeout_s: float = Field(30.0, gt=0, description="a request's body must arrive within this after its headers")
    keep_alive_timeout_s: float = Field(5.0, gt=0, description="an idle connection is closed after this")

    def policy(self) -> HttpPolicy:
        """The rules every config this service accepts goes through (see gradloop.http_policy)."""
        return HttpPolicy(
            data_root=self.data_root,
            tracking_uri=self.tracking_uri,
            allowed_tracking_uris=tuple(self.allowed_tracking_uris),
            limits=self.limits,
        )

    def resolved(self) -> ServiceSettings:
        state = self.state_dir.resolve()
        return self.model_copy(
            update={
                "state_dir": state,
                "db": self.db or f"sqlite:///{state / 'jobs.db'}",
                "jobs_dir": (self.jobs_dir or state / "jobs").resolve(),
                "data_root": self.data_root.resolve(),
                "tracking_uri": self.tracking_uri or f"sqlite:///{state / 'mlflow.db'}",
            }
        )


def tokens_from_env(value: str | None = None) -> list[str]:
    raw = os.environ.get("GRADLOOP_API_TOKEN", "") if value is None else value
    return [t.strip() for t in raw.split(",") if t.strip()]

"""jobs and their event log

Revision ID: 0001_jobs
Revises:
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_jobs"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "gradloop_jobs",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("priority", sa.Integer, nullable=False, server_default="0"),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("device", sa.String(16), nullable=False),
        sa.Column("config", sa.JSON, nullable=False),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("idempotency_key", sa.String(200), nullable=True, unique=True),
        sa.Column("attempt", sa.Integer, nullable=False, server_default="0"),
        sa.Column("max_attempts", sa.Integer, nullable=False, server_default="3"),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("started_at", sa.Float),
        sa.Column("finished_at", sa.Float),
        sa.Column("cancel_requested_at", sa.Float),
        sa.Column("worker_id", sa.String(200)),
        sa.Column("pid", sa.Integer),
        sa.Column("heartbeat_at", sa.Float),
        sa.Column("lease_expires_at", sa.Float),
        sa.Column("progress", sa.JSON),
        sa.Column("metrics", sa.JSON),
        sa.Column("error", sa.JSON),
        sa.Column("mlflow_experiment_id", sa.String(64)),
        sa.Column("mlflow_run_id", sa.String(64)),
        sa.Column("run_dir", sa.Text),
        sa.Column("checkpoint_path", sa.Text),
        sa.Column("log_path", sa.Text),
        sa.Column("event_seq", sa.Integer, nullable=False, server_default="0"),
    )
    op.create_index("ix_gradloop_jobs_queue", "gradloop_jobs", ["status", "priority", "created_at"])
    op.create_index("ix_gradloop_jobs_created", "gradloop_jobs", ["created_at", "id"])
    op.create_table(
        "gradloop_job_events",
        sa.Column("job_id", sa.String(36), sa.ForeignKey("gradloop_jobs.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("data", sa.JSON, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("gradloop_job_events")
    op.drop_table("gradloop_jobs")

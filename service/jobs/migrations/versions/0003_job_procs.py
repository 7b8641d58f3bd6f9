"""the processes a job starts (its ranks, or 1): what it takes of a host's --slots

Revision ID: 0003_job_procs
Revises: 0002_durability
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_job_procs"
down_revision = "0002_durability"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("gradloop_jobs") as batch:
        batch.add_column(sa.Column("procs", sa.Integer, nullable=False, server_default="1"))


def downgrade() -> None:
    with op.batch_alter_table("gradloop_jobs") as batch:
        batch.drop_column("procs")

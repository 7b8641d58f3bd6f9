"""lost attempts (what max_attempts limits) and the host of the running attempt

Revision ID: 0002_durability
Revises: 0001_jobs
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_durability"
down_revision = "0001_jobs"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("gradloop_jobs") as batch:
        batch.add_column(sa.Column("lost_attempts", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("host", sa.String(255)))


def downgrade() -> None:
    with op.batch_alter_table("gradloop_jobs") as batch:
        batch.drop_column("host")
        batch.drop_column("lost_attempts")

"""Alembic environment for the job store.

The service runs migrations itself at start-up (store.migrate) and hands Alembic an open
connection through `config.attributes["connection"]`; there is no alembic.ini to keep in step.
"""

from __future__ import annotations

from alembic import context

from gradloop.jobs.models import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only the service calls this module
    raise RuntimeError("run the job store's migrations through gradloop.jobs.store.JobStore.migrate()")

context.configure(connection=connection, target_metadata=metadata, render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()

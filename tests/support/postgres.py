"""The real PostgreSQL server on 127.0.0.1:5432, one fresh schema per test, so that tests (and
parallel runs on one server) never see each other's rows. Without a server, the test is skipped
with a message that says how to run it."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import create_engine, text

from tests.support import marks

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def fresh_pg_schema(purpose: str = "the PostgreSQL tests") -> tuple[str, str]:
    """Create a schema; return a database URL whose search_path is that schema, and its name."""
    marks.require("postgres", "uses PostgreSQL")
    schema = f"gl_test_{uuid.uuid4().hex[:12]}"
    try:
        engine = create_engine(PG_URL, connect_args={"connect_timeout": 3})
        with engine.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        engine.dispose()
    except Exception as exc:
        pytest.skip(f"PostgreSQL at 127.0.0.1:5432 does not answer ({type(exc).__name__}); start it to run {purpose}")
    return f"{PG_URL}?options=-csearch_path%3D{schema}", schema


def drop_pg_schema(schema: str) -> None:
    engine = create_engine(PG_URL)
    with engine.begin() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    engine.dispose()

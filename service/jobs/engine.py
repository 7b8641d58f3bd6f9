"""The job store's database: engine set-up for SQLite (WAL, write locks) and PostgreSQL, and migrations' place."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
SQLITE_BUSY_TIMEOUT_MS = 30_000  # a writer outside our locks (a person's sqlite3 shell): wait for it
PG_IDLE_IN_TRANSACTION_TIMEOUT_MS = 10_000  # a stalled holder's row locks go well within a lease (30 s)


def sqlite_url(state_dir: str | Path) -> str:
    return f"sqlite:///{Path(state_dir).resolve() / 'jobs.db'}"


def json_dumps(value: Any) -> str:
    """The JSON columns' serializer: orjson, a tenth of json.dumps' time on a job's config (a
    submit writes one). NaN and infinities become null, which PostgreSQL's json type accepts
    and json.dumps' NaN is not; reading stays json.loads, which also reads rows written before."""
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


def create_store_engine(url: str, *, pooled: bool, autocheckpoint: bool) -> Engine:
    """An engine on `url` with the session settings the store relies on (see the listeners below)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        # A job's child process writes to the same file: wait for the lock, never fail fast.
        kwargs: dict[str, Any] = {
            "connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False}
        }
        if not pooled:
            kwargs["poolclass"] = NullPool
        else:
            # No cap on connections (a SQLite connection is an open file): taking one never
            # waits, which matters because submit_now takes one on the event loop.
            kwargs.update(pool_size=10, max_overflow=-1)
        engine = create_engine(url, json_serializer=json_dumps, **kwargs)
        _sqlite_pragmas(engine, autocheckpoint=autocheckpoint)
        return engine
    kwargs = {"pool_pre_ping": True}
    if not pooled:
        kwargs["poolclass"] = NullPool
    else:
        kwargs.update(pool_size=5, max_overflow=20)
    engine = create_engine(url, json_serializer=json_dumps, **kwargs)
    _postgres_session(engine)
    return engine


def _postgres_session(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # A process that stalls inside a transaction (a frozen VM, a SIGSTOP) would keep its row
        # locks for as long as its connection lives: claims skip a locked job and the lease
        # sweep waits on it, so its job would never be taken over. The server ends such a
        # transaction after this long; ours never sit idle inside one.
        dbapi_conn.execute(f"SET idle_in_transaction_session_timeout = {PG_IDLE_IN_TRANSACTION_TIMEOUT_MS}")
        dbapi_conn.commit()


def _sqlite_pragmas(engine: Engine, autocheckpoint: bool = True) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event below issue BEGIN itself, so writes can ask for IMMEDIATE.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        if not autocheckpoint:
            cur.execute("PRAGMA wal_autocheckpoint=0")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN " + conn.get_execution_options().get("sqlite_begin", "DEFERRED"))

"""JobStore: the jobs table and its event log, behind one small typed interface (the queries).

Records and errors live in records.py, the engine set-up in engine.py.

Every state transition and the event that announces it are written in one transaction, so
what a client is told has already been committed. SQLite (the embedded default, WAL mode) and
PostgreSQL run the same statements; where they differ (write locks, row locks) the difference
stays in this module and in claims.py.

Worker writes are fenced: they name the attempt and worker id they hold (a Fence), and are
refused with StaleAttemptError once the job has moved on without them.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, func, insert, or_, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError

from gradloop.filelock import FileLock
from gradloop.jobs.engine import MIGRATIONS_DIR, create_store_engine
from gradloop.jobs.models import ACTIVE_STATES, TERMINAL_STATES, JobState, job_events, jobs
from gradloop.jobs.records import (
    Fence,
    IdempotencyConflictError,
    JobConflictError,
    JobEvent,
    JobNotFoundError,
    JobRecord,
    StaleAttemptError,
    cap_error,
    decode_cursor,
    encode_cursor,
)


class JobStore:
    """The job store on one database URL (sqlite:///... or postgresql+psycopg://...)."""

    def __init__(self, url: str, *, pooled: bool = True, checkpoint_thread: bool = False):
        """checkpoint_thread (SQLite): this process's connections never checkpoint the WAL when
        they commit (a checkpoint syncs the file, tens of ms on a slow disk, which would land on
        whatever request committed); a thread of the store does it once a second instead."""
        self.url = url
        parsed = make_url(url)
        self.dialect = parsed.get_backend_name()
        self._write_lock = threading.Lock()
        self._closed = threading.Event()
        self._checkpointer: threading.Thread | None = None
        # Writers of one SQLite file take this lock between processes (none for :memory:).
        self._file_lock: FileLock | None = None
        if self.dialect == "sqlite" and parsed.database and parsed.database != ":memory:":
            self._file_lock = FileLock(parsed.database + ".write-lock")
        self.engine: Engine = create_store_engine(url, pooled=pooled, autocheckpoint=not checkpoint_thread)
        if self.dialect == "sqlite" and checkpoint_thread:
            self._checkpointer = threading.Thread(
                target=self._checkpoint_loop, name="gradloop-wal-checkpoint", daemon=True
            )
            self._checkpointer.start()

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    def close(self) -> None:
        if self._file_lock is not None:
            self._file_lock.close()
        self._closed.set()
        if self._checkpointer is not None:
            self._checkpointer.join(5)
        self.engine.dispose()

    def _checkpoint_loop(self, interval_s: float = 1.0) -> None:
        while not self._closed.wait(interval_s):
            try:
                with self.engine.connect() as conn:
                    # PASSIVE: copies what it can without waiting for (or blocking) anyone.
                    conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
            except Exception:  # a busy or vanished file: the next round tries again
                pass

    # -- schema -------------------------------------------------------------------------
    def migrate(self) -> None:
        """Bring the schema to the newest revision (Alembic); safe to run on every start."""
        # Alembic only here: the CLI's job commands and the job's child use the store without it.
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        with self.engine.begin() as conn:
            if self.dialect == "postgresql":
                # Two services starting at once on one database must not both create the tables.
                conn.execute(text("SELECT pg_advisory_xact_lock(74100501)"))
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    def ping(self) -> bool:
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return True
        except Exception:
            return False

    # -- transactions -------------------------------------------------------------------
    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction; on SQLite it takes the write lock up front (BEGIN IMMEDIATE)
        so that a read-then-write never fails halfway with 'database is locked'."""
        if not self.is_sqlite:
            with self.engine.connect() as conn, conn.begin():
                yield conn
            return
        # Writers queue on locks that are handed over at once: a threading lock between the
        # threads of this process, an flock between processes (API workers, job processes).
        # SQLite's own busy handler would make them sleep and retry in steps of up to 100 ms.
        with self._write_lock, self._sqlite_write() as conn:
            yield conn

    @contextmanager
    def _sqlite_write(self) -> Iterator[Connection]:
        """BEGIN IMMEDIATE ... COMMIT under the lock file; the caller holds _write_lock."""
        if self._file_lock is not None:
            # Another process's write (an API worker's insert, a job's progress) holds it for
            # well under a millisecond, and the kernel hands it over at once (without our GIL).
            self._file_lock.acquire()
        try:
            with self.engine.connect() as conn:
                conn.execution_options(sqlite_begin="IMMEDIATE")
                with conn.begin():
                    yield conn
        finally:
            if self._file_lock is not None:
                self._file_lock.release()

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            with conn.begin():
                yield conn

    # -- submitting and reading ---------------------------------------------------------
    def submit(
        self,
        config: Mapping[str, Any],
        *,
        request_hash: str,
        name: str,
        device: str,
        priority: int = 0,
        idempotency_key: str | None = None,
        max_attempts: int = 3,
        job_id: str | None = None,
        procs: int = 1,
    ) -> tuple[JobRecord, bool]:
        """Queue a job; returns (job, created). One Idempotency-Key makes at most one job.

        The insert comes first and the key's unique index decides: a retry with a known key
        finds its job through the IntegrityError, so a new job costs one round of two inserts
        and no read. The job's first event (queued, number 1) is written with it."""
        row, first_event = _new_job(
            config, request_hash, name, device, priority, idempotency_key, max_attempts, job_id, procs
        )
        try:
            with self.write() as conn:
                _insert_job(conn, row, first_event)
        except IntegrityError as exc:
            return self._replay(idempotency_key, request_hash, exc)
        return JobRecord.model_validate(row), True  # as committed; no second read

    def submit_now(
        self,
        config: Mapping[str, Any],
        *,
        request_hash: str,
        name: str,
        device: str,
        priority: int = 0,
        idempotency_key: str | None = None,
        max_attempts: int = 3,
        procs: int = 1,
    ) -> tuple[JobRecord, bool] | None:
        """`submit` on the caller's own thread, unless another thread of this process is
        writing (it may itself be waiting for another process): then None, and the caller
        waits in a worker thread rather than on its event loop. Always None on PostgreSQL,
        whose every statement is a network round trip. Lets an event loop write a job in place
        -- half a millisecond -- instead of paying a thread hand-off that costs as much again."""
        if not self.is_sqlite or not self._write_lock.acquire(blocking=False):
            return None
        try:
            row, first_event = _new_job(
                config, request_hash, name, device, priority, idempotency_key, max_attempts, None, procs
            )
            with self._sqlite_write() as conn:
                _insert_job(conn, row, first_event)
        except IntegrityError as exc:
            return self._replay(idempotency_key, request_hash, exc)
        finally:
            self._write_lock.release()
        return JobRecord.model_validate(row), True

    def _replay(self, idempotency_key: str | None, request_hash: str, error: IntegrityError) -> tuple[JobRecord, bool]:
        """After an IntegrityError: the key was used before, or by a concurrent request that
        won the race; answer with its job."""
        existing = self._by_key(idempotency_key) if idempotency_key is not None else None
        if existing is None:
            raise error
        return self._same_request(existing, request_hash), False

    def _by_key(self, key: str) -> JobRecord | None:
        with self.read() as conn:
            found = conn.execute(select(jobs).where(jobs.c.idempotency_key == key)).mappings().first()
        return JobRecord.model_validate(dict(found)) if found else None

    @staticmethod
    def _same_request(existing: JobRecord, request_hash: str) -> JobRecord:
        if existing.request_hash != request_hash:
            raise IdempotencyConflictError(
                f"Idempotency-Key {existing.idempotency_key!r} was already used for job {existing.id} with a different "
                "body; send the same body to get that job again, or use a new key for a new job"
            )
        return existing

    def get(self, job_id: str) -> JobRecord | None:
        with self.read() as conn:
            found = conn.execute(select(jobs).where(jobs.c.id == job_id)).mappings().first()
        return JobRecord.model_validate(dict(found)) if found else None

    def require(self, job_id: str) -> JobRecord:
        job = self.get(job_id)
        if job is None:
            raise JobNotFoundError(job_id)
        return job

    def ids_starting_with(self, prefix: str, *, limit: int = 10) -> list[str]:
        """Ids of the jobs whose id starts with `prefix` (lowercase hex and dashes), at most `limit`."""
        query = select(jobs.c.id).where(jobs.c.id.startswith(prefix, autoescape=True)).order_by(jobs.c.id).limit(limit)
        with self.read() as conn:
            return [r.id for r in conn.execute(query)]

    def list_page(
        self, *, statuses: Sequence[str] = (), limit: int = 50, cursor: str | None = None
    ) -> tuple[list[JobRecord], str | None]:
        """Jobs newest first; `cursor` continues after the last job of the previous page."""
        query = select(jobs).order_by(jobs.c.created_at.desc(), jobs.c.id.desc()).limit(limit + 1)
        if statuses:
            query = query.where(jobs.c.status.in_(list(statuses)))
        if cursor:
            created, last_id = decode_cursor(cursor)
            query = query.where(
                or_(jobs.c.created_at < created, (jobs.c.created_at == created) & (jobs.c.id < last_id))
            )
        with self.read() as conn:
            rows = [JobRecord.model_validate(dict(r)) for r in conn.execute(query).mappings()]
        more = len(rows) > limit
        rows = rows[:limit]
        return rows, (encode_cursor(rows[-1].created_at, rows[-1].id) if more and rows else None)

    def statuses(self, job_ids: Sequence[str]) -> dict[str, str]:
        if not job_ids:
            return {}
        with self.read() as conn:
            return {
                r.id: r.status
                for r in conn.execute(select(jobs.c.id, jobs.c.status).where(jobs.c.id.in_(list(job_ids))))
            }

    def counts(self) -> dict[str, int]:
        with self.read() as conn:
            rows = conn.execute(select(jobs.c.status, func.count()).group_by(jobs.c.status)).all()
        counts = {s.value: 0 for s in JobState}
        counts.update({status: int(n) for status, n in rows})
        return counts

    def active_jobs(self) -> list[JobRecord]:
        """Jobs that some worker holds (running or cancelling)."""
        with self.read() as conn:
            rows = conn.execute(select(jobs).where(jobs.c.status.in_(sorted(ACTIVE_STATES)))).mappings().all()
        return [JobRecord.model_validate(dict(r)) for r in rows]

    def events_after(self, job_id: str, after_seq: int = 0, limit: int = 500) -> list[JobEvent]:
        query = (
            select(job_events)
            .where(job_events.c.job_id == job_id, job_events.c.seq > after_seq)
            .order_by(job_events.c.seq)
            .limit(limit)
        )
        with self.read() as conn:
            return [JobEvent.model_validate(dict(r)) for r in conn.execute(query).mappings()]

    # -- cancelling ---------------------------------------------------------------------
    def cancel(self, job_id: str) -> JobRecord:
        """Queued -> cancelled at once; running -> cancelling (the worker stops it). 409 when done."""
        now = time.time()
        with self.write() as conn:
            row = conn.execute(
                select(jobs.c.status, jobs.c.attempt).where(jobs.c.id == job_id).with_for_update()
            ).first()
            if row is None:
                raise JobNotFoundError(job_id)
            status = row.status
            if status in TERMINAL_STATES:
                raise JobConflictError(
                    f"job {job_id} is already {status}; only queued or running jobs can be cancelled"
                )
            if status == JobState.queued.value:
                values = {"status": JobState.cancelled.value, "finished_at": now, "cancel_requested_at": now}
                data = {"status": JobState.cancelled.value, "attempt": row.attempt, "reason": "cancelled while queued"}
            elif status == JobState.running.value:
                values = {"status": JobState.cancelling.value, "cancel_requested_at": now}
                data = {"status": JobState.cancelling.value, "attempt": row.attempt}
            else:  # already cancelling: asking again changes nothing
                values, data = {}, {}
            if values:
                conn.execute(update(jobs).where(jobs.c.id == job_id).values(**values))
                append_event(conn, job_id, "state", data, now)
        return self.require(job_id)

    # -- worker writes (fenced) ---------------------------------------------------------
    def report(
        self,
        job_id: str,
        fence: Fence,
        *,
        event: tuple[str, dict[str, Any]] | None = None,
        **values: Any,
    ) -> str:
        """Record what a running job reports (progress, metrics, run id, checkpoint, pid).

        Returns the job's status (so the worker learns of a cancel); raises StaleAttemptError
        when `fence` no longer holds the job."""
        unknown = set(values) - _REPORTABLE
        if unknown:
            raise ValueError(f"not reportable by a worker: {sorted(unknown)}")
        with self.write() as conn:
            status = conn.execute(
                update(jobs).where(*_fenced(job_id, fence)).values(**values).returning(jobs.c.status)
                if values
                else select(jobs.c.status).where(*_fenced(job_id, fence)).with_for_update()
            ).scalar()
            if status is None:
                raise StaleAttemptError(
                    f"job {job_id}: attempt {fence.attempt} of {fence.worker_id} no longer holds it"
                )
            if event is not None:
                append_event(conn, job_id, event[0], event[1])
        return status

    def finish(
        self,
        job_id: str,
        fence: Fence,
        status: str,
        *,
        error: Mapping[str, Any] | None = None,
        expired_before: float | None = None,
        lost: bool = False,
        **values: Any,
    ) -> JobRecord:
        """Move a running job to a terminal state (or back to queued, to resume later).

        `expired_before`: only if the lease ran out before then (a heartbeat since wins).
        `lost`: the attempt's worker vanished; it counts against max_attempts.
        `error` is stored capped (records.cap_error), in the row and in the event."""
        if status not in TERMINAL_STATES and status != JobState.queued.value:
            raise ValueError(f"finish() takes a terminal state or queued, not {status!r}")
        unknown = set(values) - _REPORTABLE
        if unknown:
            raise ValueError(f"not reportable by a worker: {sorted(unknown)}")
        now = time.time()
        terminal = status in TERMINAL_STATES
        error = cap_error(error) if error else None
        with self.write() as conn:
            where = _fenced(job_id, fence)
            if expired_before is not None:
                where += (jobs.c.lease_expires_at < expired_before,)
            changed = conn.execute(
                update(jobs)
                .where(*where)
                .values(
                    status=status,
                    error=error,
                    finished_at=now if terminal else None,
                    lease_expires_at=None,
                    worker_id=fence.worker_id if terminal else None,
                    pid=None,
                    host=None,
                    **({"lost_attempts": jobs.c.lost_attempts + 1} if lost else {}),
                    **values,
                )
                .returning(jobs.c.id)
            ).scalar()
            if changed is None:
                raise StaleAttemptError(
                    f"job {job_id}: attempt {fence.attempt} of {fence.worker_id} no longer holds it"
                )
            data: dict[str, Any] = {"status": status, "attempt": fence.attempt}
            if error:
                data["error"] = error
            append_event(conn, job_id, "state", data, now)
        return self.require(job_id)


_REPORTABLE = frozenset(
    {
        "progress",
        "metrics",
        "mlflow_experiment_id",
        "mlflow_run_id",
        "run_dir",
        "checkpoint_path",
        "log_path",
        "pid",
        "heartbeat_at",
        "lease_expires_at",
    }
)


def _fenced(job_id: str, fence: Fence) -> tuple[Any, ...]:
    return (
        jobs.c.id == job_id,
        jobs.c.attempt == fence.attempt,
        jobs.c.worker_id == fence.worker_id,
        jobs.c.status.in_(sorted(ACTIVE_STATES)),
    )


_INSERT_JOB = insert(jobs)
_INSERT_EVENT = insert(job_events)


def _new_job(
    config: Mapping[str, Any],
    request_hash: str,
    name: str,
    device: str,
    priority: int,
    idempotency_key: str | None,
    max_attempts: int,
    job_id: str | None,
    procs: int = 1,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A queued job's row and its first event (number 1). procs: the processes it starts."""
    now = time.time()
    row = {
        "id": job_id or str(uuid.uuid4()),
        "status": JobState.queued.value,
        "priority": priority,
        "name": name,
        "device": device,
        "config": dict(config),
        "request_hash": request_hash,
        "idempotency_key": idempotency_key,
        "attempt": 0,
        "max_attempts": max_attempts,
        "lost_attempts": 0,
        "procs": procs,
        "created_at": now,
        "event_seq": 1,
    }
    event = {
        "job_id": row["id"],
        "seq": 1,
        "ts": now,
        "type": "state",
        "data": {"status": JobState.queued.value, "attempt": 0},
    }
    return row, event


def _insert_job(conn: Connection, row: dict[str, Any], first_event: dict[str, Any]) -> None:
    # Statements without inline values compile once and come from SQLAlchemy's cache.
    conn.execute(_INSERT_JOB, row)
    conn.execute(_INSERT_EVENT, first_event)


def append_event(conn: Connection, job_id: str, type_: str, data: Mapping[str, Any], ts: float | None = None) -> int:
    """Append one event; numbering through the job's row keeps each job's sequence gap-free
    and in commit order (the row lock serialises writers of one job)."""
    seq = conn.execute(
        update(jobs).where(jobs.c.id == job_id).values(event_seq=jobs.c.event_seq + 1).returning(jobs.c.event_seq)
    ).scalar_one()
    conn.execute(insert(job_events).values(job_id=job_id, seq=seq, ts=ts or time.time(), type=type_, data=dict(data)))
    return int(seq)

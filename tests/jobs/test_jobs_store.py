"""The job store and its claims, written once and run against SQLite and PostgreSQL."""

from __future__ import annotations

import fcntl
import os
import threading
import time
import uuid

import pytest

from gradloop.jobs.claims import claim_next, renew, requeue_expired
from gradloop.jobs.engine import sqlite_url
from gradloop.jobs.records import (
    IdempotencyConflictError,
    InvalidCursorError,
    JobConflictError,
    JobNotFoundError,
    StaleAttemptError,
)
from gradloop.jobs.store import JobStore
from tests.support.postgres import drop_pg_schema, fresh_pg_schema


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path):
    if request.param == "sqlite":
        s = JobStore(sqlite_url(tmp_path))
        s.migrate()
        yield s
        s.close()
        return
    url, schema = fresh_pg_schema("the postgres store tests")
    s = JobStore(url)
    s.migrate()
    yield s
    s.close()
    drop_pg_schema(schema)


def _submit(store: JobStore, key: str | None = None, body: str = "a", priority: int = 0):
    return store.submit(
        {"name": body}, request_hash=body, name=body, device="cpu", priority=priority, idempotency_key=key
    )


def test_migrate_is_idempotent(store: JobStore) -> None:
    store.migrate()
    assert store.ping()
    job, created = _submit(store)
    assert created and job.status == "queued" and job.attempt == 0


def test_idempotency_key_same_body_returns_job_and_other_body_conflicts(store: JobStore) -> None:
    first, created = _submit(store, key="k1", body="a")
    again, created_again = _submit(store, key="k1", body="a")
    assert created and not created_again and again.id == first.id
    with pytest.raises(IdempotencyConflictError, match="different body"):
        _submit(store, key="k1", body="b")


def test_concurrent_submits_with_one_key_create_one_job(store: JobStore) -> None:
    ids: list[str] = []
    barrier = threading.Barrier(8)

    def go() -> None:
        barrier.wait()
        ids.append(_submit(store, key="same", body="x")[0].id)

    threads = [threading.Thread(target=go) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ids) == 8 and len(set(ids)) == 1
    assert store.counts()["queued"] == 1


def test_submit_now_writes_in_place_only_when_nobody_holds_the_write_lock(store: JobStore) -> None:
    """The API's fast path: a job written without waiting, or None so the caller waits in a
    thread -- always None on PostgreSQL, and on SQLite while another thread writes."""
    args = {"request_hash": "a", "name": "a", "device": "cpu", "idempotency_key": "fast-1"}
    done = store.submit_now({"name": "a"}, **args)
    if not store.is_sqlite:
        assert done is None
        return
    assert done is not None and done[1] and store.get(done[0].id).status == "queued"
    assert [e.seq for e in store.events_after(done[0].id)] == [1]
    again = store.submit_now({"name": "a"}, **args)  # the same key and body: a replay
    assert again is not None and again[0].id == done[0].id and again[1] is False
    with pytest.raises(IdempotencyConflictError):
        store.submit_now({"name": "b"}, **{**args, "request_hash": "b"})
    with store.write():  # another writer in this process: no waiting on the caller's thread
        assert store.submit_now({"name": "c"}, **{**args, "idempotency_key": "fast-2"}) is None
    # Another process writing (an API worker, a job) holds the database's lock file: writers
    # here wait for it, in submit_now as in submit, and go on as soon as it lets go.
    other = os.open(store.engine.url.database + ".write-lock", os.O_RDWR)
    fcntl.flock(other, fcntl.LOCK_EX)
    try:
        waiting = [
            threading.Thread(
                target=store.submit_now, args=({"name": "c"},), kwargs={**args, "idempotency_key": "fast-2"}
            ),
            threading.Thread(target=store.submit, args=({"name": "d"},), kwargs={**args, "idempotency_key": "slow-1"}),
        ]
        for t in waiting:
            t.start()
        time.sleep(0.5)
        assert store._by_key("fast-2") is None and store._by_key("slow-1") is None
    finally:
        fcntl.flock(other, fcntl.LOCK_UN)
        os.close(other)
    for t in waiting:
        t.join(10)
    assert store._by_key("fast-2") is not None and store._by_key("slow-1") is not None


def test_wal_is_checkpointed_by_the_store_thread_not_by_committers(tmp_path) -> None:
    """With checkpoint_thread, commits never checkpoint (a checkpoint's sync would land on a
    request); the store's thread moves the WAL into the database file within seconds."""
    db = tmp_path / "jobs.db"
    control = JobStore(f"sqlite:///{tmp_path / 'control.db'}", checkpoint_thread=True)
    control._closed.set()  # its thread stops at once: nothing checkpoints this one
    control._checkpointer.join(5)
    store = JobStore(f"sqlite:///{db}", checkpoint_thread=True)
    try:
        for s in (store, control):
            s.migrate()
            with s.engine.connect() as conn:
                assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 0
            for i in range(300):
                s.submit({"name": "x" * 500, "i": i}, request_hash="h", name="x", device="cpu")
        deadline = time.monotonic() + 10
        while db.stat().st_size < 200_000 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert db.stat().st_size >= 200_000, "the checkpoint thread never copied the WAL into the database"
        assert (tmp_path / "control.db").stat().st_size < 200_000  # without it, all of it stays in the WAL
    finally:
        store.close()
        control.close()
    assert not store._checkpointer.is_alive()


def test_list_is_newest_first_with_cursor_and_status_filter(store: JobStore) -> None:
    made = [_submit(store, body=f"j{i}")[0].id for i in range(5)]
    page1, cursor = store.list_page(limit=2)
    page2, cursor2 = store.list_page(limit=2, cursor=cursor)
    page3, cursor3 = store.list_page(limit=2, cursor=cursor2)
    seen = [j.id for j in page1 + page2 + page3]
    assert seen == list(reversed(made)) and cursor3 is None
    store.cancel(made[0])
    cancelled, _ = store.list_page(statuses=["cancelled"])
    assert [j.id for j in cancelled] == [made[0]]
    with pytest.raises(InvalidCursorError):
        store.list_page(cursor="not-a-cursor")


def test_claim_takes_priority_then_age_and_counts_attempts(store: JobStore) -> None:
    low, _ = _submit(store, body="low")
    high, _ = _submit(store, body="high", priority=5)
    first = claim_next(store, "w1", lease_s=30)
    second = claim_next(store, "w1", lease_s=30)
    assert first is not None and second is not None
    assert (first.id, second.id) == (high.id, low.id)
    assert first.status == "running" and first.attempt == 1 and first.worker_id == "w1"
    assert claim_next(store, "w1", lease_s=30) is None


def test_claim_waits_until_the_head_of_the_queue_fits_the_free_slots(store: JobStore) -> None:
    def submit(body: str, procs: int):
        return store.submit({"name": body}, request_hash=body, name=body, device="cpu", procs=procs)[0]

    huge = submit("huge", 8)  # more than this host ever has: left for a bigger host
    pair = submit("pair", 2)
    single = submit("single", 1)
    assert store.require(pair.id).procs == 2
    # One slot free: the 2-process job at the head waits, and the 1-process job behind it waits too.
    assert claim_next(store, "w", lease_s=30, free_slots=1, host_slots=2) is None
    taken = claim_next(store, "w", lease_s=30, free_slots=2, host_slots=2)
    assert taken is not None and taken.id == pair.id
    taken = claim_next(store, "w", lease_s=30, free_slots=1, host_slots=2)
    assert taken is not None and taken.id == single.id
    assert claim_next(store, "w", lease_s=30, free_slots=2, host_slots=2) is None
    assert store.require(huge.id).status == "queued"
    bigger = claim_next(store, "big-host", lease_s=30, free_slots=8, host_slots=8)
    assert bigger is not None and bigger.id == huge.id


def test_concurrent_claims_never_hand_one_job_to_two_workers(store: JobStore) -> None:
    for i in range(12):
        _submit(store, body=f"c{i}")
    got: list[str] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        while (job := claim_next(store, name, lease_s=30)) is not None:
            with lock:
                got.append(job.id)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 12 and len(set(got)) == 12


def test_cancel_queued_running_and_finished(store: JobStore) -> None:
    queued, _ = _submit(store, body="q")
    assert store.cancel(queued.id).status == "cancelled"
    with pytest.raises(JobConflictError, match="already cancelled"):
        store.cancel(queued.id)
    _submit(store, body="r")
    running = claim_next(store, "w", lease_s=30)
    assert running is not None
    assert store.cancel(running.id).status == "cancelling"
    assert renew(store, running.id, running.fence, 30) == "cancelling"
    done = store.finish(running.id, running.fence, "cancelled")
    assert done.status == "cancelled" and done.finished_at is not None
    with pytest.raises(JobNotFoundError):
        store.cancel(str(uuid.uuid4()))


def test_stale_attempt_writes_are_refused_after_requeue(store: JobStore) -> None:
    _submit(store)
    job = claim_next(store, "w-old", lease_s=0.05)
    assert job is not None
    old = job.fence
    store.report(job.id, old, progress={"step": 3})
    time.sleep(0.1)
    assert requeue_expired(store) == [job.id]
    requeued = store.require(job.id)
    assert requeued.status == "queued" and requeued.error["type"] == "WorkerLost"
    again = claim_next(store, "w-new", lease_s=30)
    assert again is not None and again.attempt == 2 and again.error is None
    with pytest.raises(StaleAttemptError):
        store.report(job.id, old, progress={"step": 4})
    with pytest.raises(StaleAttemptError):
        store.finish(job.id, old, "succeeded")
    assert store.finish(job.id, again.fence, "succeeded").status == "succeeded"


def test_heartbeat_keeps_lease_and_restart_requeues_own_jobs(store: JobStore) -> None:
    _submit(store, body="a")
    job = claim_next(store, "w", lease_s=0.2)
    assert job is not None
    renew(store, job.id, job.fence, lease_s=30)
    assert requeue_expired(store) == []
    assert requeue_expired(store, worker_id="w") == [job.id]
    assert store.require(job.id).status == "queued"


def test_lost_job_fails_after_max_attempts(store: JobStore) -> None:
    job, _ = store.submit({}, request_hash="h", name="n", device="cpu", max_attempts=1)
    claimed = claim_next(store, "w", lease_s=0.01)
    assert claimed is not None
    time.sleep(0.05)
    requeue_expired(store)
    failed = store.require(job.id)
    assert failed.status == "failed" and "attempt 1 of 1" in failed.error["message"]


def test_events_are_numbered_per_job_and_follow_transitions(store: JobStore) -> None:
    job, _ = _submit(store)
    claimed = claim_next(store, "w", lease_s=30)
    assert claimed is not None
    store.report(job.id, claimed.fence, progress={"step": 1}, event=("progress", {"step": 1}))
    store.finish(job.id, claimed.fence, "succeeded")
    events = store.events_after(job.id)
    assert [e.seq for e in events] == [1, 2, 3, 4]
    assert [(e.type, e.data.get("status")) for e in events] == [
        ("state", "queued"),
        ("state", "running"),
        ("progress", None),
        ("state", "succeeded"),
    ]
    assert [e.seq for e in store.events_after(job.id, after_seq=2)] == [3, 4]


@pytest.mark.postgres
def test_a_session_stalled_inside_a_transaction_does_not_keep_its_job_from_others(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A holder that freezes mid-transaction (a stalled VM) keeps its row lock until the server
    ends its session: until then claims skip the job (SKIP LOCKED). The store's sessions carry
    idle_in_transaction_session_timeout, so another service gets the job once it passes."""
    from sqlalchemy import text

    import gradloop.jobs.engine as store_module

    url, schema = fresh_pg_schema("the stalled-session test")
    setup = JobStore(url)
    setup.migrate()
    job, _ = _submit(setup)
    setup.close()
    # Short, but not so short that this test's own transactions, on a busy machine, wait that
    # long between two statements and are ended too.
    monkeypatch.setattr(store_module, "PG_IDLE_IN_TRANSACTION_TIMEOUT_MS", 2000)
    store = JobStore(url)
    stalled = None
    try:
        stalled = store.engine.connect()
        stalled.begin()
        stalled.execute(text("SELECT id FROM gradloop_jobs WHERE id = :id FOR UPDATE"), {"id": job.id})
        assert claim_next(store, "other", lease_s=30) is None  # locked: skipped while it holds it
        claimed = None
        for _ in range(400):  # the server ends the stalled transaction after two seconds
            claimed = claim_next(store, "other", lease_s=30)
            if claimed is not None:
                break
            time.sleep(0.05)
        assert claimed is not None and claimed.id == job.id and claimed.worker_id == "other"
    finally:
        if stalled is not None:
            stalled.invalidate()  # (should the assertion fail, its lock must not hold up the clean-up)
        store.close()
        drop_pg_schema(schema)


def test_a_unique_id_prefix_names_a_job_and_an_ambiguous_one_lists_candidates(store: JobStore) -> None:
    """`gradloop jobs` shows short ids; every /v1/jobs/{id} route takes a unique prefix (issue 18)."""
    from starlette.exceptions import HTTPException

    from gradloop.api.job_routes import _uuid

    ids = ["abcd0000-0000-4000-8000-000000000001", "abcd1111-0000-4000-8000-000000000002"]
    for i, job_id in enumerate(ids):
        store.submit({"name": "x"}, request_hash=f"h{i}", name="x", device="cpu", job_id=job_id)
    assert store.ids_starting_with("abcd") == ids
    assert _uuid("abcd1", store) == ids[1]
    assert _uuid("ABCD0000", store) == ids[0]  # as a person may type it
    with pytest.raises(HTTPException) as ambiguous:
        _uuid("abcd", store)
    assert ambiguous.value.status_code == 409 and ids[0] in ambiguous.value.detail and ids[1] in ambiguous.value.detail
    with pytest.raises(HTTPException) as missing:
        _uuid("ffff", store)
    assert missing.value.status_code == 404
    with pytest.raises(HTTPException) as odd:
        _uuid("ab%_", store)  # not hex: never a query pattern
    assert odd.value.status_code == 404
    with pytest.raises(HTTPException) as short:
        _uuid("abc", store)  # not "no such job": the start of one, too short to take
    assert short.value.status_code == 404 and "at least 4 characters" in short.value.detail


@pytest.mark.parametrize("strategy", ["none", "ddp", "fsdp"])
def test_runs_ranks_reads_a_stored_config_as_validation_does(strategy: str):
    from gradloop.config.loading import load_config
    from gradloop.jobs.worker import runs_ranks
    from tests.support.api_service import iris_config

    config = load_config({**iris_config("ranks"), "distributed": {"strategy": strategy}})
    assert runs_ranks(config.to_dict()) is config.distributed.enabled is (strategy != "none")
    assert runs_ranks({}) is False  # (a config stored before `distributed` existed)

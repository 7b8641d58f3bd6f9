"""A job process whose attempt was fenced off ends at once, without another write: no progress,
no checkpoint record, no event (in-process the observer only asks the trainer to stop)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from gradloop.jobs.claims import claim_next, requeue_expired
from gradloop.jobs.engine import sqlite_url
from gradloop.jobs.job_progress import EXIT_FENCED, JobProgressObserver
from gradloop.jobs.records import JobRecord
from gradloop.jobs.store import JobStore


def _store(tmp_path: Path) -> JobStore:
    store = JobStore(sqlite_url(tmp_path))
    store.migrate()
    return store


def _stale_attempt(store: JobStore) -> tuple[JobRecord, JobRecord, list[str]]:
    """A job claimed by worker "old" whose lease then ran out, and the ids re-queued for it:
    the claim's fence (attempt, worker) is stale from here on."""
    job, _ = store.submit({}, request_hash="h", name="n", device="cpu")
    claimed = claim_next(store, "old", lease_s=0.01)
    assert claimed is not None
    time.sleep(0.05)
    return job, claimed, requeue_expired(store)


def test_fenced_job_process_exits_without_writing(tmp_path: Path) -> None:
    store = _store(tmp_path)
    job, claimed, requeued = _stale_attempt(store)
    assert requeued == [job.id]  # its lease ran out: the attempt is stale now
    events_before = store.require(job.id).event_seq

    pid = os.fork()
    if pid == 0:  # the stale attempt's process, with its own connection
        child_store = JobStore(sqlite_url(tmp_path), pooled=False)
        observer = JobProgressObserver(child_store, job.id, claimed.fence, exit_on_fence=True)
        observer.log_checkpoint(tmp_path / "step-40.pt", 40)
        os._exit(0)  # not reached: the refused write ends the process
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == EXIT_FENCED
    after = store.require(job.id)
    assert after.status == "queued" and after.checkpoint_path is None and after.event_seq == events_before
    store.close()


def test_fenced_observer_in_process_only_stops_the_trainer(tmp_path: Path) -> None:
    store = _store(tmp_path)
    job, claimed, _ = _stale_attempt(store)
    stop = threading.Event()
    observer = JobProgressObserver(store, job.id, claimed.fence, stop_event=stop)
    observer.log_checkpoint(tmp_path / "step-20.pt", 20)
    assert observer.fenced and stop.is_set()
    store.close()

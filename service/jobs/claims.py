"""Claiming queued jobs as leases, renewing them by heartbeat, and re-queueing expired ones.

A claim moves one queued job to running, adds 1 to its attempt and records the worker id and a
lease expiry. The holder renews the lease by heartbeat; a job whose lease ran out (its worker
died, or its host) is re-queued by whichever service notices first, or failed once `max_attempts`
of its attempts were lost that way. Writes from the old attempt are then refused (see store.Fence).

PostgreSQL: several services share one queue; SELECT ... FOR UPDATE SKIP LOCKED lets each take
a different job without waiting on the others. SQLite: one host; a single UPDATE ... RETURNING
on the head of the queue is atomic under SQLite's one-writer lock.

Slots: a job takes `procs` of a host's slots (its ranks, or 1). A host claims the head of the
queue among the jobs that can ever fit it, and only once it has that many slots free: a 2-rank
job at the head waits for two free slots rather than let 1-process jobs behind it pass forever.
"""

from __future__ import annotations

import socket
import time
from typing import Any

from sqlalchemy import select, update

from gradloop.jobs.models import ACTIVE_STATES, JobState, jobs
from gradloop.jobs.records import Fence, JobRecord, StaleAttemptError
from gradloop.jobs.store import JobStore, append_event

_QUEUE_ORDER = (jobs.c.priority.desc(), jobs.c.created_at, jobs.c.id)


def claim_next(
    store: JobStore,
    worker_id: str,
    lease_s: float,
    *,
    pid: int | None = None,
    free_slots: int | None = None,
    host_slots: int | None = None,
) -> JobRecord | None:
    """Take the highest-priority, oldest queued job for `worker_id`, or None when none waits.

    free_slots / host_slots (None: no limit): only jobs of at most host_slots processes are
    considered, and the first of them is taken only if it needs at most free_slots."""
    now = time.time()
    values: dict[str, Any] = {
        "status": JobState.running.value,
        "attempt": jobs.c.attempt + 1,
        "worker_id": worker_id,
        "pid": pid,
        "host": socket.gethostname(),
        "started_at": now,
        "heartbeat_at": now,
        "lease_expires_at": now + lease_s,
        "error": None,
        "finished_at": None,
    }
    with store.write() as conn:
        queued = jobs.c.status == JobState.queued.value
        fits_host = [jobs.c.procs <= host_slots] if host_slots is not None else []
        fits_now = [jobs.c.procs <= free_slots] if free_slots is not None else []
        head = select(jobs.c.id).where(queued, *fits_host).order_by(*_QUEUE_ORDER).limit(1)
        if store.is_sqlite:
            claimed = conn.execute(
                update(jobs)
                .where(jobs.c.id == head.scalar_subquery(), queued, *fits_now)
                .values(**values)
                .returning(jobs.c.id, jobs.c.attempt)
            ).first()
        else:
            first = conn.execute(head.add_columns(jobs.c.procs).with_for_update(skip_locked=True)).first()
            job_id = first.id if first is not None and (free_slots is None or first.procs <= free_slots) else None
            claimed = None
            if job_id is not None:
                claimed = conn.execute(
                    update(jobs).where(jobs.c.id == job_id).values(**values).returning(jobs.c.id, jobs.c.attempt)
                ).first()
        if claimed is None:
            return None
        append_event(
            conn,
            claimed.id,
            "state",
            {"status": JobState.running.value, "attempt": claimed.attempt, "worker": worker_id},
            now,
        )
    return store.require(claimed.id)


def renew(store: JobStore, job_id: str, fence: Fence, lease_s: float) -> str:
    """Extend the lease; returns the job's status (running or cancelling).

    Raises StaleAttemptError when the lease was lost: the worker must stop that job."""
    now = time.time()
    return store.report(job_id, fence, heartbeat_at=now, lease_expires_at=now + lease_s)


def requeue_expired(
    store: JobStore, *, now: float | None = None, worker_id: str | None = None, all_active: bool = False
) -> list[str]:
    """Re-queue running jobs whose lease has expired; with `worker_id`, every job that worker
    held; with `all_active`, every running job (a restarted single-host service re-queues its
    orphans at once instead of waiting out their leases).

    A job that was being cancelled ends cancelled; one that has now lost `max_attempts` attempts
    ends failed, with the reason; any other goes back to the queue (attempt + 1 at its next claim)."""
    now = time.time() if now is None else now
    with store.read() as conn:
        query = select(jobs.c.id, jobs.c.attempt, jobs.c.worker_id).where(jobs.c.status.in_(sorted(ACTIVE_STATES)))
        if worker_id is not None:
            query = query.where(jobs.c.worker_id == worker_id)
        elif not all_active:
            query = query.where(jobs.c.lease_expires_at < now)
        candidates = conn.execute(query).all()
    expired_only = worker_id is None and not all_active
    done: list[str] = []
    for job_id, attempt, holder in candidates:
        fence = Fence(attempt, holder or "")
        job = store.get(job_id)
        if job is None:
            continue
        reason = "its worker stopped sending heartbeats" if expired_only else "the service restarted while it ran"
        expired_before = now if expired_only else None
        try:
            lost = job.lost_attempts + 1
            if job.status == JobState.cancelling.value:
                store.finish(
                    job_id,
                    fence,
                    JobState.cancelled.value,
                    error={"type": "Cancelled", "message": f"cancelled; {reason}"},
                    expired_before=expired_before,
                    lost=True,
                )
            elif lost >= job.max_attempts:
                message = f"attempt {lost} of {job.max_attempts} was lost: {reason}" + (
                    f" (claim {attempt}; graceful stops do not count)" if attempt != lost else ""
                )
                store.finish(
                    job_id,
                    fence,
                    JobState.failed.value,
                    error={"type": "WorkerLost", "message": message, "step": _step(job)},
                    expired_before=expired_before,
                    lost=True,
                )
            else:
                message = f"re-queued: attempt {lost} of {job.max_attempts} was lost: {reason}"
                store.finish(
                    job_id,
                    fence,
                    JobState.queued.value,
                    error={"type": "WorkerLost", "message": message, "step": _step(job)},
                    expired_before=expired_before,
                    lost=True,
                )
        except StaleAttemptError:
            continue  # its worker came back in time, or another service got there first
        done.append(job_id)
    return done


def _step(job: JobRecord) -> int | None:
    return (job.progress or {}).get("step")

"""Server-Sent Events for one job, read from the job's event log.

Events are numbered 1, 2, ... per job (store.append_event), and the number is the SSE id: a
client that reconnects with Last-Event-ID gets exactly the events after it, with no gaps and no
repeats. The stream ends after the event that announces a terminal state. The log lives in the
database, so any service process can serve any job's stream.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anyio

from gradloop.jobs.models import TERMINAL_STATES
from gradloop.jobs.records import JobEvent
from gradloop.jobs.store import JobStore


def is_final(event: JobEvent) -> bool:
    return event.type == "state" and event.data.get("status") in TERMINAL_STATES


def sse_fields(event: JobEvent) -> dict[str, Any]:
    return {
        "id": str(event.seq),
        "event": event.type,
        "data": json.dumps({**event.data, "seq": event.seq, "ts": event.ts}),
    }


async def job_events(
    store: JobStore, job_id: str, after: int = 0, poll_s: float = 0.2
) -> AsyncIterator[dict[str, Any]]:
    """Yield SSE fields for every event after `after`, following the log until a terminal one."""
    while True:
        batch = await anyio.to_thread.run_sync(store.events_after, job_id, after)
        for event in batch:
            after = event.seq
            yield sse_fields(event)
            if is_final(event):
                return
        if not batch:
            job = await anyio.to_thread.run_sync(store.get, job_id)
            if job is None or job.terminal:
                # Resumed after the final event (or the job vanished): nothing more will come.
                return
            await anyio.sleep(poll_s)

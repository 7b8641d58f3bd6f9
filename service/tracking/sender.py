"""The background sender: creates the run, then sends journal lines and ops, retrying with backoff.

The training thread only ever calls `submit` (an append) and `submit_op`; it never waits on
the store. The sender's first call creates (or reopens) the MLflow run in the store's process;
until that succeeds, records wait in the queue. When the queue is full (the server has been
down a long time) a record is dropped from the queue only: it is already in metrics.jsonl,
and the sender re-reads the journal's unacknowledged records before it closes. The observer
hands over a second's records at once and then calls `wake`; the sender sends what the queue
holds as soon as it has drained it, so the store sees about one request a second, and the end
of a run waits only for what its last second produced.

Ops (params, tags, artifacts, plots, the model, the final status) travel through the same
queue so that they keep their order with the metrics; those not done by `close`'s deadline are
handed back, and the observer keeps them in tracking.json for `gradloop sync`. Once the store
is known to be down (the last request failed and is being retried), `close` does not wait
for it: the journal has every point, and `gradloop sync` sends them.
"""

from __future__ import annotations

import collections
import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from gradloop.tracking.jsonl import Journal, Record, unsent_records
from gradloop.tracking.remote import is_permanent

log = logging.getLogger("gradloop.tracking")

MAX_POINTS_PER_REQUEST = 5000  # per call to the store's process (it splits what MLflow limits)
POLL_SECONDS = 0.25  # how often an idle sender looks at its queue
# How long the end of a run waits, beyond its flush timeout, for a store that is still being
# opened (not down: a new sqlite file's tables take seconds of CPU, many on a busy machine).
OPENING_SECONDS = 120.0


@dataclass
class Op:
    """One non-metric call, JSON-able: it can wait in tracking.json for `gradloop sync`."""

    name: str
    args: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "args": self.args}


def line_requests(records: list[Record], limit: int = MAX_POINTS_PER_REQUEST) -> list[tuple[bytes, list[int], int]]:
    """Group whole records into requests of <= limit points: each is the records' journal
    lines (the store's process parses them; this process builds no Metric), the seqs it
    completes and its number of points. A record above the limit travels alone."""
    requests: list[tuple[bytes, list[int], int]] = []
    lines: list[bytes] = []
    seqs: list[int] = []
    points = 0
    for r in records:
        n = len(r.metrics)
        if lines and points + n > limit:
            requests.append((b"\n".join(lines), seqs, points))
            lines, seqs, points = [], [], 0
        lines.append(r.to_line())
        seqs.append(r.seq)
        points += n
    if lines:
        requests.append((b"\n".join(lines), seqs, points))
    return requests


@dataclass
class SendReport:
    run_id: str | None
    sent_points: int
    unsent_records: int
    unsent_points: int
    failed_requests: int
    pending_ops: list[Op]
    abandoned: bool
    store_down: bool


class Sender:
    """Owns the store's client on a daemon thread; see the module docstring.

    `run` describes the run to create (or, with "run_id", to reopen), as
    mlflow_store.start_run takes it; `on_run({"run_id", "experiment_id"})` is called on the
    sender's thread once the store has it."""

    def __init__(
        self,
        client: Any,
        run: dict[str, Any],
        journal: Journal,
        *,
        on_run: Callable[[dict[str, str]], None] | None = None,
        max_queue: int = 10_000,
        max_points: int = MAX_POINTS_PER_REQUEST,
        max_backoff: float = 5.0,
        catch_up: bool = False,
    ):
        self.client, self.journal, self._run_spec, self._on_run = client, journal, run, on_run
        self.run_id: str | None = None
        self.max_points, self.max_backoff = max_points, max_backoff
        # A deque, not a queue.Queue: the consumer polls (see _loop), so the queue needs no lock
        # or condition, and append/popleft are atomic; put_nowait's locking cost the training
        # thread several microseconds per logging window.
        self._q: collections.deque[Record | Op] = collections.deque()
        self._max_queue = max_queue
        self._closing = threading.Event()
        self._wake = threading.Event()
        self._created = threading.Event()
        self._deadline: float | None = None
        self._pending_ops: list[Op] = []
        self._ops_lock = threading.Lock()
        self._catch_up = catch_up  # a resumed run: send what the earlier process left unsent
        self.sent_points = 0
        self.dropped_records = 0
        self.failed_requests = 0
        self.abandoned = False
        self.down = False  # the last request failed and waits for a retry
        self.last_error: str | None = None
        self._thread = threading.Thread(target=self._loop, name="gradloop-mlflow-sender", daemon=True)
        self._thread.start()

    # -- training thread ----------------------------------------------------------------
    def submit(self, record: Record) -> None:
        if len(self._q) < self._max_queue:
            self._q.append(record)
        else:
            self.dropped_records += 1  # still in metrics.jsonl; re-read before closing

    def wake(self) -> None:
        """Send what was submitted now, not at the sender's next look at its queue (the
        observer calls it once per write pass, not per record)."""
        self._wake.set()

    def submit_op(self, op: Op) -> None:
        with self._ops_lock:
            self._pending_ops.append(op)
        # Ops are rare (start and end of a run) and never dropped: they may pass the bound.
        self._q.append(op)
        self._wake.set()

    def close(self, timeout: float) -> SendReport:
        """Send what is queued, giving up `timeout` seconds from now, or at once when the store
        is known to be down; report what is left."""
        limit = time.monotonic() + max(timeout, 0.0) + OPENING_SECONDS
        while not self._created.wait(0.05) and not self.down and self._thread.is_alive():
            if time.monotonic() >= limit:
                break
        self._deadline = time.monotonic() + (0.0 if self.down else max(timeout, 0.0))
        self._closing.set()
        self._wake.set()
        self._thread.join(max(self._deadline - time.monotonic(), 0.0) + 1.0)
        if self._thread.is_alive():
            self.abandoned = True  # stuck in one request; whatever it finishes is still recorded
            kill = getattr(self.client, "kill", None)
            if kill is not None:
                kill()  # the next call starts a fresh store process
        # What the report counts as unsent is read back from the file: the journal's buffered
        # lines (written within the last second) must be in it.
        self.journal.flush()
        left = unsent_records(self.journal.path.parent)
        with self._ops_lock:
            pending = list(self._pending_ops)
        return SendReport(
            run_id=self.run_id,
            sent_points=self.sent_points,
            unsent_records=len(left),
            unsent_points=sum(len(r.metrics) for r in left),
            failed_requests=self.failed_requests,
            pending_ops=pending,
            abandoned=self.abandoned,
            store_down=self.down,
        )

    # -- sender thread ------------------------------------------------------------------
    def _loop(self) -> None:
        try:
            if not self._create():
                return
            if self._catch_up and not self._send(unsent_records(self.journal.path.parent)):
                return
            self._drain()
        except Exception as exc:  # a bug here must not take training down; the journal has it all
            log.exception("tracking sender stopped: %s", exc)

    def _create(self) -> bool:
        started: dict[str, str] = {}

        def create() -> None:
            started.update(self.client.start_run(self._run_spec))
            self.run_id = started["run_id"]

        if self._retry(create) != "ok":
            return False
        if self._on_run is not None:
            self._on_run(started)
        self._created.set()
        return True

    def _drain(self) -> None:
        pending: list[Record] = []
        npoints = 0
        while True:
            closing = self._closing.is_set()
            try:
                item: Record | Op | None = self._q.popleft()
            except IndexError:
                item = None
            if isinstance(item, Record):
                pending.append(item)
                npoints += len(item.metrics)
            # Records come a second's worth at once (the observer's write pass), so a drained
            # queue means the batch is complete: waiting longer would only leave more for the
            # end of the run to wait for.
            due = bool(pending) and (npoints >= self.max_points or isinstance(item, Op) or item is None)
            if due:
                if not self._send(pending):
                    return
                pending, npoints = [], 0
            if isinstance(item, Op) and not self._do_op(item):
                return
            if closing and item is None and not pending:
                if self.dropped_records:
                    self._send(unsent_records(self.journal.path.parent))
                return
            if item is None and not closing:
                # Sleep on an event instead of blocking in queue.get(): a consumer blocked in
                # get() is woken by every put(), once per logging window, and each wake-up
                # takes the GIL from the training thread in the middle of a step. `wake`, ops
                # and close() set the event, so they are still handled at once.
                self._wake.wait(POLL_SECONDS)
                self._wake.clear()

    def _send(self, records: list[Record]) -> bool:
        for lines, seqs, points in line_requests(records, self.max_points):
            outcome = self._retry(functools.partial(self.client.log_lines, self.run_id, lines))
            if outcome == "abandoned":
                return False
            if outcome == "ok":
                self.journal.mark_sent(seqs)
                self.sent_points += points
        return True

    def _do_op(self, op: Op) -> bool:
        outcome = self._retry(lambda: self.client.op(self.run_id, op.name, op.args))
        if outcome == "abandoned":
            return False
        with self._ops_lock:
            if op in self._pending_ops:
                self._pending_ops.remove(op)
        return True

    def _retry(self, call: Callable[[], Any]) -> Literal["ok", "failed", "abandoned"]:
        delay = 0.1
        while True:
            try:
                call()
                self.down = False
                return "ok"
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                if is_permanent(exc):
                    self.failed_requests += 1
                    log.warning("MLflow refused a tracking request (not retried): %s", str(exc)[:300])
                    return "failed"
                self.down = True
                log.debug("tracking request failed, retrying in %.1fs: %s", delay, exc)
            # At the end of the run a store that fails is down: the end does not wait for it
            # (the journal has every point, for `gradloop sync`), whether it was known down when
            # close() began or failed while close() waited for a request in flight.
            if self._deadline is not None and (self.down or time.monotonic() >= self._deadline):
                self.abandoned = True
                return "abandoned"
            if self._deadline is None:
                self._closing.wait(delay)  # close() wakes it, so the deadline is honoured promptly
            else:
                time.sleep(min(delay, max(self._deadline - time.monotonic(), 0.0)))
            delay = min(delay * 2, self.max_backoff)

"""The background sender: a bounded queue, batches of <= 1000 metrics, retries with backoff.

The training thread only ever calls `submit` (an append) and `submit_op`; it never waits on
the network or the database. When the queue is full (the server has been down a long time)
a record is dropped from the queue only: it is already in metrics.jsonl, and the sender
re-reads the journal's unacknowledged records before it closes. Records arriving within
`flush_interval` are coalesced into one log_batch request (MLflow accepts at most 1000
metrics per request), so the store sees a request a second, not one per logging window.

Operations (params, tags, artifacts, the final status) travel through the same queue so that
they keep their order with the metrics; the JSON-able ones that could not be done before
`close`'s deadline are handed back, and the observer keeps them for `gradloop sync`.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from gradloop.tracking.jsonl import Journal, Record, unsent_records
from gradloop.tracking.remote import RemoteClient

log = logging.getLogger("gradloop.tracking")

MAX_METRICS_PER_REQUEST = 1000
POLL_SECONDS = 0.25  # how often an idle sender looks at its queue
MAX_PARAMS_PER_REQUEST = 100
MAX_TAGS_PER_REQUEST = 100

# MLflow error codes that a retry cannot fix: sending the same request again would fail again.
PERMANENT_CODES = frozenset(
    {
        "INVALID_PARAMETER_VALUE",
        "RESOURCE_DOES_NOT_EXIST",
        "INVALID_STATE",
        "PERMISSION_DENIED",
        "UNAUTHENTICATED",
        "BAD_REQUEST",
        "RESOURCE_ALREADY_EXISTS",
        "FEATURE_DISABLED",
    }
)


@dataclass
class Op:
    """One non-metric call. Named ops are JSON-able (they can wait in tracking.json for sync);
    an op with `fn` (e.g. log_model, which needs the live model) cannot be deferred."""

    name: str
    args: dict[str, Any] = field(default_factory=dict)
    fn: Callable[[MlflowClient, str], Any] | None = None

    @property
    def persistable(self) -> bool:
        return self.fn is None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "args": self.args}


def run_op(client: MlflowClient, run_id: str, op: Op) -> None:
    """Perform one op against MLflow (used by the sender and by `gradloop sync`)."""
    a = op.args
    if op.fn is not None:
        op.fn(client, run_id)
    elif op.name == "log_params":
        items = [Param(k, v) for k, v in a["params"].items()]
        for i in range(0, len(items), MAX_PARAMS_PER_REQUEST):
            client.log_batch(run_id, params=items[i : i + MAX_PARAMS_PER_REQUEST], synchronous=True)
    elif op.name == "set_tags":
        items = [RunTag(k, v) for k, v in a["tags"].items()]
        for i in range(0, len(items), MAX_TAGS_PER_REQUEST):
            client.log_batch(run_id, tags=items[i : i + MAX_TAGS_PER_REQUEST], synchronous=True)
    elif op.name == "log_artifact":
        if Path(a["local_path"]).exists():
            client.log_artifact(run_id, a["local_path"], a.get("artifact_path"))
    elif op.name == "log_artifacts":
        if Path(a["local_dir"]).is_dir():
            client.log_artifacts(run_id, a["local_dir"], a.get("artifact_path"))
    elif op.name == "set_terminated":
        client.set_terminated(run_id, a["status"])
    else:
        raise ValueError(f"unknown tracking op {op.name!r}")


def is_permanent(exc: BaseException) -> bool:
    return isinstance(exc, MlflowException) and exc.error_code in PERMANENT_CODES


def metric_requests(
    records: list[Record], limit: int = MAX_METRICS_PER_REQUEST
) -> list[tuple[list[Metric], list[int]]]:
    """Split records into requests of <= limit metrics; each carries the seqs it completes."""
    requests: list[tuple[list[Metric], list[int]]] = []
    batch: list[Metric] = []
    done: list[int] = []
    for r in records:
        for key, value in r.metrics.items():
            if len(batch) >= limit:
                requests.append((batch, done))
                batch, done = [], []
            batch.append(Metric(key, value, r.ts, r.step))
        done.append(r.seq)  # complete only once its last metric is in a sent request
    if batch or done:
        requests.append((batch, done))
    return requests


def line_requests(records: list[Record], limit: int = MAX_METRICS_PER_REQUEST) -> list[tuple[bytes, list[int], int]]:
    """Group whole records into requests of <= limit metrics for a RemoteClient: each is the
    records' journal lines (the child process parses them; this process builds no Metric), the
    seqs it completes and its number of points. A record above the limit travels alone
    (MlflowClient.log_batch in the child splits it into requests MLflow accepts)."""
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
    sent_points: int
    unsent_records: int
    unsent_points: int
    failed_requests: int
    pending_ops: list[Op]
    abandoned: bool


class Sender:
    """Owns the MLflow client on a daemon thread; see the module docstring."""

    def __init__(
        self,
        client: MlflowClient,
        run_id: str,
        journal: Journal,
        *,
        max_queue: int = 10_000,
        flush_interval: float = 1.0,
        max_batch: int = MAX_METRICS_PER_REQUEST,
        max_backoff: float = 5.0,
        local_client: MlflowClient | None = None,
    ):
        # `client` may be a RemoteClient (another process); ops that carry a function of live
        # objects (log_model) run here, with `local_client`.
        self.client, self.run_id, self.journal = client, run_id, journal
        self.local_client = local_client or client
        self.flush_interval, self.max_batch, self.max_backoff = flush_interval, max_batch, max_backoff
        # A deque, not a queue.Queue: the consumer polls (see _run), so the queue needs no lock
        # or condition, and append/popleft are atomic; put_nowait's locking cost the training
        # thread several microseconds per logging window.
        self._q: collections.deque[Record | Op] = collections.deque()
        self._max_queue = max_queue
        self._closing = threading.Event()
        self._wake = threading.Event()
        self._deadline: float | None = None
        self._pending_ops: list[Op] = []
        self._ops_lock = threading.Lock()
        self.sent_points = 0
        self.dropped_records = 0
        self.failed_requests = 0
        self.abandoned = False
        self.last_error: str | None = None
        self._thread = threading.Thread(target=self._run, name=f"gradloop-mlflow-{run_id[:8]}", daemon=True)
        self._thread.start()

    # -- training thread ----------------------------------------------------------------
    def submit(self, record: Record) -> None:
        if len(self._q) < self._max_queue:
            self._q.append(record)
        else:
            self.dropped_records += 1  # still in metrics.jsonl; re-read before closing

    def submit_op(self, op: Op) -> None:
        with self._ops_lock:
            self._pending_ops.append(op)
        # Ops are rare (start and end of a run) and never dropped: they may pass the bound.
        self._q.append(op)
        self._wake.set()

    def close(self, timeout: float) -> SendReport:
        """Send what is queued, giving up `timeout` seconds from now; report what is left."""
        self._deadline = time.monotonic() + max(timeout, 0.0)
        self._closing.set()
        self._wake.set()
        self._thread.join(timeout + 1.0)
        if self._thread.is_alive():
            self.abandoned = True  # stuck in one request; whatever it finishes is still recorded
            kill = getattr(self.client, "kill", None)
            if kill is not None:
                kill()  # a RemoteClient starts a fresh child on its next call
        left = unsent_records(self.journal.path.parent)
        with self._ops_lock:
            pending = list(self._pending_ops)
        return SendReport(
            sent_points=self.sent_points,
            unsent_records=len(left),
            unsent_points=sum(len(r.metrics) for r in left),
            failed_requests=self.failed_requests,
            pending_ops=pending,
            abandoned=self.abandoned,
        )

    # -- sender thread ------------------------------------------------------------------
    def _run(self) -> None:
        pending: list[Record] = []
        npoints = 0
        first = 0.0
        try:
            while True:
                closing = self._closing.is_set()
                try:
                    item: Record | Op | None = self._q.popleft()
                except IndexError:
                    item = None
                if isinstance(item, Record):
                    if not pending:
                        first = time.monotonic()
                    pending.append(item)
                    npoints += len(item.metrics)
                due = bool(pending) and (
                    npoints >= self.max_batch
                    or closing
                    or isinstance(item, Op)
                    or time.monotonic() - first >= self.flush_interval
                )
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
                    # Sleep on an event instead of blocking in queue.get(): a consumer blocked
                    # in get() is woken by every put(), once per logging window, and each
                    # wake-up takes the GIL from the training thread in the middle of a step.
                    # Ops and close() set the event, so they are still handled at once.
                    wait = self.flush_interval - (time.monotonic() - first) if pending else POLL_SECONDS
                    self._wake.wait(min(max(wait, 0.001), POLL_SECONDS))
                    self._wake.clear()
        except Exception as exc:  # a bug here must not take training down; the journal has it all
            log.exception("tracking sender stopped: %s", exc)

    def _send(self, records: list[Record]) -> bool:
        if isinstance(self.client, RemoteClient):
            requests = [
                (lambda lines=lines: self.client.log_journal_lines(self.run_id, lines), seqs, n)
                for lines, seqs, n in line_requests(records, self.max_batch)
            ]
        else:
            requests = [
                (
                    lambda m=metrics: self.client.log_batch(self.run_id, metrics=m, synchronous=True) if m else None,
                    seqs,
                    len(metrics),
                )
                for metrics, seqs in metric_requests(records, self.max_batch)
            ]
        for call, seqs, points in requests:
            outcome = self._retry(call)
            if outcome == "abandoned":
                return False
            if outcome == "ok":
                self.journal.mark_sent(seqs)
                self.sent_points += points
        return True

    def _do_op(self, op: Op) -> bool:
        client = self.local_client if op.fn is not None else self.client
        outcome = self._retry(lambda: run_op(client, self.run_id, op))
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
                return "ok"
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                if is_permanent(exc):
                    self.failed_requests += 1
                    log.warning("MLflow refused a tracking request (not retried): %s", str(exc)[:300])
                    return "failed"
                log.debug("tracking request failed, retrying in %.1fs: %s", delay, exc)
            if self._deadline is not None and time.monotonic() >= self._deadline:
                self.abandoned = True
                return "abandoned"
            if self._deadline is None:
                self._closing.wait(delay)  # close() wakes it, so the deadline is honoured promptly
            else:
                time.sleep(min(delay, max(self._deadline - time.monotonic(), 0.0)))
            delay = min(delay * 2, self.max_backoff)

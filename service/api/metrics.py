"""Prometheus metrics of one app: HTTP requests and latencies, jobs by state, queue depth, job
durations. Each app has its own CollectorRegistry, so two apps in one process (tests) never
share counters. Under `serve --workers N`, prometheus_client's multiprocess mode (the
PROMETHEUS_MULTIPROC_DIR that serve sets) adds up every process's counters, so /metrics gives
the same totals whichever process answers."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gradloop.jobs.records import JobRecord
from gradloop.jobs.store import JobStore


class _JobStateCollector:
    """Reads job counts from the store at scrape time: the database is the truth, not a counter
    this process happened to see (other service processes share the queue)."""

    def __init__(self, store_of: Any):
        self.store_of = store_of

    def collect(self) -> Iterable[GaugeMetricFamily]:
        store: JobStore | None = self.store_of()
        if store is None:
            return []
        counts = store.counts()
        jobs = GaugeMetricFamily("gradloop_jobs", "Jobs in the store by state", labels=["state"])
        for state, n in sorted(counts.items()):
            jobs.add_metric([state], n)
        depth = GaugeMetricFamily("gradloop_queue_depth", "Jobs waiting to be claimed")
        depth.add_metric([], counts.get("queued", 0))
        return [jobs, depth]


class ServiceMetrics:
    def __init__(self, store_of: Any):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "gradloop_http_requests", "HTTP requests", ["method", "route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "gradloop_http_request_duration_seconds",
            "HTTP request latency",
            ["method", "route"],
            registry=self.registry,
            buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.job_duration = Histogram(
            "gradloop_job_duration_seconds",
            "Job run time from start to end",
            ["status"],
            registry=self.registry,
            buckets=(1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 12 * 3600, 48 * 3600),
        )
        self.client_disconnects = Counter(
            "gradloop_http_client_disconnects",
            "Requests cut short by the client: gone mid-body (disconnect), or too slow (header_timeout, body_timeout)",
            ["reason"],
            registry=self.registry,
        )
        self._jobs = _JobStateCollector(store_of)
        self.registry.register(self._jobs)

    def exposition(self) -> bytes:
        """The text format of every metric (all processes' under multiprocess mode)."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            registry.register(self._jobs)
            return generate_latest(registry)
        return generate_latest(self.registry)

    def client_left(self, reason: str) -> None:
        self.client_disconnects.labels(reason).inc()

    def job_ended(self, job: JobRecord) -> None:
        if job.started_at is not None and job.finished_at is not None:
            self.job_duration.labels(job.status).observe(max(0.0, job.finished_at - job.started_at))


class MetricsMiddleware:
    def __init__(self, app: ASGIApp, metrics: ServiceMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            # The route template (/v1/jobs/{job_id}), never the raw path: bounded label values.
            label = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(scope["method"], label, str(status)).inc()
            self.metrics.latency.labels(scope["method"], label).observe(time.perf_counter() - start)

"""The FastAPI app of the job service: create_app(settings) wires the store, the worker pool,
auth, the body limit, problem+json errors and metrics around the routers.

Routes live in job_routes.py (/v1/jobs...) and ops_routes.py (/v1/plugins..., /healthz, /readyz,
/metrics). The app holds its state on `app.state` (settings, store, pool, metrics): nothing is
global, so tests can build as many apps as they like. The API knows nothing of torch beyond the
config schema; it is imported here only through the plugin registry, for option models.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from fastapi import FastAPI

from gradloop import __version__, registry
from gradloop.api.guard import BodyLimitMiddleware
from gradloop.api.job_routes import router as jobs_router
from gradloop.api.metrics import MetricsMiddleware, ServiceMetrics
from gradloop.api.ops_routes import docs_router, ops_router, plugins_router
from gradloop.api.pool_lock import PoolLock
from gradloop.api.problems import install_problem_handlers
from gradloop.api.settings import ServiceSettings
from gradloop.api.timeouts import CLIENT_LEFT_HOOK, install_disconnect_handler
from gradloop.jobs.pool import PoolSettings, WorkerPool
from gradloop.jobs.store import JobStore
from gradloop.jobs.worker import WorkerSettings

PARSE_THREADS = 4


def default_slots() -> tuple[int, list[str]]:
    """One job per visible GPU, else one; the GPUs as CUDA_VISIBLE_DEVICES values. (Jobs at once;
    the processes at once are host_slots'.)"""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        gpus = [g.strip() for g in visible.split(",") if g.strip() and g.strip() != "-1"]
    else:
        try:
            import torch  # the app's one use of torch, only when CUDA_VISIBLE_DEVICES says nothing

            gpus = [str(i) for i in range(torch.cuda.device_count())]
        except Exception:
            gpus = []
    return (len(gpus) or 1), gpus


def host_slots(settings: ServiceSettings, gpus: list[str]) -> ServiceSettings:
    """`settings` with this host's slots filled in: --slots, else one per visible GPU, else one
    per CPU; and --max-procs-per-job, else the slots (a job that could never fit is refused)."""
    slots = settings.slots or len(gpus) or os.cpu_count() or 1
    limit = settings.limits.max_procs_per_job or slots
    return settings.model_copy(
        update={"slots": slots, "limits": settings.limits.model_copy(update={"max_procs_per_job": limit})}
    )


def _load_plugins() -> None:
    for kind in registry.KINDS:
        registry.registry(kind).names()


def create_app(settings: ServiceSettings | None = None, *, pool_lock: Path | None = None) -> FastAPI:
    """pool_lock: run the job pool only if this process takes that file lock (several API
    processes of one service, see api/workers.py); without it, the pool always runs here."""
    cfg: ServiceSettings = (settings or ServiceSettings()).resolved()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        nonlocal cfg
        assert cfg.db and cfg.jobs_dir
        db_url = cfg.db
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        cfg.jobs_dir.mkdir(parents=True, exist_ok=True)
        store = JobStore(cfg.db, checkpoint_thread=True)
        await anyio.to_thread.run_sync(store.migrate)
        # Plugins load on first use; loading them now keeps that import time out of the first
        # submissions, which would otherwise all wait on it at once.
        await anyio.to_thread.run_sync(_load_plugins)
        app.state.store = store
        pool = None
        slots, gpus = default_slots()
        # The submit route's policy reads the limits from here: --max-procs-per-job's default too.
        app.state.settings = cfg = host_slots(cfg, gpus)
        max_concurrent = cfg.max_concurrent if cfg.max_concurrent is not None else slots
        lock = None
        if max_concurrent > 0 and pool_lock is not None:
            lock = PoolLock(pool_lock)
            if not lock.acquire():  # another process of this service runs the jobs
                lock, max_concurrent = None, 0
                app.state.pool_elsewhere = True
        if max_concurrent > 0:
            pool = WorkerPool(
                store,
                WorkerSettings(
                    db_url=db_url,
                    jobs_dir=str(cfg.jobs_dir),
                    data_root=str(cfg.data_root),
                    tracking_uri=cfg.tracking_uri,
                    allowed_tracking_uris=tuple(cfg.allowed_tracking_uris),
                    limits=cfg.limits.model_dump(),
                    max_log_bytes=cfg.max_log_bytes,
                ),
                PoolSettings(
                    max_concurrent=max_concurrent,
                    slots=cfg.slots,
                    lease_s=cfg.lease_s,
                    cancel_grace_s=cfg.cancel_grace_s,
                    gpus=gpus,
                    worker_id=cfg.worker_id or "",
                ),
                on_job_end=metrics.job_ended,
            )
            await anyio.to_thread.run_sync(pool.start)
        app.state.pool = pool
        try:
            # Lifespan state reaches the server: its protocol counts slow clients it cuts off.
            yield {CLIENT_LEFT_HOOK: metrics.client_left}
        finally:
            app.state.draining = True
            if pool is not None:
                await anyio.to_thread.run_sync(pool.stop)
            if lock is not None:
                lock.release()
            store.close()

    app = FastAPI(
        title="gradloop job service",
        version=__version__,
        description="Submit, watch, cancel and inspect PyTorch training jobs; every run logs to MLflow.",
        lifespan=lifespan,
        openapi_url=None,  # served by docs_router, behind the operator's guard
        docs_url=None,
        redoc_url=None,
    )
    # Read at scrape time: the lifespan above puts the store on the app once it is open.
    metrics = ServiceMetrics(lambda: getattr(app.state, "store", None))
    app.state.settings = cfg
    app.state.metrics = metrics
    app.state.store = None
    app.state.pool = None
    app.state.pool_elsewhere = False
    app.state.draining = False
    # Config parsing's own worker threads: a burst of large bodies queues here instead of
    # taking every thread of the pool that the plain `def` routes (health, reads) run in.
    app.state.parse_limiter = anyio.CapacityLimiter(PARSE_THREADS)
    install_problem_handlers(app)
    install_disconnect_handler(app, metrics.client_left)
    app.include_router(jobs_router)
    app.include_router(plugins_router)
    app.include_router(ops_router)
    app.include_router(docs_router)
    # The last added is outermost: metrics see every answer, 413s included; the body limit
    # answers before any route reads the body.
    app.add_middleware(BodyLimitMiddleware, limit=cfg.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app

"""Everything that calls MLflow: the client for a store, the run's creation, metric lines, ops.

This is the one module of the package that imports MLflow, and only the store's process
(remote) and `gradloop sync` import it: the training process never pays for MLflow.

The sqlite store: several processes may open one file at once (runs side by side, the job
service's workers); its first use creates MLflow's tables, which is not safe to race, so it
happens under an exclusive file lock, and the file is switched to WAL so that readers (the UI)
and one writer do not block each other. Metric lines go to a SQL store in one bulk INSERT per
request (SQLAlchemy core, duplicates ignored), which costs a fraction of MLflow's per-point
ORM objects (see docs/benchmarks.md); any other store gets MlflowClient.log_batch.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from gradloop.filelock import FileLock
from gradloop.tracking import resolve_uri, sqlite_path
from gradloop.tracking.jsonl import Record

__all__ = ["resolve_uri", "sqlite_path", "open_client", "experiment_id", "start_run", "log_lines", "run_op"]

log = logging.getLogger("gradloop.tracking")

MAX_PARAMS_PER_REQUEST = 100
MAX_TAGS_PER_REQUEST = 100

_prepared: set[str] = set()
_prepared_lock = threading.Lock()


def http_defaults() -> None:
    """Fail fast on an unreachable server: the sender retries with its own backoff.

    MLflow's own HTTP retries (7 tries, exponential) would hold the sender for minutes on one
    request; a user who set these variables keeps their values.
    """
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


def open_client(uri: str) -> MlflowClient:
    """A client for `uri`; a sqlite file is created (tables, WAL) once, under a file lock."""
    http_defaults()
    path = sqlite_path(uri)
    if path is None:
        return MlflowClient(tracking_uri=uri)
    with _prepared_lock:
        if uri in _prepared:
            return MlflowClient(tracking_uri=uri)
        with file_lock(path):
            client = MlflowClient(tracking_uri=uri)
            client.search_experiments(max_results=1)  # forces the store (and its tables) into being
            _enable_wal(path)
        _prepared.add(uri)
    return client


def experiment_id(client: MlflowClient, name: str, uri: str) -> str:
    """The id of experiment `name`, created when missing (safe when several runs race)."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    path = sqlite_path(uri)
    # MLflow's default artifact root for a sqlite store is ./mlruns in the *current* directory;
    # keep artifacts next to the database instead, so the store is one self-contained folder.
    location = (path.resolve().parent / "mlruns").as_uri() if path is not None else None
    lock = file_lock(path) if path is not None else contextlib.nullcontext()
    with lock:
        exp = client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        try:
            return client.create_experiment(name, artifact_location=location)
        except MlflowException:
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id


def start_run(client: MlflowClient, uri: str, spec: dict[str, Any]) -> dict[str, str]:
    """Create the run `spec` describes (experiment, run_name, tags), or reopen `spec["run_id"]`
    (a resume: RUNNING again; params it has already are not logged twice, MLflow refuses a
    changed one); then log its params. Returns {"run_id", "experiment_id"}."""
    params: dict[str, str] = dict(spec.get("params") or {})
    run_id = spec.get("run_id")
    if run_id:
        run = client.get_run(run_id)
        if run.info.status != "RUNNING":
            client.update_run(run_id, status="RUNNING")
        params = {k: v for k, v in params.items() if k not in run.data.params}
        exp = run.info.experiment_id
    else:
        exp = experiment_id(client, spec["experiment"], uri)
        run_id = client.create_run(exp, tags=spec.get("tags") or {}, run_name=spec.get("run_name")).info.run_id
    run_op(client, run_id, "log_params", {"params": params})
    if spec.get("resume_tags"):
        run_op(client, run_id, "set_tags", {"tags": spec["resume_tags"]})
    return {"run_id": run_id, "experiment_id": exp}


def log_lines(client: MlflowClient, run_id: str, lines: bytes) -> int:
    """Log metrics.jsonl lines (one record per line) as the run's metrics; returns the points.

    A point sent twice (the same key, step, timestamp and value: `gradloop sync` after a
    request whose answer was lost) is stored once."""
    records = [Record.from_line(line) for line in lines.split(b"\n") if line.strip()]
    store = client._tracking_client.store
    # MLflow's SQL store brings SQLAlchemy: a client of a tracking server never imports it.
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    if isinstance(store, SqlAlchemyStore):
        return _bulk_insert(store, run_id, records)
    metrics = [Metric(key, value, r.ts, r.step) for r in records for key, value in r.metrics.items()]
    client.log_batch(run_id, metrics=metrics, synchronous=True)  # (split into requests of <= 1000)
    return len(metrics)


def _bulk_insert(store: Any, run_id: str, records: list[Record]) -> int:
    """One INSERT of many rows into MLflow's metrics table, then its latest_metrics, in one
    transaction, through the store's own session (its pragmas, its busy timeout)."""
    # SQL stores only (see log_lines): a client of a tracking server never imports these.
    from mlflow.store.tracking.dbmodels.models import SqlMetric
    from sqlalchemy import insert

    rows: list[dict[str, Any]] = []
    latest: dict[str, tuple[int, int, float, bool]] = {}
    for r in records:
        for key, raw in r.metrics.items():
            is_nan, value = store.sanitize_metric_value(raw)
            rows.append(
                {"run_uuid": run_id, "key": key, "value": value, "timestamp": r.ts, "step": r.step, "is_nan": is_nan}
            )
            point = (r.step, r.ts, value, is_nan)
            if key not in latest or point[:3] > latest[key][:3]:
                latest[key] = point
    if not rows:
        return 0
    table = SqlMetric.__table__
    stmt = insert(table)
    dialect = store.db_type
    if dialect == "sqlite":
        stmt = stmt.prefix_with("OR IGNORE")
    elif dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert  # PostgreSQL's dialect: only here

        stmt = pg_insert(table).on_conflict_do_nothing()
    elif dialect == "mysql":
        stmt = stmt.prefix_with("IGNORE")
    with store.ManagedSessionMaker(read_only=False) as session:
        store._check_run_is_active(store._get_run(run_uuid=run_id, session=session))
        session.execute(stmt, rows)
        newest = [
            SqlMetric(run_uuid=run_id, key=k, step=s, timestamp=ts, value=v, is_nan=nan)
            for k, (s, ts, v, nan) in latest.items()
        ]
        store._update_latest_metrics_if_necessary(newest, session)
        for m in newest:  # built for the comparison only: not rows of their own
            if m in session:
                session.expunge(m)
    return len(rows)


def run_op(client: MlflowClient, run_id: str, name: str, args: dict[str, Any]) -> None:
    """Perform one of the run's ops (params, tags, artifacts, plots, the model, the final status);
    the sender's store process and `gradloop sync` both call it."""
    if name == "log_params":
        params = [Param(k, v) for k, v in args["params"].items()]
        for i in range(0, len(params), MAX_PARAMS_PER_REQUEST):
            client.log_batch(run_id, params=params[i : i + MAX_PARAMS_PER_REQUEST], synchronous=True)
    elif name == "set_tags":
        tags = [RunTag(k, v) for k, v in args["tags"].items()]
        for i in range(0, len(tags), MAX_TAGS_PER_REQUEST):
            client.log_batch(run_id, tags=tags[i : i + MAX_TAGS_PER_REQUEST], synchronous=True)
    elif name == "log_artifact":
        if Path(args["local_path"]).exists():
            client.log_artifact(run_id, args["local_path"], args.get("artifact_path"))
    elif name == "log_artifacts":
        if Path(args["local_dir"]).is_dir():
            client.log_artifacts(run_id, args["local_dir"], args.get("artifact_path"))
    elif name == "log_plots":
        from gradloop.tracking import plots  # matplotlib: only at the end of a run

        directory = plots.draw(Path(args["journal"]), Path(args["local_dir"]), args.get("title", ""))
        if directory is not None:
            client.log_artifacts(run_id, str(directory), "plots")
    elif name == "log_figure":
        from gradloop.tracking import plots  # matplotlib: only at the end of a run

        if Path(args["data"]).exists():
            png = plots.matrix_png(Path(args["data"]), Path(args["local_path"]))
            client.log_artifact(run_id, str(png), args.get("artifact_path"))
    elif name == "log_model":
        from gradloop.tracking.modellog import log_model  # torch and mlflow.pytorch: only here

        log_model(client, run_id, args)
    elif name == "set_terminated":
        client.set_terminated(run_id, args["status"])
    else:
        raise ValueError(f"unknown tracking op {name!r}")


@contextlib.contextmanager
def file_lock(db_path: Path) -> Iterator[None]:
    lock = FileLock(str(db_path) + ".lock")
    try:
        with lock:
            yield
    finally:
        lock.close()


def _enable_wal(path: Path) -> None:
    conn = sqlite3.connect(str(path), timeout=30)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
    finally:
        conn.close()

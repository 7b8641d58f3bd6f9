"""Where a run's MLflow data goes: the tracking URI, a client for it, and the experiment.

The default store is MLflow's own default, sqlite:///mlflow.db in the working directory.
Several processes may open one sqlite file at once (four runs side by side, the job service's
workers): the first use of a file creates MLflow's tables, which is not safe to race, so it
happens under an exclusive file lock, and the file is switched to WAL so that readers (the UI)
and one writer do not block each other. Writes that still meet "database is locked" are
retried by the sender.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from gradloop.filelock import FileLock

DEFAULT_URI = "sqlite:///mlflow.db"

_prepared: set[str] = set()
_prepared_lock = threading.Lock()


def resolve_uri(uri: str | None) -> str:
    """tracking.uri, else $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working directory."""
    chosen = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    path = sqlite_path(chosen)
    if path is not None and not path.is_absolute():
        # Pin the file now: a later chdir (or a worker process) must still find the same store.
        chosen = "sqlite:///" + str(path.resolve())
    return chosen


def sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    rest = uri[len("sqlite:///") :].split("?", 1)[0]
    return None if rest in ("", ":memory:") else Path(rest)


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

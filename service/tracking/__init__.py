"""MLflow tracking for gradloop runs: losses, gradients and artifacts, off the training process.

The training process appends each logging window to the run's journal (metrics.jsonl) and hands
it to a sender thread; the store's own process (started first thing, so that MLflow's import and
the store's opening overlap with building the run) creates the MLflow run and writes to it.
The training process never imports MLflow. A run's end waits for its last metrics and final
status only: its artifacts (plots, histograms, the model) are logged by the store's process in
the background (`wait()` waits for them; tracking.json lists them as owed until then).

Module map (one job each):
- tracking_observer  MlflowObserver: what the trainer's calls become (the training thread's part)
- gradstats          gradient/update/weight norms on the device; host arithmetic per window
- metric_keys        metric keys as MLflow accepts them (torch-free: the job service uses it)
- windows            a logging window's values, held until the once-a-second write
- histograms         per-layer histograms: captured and counted with torch, one JSON file per step
- jsonl              the journal (metrics.jsonl, metrics.sent), written before anything is sent
- sender             the background thread: batches, retries, the end-of-run deadline
- remote             the store's process, the pipe to it, and the end-of-run ops it does in the background
- mlflow_store       every call to MLflow (only the store's process and `gradloop sync` import it)
- plots, modellog    end-of-run artifacts, made in the store's process
- mlflow_params      the config as MLflow params
- status             FINISHED / FAILED / KILLED, error tags, SIGTERM while a run is tracked
- state, sync        tracking.json (what is owed) and `gradloop sync RUN_DIR`
windows exists for speed only; docs/benchmarks.md ("What each optimisation saves") has what it
saves end to end, measured by bench/tracking.py --ab.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from gradloop.observer import NullObserver, Observer
from gradloop.tracking.remote import shared_client, wait_idle
from gradloop.tracking.state import TrackingState

if TYPE_CHECKING:
    from gradloop.config import RunConfig

__all__ = [
    "make_observer",
    "resolve_uri",
    "parent_run",
    "prestart",
    "sqlite_path",
    "run_url",
    "dashboard",
    "Dashboard",
    "DEFAULT_URI",
    "wait",
    "background_logger",
]

DEFAULT_URI = "sqlite:///mlflow.db"
LOCAL_UI = "http://127.0.0.1:5000"  # where `mlflow ui` listens by default

# The sweep's parent run, for runs built while a sweep trains its children: the runner builds
# observers without knowing about sweeps, and a context variable reaches it without a global.
_parent_run_id: ContextVar[str | None] = ContextVar("gradloop_parent_run_id", default=None)


@contextlib.contextmanager
def parent_run(run_id: str | None) -> Iterator[None]:
    """Runs tracked inside this block are nested under MLflow run `run_id`."""
    token = _parent_run_id.set(run_id)
    try:
        yield
    finally:
        _parent_run_id.reset(token)


def make_observer(
    config: RunConfig, run_dir: Path, job_id: str | None = None, parent_run_id: str | None = None
) -> Observer:
    """The observer that logs this run to MLflow, or one that does nothing when tracking is off."""
    if not config.tracking.enabled:
        return NullObserver()
    # torch and the observer's machinery: only for a tracked run (the CLI and the API import this package).
    from gradloop.tracking.tracking_observer import MlflowObserver

    parent = parent_run_id or _parent_run_id.get()
    return MlflowObserver(config, Path(run_dir), job_id=job_id, parent_run_id=parent)


def prestart(config: RunConfig) -> None:
    """Start the store's process for this config now (when tracking is on): it imports MLflow
    and opens the store while the caller builds the data and the model."""
    if config.tracking.enabled:
        shared_client(resolve_uri(config.tracking.uri))


def wait(timeout: float | None = None) -> bool:
    """Wait until MLflow has every tracked run of this process in full. A run's end hands its
    artifacts (plots, histograms, the model, logs) to the store process,
    which logs them in the background; `train()` returns without waiting for them. False when
    `timeout` passed first (they are still being logged; tracking.json lists what is owed)."""
    return wait_idle(timeout)


def background_logger(run_dir: Path) -> int | None:
    """The pid of the process still logging the run's end-of-run artifacts, or None when MLflow
    has them (or they are owed to `gradloop sync`: tracking.json's pending_ops says)."""
    state = TrackingState.load(Path(run_dir))
    if state is None or state.background_pid is None or not _alive(state.background_pid):
        return None  # (one that died left what it did not do in pending_ops)
    return state.background_pid


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's
    try:  # a zombie (dead, not yet reaped by its parent) answers the signal too
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True  # (no /proc: trust the signal)


def resolve_uri(uri: str | None = None) -> str:
    """tracking.uri, else $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working directory."""
    chosen = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    path = sqlite_path(chosen)
    if path is not None and not path.is_absolute():
        # Pin the file now: a later chdir (or a worker process) must still find the same store.
        chosen = "sqlite:///" + str(path.resolve())
    return chosen


def sqlite_path(uri: str) -> Path | None:
    """The file of a sqlite:/// URI (None for any other store, or an in-memory one)."""
    if not uri.startswith("sqlite:///"):
        return None
    rest = uri[len("sqlite:///") :].split("?", 1)[0]
    return None if rest in ("", ":memory:") else Path(rest)


def run_url(ui: str, experiment_id: str, run_id: str) -> str:
    """A run's model-metrics charts in MLflow's UI at `ui`. (MLflow 3's UI opens an experiment
    in its GenAI view, traces and token usage; this address lands on the run's training charts.)"""
    return f"{ui.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}/model-metrics"


@dataclass(frozen=True)
class Dashboard:
    """Where a run's charts are: the address, and the command that serves it when nothing does."""

    url: str
    command: str | None = None


def dashboard(run_dir: Path) -> Dashboard | None:
    """The way into a tracked run's charts, from its tracking.json: for a local sqlite store, the
    address `mlflow ui` serves and the command to start it; for a tracking server, its own
    address. None when the run is not in MLflow (yet) or the store has no web address."""
    state = TrackingState.load(Path(run_dir))
    if state is None or not state.run_id or not state.experiment_id:
        return None
    if sqlite_path(state.uri) is not None:
        return Dashboard(
            run_url(LOCAL_UI, state.experiment_id, state.run_id), f"mlflow ui --backend-store-uri {state.uri}"
        )
    if state.uri.startswith(("http://", "https://")):
        return Dashboard(run_url(state.uri, state.experiment_id, state.run_id))
    return None

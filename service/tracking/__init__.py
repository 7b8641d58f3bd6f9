"""MLflow tracking for gradloop runs: losses, gradients and artifacts, off the training thread.

`make_observer` is the one entry point the runner uses; `sync.sync_run_dir` is what
`gradloop sync RUN_DIR` calls. Module map: observer (the trainer's calls), gradstats and
histograms (device-side statistics), updatering (per-layer norms of CPU runs, in batches of
windows), histfile (histogram files, numpy counting), jsonl (the
local journal, written first), sender (the background thread), remote (the store's child
process), params, plots, status, state (tracking.json), store (URI, sqlite), sync.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING

from gradloop.observer import NullObserver, Observer

if TYPE_CHECKING:
    from gradloop.config import RunConfig

__all__ = ["make_observer", "resolve_uri", "parent_run"]

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
    from gradloop.tracking.tracking_observer import MlflowObserver

    parent = parent_run_id or _parent_run_id.get()
    return MlflowObserver(config, Path(run_dir), job_id=job_id, parent_run_id=parent)


def resolve_uri(uri: str | None = None) -> str:
    from gradloop.tracking.mlflow_store import resolve_uri as _resolve

    return _resolve(uri)

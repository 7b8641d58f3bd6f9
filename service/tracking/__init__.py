"""MLflow tracking for gradloop runs: losses, gradients and artifacts, off the training thread.

`make_observer` is the one entry point the runner uses; `sync.sync_run_dir` is what
`gradloop sync RUN_DIR` calls. Module map: observer (the trainer's calls), gradstats and
histograms (device-side statistics), jsonl (the local journal, written first), sender (the
background thread), params, plots, status, state (tracking.json), store (URI, sqlite), sync.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..observer import NullObserver, Observer

if TYPE_CHECKING:
    from ..config import RunConfig

__all__ = ["make_observer", "resolve_uri"]


def make_observer(config: "RunConfig", run_dir: Path, job_id: str | None = None, parent_run_id: str | None = None) -> Observer:
    """The observer that logs this run to MLflow, or one that does nothing when tracking is off."""
    if not config.tracking.enabled:
        return NullObserver()
    from .observer import MlflowObserver

    return MlflowObserver(config, Path(run_dir), job_id=job_id, parent_run_id=parent_run_id)


def resolve_uri(uri: str | None = None) -> str:
    from .store import resolve_uri as _resolve

    return _resolve(uri)

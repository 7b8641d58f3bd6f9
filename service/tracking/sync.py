"""`gradloop sync RUN_DIR`: send what a run directory holds but MLflow does not.

Reads tracking.json (which run, which store, what is owed) and metrics.jsonl minus the
acknowledged ranges in metrics.sent; creates the run if it never reached MLflow, sends the
missing records the way the store's process does (mlflow_store.log_lines), performs the owed
ops (params, artifacts, plots, the model, the final status) and records what it did, so a
second sync sends nothing twice. It runs in this process: a sync has no training to protect.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from gradloop.errors import GradloopError
from gradloop.tracking import background_logger
from gradloop.tracking.jsonl import Journal, read_records, unsent_records
from gradloop.tracking.mlflow_store import log_lines, open_client, run_op, start_run
from gradloop.tracking.remote import is_permanent
from gradloop.tracking.sender import line_requests
from gradloop.tracking.state import TrackingState

BACKGROUND_WAIT_S = 120.0  # how long a sync waits for the run's own store process to finish


class SyncError(GradloopError):
    """A run directory cannot be synced (not a tracked run directory, or MLflow refuses)."""


@dataclass
class SyncReport:
    run_dir: Path
    run_id: str
    uri: str
    records_total: int = 0
    records_sent: int = 0  # sent by this sync
    points_sent: int = 0
    ops_done: list[str] = field(default_factory=list)
    created_run: bool = False
    status: str = ""

    @property
    def nothing_to_do(self) -> bool:
        return not (self.records_sent or self.ops_done or self.created_run)

    def __str__(self) -> str:
        if self.nothing_to_do:
            return f"{self.run_dir}: already in sync with MLflow run {self.run_id} ({self.records_total} records)"
        parts = [f"sent {self.points_sent} metric points ({self.records_sent} of {self.records_total} records)"]
        if self.created_run:
            parts.insert(0, "created the run")
        if self.ops_done:
            parts.append("did " + ", ".join(self.ops_done))
        return (
            f"{self.run_dir} -> MLflow run {self.run_id} at {self.uri}: " + "; ".join(parts) + f"; status {self.status}"
        )


def sync_run_dir(path: str | Path) -> SyncReport:
    run_dir = Path(path)
    state = TrackingState.load(run_dir)
    if state is None:
        raise SyncError(
            f"{run_dir} has no tracking.json; give the directory of a gradloop run "
            "(under output_dir, e.g. runs/<name>/<id>)"
        )
    state = _after_background(run_dir, state)
    try:
        client = open_client(state.uri)
        created = False
        if state.run_id is None or state.create is not None:
            spec = {"experiment": state.experiment, "run_name": state.run_name, **(state.create or {})}
            started = start_run(client, state.uri, spec)
            state.run_id, state.experiment_id, state.create = started["run_id"], started["experiment_id"], None
            created = "run_id" not in spec
            state.save(run_dir)
        report = SyncReport(run_dir, state.run_id, state.uri, created_run=created)
        final_status = state.status if state.status != "RUNNING" else None

        journal = Journal(run_dir)
        try:
            report.records_total = sum(1 for _ in read_records(journal.path))
            for lines, seqs, points in line_requests(unsent_records(run_dir)):
                log_lines(client, state.run_id, lines)
                journal.mark_sent(seqs)
                report.records_sent += len(seqs)
                report.points_sent += points
        finally:
            journal.close()

        remaining = list(state.pending_ops)
        if final_status and not any(op["name"] == "set_terminated" for op in remaining):
            if client.get_run(state.run_id).info.status == "RUNNING":
                remaining.append({"name": "set_terminated", "args": {"status": final_status}})
        # set_terminated goes last: the run must be open while the rest is logged.
        remaining.sort(key=lambda op: op["name"] == "set_terminated")
        while remaining:
            name, args = remaining[0]["name"], remaining[0].get("args", {})
            run_op(client, state.run_id, name, args)
            report.ops_done.append(name)
            remaining.pop(0)
            state.pending_ops = remaining
            state.save(run_dir)
        state.unsent_points = 0
        state.save(run_dir)
        report.status = client.get_run(state.run_id).info.status
        return report
    except SyncError:
        raise
    except Exception as exc:
        hint = "MLflow refused the data" if is_permanent(exc) else "is the tracking server up?"
        raise SyncError(
            f"could not sync {run_dir} to {state.uri} ({hint}): {type(exc).__name__}: {str(exc)[:300]}"
        ) from exc


def _after_background(run_dir: Path, state: TrackingState) -> TrackingState:
    """The run's store process may still be logging its end-of-run artifacts: doing them here
    too would log them twice. Wait for it, then read what it left owed."""
    deadline = time.monotonic() + BACKGROUND_WAIT_S
    while (pid := background_logger(run_dir)) is not None:
        if time.monotonic() >= deadline:
            raise SyncError(
                f"process {pid} is still logging {run_dir}'s end-of-run artifacts to MLflow; "
                "run the sync again once it has exited (or stop it first)"
            )
        time.sleep(0.2)
    return TrackingState.load(run_dir) or state

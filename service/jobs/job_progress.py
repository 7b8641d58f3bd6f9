"""JobProgressObserver: what a running job writes back to the job store, from its child process.

It sees the trainer's window metrics at the logging cadence (0-d tensors: `.item()` happens
only here, once per window) and writes progress (epoch, step, total steps, ETA), the latest
metrics and the MLflow run (looked up by its job-id tag) at most every `min_interval_s`, plus
always the first step, every checkpoint and the end. Each write is fenced by the job's attempt: once refused, the job no
longer belongs to this process, and the observer sets `stop_event` so the trainer stops. In a
job's own process (`exit_on_fence`) it ends the process at once instead: stopping normally would
write one more checkpoint and end the MLflow run, both of which now belong to the next attempt.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gradloop.jobs.records import Fence, StaleAttemptError
from gradloop.jobs.store import JobStore
from gradloop.observer import NullObserver, RunContext, RunStatus
from gradloop.tracking.metric_keys import metric_safe
from gradloop.tracking.state import TrackingState

EXIT_FENCED = 75  # EX_TEMPFAIL: the job goes on elsewhere


def _number(value: Any) -> float | None:
    try:
        return float(value.item()) if hasattr(value, "item") else float(value)
    except (TypeError, ValueError):
        return None


class JobProgressObserver(NullObserver):
    def __init__(
        self,
        store: JobStore,
        job_id: str,
        fence: Fence,
        *,
        stop_event: threading.Event | None = None,
        min_interval_s: float = 0.5,
        exit_on_fence: bool = False,
    ):
        self.store, self.job_id, self.fence = store, job_id, fence
        self.stop_event = stop_event
        self.exit_on_fence = exit_on_fence
        self.min_interval_s = min_interval_s
        self.total_steps = 0
        self.epochs = 1
        self.start_step = 0
        self.step = 0
        self.epoch = 0
        self.metrics: dict[str, float | None] = {}
        self.mlflow_run_id: str | None = None
        self.mlflow_experiment_id: str | None = None
        self.fenced = False
        self.status = "running"
        self._last_write = 0.0
        self._t_first: float | None = None
        self._step_first = 0
        self._ctx: RunContext | None = None

    # -- Observer -----------------------------------------------------------------------
    def start(self, ctx: RunContext) -> None:
        self.total_steps = ctx.total_steps
        self.epochs = ctx.config.trainer.epochs
        self.start_step = self.step = ctx.start_step
        self._ctx = ctx
        self.mlflow_run_id = ctx.mlflow_run_id
        if ctx.config.tracking.enabled:
            threading.Thread(
                target=self._find_mlflow_run, args=(ctx.config,), name="gradloop-job-run-lookup", daemon=True
            ).start()
        self._write(event=True, run_dir=str(ctx.run_dir))

    def wants_step_stats(self, step: int) -> bool:
        # The first step is reported even between logging steps: it marks "training started".
        return step == self.start_step + 1

    def after_optimizer_step(self, step: int, snapshot: Any, metrics: Mapping[str, Any]) -> None:
        self.step = step
        now = time.perf_counter()
        if self._t_first is None:
            self._t_first, self._step_first = now, step
        self._record(metrics)
        if metrics and "train/loss" not in metrics and "train/loss" in self.metrics:
            # A logging window whose every step was skipped has no loss; the last one is stale.
            self.metrics["train/loss"] = None
        epoch = self.metrics.get("epoch")
        if epoch is not None:
            self.epoch = int(epoch) + 1  # the trainer counts from 0; people from 1
        first = step == self.start_step + 1
        if first or step >= self.total_steps or now - self._last_write >= self.min_interval_s:
            self._write(event=True)

    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> None:
        self._record(metrics)
        self._write(event=True)

    def _record(self, metrics: Mapping[str, Any]) -> None:
        for key, value in metrics.items():
            number = _number(value)
            if number is not None:
                # The name MLflow has (train/lr/layers.0._). JSON has no NaN: a value that is not
                # finite is null, never the last finite one, which would read as current.
                self.metrics[metric_safe(key)] = number if math.isfinite(number) else None

    def log_checkpoint(self, path: Path, step: int) -> None:
        self._write(event=False, checkpoint_path=str(path))

    def finish(self, status: RunStatus, error: BaseException | None = None) -> None:
        self._write(event=True)

    # -- writing ------------------------------------------------------------------------
    def progress(self) -> dict[str, Any]:
        eta = None
        if self._t_first is not None and self.step > self._step_first:
            rate = (self.step - self._step_first) / (time.perf_counter() - self._t_first)
            eta = max(0.0, (self.total_steps - self.step) / rate) if rate > 0 else None
        return {
            "epoch": self.epoch,
            "epochs": self.epochs,
            "step": self.step,
            "total_steps": self.total_steps,
            "eta_s": eta,
        }

    def _write(self, *, event: bool, **values: Any) -> None:
        if self.fenced:
            return
        self._pick_up_run_id()
        progress = self.progress()
        values.update(progress=progress, metrics=dict(self.metrics))
        if self.mlflow_run_id:
            values["mlflow_run_id"] = self.mlflow_run_id
        if self.mlflow_experiment_id:
            values["mlflow_experiment_id"] = self.mlflow_experiment_id
        payload = {**progress, "metrics": dict(self.metrics)}
        try:
            self.status = self.store.report(
                self.job_id, self.fence, event=("progress", payload) if event else None, **values
            )
        except StaleAttemptError:
            # The job was re-queued or claimed by another worker: this attempt must stop.
            self.fenced = True
            if self.exit_on_fence:
                print(
                    f"gradloop: job {self.job_id} attempt {self.fence.attempt} lost its lease at step {self.step}; "
                    "exiting without another write",
                    file=sys.stderr,
                    flush=True,
                )
                os._exit(EXIT_FENCED)
            if self.stop_event is not None:
                self.stop_event.set()
        self._last_write = time.perf_counter()

    def _pick_up_run_id(self) -> None:
        if self._ctx is not None and self._ctx.mlflow_run_id and not self.mlflow_run_id:
            self.mlflow_run_id = self._ctx.mlflow_run_id

    def _find_mlflow_run(self, config: Any) -> None:
        """The MLflow observer writes the run's ids to RUN_DIR/tracking.json once the store's
        process has created the run; pick them up off the training thread (a file read, no
        MLflow client in this process) so the job record links to the run while it trains."""
        run_dir = self._ctx.run_dir if self._ctx is not None else None
        deadline = time.monotonic() + 600
        while run_dir is not None and self.status == "running" and time.monotonic() < deadline:
            try:
                state = TrackingState.load(run_dir)
            except (OSError, ValueError):
                state = None  # (the file is replaced atomically; a read error is only retried)
            if state is not None and state.run_id and state.experiment_id:
                self.mlflow_experiment_id = state.experiment_id
                if not self.mlflow_run_id:
                    self.mlflow_run_id = state.run_id
                return
            time.sleep(0.25)

"""MlflowObserver: what the trainer's observer calls become in MLflow.

On the training thread this class does only cheap things: fused device-side statistics
(gradstats), each logging window's values held (windows); once a second the held windows are
written together: appended to metrics.jsonl and put on the sender's queue. Everything that
talks to MLflow (params, tags, metrics, artifacts, status) runs on the sender's thread, and
the store itself is written by a child process (remote).
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
import subprocess
import time
import uuid
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from gradloop.observer import RunContext, RunStatus
from gradloop.tracking import gradstats, histograms, plots
from gradloop.tracking.gradstats import GradSnapshot, StatLayout
from gradloop.tracking.jsonl import Journal, read_records
from gradloop.tracking.mlflow_params import config_params
from gradloop.tracking.mlflow_store import experiment_id, open_client, resolve_uri
from gradloop.tracking.modellog import model_logger
from gradloop.tracking.remote import shared_client
from gradloop.tracking.sender import Op, Sender
from gradloop.tracking.state import TrackingState
from gradloop.tracking.status import SigtermGuard, error_tags, status_for
from gradloop.tracking.windows import HeldWindow, held_window, to_host

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from gradloop.config import RunConfig

log = logging.getLogger("gradloop.tracking")

ARTIFACT_DIR = "tracking"  # run_dir/tracking/: what this package writes besides the journal
WRITE_SECONDS = 1.0  # how long logging windows are held before they are written
MAX_HELD_WINDOWS = 1000  # ...or how many (log_every: 1 on a fast model), whichever comes first


class TrackingWarning(UserWarning):
    """Something did not reach MLflow; the message says what and how to send it later."""


@dataclass
class StepSnapshot:
    grads: GradSnapshot | None
    hist: histograms.Capture | None


class MlflowObserver:
    """Logs one run to MLflow; see the module docstring for what runs where."""

    def __init__(self, config: RunConfig, run_dir: Path, job_id: str | None = None, parent_run_id: str | None = None):
        self.config = config
        self.tcfg = config.tracking
        self.run_dir = Path(run_dir)
        self.job_id = job_id
        self.parent_run_id = parent_run_id
        self.mlflow_run_id: str | None = None
        self.uri = resolve_uri(self.tcfg.uri)
        self.unsent_points = 0
        self._sender: Sender | None = None
        self._journal: Journal | None = None
        self._client: MlflowClient | None = None
        self._state: TrackingState | None = None
        self._layout: StatLayout | None = None
        self._last_step: dict[str, int] = {}  # resume: per key, the last step MLflow has
        self._checkpoint: Path | None = None
        self._monitor: Any = None
        self._guard = SigtermGuard()
        self._finished = False
        self._ctx: RunContext | None = None
        self._total_steps = 0
        self._grad_every = 0 if self.tcfg.grad_stats == "none" else self.tcfg.log_every
        self._hist_every = self.tcfg.histogram_every
        self._histograms = histograms.HistogramWriter(self.run_dir / ARTIFACT_DIR / "histograms")
        self._held: list[HeldWindow] = []
        self._on_host = False  # a CPU run: a window's values are read at once (see _hold)
        # The first window is written at once, so a new run shows its first points in MLflow
        # within the sender's flush interval, not a holding period later.
        self._written_at = float("-inf")

    # -- start --------------------------------------------------------------------------
    def start(self, ctx: RunContext) -> None:
        self._ctx = ctx
        self._total_steps = ctx.total_steps
        self._on_host = torch.device(ctx.device).type == "cpu"
        (self.run_dir / ARTIFACT_DIR).mkdir(parents=True, exist_ok=True)
        self._journal = Journal(self.run_dir)
        params = [p for group in ctx.optimizer.param_groups for p in group["params"]]
        self._layout = StatLayout.build(list(zip(ctx.param_names, params)), self.tcfg.grad_stats)

        run_name = f"{self.config.name}-{uuid.uuid4().hex[:6]}"
        tags = self._tags(ctx)
        self._state = TrackingState(uri=self.uri, experiment=self.tcfg.experiment, run_name=run_name)
        resumed = ctx.mlflow_run_id is not None
        try:
            self._client = open_client(self.uri)
            if resumed:
                self.mlflow_run_id = self._reopen(ctx.mlflow_run_id)
            else:
                exp = experiment_id(self._client, self.tcfg.experiment, self.uri)
                run = self._client.create_run(exp, tags=tags, run_name=run_name)
                self.mlflow_run_id = run.info.run_id
        except Exception as exc:
            # Training does not depend on the tracking server: keep the journal, sync later.
            self.mlflow_run_id = ctx.mlflow_run_id
            self._state.create = None if resumed else {"tags": tags}
            warnings.warn(
                TrackingWarning(
                    f"MLflow at {self.uri} is unreachable ({type(exc).__name__}: {str(exc)[:200]}); "
                    f"metrics go to {self.run_dir / 'metrics.jsonl'} only; run `gradloop sync {self.run_dir}` later"
                ),
                stacklevel=2,
            )
        self._state.run_id = self.mlflow_run_id

        config_file = self.run_dir / ARTIFACT_DIR / "config.yaml"
        config_file.write_text(self.config.to_yaml())
        total = sum(p.numel() for p in ctx.model.parameters())
        trainable = sum(p.numel() for p in ctx.model.parameters() if p.requires_grad)
        all_params = {
            **config_params(self.config.to_dict()),
            "model.num_params": str(total),
            "model.num_trainable_params": str(trainable),
        }
        if resumed and self._client is not None and self.mlflow_run_id:
            # MLflow params are immutable: a resumed run only adds what it lacks.
            try:
                have = self._client.get_run(self.mlflow_run_id).data.params
                all_params = {k: v for k, v in all_params.items() if k not in have}
            except Exception:
                all_params = {}
        start_ops = [
            Op("log_params", {"params": all_params}),
            Op("log_artifact", {"local_path": str(config_file), "artifact_path": "config"}),
        ]
        if resumed:
            start_ops.insert(0, Op("set_tags", {"tags": {"gradloop.resumed_from_step": str(ctx.start_step)}}))

        if self._state.create is None and self._client is not None and self.mlflow_run_id:
            # The store is written from a child process: its Python never competes for our GIL.
            self._sender = Sender(shared_client(self.uri), self.mlflow_run_id, self._journal, local_client=self._client)
            self._histograms.counter = self._sender.client  # that child counts histograms too
            for op in start_ops:
                self._sender.submit_op(op)
            self._start_system_metrics(resumed)
        else:
            self._state.pending_ops = [op.to_dict() for op in start_ops]
        self._state.save(self.run_dir)
        self._guard.install()
        atexit.register(self._at_exit)

    def _reopen(self, run_id: str) -> str:
        assert self._client is not None
        run = self._client.get_run(run_id)
        if run.info.status != "RUNNING":
            self._client.update_run(run_id, status="RUNNING")
        for m in getattr(run.data, "_metric_objs", None) or []:
            self._last_step[m.key] = max(self._last_step.get(m.key, -1), m.step)
        return run_id

    def _tags(self, ctx: RunContext) -> dict[str, str]:
        from gradloop import __version__
        from gradloop.devices import device_name

        tags = {
            "gradloop.version": __version__,
            "torch.version": torch.__version__,
            "gradloop.device": str(ctx.device),
            "gradloop.device_name": device_name(ctx.device),
            "gradloop.precision": self.config.trainer.precision,
            "gradloop.config_hash": self.config.config_hash(),
            "gradloop.host": socket.gethostname(),
            "gradloop.run_dir": str(self.run_dir.resolve()),
        }
        commit = _git_commit()
        if commit:
            tags["mlflow.source.git.commit"] = commit
        job_id = self.job_id or ctx.job_id
        if job_id:
            tags["gradloop.job_id"] = job_id
        if self.parent_run_id:
            tags["mlflow.parentRunId"] = self.parent_run_id
        tags.update({k: str(v) for k, v in ctx.extra_tags.items()})
        return tags

    def _start_system_metrics(self, resumed: bool) -> None:
        if not self.tcfg.system_metrics:
            return
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            self._monitor = SystemMetricsMonitor(self.mlflow_run_id, resume_logging=resumed, tracking_uri=self.uri)
            self._monitor.start()
        except Exception as exc:  # psutil missing or the like: the run goes on without them
            log.warning("system metrics are off: %s", exc)
            self._monitor = None

    # -- the training loop's calls ------------------------------------------------------
    def wants_step_stats(self, step: int) -> bool:
        # Asked every optimizer step: plain integer arithmetic, inline (two method calls here
        # cost as much as the arithmetic).
        g, h = self._grad_every, self._hist_every
        return (g > 0 and (step % g == 0 or step == self._total_steps)) or (h > 0 and step % h == 0)

    def _grad_step(self, step: int) -> bool:
        return self._grad_every > 0 and (step % self._grad_every == 0 or step == self._total_steps)

    def _hist_step(self, step: int) -> bool:
        return self._hist_every > 0 and step % self._hist_every == 0

    # The statistics read detached tensors (p.grad, p.detach()), so they build no graph and
    # need no torch.no_grad() context, whose enter/exit would cost every logging window.
    def before_optimizer_step(self, step: int, model: torch.nn.Module) -> StepSnapshot | None:
        layout = self._layout
        if layout is None:
            return None
        grads = (
            gradstats.snapshot(step, layout, self._ctx.grad_norms() if self._ctx else None)
            if self._grad_step(step)
            else None
        )
        hist = (
            histograms.capture(layout.names, layout.params, weights=layout.weights) if self._hist_step(step) else None
        )
        return StepSnapshot(grads, hist) if grads is not None or hist is not None else None

    def after_optimizer_step(self, step: int, snapshot: Any, metrics: Mapping[str, Any]) -> None:
        snap = snapshot.grads if isinstance(snapshot, StepSnapshot) else None
        if snap is not None and self._layout is not None:
            gradstats.after_step(snap, self._layout)
        if metrics or snap is not None:
            self._hold(step, metrics, snap)
        if isinstance(snapshot, StepSnapshot) and snapshot.hist is not None:
            self._histograms.hold(step, snapshot.hist)
            if self._histograms.full:
                self._write_held()

    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> None:
        if metrics:
            self._hold(step, metrics, None)

    def log_checkpoint(self, path: Path, step: int) -> None:
        self._checkpoint = Path(path)

    # -- logging windows: held, written once a second ------------------------------------
    # Code that runs once per logging window runs cold: ten training steps in between evict
    # it from the caches, and one orjson line measured 24 us there against 1 us in a loop. So
    # a window only keeps its values and is held (a histogram step only copies the tensors to
    # count); once a second the held windows go to metrics.jsonl and to the sender, and the
    # held histograms are counted, in one warm pass. The journal was flushed once a second
    # before as well, so a SIGKILL loses no more than it did. On a GPU the values stay device
    # tensors until then and go to the host together: the device->host copy (a
    # synchronisation) happens once a second, not per window. On the CPU there is nothing to
    # synchronise, so its values are read at once: no tensors are kept alive. Held
    # tensors, a dozen garbage-collected objects a window, each surviving a second, made the
    # collector run full passes (~260 ms each, every 20-25 s): 1.3% of a 47 s run of the digits
    # MLP, against 0.1% (no full pass) without them.
    def _hold(self, step: int, metrics: Mapping[str, Any], snap: GradSnapshot | None) -> None:
        held = held_window(step, int(time.time() * 1000), metrics, snap, self._on_host)
        if held is not None:
            self._held.append(held)
        now = time.monotonic()
        if now - self._written_at >= WRITE_SECONDS or len(self._held) >= MAX_HELD_WINDOWS:
            self._write_held()
            self._written_at = now

    def _write_held(self) -> None:
        held, self._held = self._held, []
        written = 0
        try:
            flat = to_host([t for window in held if not window.on_host for t in window.parts])
            start = 0
            for window in held:
                if window.on_host:
                    values = window.parts
                else:
                    end = start + sum(t.numel() for t in window.parts)
                    values, start = flat[start:end], end
                self._record(window.step, window.ts, window.host_values(values, self._layout))
                written += 1
        finally:
            # An interrupt (SIGTERM, Ctrl-C) in the middle of the pass: the windows not yet in
            # the journal are held again, and finish() writes them.
            self._held[:0] = held[written:]
        if self._journal is not None and held:
            self._journal.flush()
        self._histograms.flush()  # held captures are counted here as well, in the same warm pass

    def _record(self, step: int, ts: int, values: dict[str, float]) -> None:
        if self._journal is None:
            return
        if self._last_step:
            # Resumed: steps the earlier process already logged are not logged twice.
            values = {k: v for k, v in values.items() if step > self._last_step.get(k, -1)}
            if not values:
                return
        record = self._journal.append(step, ts, values)
        if self._sender is not None:
            self._sender.submit(record)

    # -- finish -------------------------------------------------------------------------
    def finish(self, status: RunStatus, error: BaseException | None = None) -> None:
        if self._finished or self._journal is None or self._state is None:
            return
        self._finished = True
        self._write_held()
        if error is not None and status == "FAILED":
            status = status_for(error)  # an interrupt that escaped the loop is a kill, not a failure
        self._guard.uninstall()
        atexit.unregister(self._at_exit)
        if self._monitor is not None:
            try:
                self._monitor.finish()
            except Exception as exc:
                log.warning("system metrics monitor did not stop cleanly: %s", exc)
        self._journal.flush()  # the plots and the sender's last catch-up read the file
        timeout = float(getattr(self.tcfg, "flush_timeout_s", 30.0))
        self._histograms.close(timeout)  # every file written before the directory is logged
        if self._histograms.failed:
            log.warning(
                "%d histogram file(s) could not be written; last error: %s",
                self._histograms.failed,
                self._histograms.last_error,
            )
        ops = self._final_ops(status, error)
        self._state.status = status
        if self._sender is not None:
            for op in ops:
                self._sender.submit_op(op)
            report = self._sender.close(timeout)
            self._state.pending_ops = [op.to_dict() for op in report.pending_ops if op.persistable]
            self.unsent_points = report.unsent_points
            lost_model = [op.name for op in report.pending_ops if not op.persistable]
            if report.failed_requests:
                log.warning(
                    "MLflow refused %d tracking request(s); last error: %s",
                    report.failed_requests,
                    self._sender.last_error,
                )
        else:
            self._state.pending_ops += [op.to_dict() for op in ops if op.persistable]
            self.unsent_points = sum(len(r.metrics) for r in read_records(self._journal.path))
            lost_model = [op.name for op in ops if not op.persistable]
        self._state.unsent_points = self.unsent_points
        self._state.save(self.run_dir)
        self._journal.close()
        if self.unsent_points or self._state.pending_ops:
            warnings.warn(
                TrackingWarning(
                    f"{self.unsent_points} metric points and {len(self._state.pending_ops)} other tracking calls "
                    f"did not reach MLflow at {self.uri}; they are kept in {self.run_dir}; "
                    f"run `gradloop sync {self.run_dir}` to send them"
                    + (f" ({', '.join(lost_model)} cannot be sent later)" if lost_model else "")
                ),
                stacklevel=2,
            )

    def _final_ops(self, status: RunStatus, error: BaseException | None) -> list[Op]:
        art = self.run_dir / ARTIFACT_DIR
        ops: list[Op] = []
        if self.tcfg.plots:
            records = list(read_records(self._journal.path)) if self._journal else []
            title = self.config.name
            try:
                plots.loss_curves(records, art / "plots" / "loss_curves.png", title)
                plots.grad_norm_heatmap(
                    records, art / "plots" / "grad_norm_heatmap.png", f"{title}: gradient norm per layer"
                )
            except Exception as exc:  # a plot is never worth a failed run
                log.warning("could not draw the tracking plots: %s", exc)
            ops.append(Op("log_artifacts", {"local_dir": str(art / "plots"), "artifact_path": "plots"}))
        if (art / "histograms").is_dir():
            ops.append(Op("log_artifacts", {"local_dir": str(art / "histograms"), "artifact_path": "histograms"}))
        if self.tcfg.log_checkpoint and self._checkpoint is not None:
            ops.append(Op("log_artifact", {"local_path": str(self._checkpoint), "artifact_path": "checkpoints"}))
        # The run's log: *.log in the run directory, or the file named by $GRADLOOP_LOG_FILE
        # (set by whoever sends this process's output to a file, e.g. the job worker).
        logs = sorted(self.run_dir.glob("*.log"))
        named = os.environ.get("GRADLOOP_LOG_FILE")
        if named and Path(named).is_file():
            logs.append(Path(named))
        for log_file in logs:
            ops.append(Op("log_artifact", {"local_path": str(log_file), "artifact_path": "logs"}))
        if self.tcfg.log_model and status == "FINISHED" and self._ctx is not None:
            fn = model_logger(self._ctx, self.uri)
            if fn is not None:
                ops.append(Op("log_model", fn=fn))
        tags = error_tags(error)
        if tags:
            ops.append(Op("set_tags", {"tags": tags}))
        ops.append(Op("set_terminated", {"status": status}))
        return ops

    def _at_exit(self) -> None:
        # Nobody called finish (an exception escaped past the trainer): never leave RUNNING.
        try:
            self.finish("KILLED", None)
        except Exception:
            pass


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=2)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None

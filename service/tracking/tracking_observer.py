"""MlflowObserver: what the trainer's observer calls become in MLflow.

On the training thread this class does only cheap things: fused device-side statistics
(gradstats), each logging window's values held (windows); once a second the held windows are
written together: appended to metrics.jsonl and put on the sender's queue. It never imports
MLflow: the sender's thread hands everything (the run's creation, params, tags, metrics,
artifacts, the final status) to the store's process (remote), which was started before the run
was built. The end of a run waits for what the last second produced, within
tracking.flush_timeout_s, and not at all for a store known to be down; the end-of-run artifacts
(plots, histograms, the model, logs) are handed to the store process, which logs them in the
background (`gradloop.tracking.wait` waits for them).
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from gradloop import __version__
from gradloop.devices import device_name
from gradloop.distributed.process_group import node_id
from gradloop.observer import RunContext, RunStatus
from gradloop.tracking import gradstats, histograms, resolve_uri
from gradloop.tracking.gradstats import GradSnapshot, StatLayout
from gradloop.tracking.jsonl import Journal, read_records
from gradloop.tracking.mlflow_params import config_params
from gradloop.tracking.modellog import save_model
from gradloop.tracking.remote import shared_client
from gradloop.tracking.sender import Op, Sender, SendReport
from gradloop.tracking.state import TrackingState
from gradloop.tracking.status import error_tags, status_for
from gradloop.tracking.windows import HeldWindow, held_window, to_host

if TYPE_CHECKING:
    from gradloop.config import RunConfig

log = logging.getLogger("gradloop.tracking")

ARTIFACT_DIR = "tracking"  # run_dir/tracking/: what this package writes besides the journal
WRITE_SECONDS = 1.0  # how long logging windows are held before they are written
MAX_HELD_WINDOWS = 1000  # ...or how many (log_every: 1 on a fast model), whichever comes first
# End-of-run ops the run's end does not wait for: the store process does them in the background.
BACKGROUND_OPS = frozenset({"log_plots", "log_figure", "log_artifacts", "log_artifact", "log_model"})


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
        self._state: TrackingState | None = None
        self._layout: StatLayout | None = None
        self._last_step: dict[str, int] = {}  # resume: per key, the last step the journal has
        self._checkpoint: Path | None = None
        self._figures: list[tuple[Path, Path, str]] = []  # handed over by log_figure, drawn at the end
        self._finished = False
        self._ctx: RunContext | None = None
        self._total_steps = 0
        self._grad_every = 0 if self.tcfg.grad_stats == "none" else self.tcfg.log_every
        self._hist_every = self.tcfg.histogram_every
        self._histograms = histograms.HistogramWriter(self.run_dir / ARTIFACT_DIR / "histograms")
        self._held: list[HeldWindow] = []
        self._on_host = False  # a CPU run: a window's values are read at once (see _hold)
        # The first window is written at once, so a new run shows its first points in MLflow
        # at once, not a holding period later.
        self._written_at = float("-inf")
        # Started now if the runner did not already (gradloop.tracking.prestart): it imports
        # MLflow while the run is being built.
        self._client = shared_client(self.uri)

    # -- start --------------------------------------------------------------------------
    def start(self, ctx: RunContext) -> None:
        self._ctx = ctx
        self._total_steps = ctx.total_steps
        self._on_host = torch.device(ctx.device).type == "cpu"
        (self.run_dir / ARTIFACT_DIR).mkdir(parents=True, exist_ok=True)
        previous = TrackingState.load(self.run_dir)
        self._journal = Journal(self.run_dir)
        params = [p for group in ctx.optimizer.param_groups for p in group["params"]]
        self._layout = StatLayout.build(list(zip(ctx.param_names, params)), self.tcfg.grad_stats)

        # A resume continues the checkpoint's run, or, for a checkpoint written before the store
        # had created it (a step-0 checkpoint included), the run this directory's tracking.json names.
        continued = bool(ctx.start_step) or ctx.resumed
        resume_id = ctx.mlflow_run_id or (previous.run_id if previous is not None and continued else None)
        resumed = resume_id is not None
        # A new run is named after the config and the run directory's short id (`<time>-<6 hex>`).
        short_id = self.run_dir.name.rsplit("-", 1)[-1]
        run_name = previous.run_name if resumed and previous is not None else f"{self.config.name}-{short_id}"
        if resumed:
            # Steps the earlier process already journaled (and sent, or left for sync) are not
            # logged twice: the journal in this directory is the run's record.
            for r in read_records(self._journal.path):
                for key in r.metrics:
                    if r.step > self._last_step.get(key, -1):
                        self._last_step[key] = r.step
        config_file = self.run_dir / ARTIFACT_DIR / "config.yaml"
        config_file.write_text(self.config.to_yaml())
        total = sum(p.numel() for p in ctx.model.parameters())
        trainable = sum(p.numel() for p in ctx.model.parameters() if p.requires_grad)
        spec: dict[str, Any] = {
            "experiment": self.tcfg.experiment,
            "run_name": run_name,
            "tags": self._tags(ctx),
            "params": {
                **config_params(self.config.to_dict()),
                "model.num_params": str(total),
                "model.num_trainable_params": str(trainable),
            },
        }
        if resumed:
            spec["run_id"] = resume_id
            spec["resume_tags"] = {"gradloop.resumed_from_step": str(ctx.start_step)}
        self.mlflow_run_id = resume_id
        self._state = TrackingState(
            uri=self.uri, experiment=self.tcfg.experiment, run_name=run_name, run_id=resume_id, create=spec
        )
        self._state.save(self.run_dir)
        self._sender = Sender(self._client, spec, self._journal, on_run=self._created, catch_up=resumed)
        self._sender.submit_op(Op("log_artifact", {"local_path": str(config_file), "artifact_path": "config"}))
        if self.tcfg.system_metrics:
            monitor: dict[str, Any] = {"start": True, "resumed": resumed}
            node = node_id()
            if node is not None:  # several machines: each one's keys carry its node id (rank 0's: node0)
                monitor["node_id"] = node
            self._sender.submit_op(Op("system_metrics", monitor))

    def _created(self, run: dict[str, str]) -> None:
        """On the sender's thread: the store has the run; tracking.json says which."""
        self.mlflow_run_id = run["run_id"]
        state = self._state
        if state is not None:
            state.run_id, state.experiment_id, state.create = run["run_id"], run.get("experiment_id"), None
            if not self._finished:
                state.save(self.run_dir)

    def _tags(self, ctx: RunContext) -> dict[str, str]:
        tags = {
            "gradloop.version": __version__,
            "torch.version": str(torch.__version__),  # (a str: torch.__version__ would import torch to unpickle)
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
        hist = self._capture_histograms(layout) if self._hist_step(step) else None
        return StepSnapshot(grads, hist) if grads is not None or hist is not None else None

    def _capture_histograms(self, layout: StatLayout) -> histograms.Capture | None:
        if not layout.sharded:
            return histograms.capture(layout.names, layout.params, weights=layout.weights)
        # FSDP: a shard is not the layer; every rank gathered the whole tensors for this step
        # (RunContext.full_tensors), in the order of the layout's parameters.
        full = self._ctx.full_tensors() if self._ctx is not None else None
        if full is None or len(full[1]) != len(layout.params):
            return None
        grads, weights = full
        return histograms.capture(layout.names, layout.params, weights=weights, grads=grads)

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

    def log_figure(self, data: Path, png: Path, artifact_path: str) -> None:
        """A figure's data (the confusion matrix) that the store's process draws to `png` and
        logs under `artifact_path` at the end of the run."""
        self._figures.append((Path(data), Path(png), artifact_path))

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
            if self._sender is not None:
                self._sender.wake()  # the second's records go to the store now
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
        if self._finished or self._journal is None or self._state is None or self._sender is None:
            return
        self._finished = True
        self._write_held()
        if error is not None and status == "FAILED":
            status = status_for(error)  # an interrupt that escaped the loop is a kill, not a failure
        self._journal.flush()  # the plots and the sender's last catch-up read the file
        timeout = float(self.tcfg.flush_timeout_s)
        self._histograms.close(timeout)  # every file written before the directory is logged
        if self._histograms.failed:
            log.warning(
                "%d histogram file(s) could not be written; last error: %s",
                self._histograms.failed,
                self._histograms.last_error,
            )
        # The slow end-of-run ops (artifacts, the model) are handed to the store process to do
        # in the background; the rest, the final status included, is sent now with the last
        # metrics, so the run is finished in MLflow when this returns (MLflow takes artifacts
        # and models for a finished run).
        final = list(self._final_ops(status, error))
        later = [op for op in final if op.name in BACKGROUND_OPS]
        for op in final:
            if op.name not in BACKGROUND_OPS:
                self._sender.submit_op(op)
        report = self._sender.close(timeout)
        state = self._state
        state.status = status
        state.run_id = report.run_id or state.run_id
        if report.run_id:
            state.create = None
        self.mlflow_run_id = state.run_id
        # (an op not done before the run exists is owed in full; system metrics cannot be sent later)
        owed = [op.to_dict() for op in report.pending_ops if op.name != "system_metrics"]
        self.unsent_points = state.unsent_points = report.unsent_points
        handed_over = bool(later) and self._hand_over(report, owed, [op.to_dict() for op in later])
        if not handed_over:
            owed += [op.to_dict() for op in later]
            state.pending_ops, state.background_pid = owed, None
            state.save(self.run_dir)
        self._journal.close()
        if report.failed_requests:
            log.warning(
                "MLflow refused %d tracking request(s); last error: %s", report.failed_requests, self._sender.last_error
            )
        if self.unsent_points or owed or state.create is not None:
            why = "was unreachable" if report.store_down or state.create is not None else "did not answer in time"
            calls = ", ".join(sorted({op["name"] for op in owed})) or "none"
            warnings.warn(
                TrackingWarning(
                    f"MLflow at {self.uri} {why}: {self.unsent_points} metric points and "
                    f"{len(owed)} other tracking calls ({calls}) are kept in "
                    f"{self.run_dir}; run `gradloop sync {self.run_dir}` to send them"
                    + ("" if state.create is None else " (it creates the MLflow run too)")
                ),
                stacklevel=2,
            )

    def _hand_over(self, report: SendReport, owed: list[dict[str, Any]], later: list[dict[str, Any]]) -> bool:
        """Give the end-of-run ops to the store process, which does them in the background.
        tracking.json lists them as owed, naming that process, before it can start on them: it
        removes each as it is done, so whatever a crash leaves is what `gradloop sync` sends."""
        state = self._state
        if state is None or not report.run_id or report.store_down or report.abandoned or self._client.pid is None:
            return False
        state.pending_ops, state.background_pid = owed + later, self._client.pid
        state.save(self.run_dir)
        try:
            self._client.background(str(self.run_dir), report.run_id, later)
        except Exception as exc:  # (its process went away): the ops stay owed
            log.debug("end-of-run ops not handed over: %s", exc)
            return False
        return True

    def _final_ops(self, status: RunStatus, error: BaseException | None) -> Iterator[Op]:
        """The end-of-run ops in their order, each yielded as soon as it is known: finish() hands
        it over at once, so the store's process draws the plots while this one saves the model."""
        art = self.run_dir / ARTIFACT_DIR
        if self.tcfg.system_metrics:
            yield Op("system_metrics", {"start": False})
        if self.tcfg.plots and self._journal is not None:
            # Drawn by the store's process (matplotlib is imported there, not here).
            args = {"journal": str(self._journal.path), "local_dir": str(art / "plots"), "title": self.config.name}
            yield Op("log_plots", args)
        for data, png, folder in self._figures:  # drawn by the store's process too
            yield Op("log_figure", {"data": str(data), "local_path": str(png), "artifact_path": folder})
        if (art / "histograms").is_dir():
            yield Op("log_artifacts", {"local_dir": str(art / "histograms"), "artifact_path": "histograms"})
        if self.tcfg.log_checkpoint and self._checkpoint is not None:
            yield Op("log_artifact", {"local_path": str(self._checkpoint), "artifact_path": "checkpoints"})
        # The run's log: *.log in the run directory, or the file named by $GRADLOOP_LOG_FILE
        # (set by whoever sends this process's output to a file, e.g. the job worker).
        logs = sorted(self.run_dir.glob("*.log"))
        named = os.environ.get("GRADLOOP_LOG_FILE")
        if named and Path(named).is_file():
            logs.append(Path(named))
        for log_file in logs:
            yield Op("log_artifact", {"local_path": str(log_file), "artifact_path": "logs"})
        if self.tcfg.log_model and status == "FINISHED" and self._ctx is not None:
            model_args: dict[str, Any] | None = None
            try:
                model_args = save_model(self._ctx, art / "model", self.uri)
            except Exception as exc:  # a model that cannot be pickled is never worth a failed run
                log.warning("the model is not logged: %s", exc)
            if model_args is not None:
                yield Op("log_model", model_args)
        tags = error_tags(error)
        if tags:
            yield Op("set_tags", {"tags": tags})
        yield Op("set_terminated", {"status": status})


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=2)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None

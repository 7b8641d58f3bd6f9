"""What runs inside one job's child process: train the job's config and record the outcome.

The child was forked from the pre-imported fork server (forkserver.py) into its own process
group, with stdout and stderr going to the job's log. It checks the stored config again through
the service's HTTP policy (gradloop.http_policy; a sweep's children too, as they are built),
points its outputs at the job's directory, and calls run() with a JobProgressObserver.
SIGTERM sets the stop event (the handler forkserver installs in the child): the trainer stops at
the next step boundary, writes a checkpoint and ends the MLflow run KILLED. Every write names
the job's attempt, so an attempt that lost its lease cannot record anything (see store.Fence);
the first refused write ends the process at once, before it writes another checkpoint or touches
the MLflow run that its successor now continues.

A job with a `distributed` block launches its ranks from here, through the same elastic launcher
as `gradloop run` (gradloop.distributed.launch). They stay in this process's group, so the
pool's SIGTERM and SIGKILL reach every rank. Rank 0 writes the job's progress and metrics from
its own process (RankJobObservers), fenced by the attempt like a one-process job; this process
records the outcome from rank 0's result.

A later attempt resumes from the checkpoint the job record names, in the same run directory and
the same MLflow run (the checkpoint carries the run id). MLflow runs of the job that no attempt
will continue (an attempt lost before its first checkpoint, a job failed for good) are closed
here or by the service (close_job_runs), never left RUNNING.
"""

from __future__ import annotations

import json
import math
import os
import sys
import threading
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gradloop.errors import GradloopError
from gradloop.http_policy import HttpPolicy, check_http_config
from gradloop.jobs.job_log import DEFAULT_MAX_LOG_BYTES
from gradloop.jobs.job_progress import JobProgressObserver
from gradloop.jobs.models import JobState
from gradloop.jobs.records import Fence, JobRecord, StaleAttemptError, capped_text
from gradloop.jobs.store import JobStore
from gradloop.limits import ServiceLimits
from gradloop.tracking import resolve_uri
from gradloop.tracking.state import TrackingState

LOG_NAME = "job.log"
# An error's text in the job's log: any real traceback fits; a failure that lists every one of
# a huge grid's errors does not fill the disk (the stored error is shorter still: cap_error).
LOG_ERROR_BYTES = 64 * 1024


@dataclass(frozen=True)
class WorkerSettings:
    """What a job's child needs from the service; JSON so it can cross into the fork server."""

    db_url: str
    jobs_dir: str  # per-job directories: log, run dirs, checkpoints (a shared volume across hosts)
    data_root: str
    tracking_uri: str | None = None  # the service's MLflow store, used when a config names none
    allowed_tracking_uris: tuple[str, ...] = ()  # and the others a config may name
    limits: dict[str, Any] | None = None  # ServiceLimits' fields (default: its defaults)
    max_log_bytes: int = DEFAULT_MAX_LOG_BYTES  # a job's log stops growing there (job_log.py)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> WorkerSettings:
        fields = json.loads(text)
        fields["allowed_tracking_uris"] = tuple(fields.get("allowed_tracking_uris") or ())
        return cls(**fields)

    def policy(self) -> HttpPolicy:
        """The service's HTTP policy, which the job's config passes again before it runs."""
        return HttpPolicy(
            data_root=Path(self.data_root),
            tracking_uri=self.tracking_uri,
            allowed_tracking_uris=self.allowed_tracking_uris,
            limits=ServiceLimits(**(self.limits or {})),
        )


@dataclass(frozen=True)
class RankJobObservers:
    """What rank 0 of a distributed job builds in its own process: the job's progress writer.
    (Picklable: the launcher spawns the ranks and sends them this.)"""

    db_url: str
    job_id: str
    fence: Fence

    def __call__(self, stop_event: threading.Event) -> tuple[JobProgressObserver]:
        store = JobStore(self.db_url, pooled=False)
        # A refused write ends rank 0 at once; the launcher then stops the other ranks.
        return (JobProgressObserver(store, self.job_id, self.fence, stop_event=stop_event, exit_on_fence=True),)


def job_dir(jobs_dir: str | Path, job_id: str) -> Path:
    return Path(jobs_dir) / job_id


def log_path(jobs_dir: str | Path, job_id: str) -> Path:
    return job_dir(jobs_dir, job_id) / LOG_NAME


def runs_ranks(config: dict[str, Any]) -> bool:
    """Whether a stored job config trains data-parallel: its ranks then run in processes of
    their own, not in the job's process (as `config.distributed.enabled` says once validated)."""
    distributed = config.get("distributed") or {}
    return isinstance(distributed, dict) and distributed.get("strategy", "none") != "none"


def prepare_config(job: JobRecord, settings: WorkerSettings) -> Any:
    """The job's RunConfig, through the service's HTTP policy again (a job stored by an older
    version, or edited in the database, gets no more than a new submission would), with the
    service's paths: outputs under the job's directory, data under the data root, the service's
    MLflow store unless the config names one the policy allows."""
    raw = json.loads(json.dumps(job.config))
    # The stored config is the resolved one, output_dir included (the default: a submission may
    # not name one); the worker picks it, so it is not the policy's to judge here.
    raw.pop("output_dir", None)
    config = check_http_config(raw, settings.policy(), source=f"job {job.id}")
    config.output_dir = str(job_dir(settings.jobs_dir, job.id) / "runs")
    if not config.tracking.uri and settings.tracking_uri:
        config.tracking.uri = settings.tracking_uri
    return config


def run_job(settings: WorkerSettings, job_id: str, fence: Fence, stop_event: threading.Event) -> int:
    """Run one claimed job to its end; returns the process exit code (0: outcome recorded).
    stop_event: set by the child's SIGTERM handler (see forkserver) or a fenced-off observer."""
    store = JobStore(settings.db_url, pooled=False)
    job = store.get(job_id)
    if job is None or job.fence != fence or job.terminal:
        print(f"gradloop: job {job_id} attempt {fence.attempt} is no longer ours; not starting it", flush=True)
        return 0
    observer = JobProgressObserver(store, job_id, fence, stop_event=stop_event, exit_on_fence=True)
    print(f"gradloop: job {job_id} attempt {fence.attempt} starting in process {os.getpid()}", flush=True)
    ranks = False  # a distributed job: its ranks run in processes of their own
    try:
        store.report(job_id, fence, pid=os.getpid(), log_path=str(log_path(settings.jobs_dir, job_id)))
        from gradloop.dispatch import run  # the training core: only in the job's child

        config = prepare_config(job, settings)
        resume = (
            job.checkpoint_path
            if job.attempt > 1 and job.checkpoint_path and Path(job.checkpoint_path).exists()
            else None
        )
        if job.attempt > 1:
            print(
                f"gradloop: job {job_id} resumes from {resume}"
                if resume
                else f"gradloop: job {job_id} starts over (no checkpoint)",
                flush=True,
            )
            # A run that this attempt does not continue would otherwise stay RUNNING forever.
            close_job_runs(job, settings, "KILLED", keep=job.mlflow_run_id if resume else None, config=config)
        # A sweep's children go through the policy too, as the sweep builds them (see gradloop.sweep).
        policy = settings.policy()
        ranks = config.distributed.enabled
        result = run(
            config,
            resume=resume,
            observers=() if ranks else (observer,),
            job_id=job_id,
            stop_event=stop_event,
            check_child=lambda child: check_http_config(child, policy, source=f"job {job_id}"),
            rank_observers=RankJobObservers(settings.db_url, job_id, fence) if ranks else None,
            group_signalled=ranks,
        )
    except StaleAttemptError:
        print(f"gradloop: job {job_id} attempt {fence.attempt} was taken over; stopping", flush=True)
        return 0
    except GradloopError as exc:
        if ranks and stop_event.is_set():
            # A rank still starting when the stop signal came has no handler yet and dies of it;
            # the launcher then reports a failed rank, but the job was only asked to stop.
            print(f"gradloop: job {job_id} stopped while its ranks started: {exc}", flush=True)
            return _record_stopped(store, job_id, fence, observer.step or None)
        print(f"gradloop: job {job_id} failed: {capped_text(str(exc), LOG_ERROR_BYTES)}", flush=True)
        return _record(store, job_id, fence, JobState.failed.value, error=_error(exc, observer))
    except BaseException as exc:  # the job's own bug or the plugin's: record it, never hang
        print(capped_text("".join(traceback.format_exception(exc)), LOG_ERROR_BYTES), file=sys.stderr, flush=True)
        return _record(store, job_id, fence, JobState.failed.value, error=_error(exc, observer, with_trace=True))

    reported_metrics, reported_progress = observer.metrics, observer.progress()
    if ranks:  # rank 0 reported them from its process: what it last wrote is in the job record
        current = store.get(job_id)
        reported_metrics = dict((current.metrics if current else None) or {})
        reported_progress = dict((current.progress if current else None) or {})
    values: dict[str, Any] = {
        "run_dir": str(result.run_dir) if result.run_dir else None,
        "checkpoint_path": str(result.checkpoint_path) if result.checkpoint_path else None,
        "mlflow_run_id": result.mlflow_run_id,
        "mlflow_experiment_id": _experiment_of(result.run_dir, result.mlflow_run_id),
        # The last value of every metric the job reported (train/lr/<group>...), then the final ones.
        "metrics": _json_metrics({**reported_metrics, **result.metrics}),
        "progress": {
            **reported_progress,
            "step": result.steps,
            "eta_s": 0.0 if result.status == "FINISHED" else None,
        },
    }
    if result.status == "FINISHED":
        return _record(store, job_id, fence, JobState.succeeded.value, **values)
    if result.status == "KILLED":
        return _record_stopped(store, job_id, fence, result.steps, **values)
    message = str(getattr(result, "error", "") or "training failed")
    return _record(
        store,
        job_id,
        fence,
        JobState.failed.value,
        error={"type": "TrainingFailed", "message": message, "step": result.steps},
        **values,
    )


def close_job_runs(
    job: JobRecord, settings: WorkerSettings, status: str, *, keep: str | None = None, config: Any = None
) -> list[str]:
    """End the job's MLflow runs that are still RUNNING (but `keep`) with `status`; returns
    their ids. Runs are found by their gradloop.job_id tag, so a run whose id never reached the
    job record is found too. Never raises: a tracking store that does not answer leaves the run
    as it is, and the job's outcome is recorded regardless."""
    closed: list[str] = []
    try:
        config = config if config is not None else prepare_config(job, settings)
        if not config.tracking.enabled:
            return closed
        # MLflow: a heavy import, for the API process only when a tracked job's runs must be closed.
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=resolve_uri(config.tracking.uri))
        experiment = client.get_experiment_by_name(config.tracking.experiment)
        if experiment is None:
            return closed
        runs = client.search_runs(
            [experiment.experiment_id],
            filter_string=f"tags.`gradloop.job_id` = '{job.id}' and attributes.status = 'RUNNING'",
            max_results=100,
        )
        for run in runs:
            if run.info.run_id == keep:
                continue
            client.set_tag(run.info.run_id, "gradloop.closed_by", f"job {job.status} at attempt {job.attempt}")
            client.set_terminated(run.info.run_id, status=status)
            closed.append(run.info.run_id)
    except Exception as exc:
        print(f"gradloop: could not close the MLflow runs of job {job.id}: {type(exc).__name__}: {exc}", flush=True)
    return closed


def _record_stopped(store: JobStore, job_id: str, fence: Fence, step: int | None, **values: Any) -> int:
    """The run stopped because the service asked: cancelled on request, else (the service is
    stopping) back to the queue, to resume from its checkpoint."""
    current = store.get(job_id)
    if current is not None and current.status == JobState.cancelling.value:
        error = {"type": "Cancelled", "message": "cancelled on request", "step": step}
        return _record(store, job_id, fence, JobState.cancelled.value, error=error, **values)
    error = {"type": "Interrupted", "message": "the service stopped; the job resumes from its checkpoint", "step": step}
    return _record(store, job_id, fence, JobState.queued.value, error=error, **values)


def _record(store: JobStore, job_id: str, fence: Fence, status: str, **kwargs: Any) -> int:
    try:
        store.finish(job_id, fence, status, **kwargs)
    except StaleAttemptError:
        print(
            f"gradloop: job {job_id} attempt {fence.attempt} no longer holds the job; outcome {status} not recorded",
            flush=True,
        )
        return 0
    print(f"gradloop: job {job_id} {status}", flush=True)
    return 0 if status in (JobState.succeeded.value, JobState.cancelled.value, JobState.queued.value) else 1


def _error(exc: BaseException, observer: JobProgressObserver, with_trace: bool = False) -> dict[str, Any]:
    error: dict[str, Any] = {
        "type": type(exc).__name__,
        "message": str(exc) or type(exc).__name__,
        "step": observer.step or None,
    }
    if with_trace:
        error["traceback"] = traceback.format_exception(exc)[-6:]
    return error


def _json_metrics(metrics: Any) -> dict[str, float | None]:
    """Numbers as JSON holds them: a value that is not finite (or was reported as such: None) is
    null, so that a NaN loss is never left out and never shown as an older number."""
    out: dict[str, float | None] = {}
    for key, value in dict(metrics or {}).items():
        if value is None:
            out[str(key)] = None
            continue
        try:
            number = float(value.item()) if hasattr(value, "item") else float(value)
        except (TypeError, ValueError):
            continue
        out[str(key)] = number if math.isfinite(number) else None
    return out


def _experiment_of(run_dir: Any, run_id: str | None) -> str | None:
    """The run's experiment, from the tracking.json the run left (no MLflow client here)."""
    if not run_id or run_dir is None:
        return None
    try:
        state = TrackingState.load(Path(run_dir))
    except (OSError, ValueError):
        return None  # the link is a convenience; the run id is already recorded
    return state.experiment_id if state is not None and state.run_id == run_id else None

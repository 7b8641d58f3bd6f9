"""Sweeps: a grid over dotted config keys, each combination one child run under a parent run.

`expand_sweep` (gradloop.sweep_expand) turns a raw config with a `sweep:` block into labelled
child configs (the block removed, one value per swept key set). `run_sweep` validates every
child before any trains (through the job service's policy when the service runs it), opens a
parent MLflow run, trains the children one after another (a failing child does not stop the
others), and gives the parent a summary: a table artifact with every child's status, swept
params and final metrics, and the best child's metrics and params as the parent's own.
Children are nested under the parent through `tracking.parent_run`.
"""

from __future__ import annotations

import csv
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gradloop.config import RunConfig, sweep_setting, validate_config
from gradloop.errors import ConfigError, FieldError, GradloopError
from gradloop.result import RunResult
from gradloop.runner import train
from gradloop.sweep_expand import expand_sweep, sweep_children
from gradloop.tracking import parent_run
from gradloop.tracking.mlflow_params import config_params

log = logging.getLogger("gradloop.sweep")

TrainOne = Callable[[RunConfig, "str | None"], RunResult]
CheckChild = Callable[[dict[str, Any]], RunConfig]


@dataclass
class SweepChild:
    label: str
    overrides: dict[str, Any]
    config: RunConfig
    result: RunResult | None = None
    error: str | None = None

    @property
    def status(self) -> str:
        if self.result is not None:
            return self.result.status
        return "FAILED" if self.error else "SKIPPED"


@dataclass
class SweepResult(RunResult):
    """A RunResult for the parent (its run id, summed steps, the best child's metrics)."""

    children: list[SweepChild] = field(default_factory=list)
    best: SweepChild | None = None
    summary_path: Path | None = None

    @property
    def failed(self) -> list[SweepChild]:
        return [c for c in self.children if c.status == "FAILED"]


def run_sweep(
    config: RunConfig,
    *,
    train_one: TrainOne | None = None,
    resume: Any = None,
    observers: Sequence[Any] = (),
    job_id: str | None = None,
    stop_event: threading.Event | None = None,
    metric: str | None = None,
    check_child: CheckChild | None = None,
) -> SweepResult:
    """Train every child of `config`'s sweep; see the module docstring.

    train_one(child_config, parent_run_id) trains one child (default: `service.train` with the
    child nested under the parent run). metric: what "best" means (default: the config's
    sweep.metric, else val/loss, else train/loss), with sweep.goal (default: maximize for names
    containing "accuracy", else minimize). check_child(raw) -> RunConfig validates each child's
    raw config (default: validate_config; the job service passes its HTTP policy).
    """
    if resume is not None:
        raise GradloopError("--resume cannot resume a whole sweep; resume one child run by its run directory")
    sweep_dir = Path(config.output_dir) / config.name / f"sweep-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
    children = _validated_children(config, sweep_dir, check_child)
    train_one = train_one or _default_train_one(observers, job_id, stop_event)
    started = time.perf_counter()
    parent = _Parent.open(config, children, sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)

    status = "FINISHED"
    for i, child in enumerate(children):
        log.info("sweep %s: child %d/%d: %s", config.name, i + 1, len(children), child.label)
        try:
            child.result = train_one(child.config, parent.run_id)
        except KeyboardInterrupt:
            child.error = "interrupted"
            status = "KILLED"
            break
        except Exception as exc:  # one failing child must not stop the others
            child.error = f"{type(exc).__name__}: {exc}"
            log.warning("sweep child %s failed: %s", child.label, child.error)
            continue
        if child.result.status == "KILLED" or (stop_event is not None and stop_event.is_set()):
            status = "KILLED"
            break

    key = metric or sweep_setting(config.sweep, "metric") or _pick_metric(children)
    goal = sweep_setting(config.sweep, "goal") or ("maximize" if "accuracy" in key else "minimize")
    best = _best(children, key, goal)
    if best is None and any(c.status == "FINISHED" for c in children):
        log.warning("sweep %s: no finished child has the metric %r; no best child is chosen", config.name, key)
    if status != "KILLED" and not any(c.status == "FINISHED" for c in children):
        status = "FAILED"
    summary = _write_summary(sweep_dir / "sweep_summary.csv", children)
    parent.close(status, summary, best, key)
    return SweepResult(
        steps=sum(c.result.steps for c in children if c.result),
        epochs=max((c.result.epochs for c in children if c.result), default=0),
        duration_s=time.perf_counter() - started,
        metrics=dict(best.result.metrics) if best and best.result else {},
        run_dir=sweep_dir,
        checkpoint_path=best.result.checkpoint_path if best and best.result else None,
        mlflow_run_id=parent.run_id,
        status=status,  # type: ignore[arg-type]
        name=config.name,
        config_hash=config.config_hash(),
        children=children,
        best=best,
        summary_path=summary,
    )


def _validated_children(config: RunConfig, sweep_dir: Path, check_child: CheckChild | None) -> list[SweepChild]:
    """Every child config, checked before any of them trains: a bad grid value fails at once.
    A child's run directory goes under the sweep's: sweep_dir/<name>-NN/<run id>."""
    check = check_child or validate_config
    children: list[SweepChild] = []
    errors: list[FieldError] = []
    for label, overrides, raw in sweep_children(config):
        try:
            cfg = check(raw)
        except ConfigError as exc:
            errors += [FieldError(e.path, f"{e.message} (sweep child {label})") for e in exc.errors]
            continue
        cfg.output_dir = str(sweep_dir)
        children.append(SweepChild(label, overrides, cfg))
    if errors:
        raise ConfigError(errors)
    return children


def _default_train_one(observers: Sequence[Any], job_id: str | None, stop_event: threading.Event | None) -> TrainOne:
    def train_one(child: RunConfig, parent_run_id: str | None) -> RunResult:
        with parent_run(parent_run_id):
            return train(child, observers=observers, job_id=job_id, stop_event=stop_event)

    return train_one


class _Parent:
    """The parent MLflow run (or nothing, when tracking is off or MLflow is unreachable)."""

    def __init__(self, client: Any, run_id: str | None):
        self.client, self.run_id = client, run_id

    @classmethod
    def open(cls, config: RunConfig, children: list[SweepChild], sweep_dir: Path) -> _Parent:
        if not config.tracking.enabled:
            return cls(None, None)
        # MLflow: a heavy import, only for a tracked sweep's parent run.
        from gradloop.tracking.mlflow_store import experiment_id, open_client, resolve_uri

        uri = resolve_uri(config.tracking.uri)
        try:
            client = open_client(uri)
            exp = experiment_id(client, config.tracking.experiment, uri)
            tags = {
                "gradloop.sweep": "parent",
                "gradloop.sweep_size": str(len(children)),
                "gradloop.config_hash": config.config_hash(),
            }
            # Named with the sweep directory's short id, as a single run is with its run directory's.
            short_id = sweep_dir.name.rsplit("-", 1)[-1]
            run = client.create_run(exp, tags=tags, run_name=f"{config.name}-sweep-{short_id}")
            client.log_param(run.info.run_id, "sweep.grid", json.dumps(config.sweep)[:6000])
            return cls(client, run.info.run_id)
        except Exception as exc:
            log.warning("sweep parent run not created (MLflow at %s: %s); children are logged unnested", uri, exc)
            return cls(None, None)

    def close(self, status: str, summary: Path, best: SweepChild | None, key: str) -> None:
        if self.client is None or self.run_id is None:
            return
        from mlflow.entities import Metric, Param  # MLflow: only when the parent run was created

        try:
            self.client.log_artifact(self.run_id, str(summary))
            if best is not None and best.result is not None:
                now = int(time.time() * 1000)
                metrics = [Metric(k, float(v), now, best.result.steps) for k, v in best.result.metrics.items()]
                params = [Param(k, v) for k, v in config_params(best.config.to_dict()).items() if k != "name"]
                for i in range(0, max(len(params), 1), 100):
                    self.client.log_batch(self.run_id, metrics=metrics if i == 0 else [], params=params[i : i + 100])
                self.client.set_tag(self.run_id, "gradloop.best_child_run_id", best.result.mlflow_run_id or "")
                self.client.set_tag(self.run_id, "gradloop.best_child", best.label)
                self.client.set_tag(self.run_id, "gradloop.best_metric", key)
            self.client.set_terminated(self.run_id, status)
        except Exception as exc:
            log.warning("sweep parent run %s not completed in MLflow: %s", self.run_id, exc)


def _pick_metric(children: list[SweepChild]) -> str:
    have = {k for c in children if c.result for k in c.result.metrics}
    return "val/loss" if "val/loss" in have else "train/loss"


def _best(children: list[SweepChild], key: str, goal: str = "minimize") -> SweepChild | None:
    sign = -1.0 if goal == "maximize" else 1.0
    scored = [
        (sign * c.result.metrics[key], i, c)
        for i, c in enumerate(children)
        if c.status == "FINISHED"
        and c.result
        and key in c.result.metrics
        and c.result.metrics[key] == c.result.metrics[key]
    ]
    return min(scored)[2] if scored else None


def _write_summary(path: Path, children: list[SweepChild]) -> Path:
    swept = list(children[0].overrides) if children else []
    metric_keys = sorted({k for c in children if c.result for k in c.result.metrics})
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["child", "run_name", "status", "mlflow_run_id", *swept, *metric_keys, "steps", "error"])
        for c in children:
            r = c.result
            writer.writerow(
                [
                    c.label,
                    c.config.name,
                    c.status,
                    (r.mlflow_run_id if r else "") or "",
                    *(
                        json.dumps(c.overrides[k]) if not isinstance(c.overrides[k], str) else c.overrides[k]
                        for k in swept
                    ),
                    *(f"{r.metrics[k]:.6g}" if r and k in r.metrics else "" for k in metric_keys),
                    r.steps if r else "",
                    c.error or "",
                ]
            )
    return path


__all__ = ["SweepChild", "SweepResult", "expand_sweep", "run_sweep"]

"""Validation metrics: the config's `metrics:` list (or the task's defaults) as torchmetrics
Metrics, updated batch by batch over the whole validation set and computed once at its end.

Model outputs are read with gradloop.outputs.logits_of and turned into what every metric of the
task takes (see plugins/metrics/_common.py): softmax probabilities for classification (per
token too: (N, T, C) logits flatten to (N*T, C) and targets at the ignore index are dropped),
sigmoid probabilities for binary data, the raw values for regression. A metric that produces a
matrix (the confusion matrix) is not a scalar to log: it is saved as data, then drawn to a PNG
for the run's artifacts.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from gradloop import registry, torchmetrics_import
from gradloop.errors import ConfigError, FieldError, TrainingError
from gradloop.outputs import IGNORE_INDEX, logits_of

DEFAULT_METRICS: Mapping[str, tuple[str, ...]] = {
    "classification": ("accuracy",),
    "binary": ("accuracy", "auroc"),
    "regression": ("mae", "r2"),
}


@dataclass(frozen=True)
class MetricContext:
    """What a metric factory knows of the data."""

    task: str  # classification | binary | regression
    num_classes: int | None
    num_outputs: int

    @property
    def classes(self) -> int:
        """num_classes, for a multiclass metric: the data of a classification task always reports it."""
        if self.num_classes is None:
            raise TrainingError(f"a multiclass metric needs the number of classes, which this {self.task} data lacks")
        return self.num_classes


@dataclass(frozen=True)
class MetricSpec:
    """One configured metric: its plugin, options and the key it is logged under (val/<key>)."""

    name: str
    options: Mapping[str, Any]
    key: str


class MetricSet:
    """The run's validation metrics; `reset`, `update` per batch, `compute` at the end."""

    def __init__(self, metrics: Mapping[str, Any], figures: Sequence[str], task: str, ignore_index: int) -> None:
        self.metrics = dict(metrics)
        self.figures = set(figures)
        self.task = task
        self.ignore_index = ignore_index
        self.matrices: dict[str, torch.Tensor] = {}

    def scalar_keys(self) -> list[str]:
        return [k for k in self.metrics if k not in self.figures]

    def to(self, device: torch.device) -> MetricSet:
        for metric in self.metrics.values():
            metric.to(device)
        return self

    def reset(self) -> None:
        for metric in self.metrics.values():
            metric.reset()

    def update(self, output: Any, target: torch.Tensor) -> None:
        preds, target = prepare(logits_of(output), target, self.task, self.ignore_index)
        if preds.shape[0] == 0:
            return
        for metric in self.metrics.values():
            metric.update(preds, target)

    def compute(self) -> dict[str, torch.Tensor]:
        """val/<key> -> 0-d tensor for each scalar metric; matrices are kept in `self.matrices`."""
        out: dict[str, torch.Tensor] = {}
        for key, metric in self.metrics.items():
            if metric.update_count == 0:
                continue
            value = metric.compute()
            if key in self.figures:
                self.matrices[key] = value.detach().cpu()
            else:
                out[f"val/{key}"] = value.detach().float()
        return out

    def save_matrices(self, folder: Path, class_names: Sequence[str] | None = None) -> list[Path]:
        """The last computed matrices as JSON files in `folder`, for gradloop.tracking.plots to
        draw (in the store's process when the run is tracked: the training process does not
        import matplotlib)."""
        if not self.matrices:
            return []
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for key, matrix in self.matrices.items():
            path = folder / f"{key}.json"
            data = {"title": key, "matrix": matrix.tolist(), "class_names": list(class_names or [])}
            path.write_text(json.dumps(data))
            paths.append(path)
        return paths


def prepare(
    logits: torch.Tensor, target: torch.Tensor, task: str, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Predictions and targets as the task's metrics take them (see the module docstring)."""
    logits = logits.detach().float()
    if task == "classification":
        probs = logits.reshape(-1, logits.shape[-1]).softmax(dim=-1)
        flat = target.reshape(-1)
        if logits.dim() > 2 or bool((flat == ignore_index).any()):
            keep = flat != ignore_index
            probs, flat = probs[keep], flat[keep]
        return probs, flat
    if task == "binary":
        return logits.reshape(-1).sigmoid(), (target.reshape(-1) > 0.5).long()
    if logits.dim() == 2 and logits.shape[1] == 1:
        return logits.reshape(-1), target.reshape(-1).float()
    return logits, target.float()


def metric_specs(raw: Sequence[Any] | None, task: str, defaults: Sequence[str] | None = None) -> list[MetricSpec]:
    """The configured list (names or {name, options, key}) or, when none, the data's defaults
    (a dataset may name its own, e.g. perplexity for language modelling), else the task's."""
    if raw is None:
        return [MetricSpec(n, {}, n) for n in (defaults if defaults is not None else DEFAULT_METRICS.get(task, ()))]
    specs = []
    for item in raw:
        if isinstance(item, str):
            specs.append(MetricSpec(item, {}, item))
        else:  # a MetricConfig, or the same as a plain mapping
            name = _field(item, "name")
            specs.append(MetricSpec(name, dict(_field(item, "options") or {}), _field(item, "key") or name))
    return specs


def _field(item: Any, key: str) -> Any:
    return item.get(key) if isinstance(item, Mapping) else getattr(item, key, None)


def build_metric_set(
    raw: Sequence[Any] | None,
    task: str,
    num_classes: int | None,
    num_outputs: int,
    *,
    ignore_index: int = IGNORE_INDEX,
    defaults: Sequence[str] | None = None,
) -> MetricSet:
    """Each metric built for this data; a metric for another task is a ConfigError naming it."""
    ctx = MetricContext(task, num_classes, num_outputs)
    specs = metric_specs(raw, task, defaults)
    plugins = [registry.metrics.get(spec.name) for spec in specs]
    if any(plugin.source != "builtin" for plugin in plugins):
        # The built-in metrics import torchmetrics without its other domains' packages; a
        # plugin from elsewhere may need those, so it gets torchmetrics in full.
        torchmetrics_import.full()
    built: dict[str, Any] = {}
    figures: list[str] = []
    errors: list[FieldError] = []
    for i, (spec, plugin) in enumerate(zip(specs, plugins, strict=True)):
        field = f"metrics.{i}"
        tasks = plugin.capabilities.get("tasks", ())
        if tasks and task not in tasks:
            fitting = [p.name for p in registry.metrics if task in p.capabilities.get("tasks", ())]
            errors.append(
                FieldError(
                    field,
                    f"{spec.name} is for {' or '.join(tasks)} data but this data is {task}; "
                    f"use one of: {', '.join(fitting)}",
                )
            )
            continue
        need = plugin.capabilities.get("min_classes")
        if need and (num_classes or 0) < need:
            errors.append(
                FieldError(
                    field, f"{spec.name} needs at least {need} classes but the data has {num_classes}; remove it"
                )
            )
            continue
        try:
            options = plugin.parse_options(spec.options)
        except ValidationError as exc:
            errors += [FieldError(f"{field}.options.{'.'.join(map(str, e['loc']))}", e["msg"]) for e in exc.errors()]
            continue
        built[spec.key] = plugin.factory(options=options, ctx=ctx)
        if plugin.capabilities.get("figure"):
            figures.append(spec.key)
    if errors:
        raise ConfigError(errors)
    return MetricSet(built, figures, task, ignore_index)


__all__ = ["DEFAULT_METRICS", "MetricContext", "MetricSet", "MetricSpec", "build_metric_set", "metric_specs", "prepare"]

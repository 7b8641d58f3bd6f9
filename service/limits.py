"""Configured limits on what one job submitted over HTTP may ask for: epochs, optimizer steps,
dataset size, model parameters, DataLoader workers, checkpoints and histograms kept, and the disk
a job may fill.

Pydantic's own bounds on the config keep values sane for a person at a terminal; these limits are
the service operator's, so that one HTTP client cannot queue a job that would hold a worker for
a year or ask it to allocate a trillion parameters. They are checked once per submission, after
the config has been validated, and only from the config itself (file sizes aside): nothing is
trained or loaded. The model is built on torch's meta device (shapes, no memory), and the count is
cached per (model name, options), so a repeated config costs a dictionary lookup.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from gradloop import registry
from gradloop.config import RunConfig
from gradloop.errors import ConfigError, FieldError
from gradloop.plugin_files import dataset_bytes, resolve_model_paths

log = logging.getLogger(__name__)

CHECKPOINT_BYTES_PER_PARAM = 12  # fp32 weights + up to two fp32 optimizer states per weight
HISTOGRAM_BYTES = 1024  # a tensor's gradient and weight rows in a histogram file (30 bins), long names included


class ServiceLimits(BaseModel):
    """The operator's ceilings for one job; `gradloop serve --max-epochs ...` sets them."""

    model_config = ConfigDict(extra="forbid")
    max_epochs: int = Field(10_000, ge=1, description="trainer.epochs may not exceed this")
    max_steps: int = Field(
        10_000_000,
        ge=1,
        description="optimizer steps a job may run "
        "(trainer.max_steps, or epochs x batches when the dataset size is known)",
    )
    max_dataset_samples: int = Field(
        10_000_000, ge=1, description="samples a generated dataset may have (options n_samples / max_samples)"
    )
    max_dataset_bytes: int = Field(
        10 * 1024**3, ge=1, description="bytes of the files a dataset reads (its files under the data root)"
    )
    max_model_params: int = Field(
        1_000_000_000, ge=1, description="parameters of the model, counted on the meta device"
    )
    max_num_workers: int = Field(4, ge=0, description="data.num_workers (DataLoader processes) may not exceed this")
    max_keep_checkpoints: int = Field(10, ge=1, description="trainer.keep_checkpoints may not exceed this")
    min_histogram_every: int = Field(
        10, ge=1, description="tracking.histogram_every may not be below this (0, no histograms, is allowed)"
    )
    max_job_disk: int = Field(
        20 * 1024**3,
        ge=1,
        description="bytes a job may write, by an upper estimate (see job_disk_bytes); a sweep counts all its children",
    )
    max_sweep_children: int = Field(256, ge=1, description="combinations a sweep's grid may have")
    max_procs_per_job: int | None = Field(
        None, ge=1, description="processes (ranks) one job may start; None: the host's slots (serve fills it in)"
    )


def check_limits(config: RunConfig, limits: ServiceLimits, data_root: Path) -> list[FieldError]:
    """Every limit `config` goes over, as field errors that name the limit and the fix."""
    errors: list[FieldError] = []
    trainer = config.trainer
    if trainer.epochs > limits.max_epochs:
        errors.append(
            FieldError(
                "trainer.epochs",
                f"{trainer.epochs} epochs is over this service's limit of {limits.max_epochs}; "
                f"ask for at most {limits.max_epochs}",
            )
        )
    if trainer.max_steps is not None and trainer.max_steps > limits.max_steps:
        errors.append(
            FieldError(
                "trainer.max_steps",
                f"{trainer.max_steps} steps is over this service's limit of {limits.max_steps}; "
                f"ask for at most {limits.max_steps}",
            )
        )

    samples = _declared_samples(config.data.options)
    if samples is not None and samples > limits.max_dataset_samples:
        field = "n_samples" if "n_samples" in config.data.options else "max_samples"
        errors.append(
            FieldError(
                f"data.options.{field}",
                f"{samples} samples is over this service's limit of {limits.max_dataset_samples}; "
                f"use at most {limits.max_dataset_samples}",
            )
        )
    elif trainer.max_steps is None and not errors and (samples := known_samples(config)) is not None:
        steps = estimated_steps(samples, config)
        if steps > limits.max_steps:
            errors.append(
                FieldError(
                    "trainer.epochs",
                    f"{trainer.epochs} epochs of {samples} samples in batches of {config.data.batch_size} "
                    f"is about {steps} steps, over this service's limit of {limits.max_steps}; "
                    "lower epochs or set trainer.max_steps",
                )
            )

    data_bytes = dataset_bytes(config, data_root)
    if data_bytes is not None and data_bytes > limits.max_dataset_bytes:
        errors.append(
            FieldError(
                "data.options.path",
                f"the dataset's files are {data_bytes} bytes, over this service's limit of {limits.max_dataset_bytes}; "
                "use a smaller dataset",
            )
        )

    data, tracking = config.data, config.tracking
    if data.num_workers > limits.max_num_workers:
        errors.append(
            FieldError(
                "data.num_workers",
                f"{data.num_workers} DataLoader workers is over this service's limit of {limits.max_num_workers}; "
                f"use at most {limits.max_num_workers}",
            )
        )
    if trainer.keep_checkpoints > limits.max_keep_checkpoints:
        errors.append(
            FieldError(
                "trainer.keep_checkpoints",
                f"keeping {trainer.keep_checkpoints} checkpoints is over this service's limit of "
                f"{limits.max_keep_checkpoints}; keep at most {limits.max_keep_checkpoints}",
            )
        )
    if 0 < tracking.histogram_every < limits.min_histogram_every:
        errors.append(
            FieldError(
                "tracking.histogram_every",
                f"histograms every {tracking.histogram_every} steps is more often than this service allows "
                f"(every {limits.min_histogram_every} steps at most); "
                f"use {limits.min_histogram_every} or more, or 0 for none",
            )
        )

    model = model_size_of(config, data_root)
    if model is not None and model[0] > limits.max_model_params:
        errors.append(
            FieldError(
                "model.options",
                f"this model has {model[0]} parameters, over this service's limit of {limits.max_model_params}; "
                "make it smaller",
            )
        )
    disk = job_disk(config, limits, data_root)
    if disk is not None and disk.total > limits.max_job_disk:
        errors.append(
            FieldError(
                disk.largest_field,
                f"{disk.describe()}, over this service's limit of {human_bytes(limits.max_job_disk)}; {disk.fix}",
            )
        )
    return errors


@dataclass(frozen=True)
class DiskEstimate:
    """An upper estimate of the bytes one run writes, by what writes them."""

    checkpoints: int
    model: int
    histograms: int

    @property
    def total(self) -> int:
        return self.checkpoints + self.model + self.histograms

    @property
    def largest_field(self) -> str:
        parts = {
            "trainer.keep_checkpoints": self.checkpoints,
            "tracking.log_model": self.model,
            "tracking.histogram_every": self.histograms,
        }
        return max(parts, key=lambda k: parts[k])

    @property
    def fix(self) -> str:
        return {
            "trainer.keep_checkpoints": "keep fewer checkpoints (trainer.keep_checkpoints) or use a smaller model",
            "tracking.log_model": "set tracking.log_model: false or use a smaller model",
            "tracking.histogram_every": "record histograms less often (or set trainer.max_steps)",
        }[self.largest_field]

    def describe(self) -> str:
        return (
            f"this job would write up to {human_bytes(self.total)} (checkpoints {human_bytes(self.checkpoints)}, "
            f"logged model {human_bytes(self.model)}, histograms {human_bytes(self.histograms)})"
        )


def job_disk(config: RunConfig, limits: ServiceLimits, data_root: Path) -> DiskEstimate | None:
    """Upper estimate of what one run of `config` writes; None when its model cannot be counted.

    - a checkpoint: 12 bytes per parameter (fp32 weights and up to two fp32 optimizer states per
      weight, as Adam keeps); keep_checkpoints + 1 of them with checkpoint_every_steps (the
      retained step files and the newest), else one at the end; one more copy in MLflow with
      tracking.log_checkpoint;
    - the logged model: 4 bytes per parameter, written locally and into MLflow (tracking.log_model);
    - histograms: HISTOGRAM_BYTES per parameter tensor per record, locally and in MLflow, one
      record every histogram_every steps of trainer.max_steps, else of the steps the dataset's
      size gives when its options tell it (known_samples), else of the steps its files allow at
      one sample per byte, else of this service's --max-steps.

    The metrics journal and the job's log are not counted: log_every and the log's own cap
    bound them."""
    size = model_size_of(config, data_root)
    if size is None:
        return None
    params, tensors = size
    trainer, tracking = config.trainer, config.tracking
    steps = min(_steps_bound(config, limits, data_root), limits.max_steps)
    files = 0
    if trainer.checkpoint_every_steps:
        files = min(trainer.keep_checkpoints, max(1, steps // trainer.checkpoint_every_steps)) + 1
    elif trainer.checkpoint_at_end:
        files = 1
    if tracking.enabled and tracking.log_checkpoint and files:
        files += 1
    model = 2 * 4 * params if tracking.enabled and tracking.log_model else 0
    records = steps // tracking.histogram_every if tracking.enabled and tracking.histogram_every else 0
    return DiskEstimate(
        checkpoints=files * CHECKPOINT_BYTES_PER_PARAM * params,
        model=model,
        histograms=2 * records * tensors * HISTOGRAM_BYTES,
    )


def human_bytes(n: int) -> str:
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def _steps_bound(config: RunConfig, limits: ServiceLimits, data_root: Path) -> int:
    if config.trainer.max_steps is not None:
        return config.trainer.max_steps
    samples = known_samples(config)
    if samples is None:
        samples = dataset_bytes(config, data_root)  # no sample takes less than a byte of its files
    return estimated_steps(samples, config) if samples is not None else limits.max_steps


def known_samples(config: RunConfig) -> int | None:
    """The dataset's size from its options alone: what the plugin says (capability `samples`),
    else a generated dataset's n_samples / max_samples; None when only reading it would tell."""
    data = config.data
    if data.name in registry.datasets:
        samples = registry.datasets.get(data.name).capabilities.get("samples")
        if samples is not None:
            try:
                return int(samples(dict(data.options)))
            except (KeyError, TypeError, ValueError):
                return None
    return _declared_samples(data.options)


def model_size_of(config: RunConfig, data_root: Path) -> tuple[int, int] | None:
    """(parameters, parameter tensors) of the config's model, or None when it cannot be counted."""
    try:
        options = resolve_model_paths(config.model.name, config.model.options, config.data.root or str(data_root))
    except ConfigError:
        return None  # a path outside the root or missing: reported by the path check or the build
    return model_size(config.model.name, json.dumps(options, sort_keys=True))


def estimated_steps(samples: int, config: RunConfig) -> int:
    """Optimizer steps of a full run over `samples` samples (the validation split held out)."""
    data, trainer = config.data, config.trainer
    train = max(1, samples - int(samples * data.val_fraction))
    batches = train // data.batch_size if data.drop_last else math.ceil(train / data.batch_size)
    return trainer.epochs * max(1, math.ceil(batches / trainer.grad_accum_steps))


def _declared_samples(options: dict[str, Any]) -> int | None:
    for key in ("n_samples", "max_samples"):
        value = options.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def model_parameters(name: str, options_json: str) -> int | None:
    """Parameters of the registered model `name` built with these options on the meta device."""
    size = model_size(name, options_json)
    return size[0] if size is not None else None


@lru_cache(maxsize=256)
def model_size(name: str, options_json: str) -> tuple[int, int] | None:
    """(parameters, parameter tensors) of the registered model `name` built with these options on
    the meta device; None when it cannot be built there (the limits that need it are then not
    applied, and a warning logged)."""
    import torch  # only to count a model: the CLI and the service's config checks import this module

    try:
        with torch.device("meta"):
            model = registry.models.build(name, json.loads(options_json))
        tensors = list(model.parameters())
        return int(sum(p.numel() for p in tensors)), len(tensors)
    except Exception as exc:  # a plugin that cannot build on meta: the worker will find out
        log.warning("cannot count the parameters of model %r on the meta device: %s", name, exc)
        return None

"""Configured limits on what one job submitted over HTTP may ask for: epochs, optimizer steps,
dataset size and model parameters.

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
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from gradloop.config import RunConfig
from gradloop.errors import ConfigError, FieldError
from gradloop.plugin_files import dataset_bytes, resolve_model_paths

log = logging.getLogger(__name__)


class ServiceLimits(BaseModel):
    """The operator's ceilings for one job; `gradloop serve --max-epochs ...` sets them."""

    model_config = ConfigDict(extra="forbid")
    max_epochs: int = Field(10_000, ge=1, description="trainer.epochs may not exceed this")
    max_steps: int = Field(
        10_000_000,
        ge=1,
        description="optimizer steps a job may run (trainer.max_steps, or epochs x batches when the dataset size is known)",
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


def check_limits(config: RunConfig, limits: ServiceLimits, data_root: Path) -> list[FieldError]:
    """Every limit `config` goes over, as field errors that name the limit and the fix."""
    errors: list[FieldError] = []
    trainer = config.trainer
    if trainer.epochs > limits.max_epochs:
        errors.append(
            FieldError(
                "trainer.epochs",
                f"{trainer.epochs} epochs is over this service's limit of {limits.max_epochs}; ask for at most {limits.max_epochs}",
            )
        )
    if trainer.max_steps is not None and trainer.max_steps > limits.max_steps:
        errors.append(
            FieldError(
                "trainer.max_steps",
                f"{trainer.max_steps} steps is over this service's limit of {limits.max_steps}; ask for at most {limits.max_steps}",
            )
        )

    samples = _declared_samples(config.data.options)
    if samples is not None and samples > limits.max_dataset_samples:
        field = "n_samples" if "n_samples" in config.data.options else "max_samples"
        errors.append(
            FieldError(
                f"data.options.{field}",
                f"{samples} samples is over this service's limit of {limits.max_dataset_samples}; use at most {limits.max_dataset_samples}",
            )
        )
    elif samples is not None and trainer.max_steps is None and not errors:
        steps = estimated_steps(samples, config)
        if steps > limits.max_steps:
            errors.append(
                FieldError(
                    "trainer.epochs",
                    f"{trainer.epochs} epochs of {samples} samples in batches of {config.data.batch_size} is about {steps} steps, over this service's limit of {limits.max_steps}; lower epochs or set trainer.max_steps",
                )
            )

    size = dataset_bytes(config, data_root)
    if size is not None and size > limits.max_dataset_bytes:
        errors.append(
            FieldError(
                "data.options.path",
                f"the dataset's files are {size} bytes, over this service's limit of {limits.max_dataset_bytes}; use a smaller dataset",
            )
        )

    if config.distributed.enabled:
        # A job runs in one forked child; its ranks would escape the pool's process accounting.
        errors.append(
            FieldError(
                "distributed.strategy",
                f"this service runs each job in one process and cannot run strategy {config.distributed.strategy}; "
                "set distributed.strategy: none, or train on several processes with `gradloop run` or torchrun",
            )
        )

    try:
        options = resolve_model_paths(config.model.name, config.model.options, config.data.root or str(data_root))
    except ConfigError:
        options = None  # a path outside the root or missing: reported by the path check or the build
    params = model_parameters(config.model.name, json.dumps(options, sort_keys=True)) if options is not None else None
    if params is not None and params > limits.max_model_params:
        errors.append(
            FieldError(
                "model.options",
                f"this model has {params} parameters, over this service's limit of {limits.max_model_params}; make it smaller",
            )
        )
    return errors


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


@lru_cache(maxsize=256)
def model_parameters(name: str, options_json: str) -> int | None:
    """Parameters of the registered model `name` built with these options on the meta device;
    None when it cannot be built there (the limit is then not applied, and a warning logged)."""
    import torch

    from gradloop import registry

    try:
        with torch.device("meta"):
            model = registry.models.build(name, json.loads(options_json))
        return int(sum(p.numel() for p in model.parameters()))
    except Exception as exc:  # a plugin that cannot build on meta: the worker will find out
        log.warning("cannot count the parameters of model %r on the meta device: %s", name, exc)
        return None

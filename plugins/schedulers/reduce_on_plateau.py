"""Reduce the lr when a validation metric stops improving.

The trainer calls `.step(value)` after each validation with the metric named by `monitor`
(a key of the validation metrics, e.g. "val/loss" or "val/accuracy").
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from gradloop.registry import schedulers


class ReduceOnPlateauOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    monitor: str = Field(
        "val/loss", min_length=1, description="validation metric to watch, e.g. val/loss or val/accuracy"
    )
    mode: Literal["min", "max"] = Field(
        "min", description="min: lower is better (losses); max: higher is better (accuracy)"
    )
    factor: float = Field(0.1, gt=0, lt=1, description="multiply the lr by this when the metric stalls, in (0, 1)")
    patience: int = Field(10, ge=0, description="validations without improvement before reducing")
    threshold: float = Field(1e-4, ge=0, description="smallest change that counts as an improvement")
    threshold_mode: Literal["rel", "abs"] = "rel"
    cooldown: int = Field(0, ge=0, description="validations to wait after a reduction")
    min_lr: float = Field(0.0, ge=0, description="the lr never goes below this")
    eps: float = Field(1e-8, ge=0, description="reductions smaller than this are skipped")


@schedulers.register(
    "reduce_on_plateau",
    options=ReduceOnPlateauOptions,
    description="Reduce the lr by factor when a validation metric stops improving (torch ReduceLROnPlateau)",
    interval="epoch",
    monitor=True,
)
def reduce_on_plateau(
    optimizer: torch.optim.Optimizer, *, options: ReduceOnPlateauOptions, total_steps: int, steps_per_epoch: int
) -> torch.optim.lr_scheduler.ReduceLROnPlateau:
    torch_opts = options.model_dump(exclude={"monitor"})
    return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, **torch_opts)

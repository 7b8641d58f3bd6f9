"""One-cycle policy (Smith & Topin): warm up to max_lr, then anneal far below the start, per step."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from gradloop.errors import ConfigError
from gradloop.registry import schedulers


class OneCycleOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_lr: float | None = Field(None, gt=0, description="peak lr (default: each param group's lr)")
    pct_start: float = Field(0.3, gt=0, lt=1, description="fraction of the run spent increasing the lr")
    anneal_strategy: Literal["cos", "linear"] = "cos"
    div_factor: float = Field(25.0, gt=0, description="initial lr = max_lr / div_factor")
    final_div_factor: float = Field(1e4, gt=0, description="final lr = initial lr / final_div_factor")
    three_phase: bool = False
    cycle_momentum: bool = Field(
        False,
        description="also cycle momentum/beta1 between base_momentum and max_momentum (off: the optimizer's momentum "
        "stays as configured)",
    )
    base_momentum: float = Field(0.85, ge=0, lt=1)
    max_momentum: float = Field(0.95, ge=0, lt=1)

    @model_validator(mode="after")
    def _momentum_order(self) -> OneCycleOptions:
        if self.cycle_momentum and self.base_momentum > self.max_momentum:
            raise ValueError(f"base_momentum ({self.base_momentum}) must not exceed max_momentum ({self.max_momentum})")
        return self


@schedulers.register(
    "onecycle",
    options=OneCycleOptions,
    description="One-cycle lr policy over the whole run (torch OneCycleLR, per optimizer step)",
    interval="step",
)
def onecycle(
    optimizer: torch.optim.Optimizer, *, options: OneCycleOptions, total_steps: int, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    if total_steps < 2:
        raise ConfigError.single(
            "scheduler.name", f"onecycle needs a run of at least 2 optimizer steps, got {total_steps}; train longer"
        )
    if options.cycle_momentum and not all(
        ("momentum" in g and g["momentum"] > 0) or "betas" in g for g in optimizer.param_groups
    ):
        raise ConfigError.single(
            "scheduler.options.cycle_momentum",
            "cycle_momentum needs an optimizer with momentum > 0 (sgd, rmsprop) or betas (adam, adamw, lion); set it "
            "to false",
        )
    max_lr = options.max_lr if options.max_lr is not None else [g["lr"] for g in optimizer.param_groups]
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=max_lr,
        total_steps=total_steps,
        **options.model_dump(exclude={"max_lr"}),
    )

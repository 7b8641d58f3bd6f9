"""Linear warmup, then linear decay to min_lr, stepped after every optimizer step."""
from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field

from service.registry import schedulers

from ._warmup import WarmupDecay, check_warmup, floors


class LinearOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    warmup_steps: int = Field(0, ge=0, description="optimizer steps of linear warmup (must be fewer than the run's total steps)")
    min_lr: float = Field(0.0, ge=0, description="lr at the last step; absolute, the same for every param group")


@schedulers.register("linear", options=LinearOptions, description="Linear warmup, then linear decay to min_lr over the run (per optimizer step)", interval="step")
def linear(optimizer: torch.optim.Optimizer, *, options: LinearOptions, total_steps: int, steps_per_epoch: int) -> torch.optim.lr_scheduler.LRScheduler:
    check_warmup("linear", options.warmup_steps, total_steps)
    base = [g.get("initial_lr", g["lr"]) for g in optimizer.param_groups]  # what LambdaLR scales
    names = [str(g.get("group_name", i)) for i, g in enumerate(optimizer.param_groups)]
    curves = [WarmupDecay(options.warmup_steps, total_steps, f, "linear") for f in floors("linear", base, names, options.min_lr)]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, curves)

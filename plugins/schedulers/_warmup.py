"""The lr-factor curve shared by the cosine and linear schedulers: linear warmup, then decay.

A picklable callable (not a closure) so that LambdaLR.state_dict() carries its settings and a
resumed run checks out the same curve. Step s is the number of optimizer steps already taken,
so the lr of the (s+1)-th optimizer step is base_lr * factor(s):

  warmup, s < W:      (s + 1) / (W + 1)          -- never 0: every step trains
  decay,  W <= s:     progress p = (s - W) / max(1, T - W - 1), clamped to [0, 1]
                      cosine: floor + (1 - floor) * (1 + cos(pi * p)) / 2
                      linear: floor + (1 - floor) * (1 - p)
so the first step after warmup uses the full base lr and the last of T steps uses min_lr.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from gradloop.errors import ConfigError

Shape = Literal["cosine", "linear"]


class WarmupDecayOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    warmup_steps: int = Field(
        0, ge=0, description="optimizer steps of linear warmup (must be fewer than the run's total steps)"
    )
    min_lr: float = Field(0.0, ge=0, description="lr at the last step; absolute, the same for every param group")


def warmup_decay(
    optimizer: torch.optim.Optimizer, options: WarmupDecayOptions, total_steps: int, shape: Shape
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR with one WarmupDecay curve per param group (each group has its own floor)."""
    check_warmup(shape, options.warmup_steps, total_steps)
    base = [g.get("initial_lr", g["lr"]) for g in optimizer.param_groups]  # what LambdaLR scales
    names = [str(g.get("group_name", i)) for i, g in enumerate(optimizer.param_groups)]
    curves: list[Callable[[int], float]] = [
        WarmupDecay(options.warmup_steps, total_steps, f, shape) for f in floors(shape, base, names, options.min_lr)
    ]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, curves)


class WarmupDecay:
    def __init__(self, warmup_steps: int, total_steps: int, floor: float, shape: Shape) -> None:
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.floor = floor  # min_lr / base_lr of this param group
        self.shape = shape

    def __call__(self, step: int) -> float:
        w = self.warmup_steps
        if step < w:
            return (step + 1) / (w + 1)
        progress = min(1.0, max(0.0, (step - w) / max(1, self.total_steps - w - 1)))
        if self.shape == "cosine":
            decayed = 0.5 * (1.0 + math.cos(math.pi * progress))
        else:
            decayed = 1.0 - progress
        return self.floor + (1.0 - self.floor) * decayed


def check_warmup(name: str, warmup_steps: int, total_steps: int) -> None:
    if total_steps < 1:
        raise ConfigError.single(
            "scheduler.name",
            f"{name} steps per optimizer step and needs the run's total steps, got {total_steps}; train for at least "
            "one step",
        )
    if warmup_steps >= total_steps:
        raise ConfigError.single(
            "scheduler.options.warmup_steps",
            f"warmup_steps ({warmup_steps}) must be less than the run's total optimizer steps ({total_steps}); "
            "lower warmup_steps or train for more epochs",
        )


def floors(name: str, base_lrs: list[float], group_names: list[str], min_lr: float) -> list[float]:
    """min_lr as a fraction of each group's base lr; a group whose lr is below min_lr is an error."""
    out = []
    for lr, group in zip(base_lrs, group_names):
        if min_lr > lr:
            raise ConfigError.single(
                "scheduler.options.min_lr",
                f"{name} min_lr ({min_lr}) is above the lr of param group {group!r} ({lr}); "
                "lower min_lr to at most the smallest group lr",
            )
        out.append(min_lr / lr if lr > 0 else 0.0)
    return out

"""Linear warmup, then linear decay to min_lr, stepped after every optimizer step."""

from __future__ import annotations

import torch

from gradloop.plugins.schedulers._warmup import WarmupDecayOptions, warmup_decay
from gradloop.registry import schedulers


class LinearOptions(WarmupDecayOptions):
    pass


@schedulers.register(
    "linear",
    options=LinearOptions,
    description="Linear warmup, then linear decay to min_lr over the run (per optimizer step)",
    interval="step",
)
def linear(
    optimizer: torch.optim.Optimizer, *, options: LinearOptions, total_steps: int, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    return warmup_decay(optimizer, options, total_steps, "linear")

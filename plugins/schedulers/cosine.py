"""Cosine decay with linear warmup, stepped after every optimizer step."""

from __future__ import annotations

import torch

from gradloop.plugins.schedulers._warmup import WarmupDecayOptions, warmup_decay
from gradloop.registry import schedulers


class CosineOptions(WarmupDecayOptions):
    pass


@schedulers.register(
    "cosine",
    options=CosineOptions,
    description="Linear warmup, then cosine decay to min_lr over the run (per optimizer step)",
    interval="step",
)
def cosine(
    optimizer: torch.optim.Optimizer, *, options: CosineOptions, total_steps: int, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    return warmup_decay(optimizer, options, total_steps, "cosine")

"""Step decay: multiply the lr by gamma every step_size epochs."""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field

from gradloop.registry import schedulers


class StepOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    step_size: int = Field(1, ge=1, description="epochs between decays")
    gamma: float = Field(0.1, gt=0, le=1, description="factor applied at each decay, in (0, 1]")


@schedulers.register(
    "step",
    options=StepOptions,
    description="Multiply the lr by gamma every step_size epochs (torch StepLR)",
    interval="epoch",
)
def step(
    optimizer: torch.optim.Optimizer, *, options: StepOptions, total_steps: int, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=options.step_size, gamma=options.gamma)

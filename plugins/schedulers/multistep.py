"""Multi-step decay: multiply the lr by gamma at each milestone epoch."""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from gradloop.registry import schedulers


class MultiStepOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    milestones: list[int] = Field(
        min_length=1, description="epochs (strictly increasing, >= 1) after which the lr is multiplied by gamma"
    )
    gamma: float = Field(0.1, gt=0, le=1, description="factor applied at each milestone, in (0, 1]")

    @field_validator("milestones")
    @classmethod
    def _increasing(cls, v: list[int]) -> list[int]:
        if v[0] < 1 or any(b <= a for a, b in zip(v, v[1:])):
            raise ValueError(
                f"milestones must be epochs >= 1 in strictly increasing order, e.g. [30, 60, 90] (got {v})"
            )
        return v


@schedulers.register(
    "multistep",
    options=MultiStepOptions,
    description="Multiply the lr by gamma at each milestone epoch (torch MultiStepLR)",
    interval="epoch",
)
def multistep(
    optimizer: torch.optim.Optimizer, *, options: MultiStepOptions, total_steps: int, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=options.milestones, gamma=options.gamma)

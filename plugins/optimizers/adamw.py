"""AdamW (torch.optim.AdamW): Adam with decoupled weight decay."""

from __future__ import annotations

import torch

from gradloop.plugins.optimizers._common import WeightDecay
from gradloop.plugins.optimizers.adam import AdamOptions
from gradloop.registry import optimizers


class AdamWOptions(AdamOptions):
    """Adam's options; only the default weight decay differs (decoupled decay is meant to be on)."""

    weight_decay: WeightDecay = 0.01


@optimizers.register(
    "adamw",
    options=AdamWOptions,
    description="AdamW (torch.optim.AdamW): Adam with decoupled weight decay",
    closure=False,
)
def adamw(param_groups: list[dict], *, options: AdamWOptions) -> torch.optim.Optimizer:
    return torch.optim.AdamW(param_groups, **options.model_dump())

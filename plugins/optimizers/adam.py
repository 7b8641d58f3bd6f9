"""Adam (torch.optim.Adam): L2-style weight decay added to the gradient."""

from __future__ import annotations

import torch

from gradloop.plugins.optimizers._common import Betas, Eps, Foreach, Fused, LearningRate, OptimizerOptions, WeightDecay
from gradloop.registry import optimizers


class AdamOptions(OptimizerOptions):
    lr: LearningRate = 1e-3
    betas: Betas = (0.9, 0.999)
    eps: Eps = 1e-8
    weight_decay: WeightDecay = 0.0
    amsgrad: bool = False
    maximize: bool = False
    foreach: Foreach = None
    fused: Fused = None


@optimizers.register(
    "adam",
    options=AdamOptions,
    description="Adam (torch.optim.Adam); weight_decay is L2 added to the gradient",
    closure=False,
)
def adam(param_groups: list[dict], *, options: AdamOptions) -> torch.optim.Optimizer:
    return torch.optim.Adam(param_groups, **options.model_dump())

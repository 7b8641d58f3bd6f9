"""AdamW (torch.optim.AdamW): Adam with decoupled weight decay."""
from __future__ import annotations

import torch

from service.registry import optimizers

from ._common import Betas, Eps, Foreach, Fused, LearningRate, OptimizerOptions, WeightDecay


class AdamWOptions(OptimizerOptions):
    lr: LearningRate = 1e-3
    betas: Betas = (0.9, 0.999)
    eps: Eps = 1e-8
    weight_decay: WeightDecay = 0.01
    amsgrad: bool = False
    maximize: bool = False
    foreach: Foreach = None
    fused: Fused = None


@optimizers.register("adamw", options=AdamWOptions, description="AdamW (torch.optim.AdamW): Adam with decoupled weight decay", closure=False)
def adamw(param_groups: list[dict], *, options: AdamWOptions) -> torch.optim.Optimizer:
    return torch.optim.AdamW(param_groups, **options.model_dump())

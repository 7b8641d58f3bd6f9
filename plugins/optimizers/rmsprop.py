"""RMSprop (torch.optim.RMSprop)."""

from __future__ import annotations

import torch
from pydantic import Field

from gradloop.plugins.optimizers._common import Eps, Foreach, LearningRate, Momentum, OptimizerOptions, WeightDecay
from gradloop.registry import optimizers


class RMSpropOptions(OptimizerOptions):
    lr: LearningRate = 1e-2
    alpha: float = Field(0.99, ge=0, lt=1, description="smoothing constant of the squared-gradient average")
    eps: Eps = 1e-8
    weight_decay: WeightDecay = 0.0
    momentum: Momentum = 0.0
    centered: bool = False
    foreach: Foreach = None
    maximize: bool = False


@optimizers.register("rmsprop", options=RMSpropOptions, description="RMSprop (torch.optim.RMSprop)", closure=False)
def rmsprop(param_groups: list[dict], *, options: RMSpropOptions) -> torch.optim.Optimizer:
    return torch.optim.RMSprop(param_groups, **options.model_dump())

"""SGD (torch.optim.SGD): plain, with momentum, or Nesterov."""

from __future__ import annotations

import torch
from pydantic import Field, model_validator

from gradloop.plugins.optimizers._common import Foreach, Fused, LearningRate, Momentum, OptimizerOptions, WeightDecay
from gradloop.registry import optimizers


class SGDOptions(OptimizerOptions):
    lr: LearningRate = 0.01
    momentum: Momentum = 0.0
    dampening: float = Field(0.0, ge=0, le=1, description="dampening of momentum, in [0, 1]")
    weight_decay: WeightDecay = 0.0
    nesterov: bool = False
    maximize: bool = False
    foreach: Foreach = None
    fused: Fused = None

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self) -> SGDOptions:
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError(
                f"nesterov needs momentum > 0 and dampening 0 (got momentum={self.momentum}, "
                f"dampening={self.dampening}); set momentum (e.g. 0.9) and dampening 0, or nesterov false"
            )
        return self


@optimizers.register(
    "sgd",
    options=SGDOptions,
    description="Stochastic gradient descent with optional momentum and Nesterov (torch.optim.SGD)",
    closure=False,
)
def sgd(param_groups: list[dict], *, options: SGDOptions) -> torch.optim.Optimizer:
    return torch.optim.SGD(param_groups, **options.model_dump())

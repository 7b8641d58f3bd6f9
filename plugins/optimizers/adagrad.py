"""Adagrad (torch.optim.Adagrad)."""

from __future__ import annotations

import torch
from pydantic import Field

from gradloop.plugins.optimizers._common import Eps, Foreach, Fused, LearningRate, OptimizerOptions, WeightDecay
from gradloop.registry import optimizers


class AdagradOptions(OptimizerOptions):
    lr: LearningRate = 1e-2
    lr_decay: float = Field(0.0, ge=0, description="learning-rate decay per step")
    weight_decay: WeightDecay = 0.0
    initial_accumulator_value: float = Field(0.0, ge=0)
    eps: Eps = 1e-10
    maximize: bool = False
    foreach: Foreach = None
    fused: Fused = None


@optimizers.register("adagrad", options=AdagradOptions, description="Adagrad (torch.optim.Adagrad)", closure=False)
def adagrad(param_groups: list[dict], *, options: AdagradOptions) -> torch.optim.Optimizer:
    return torch.optim.Adagrad(param_groups, **options.model_dump())

"""L-BFGS (torch.optim.LBFGS): re-evaluates the loss through a closure, one param group only."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from gradloop.errors import ParamsError
from gradloop.plugins.optimizers._common import LearningRate, OptimizerOptions
from gradloop.registry import optimizers


class LBFGSOptions(OptimizerOptions):
    lr: LearningRate = 1.0
    max_iter: int = Field(20, ge=1, description="iterations per optimizer step")
    max_eval: int | None = Field(None, ge=1, description="function evaluations per step (default: max_iter * 5 / 4)")
    tolerance_grad: float = Field(1e-7, ge=0)
    tolerance_change: float = Field(1e-9, ge=0)
    history_size: int = Field(100, ge=1)
    line_search_fn: Literal["strong_wolfe"] | None = Field(None, description="'strong_wolfe' or none")


@optimizers.register(
    "lbfgs",
    options=LBFGSOptions,
    description="L-BFGS (torch.optim.LBFGS); the trainer drives it with a closure",
    closure=True,
)
def lbfgs(param_groups: list[dict], *, options: LBFGSOptions) -> torch.optim.Optimizer:
    if len(param_groups) > 1:
        names = ", ".join(str(g.get("group_name")) for g in param_groups)
        raise ParamsError(
            f"lbfgs supports a single parameter group, got {len(param_groups)} ({names}); "
            "remove optimizer.param_groups (and pass one group) to use lbfgs"
        )
    return torch.optim.LBFGS(param_groups, **options.model_dump())

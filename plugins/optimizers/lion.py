"""Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"): an optimizer torch lacks.

Written the way a third-party author ships a gradloop plugin: a torch.optim.Optimizer subclass
plus a module-level `plugin` object. It does not register itself; the project's pyproject.toml
declares the entry point `gradloop.optimizers: lion = "gradloop.plugins.optimizers.lion:plugin"` and the
registry loads it from there, exactly as it would load a plugin from another distribution.

Update per parameter, with gradient g and momentum m:
    p <- p * (1 - lr * weight_decay) - lr * sign(beta1 * m + (1 - beta1) * g)
    m <- beta2 * m + (1 - beta2) * g
Every coordinate moves by exactly lr (before decay), so Lion wants a smaller lr than AdamW
(the paper suggests 3-10x smaller) and a correspondingly larger weight_decay.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Annotated, Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from gradloop.registry import Plugin

Beta = Annotated[float, Field(ge=0, lt=1)]


class LionOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lr: float = Field(1e-4, gt=0, description="learning rate (every coordinate moves by lr per step)")
    betas: tuple[Beta, Beta] = Field(
        (0.9, 0.99), description="beta1 interpolates the update, beta2 the momentum; each in [0, 1)"
    )
    weight_decay: float = Field(0.0, ge=0, description="decoupled weight decay")
    maximize: bool = False


class Lion(torch.optim.Optimizer):
    """Lion: the sign of an interpolation of momentum and gradient, with decoupled weight decay."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
        maximize: bool = False,
    ) -> None:
        if lr <= 0:
            raise ValueError(f"Lion: lr must be > 0, got {lr}")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"Lion: betas must each be in [0, 1), got {betas}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay, maximize=maximize))

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = -p.grad if group["maximize"] else p.grad
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                exp_avg = state["exp_avg"]
                if wd != 0:
                    p.mul_(1 - lr * wd)
                update = exp_avg.mul(beta1).add_(grad, alpha=1 - beta1).sign_()
                p.add_(update, alpha=-lr)
                exp_avg.mul_(beta2).add_(grad, alpha=1 - beta2)
        return loss


def build_lion(param_groups: list[dict], *, options: LionOptions) -> torch.optim.Optimizer:
    return Lion(param_groups, **options.model_dump())


plugin = Plugin(
    name="lion",
    factory=build_lion,
    options=LionOptions,
    description="Lion (Chen et al. 2023): sign of interpolated momentum; use ~3-10x smaller lr than AdamW",
    capabilities={"closure": False},
)

"""The Perplexity torchmetrics Metric (a module of its own: torchmetrics is imported only when built)."""

from __future__ import annotations

import torch
from torchmetrics import Metric


class Perplexity(Metric):
    """exp(sum of -log p(target) / number of targets), over the whole validation set.

    It takes the probabilities the other classification metrics take; the log is clamped so a
    probability that underflowed to 0 gives a large, finite value.
    """

    full_state_update = False
    nll: torch.Tensor  # states (add_state)
    count: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.add_state("nll", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, probs: torch.Tensor, target: torch.Tensor) -> None:
        picked = probs.gather(1, target.unsqueeze(1)).squeeze(1).double()
        self.nll += -torch.log(picked.clamp(min=torch.finfo(torch.float64).tiny)).sum()
        self.count += target.numel()

    def compute(self) -> torch.Tensor:
        return torch.exp(self.nll / self.count.clamp(min=1))

"""The `l1` loss: mean absolute error for regression."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gradloop.plugins.losses._shapes import same_shape
from gradloop.registry import NoOptions, losses


class L1(nn.Module):
    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        same_shape("l1", output, target)
        return F.l1_loss(output.float(), target.float())


@losses.register("l1", options=NoOptions, description="Mean absolute error (regression).", task="regression")
def build_l1(*, options: NoOptions) -> nn.Module:
    return L1()

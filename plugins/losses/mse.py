"""The `mse` loss: mean squared error for regression."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gradloop.plugins.losses._shapes import same_shape
from gradloop.registry import NoOptions, losses


class MSE(nn.Module):
    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        same_shape("mse", output, target)
        # float32 even under bf16 autocast: squared errors lose too much in 8 mantissa bits.
        return F.mse_loss(output.float(), target.float())


@losses.register("mse", options=NoOptions, description="Mean squared error (regression).", task="regression")
def build_mse(*, options: NoOptions) -> nn.Module:
    return MSE()

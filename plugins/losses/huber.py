"""The `huber` loss: quadratic near zero, linear beyond `delta` (regression)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from gradloop.plugins.losses._shapes import same_shape
from gradloop.registry import losses


class HuberOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    delta: float = Field(1.0, gt=0, description="where the loss turns from quadratic to linear")


class Huber(nn.Module):
    def __init__(self, delta: float):
        super().__init__()
        self.delta = delta

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        same_shape("huber", output, target)
        return F.huber_loss(output.float(), target.float(), delta=self.delta)

    def extra_repr(self) -> str:
        return f"delta={self.delta}"


@losses.register(
    "huber", options=HuberOptions, description="Huber loss (regression), robust to outliers.", task="regression"
)
def build_huber(*, options: HuberOptions) -> nn.Module:
    return Huber(options.delta)

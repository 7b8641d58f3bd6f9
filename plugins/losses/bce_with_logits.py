"""The `bce_with_logits` loss: one logit per sample against 0/1 targets (binary)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from gradloop.plugins.losses._shapes import same_shape
from gradloop.registry import losses


class BCEOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pos_weight: float | None = Field(
        None, gt=0, description="weight of positive samples (e.g. negatives/positives for imbalance)"
    )


class BCEWithLogits(nn.Module):
    pos_weight: torch.Tensor | None  # a buffer

    def __init__(self, pos_weight: float | None):
        super().__init__()
        self.register_buffer("pos_weight", torch.tensor([pos_weight]) if pos_weight is not None else None)

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        same_shape("bce_with_logits", output, target)
        pw = self.pos_weight.to(output.device) if self.pos_weight is not None else None
        # Targets may arrive as int 0/1; the loss needs them as floats like the logits.
        return F.binary_cross_entropy_with_logits(output.float(), target.float(), pos_weight=pw)


@losses.register(
    "bce_with_logits",
    options=BCEOptions,
    description="Binary cross-entropy on raw logits (binary tasks: one output, 0/1 targets).",
    task="binary",
)
def build_bce(*, options: BCEOptions) -> nn.Module:
    return BCEWithLogits(options.pos_weight)

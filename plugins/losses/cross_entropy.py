"""The `cross_entropy` loss: logits (N, C) against class indices (N,), for classification."""

from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from gradloop.errors import TrainingError
from gradloop.registry import losses


class CrossEntropyOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0, description="mass spread uniformly over all classes")
    class_weights: list[Annotated[float, Field(ge=0.0)]] | None = Field(
        None, min_length=1, description="one weight per class (length = number of classes)"
    )

    @field_validator("class_weights")
    @classmethod
    def _some_weight(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and sum(v) <= 0:
            raise ValueError("class_weights are all 0; give at least one positive weight")
        return v


class CrossEntropy(nn.Module):
    def __init__(self, label_smoothing: float, class_weights: list[float] | None):
        super().__init__()
        self.label_smoothing = label_smoothing
        # A buffer, so loss.to(device) moves the weights with it.
        weights = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
        self.register_buffer("class_weights", weights)

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if output.dim() != 2 or target.shape != output.shape[:1] or target.dtype != torch.int64:
            raise TrainingError(
                f"cross_entropy needs logits (N, C) and int64 class indices (N,); got outputs "
                f"{tuple(output.shape)} and targets {tuple(target.shape)} of {target.dtype}"
            )
        weight = self.class_weights.to(output.device) if self.class_weights is not None else None
        return F.cross_entropy(output.float(), target, weight=weight, label_smoothing=self.label_smoothing)

    def extra_repr(self) -> str:
        return f"label_smoothing={self.label_smoothing}"


@losses.register(
    "cross_entropy",
    options=CrossEntropyOptions,
    description="Softmax cross-entropy over class logits (classification), optional label smoothing and class weights.",
    task="classification",
)
def build_cross_entropy(*, options: CrossEntropyOptions) -> nn.Module:
    return CrossEntropy(options.label_smoothing, options.class_weights)

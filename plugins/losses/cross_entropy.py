"""The `cross_entropy` loss: class logits against class indices, for classification.

Per sample, logits (N, C) against targets (N,); per token, logits (N, T, C) against targets
(N, T), where targets equal to `ignore_index` (padding) count for nothing. The loss is the
mean over the real targets (weighted by class_weights when given), and `units(target)` says
how many that is, so that the trainer can make an accumulation window's loss the mean over
all of the window's tokens rather than a mean of micro-batch means.
"""

from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from gradloop.errors import TrainingError
from gradloop.outputs import IGNORE_INDEX
from gradloop.registry import losses


class CrossEntropyOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0, description="mass spread uniformly over all classes")
    class_weights: list[Annotated[float, Field(ge=0.0)]] | None = Field(
        None, min_length=1, description="one weight per class (length = number of classes)"
    )
    ignore_index: int = Field(IGNORE_INDEX, description="targets with this value (padding) are left out")

    @field_validator("class_weights")
    @classmethod
    def _some_weight(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and sum(v) <= 0:
            raise ValueError("class_weights are all 0; give at least one positive weight")
        return v


class CrossEntropy(nn.Module):
    class_weights: torch.Tensor | None  # a buffer

    def __init__(self, label_smoothing: float, class_weights: list[float] | None, ignore_index: int = IGNORE_INDEX):
        super().__init__()
        self.label_smoothing = label_smoothing
        self.ignore_index = ignore_index
        # A buffer, so loss.to(device) moves the weights with it.
        weights = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
        self.register_buffer("class_weights", weights)

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if output.dim() < 2 or target.shape != output.shape[:-1] or target.dtype != torch.int64:
            raise TrainingError(
                f"cross_entropy needs logits (N, C) with int64 class indices (N,), or (N, T, C) with (N, T); "
                f"got outputs {tuple(output.shape)} and targets {tuple(target.shape)} of {target.dtype}"
            )
        if output.dim() == 2 and self.class_weights is None:
            # Per sample, unweighted: torch's own mean over the non-ignored targets, which is the
            # same quantity in one kernel (this is every step of a classifier, where the ops of
            # the sum-then-divide path below cost a measurable share of a small model's step).
            # A batch whose targets are all ignore_index has no mean (NaN): its step is skipped
            # as not finite. Per token, all-padding micro-batches are common; they take the path below.
            return F.cross_entropy(
                output.float(), target, ignore_index=self.ignore_index, label_smoothing=self.label_smoothing
            )
        weight = self.class_weights.to(output.device) if self.class_weights is not None else None
        # A sum divided by the real targets' count: equal to the "mean" reduction, and 0 rather
        # than NaN for a micro-batch that is all padding (its share of a window is then 0).
        total = F.cross_entropy(
            output.reshape(-1, output.shape[-1]).float(),
            target.reshape(-1),
            weight=weight,
            ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing,
            reduction="sum",
        )
        return total / self.units(target).clamp(min=torch.finfo(torch.float32).tiny)

    def units(self, target: torch.Tensor) -> torch.Tensor:
        """What the loss averages over: the real targets (their class weights summed, when given),
        as a 0-d float tensor on the target's device (no host sync)."""
        real = target != self.ignore_index
        if self.class_weights is None:
            return real.sum().float()
        weights = self.class_weights.to(target.device)
        return (weights[target.clamp(min=0)] * real).sum()

    def extra_repr(self) -> str:
        return f"label_smoothing={self.label_smoothing}, ignore_index={self.ignore_index}"


@losses.register(
    "cross_entropy",
    options=CrossEntropyOptions,
    description="Softmax cross-entropy over class logits, per sample or per token (padding at ignore_index left out).",
    task="classification",
)
def build_cross_entropy(*, options: CrossEntropyOptions) -> nn.Module:
    return CrossEntropy(options.label_smoothing, options.class_weights, options.ignore_index)

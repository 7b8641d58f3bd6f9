"""What the built-in metrics share: the options of class-averaged metrics and the task check.

A metric factory is called as `factory(options=..., ctx=MetricContext)` and returns a
torchmetrics Metric that takes what gradloop.val_metrics prepares for the data's task:
class probabilities (N, C) and int64 targets (N,) for classification, probabilities (N,) and
int targets (N,) for binary, predictions and targets (N,) or (N, k) for regression.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Average = Literal["micro", "macro", "weighted"]


class AveragedOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    average: Average = Field(
        "macro", description="over classes: micro (pooled), macro (plain mean), weighted (by support)"
    )


CLASSIFICATION = ("classification", "binary")
REGRESSION = ("regression",)

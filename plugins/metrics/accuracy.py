"""The `accuracy` metric: the fraction of correct predictions (top-k with options.top_k)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from gradloop import torchmetrics_import
from gradloop.plugins.metrics._common import CLASSIFICATION, Average, AveragedOptions
from gradloop.registry import metrics
from gradloop.val_metrics import MetricContext


class AccuracyOptions(AveragedOptions):
    average: Average = Field("micro", description="micro: correct / all; macro: mean of per-class recall")
    top_k: int = Field(1, ge=1, le=1000, description="a prediction is correct when the target is among the k best")


@metrics.register("accuracy", options=AccuracyOptions, tasks=CLASSIFICATION)
def build_accuracy(*, options: AccuracyOptions, ctx: MetricContext) -> Any:
    """Fraction of samples (or tokens) whose predicted class is the target."""
    # imported only when a run builds it, and without the packages of torchmetrics' other domains
    torchmetrics_import.light()
    from torchmetrics.classification import BinaryAccuracy, MulticlassAccuracy

    if ctx.task == "binary":
        return BinaryAccuracy(validate_args=False)
    return MulticlassAccuracy(ctx.classes, top_k=options.top_k, average=options.average, validate_args=False)

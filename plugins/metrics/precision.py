"""The `precision` metric: of the predicted positives, the fraction that are right (classes averaged)."""

from __future__ import annotations

from typing import Any

from gradloop import torchmetrics_import
from gradloop.plugins.metrics._common import CLASSIFICATION, AveragedOptions
from gradloop.registry import metrics
from gradloop.val_metrics import MetricContext


@metrics.register("precision", options=AveragedOptions, tasks=CLASSIFICATION)
def build_precision(*, options: AveragedOptions, ctx: MetricContext) -> Any:
    """Of the predicted positives, the fraction that are right; classes averaged by options.average."""
    # imported only when a run builds it, and without the packages of torchmetrics' other domains
    torchmetrics_import.light()
    from torchmetrics.classification import BinaryPrecision, MulticlassPrecision

    if ctx.task == "binary":
        return BinaryPrecision(validate_args=False)
    return MulticlassPrecision(ctx.classes, average=options.average, validate_args=False)

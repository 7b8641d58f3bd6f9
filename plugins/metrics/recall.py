"""The `recall` metric: of the real positives, the fraction found, averaged over classes (options.average)."""

from __future__ import annotations

from typing import Any

from gradloop import torchmetrics_import
from gradloop.plugins.metrics._common import CLASSIFICATION, AveragedOptions
from gradloop.registry import metrics
from gradloop.val_metrics import MetricContext


@metrics.register("recall", options=AveragedOptions, tasks=CLASSIFICATION)
def build_recall(*, options: AveragedOptions, ctx: MetricContext) -> Any:
    """Of the real positives, the fraction found; classes averaged by options.average (binary: the positive class)."""
    # imported only when a run builds it, and without the packages of torchmetrics' other domains
    torchmetrics_import.light()
    from torchmetrics.classification import BinaryRecall, MulticlassRecall

    if ctx.task == "binary":
        return BinaryRecall(validate_args=False)
    return MulticlassRecall(ctx.classes, average=options.average, validate_args=False)

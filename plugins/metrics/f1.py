"""The `f1` metric: harmonic mean of precision and recall, averaged over classes (options.average)."""

from __future__ import annotations

from typing import Any

from gradloop import torchmetrics_import
from gradloop.plugins.metrics._common import CLASSIFICATION, AveragedOptions
from gradloop.registry import metrics
from gradloop.val_metrics import MetricContext


@metrics.register("f1", options=AveragedOptions, tasks=CLASSIFICATION)
def build_f1(*, options: AveragedOptions, ctx: MetricContext) -> Any:
    """Harmonic mean of precision and recall; classes averaged by options.average (binary: the positive class)."""
    # imported only when a run builds it, and without the packages of torchmetrics' other domains
    torchmetrics_import.light()
    from torchmetrics.classification import BinaryF1Score, MulticlassF1Score

    if ctx.task == "binary":
        return BinaryF1Score(validate_args=False)
    return MulticlassF1Score(ctx.classes, average=options.average, validate_args=False)

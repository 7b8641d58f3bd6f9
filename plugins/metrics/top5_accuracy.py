"""The `top5_accuracy` metric: the target is among the five highest-scoring classes."""

from __future__ import annotations

from typing import Any

from gradloop import torchmetrics_import
from gradloop.registry import metrics
from gradloop.val_metrics import MetricContext


@metrics.register("top5_accuracy", tasks=("classification",), min_classes=6)
def build_top5_accuracy(*, options: object, ctx: MetricContext) -> Any:
    """Fraction of samples whose target is among the 5 best-scoring classes (needs more than 5 classes)."""
    # imported only when a run builds it, and without the packages of torchmetrics' other domains
    torchmetrics_import.light()
    from torchmetrics.classification import MulticlassAccuracy

    return MulticlassAccuracy(ctx.classes, top_k=5, average="micro", validate_args=False)

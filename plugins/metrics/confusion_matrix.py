"""The `confusion_matrix` metric: counts of (true class, predicted class), saved as a PNG artifact."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from gradloop import torchmetrics_import
from gradloop.plugins.metrics._common import CLASSIFICATION
from gradloop.registry import metrics
from gradloop.val_metrics import MetricContext


class ConfusionOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    normalize: Literal["none", "true", "pred", "all"] = Field(
        "none", description="counts, or fractions of each true class / predicted class / all"
    )


@metrics.register("confusion_matrix", options=ConfusionOptions, tasks=CLASSIFICATION, figure=True)
def build_confusion_matrix(*, options: ConfusionOptions, ctx: MetricContext) -> Any:
    """Rows are true classes, columns predicted ones; drawn to confusion_matrix.png (not a scalar)."""
    # imported only when a run builds it, and without the packages of torchmetrics' other domains
    torchmetrics_import.light()
    from torchmetrics.classification import BinaryConfusionMatrix, MulticlassConfusionMatrix

    if ctx.task == "binary":
        return BinaryConfusionMatrix(normalize=options.normalize, validate_args=False)
    return MulticlassConfusionMatrix(ctx.classes, normalize=options.normalize, validate_args=False)

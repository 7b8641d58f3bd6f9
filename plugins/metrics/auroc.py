"""The `auroc` metric: area under the ROC curve, one class against the rest, averaged over classes."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from gradloop import torchmetrics_import
from gradloop.plugins.metrics._common import CLASSIFICATION
from gradloop.registry import metrics
from gradloop.val_metrics import MetricContext


class AUROCOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    average: Literal["macro", "weighted"] = Field("macro", description="over classes: plain mean or by support")


@metrics.register("auroc", options=AUROCOptions, tasks=CLASSIFICATION)
def build_auroc(*, options: AUROCOptions, ctx: MetricContext) -> Any:
    """Area under the ROC curve (exact, from every validation score; one-vs-rest for many classes)."""
    # imported only when a run builds it, and without the packages of torchmetrics' other domains
    torchmetrics_import.light()
    from torchmetrics.classification import BinaryAUROC, MulticlassAUROC

    if ctx.task == "binary":
        return BinaryAUROC(validate_args=False)
    return MulticlassAUROC(ctx.classes, average=options.average, validate_args=False)

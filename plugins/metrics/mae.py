"""The `mae` metric: mean absolute error of regression predictions."""

from __future__ import annotations

from typing import Any

from gradloop import torchmetrics_import
from gradloop.plugins.metrics._common import REGRESSION
from gradloop.registry import metrics
from gradloop.val_metrics import MetricContext


@metrics.register("mae", tasks=REGRESSION)
def build_mae(*, options: object, ctx: MetricContext) -> Any:
    """Mean absolute error over every target value."""
    # imported only when a run builds it, and without the packages of torchmetrics' other domains
    torchmetrics_import.light()
    from torchmetrics import MeanAbsoluteError

    return MeanAbsoluteError()

"""The `mse` metric: mean squared error of regression predictions."""

from __future__ import annotations

from typing import Any

from gradloop import torchmetrics_import
from gradloop.plugins.metrics._common import REGRESSION
from gradloop.registry import metrics
from gradloop.val_metrics import MetricContext


@metrics.register("mse", tasks=REGRESSION)
def build_mse(*, options: object, ctx: MetricContext) -> Any:
    """Mean squared error over every target value."""
    # imported only when a run builds it, and without the packages of torchmetrics' other domains
    torchmetrics_import.light()
    from torchmetrics import MeanSquaredError

    return MeanSquaredError()

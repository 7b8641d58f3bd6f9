"""The `r2` metric: coefficient of determination (1 - residual / total sum of squares)."""

from __future__ import annotations

from typing import Any

from gradloop import torchmetrics_import
from gradloop.plugins.metrics._common import REGRESSION
from gradloop.registry import metrics
from gradloop.val_metrics import MetricContext


@metrics.register("r2", tasks=REGRESSION)
def build_r2(*, options: object, ctx: MetricContext) -> Any:
    """R^2 of the predictions; with several targets, the plain mean of each target's R^2."""
    # imported only when a run builds it, and without the packages of torchmetrics' other domains
    torchmetrics_import.light()
    from torchmetrics import R2Score

    return R2Score(multioutput="uniform_average")

"""The `perplexity` metric: exp of the mean cross entropy over real targets (padding left out)."""

from __future__ import annotations

from typing import Any

from gradloop import torchmetrics_import
from gradloop.registry import metrics
from gradloop.val_metrics import MetricContext


@metrics.register("perplexity", tasks=("classification",))
def build_perplexity(*, options: object, ctx: MetricContext) -> Any:
    """exp(mean cross entropy) of the predicted class probabilities: language models' usual measure."""
    # imported only when a run builds it, and without the packages of torchmetrics' other domains
    torchmetrics_import.light()
    from gradloop.plugins.metrics._perplexity_metric import Perplexity

    return Perplexity()

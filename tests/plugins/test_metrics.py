"""Validation metrics (torchmetrics) equal scikit-learn's on the same predictions, batch by batch
over a whole set, per sample and per token (padding left out)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from gradloop.errors import ConfigError
from gradloop.outputs import IGNORE_INDEX
from gradloop.val_metrics import build_metric_set


def _batches(logits: torch.Tensor, target: torch.Tensor, size: int = 7):
    for i in range(0, len(target), size):
        yield logits[i : i + size], target[i : i + size]


def _run(spec, task, logits, target, num_classes=None, num_outputs=1):
    ms = build_metric_set(spec, task, num_classes, num_outputs)
    ms.reset()
    for out, y in _batches(logits, target):
        ms.update(out, y)
    return {k: v.double().item() for k, v in ms.compute().items()}, ms


def test_multiclass_metrics_equal_sklearn():
    g = torch.Generator().manual_seed(0)
    n, c = 101, 7
    target = torch.arange(n) % c  # every class present
    logits = torch.randn(n, c, generator=g) + 1.5 * torch.nn.functional.one_hot(target, c)
    spec = [
        "accuracy",
        "f1",
        {"name": "f1", "options": {"average": "weighted"}, "key": "f1_weighted"},
        {"name": "precision", "options": {"average": "micro"}},
        "recall",
        "auroc",
        "top5_accuracy",
        "perplexity",
        "confusion_matrix",
    ]
    got, ms = _run(spec, "classification", logits, target, c, c)
    probs = logits.softmax(-1).numpy()
    pred, y = probs.argmax(1), target.numpy()
    assert got["val/accuracy"] == pytest.approx(skm.accuracy_score(y, pred), abs=1e-6)
    assert got["val/f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"), abs=1e-6)
    assert got["val/f1_weighted"] == pytest.approx(skm.f1_score(y, pred, average="weighted"), abs=1e-6)
    assert got["val/precision"] == pytest.approx(skm.precision_score(y, pred, average="micro"), abs=1e-6)
    assert got["val/recall"] == pytest.approx(skm.recall_score(y, pred, average="macro"), abs=1e-6)
    assert got["val/auroc"] == pytest.approx(skm.roc_auc_score(y, probs, multi_class="ovr", average="macro"), abs=1e-5)
    assert got["val/top5_accuracy"] == pytest.approx(skm.top_k_accuracy_score(y, probs, k=5), abs=1e-6)
    assert got["val/perplexity"] == pytest.approx(math.exp(skm.log_loss(y, probs.astype(np.float64))), rel=1e-5)
    assert "val/confusion_matrix" not in got  # a matrix is a figure, not a scalar to log
    assert np.array_equal(ms.matrices["confusion_matrix"].numpy(), skm.confusion_matrix(y, pred))


def test_binary_metrics_equal_sklearn_from_logits():
    g = torch.Generator().manual_seed(1)
    n = 64
    target = (torch.arange(n) % 2).float().unsqueeze(1)
    # Logits all inside [0, 1] must still be read as logits (sigmoid), not as probabilities.
    logits = (torch.rand(n, 1, generator=g) * 0.9 + 0.05) * (1 + target) - 0.5
    got, _ = _run(["accuracy", "auroc", "f1", "precision", "recall"], "binary", logits, target)
    y = target.squeeze(1).numpy().astype(int)
    score = logits.squeeze(1).numpy()
    pred = (score > 0).astype(int)
    assert got["val/accuracy"] == pytest.approx(skm.accuracy_score(y, pred), abs=1e-6)
    assert got["val/auroc"] == pytest.approx(skm.roc_auc_score(y, score), abs=1e-6)
    assert got["val/f1"] == pytest.approx(skm.f1_score(y, pred), abs=1e-6)
    assert got["val/precision"] == pytest.approx(skm.precision_score(y, pred), abs=1e-6)
    assert got["val/recall"] == pytest.approx(skm.recall_score(y, pred), abs=1e-6)


def test_regression_metrics_equal_sklearn():
    g = torch.Generator().manual_seed(2)
    target = torch.randn(50, 1, generator=g)
    preds = target + 0.3 * torch.randn(50, 1, generator=g)
    got, _ = _run(["mae", "mse", "r2"], "regression", preds, target)
    t, p = target.numpy().ravel(), preds.numpy().ravel()
    assert got["val/mae"] == pytest.approx(skm.mean_absolute_error(t, p), rel=1e-5)
    assert got["val/mse"] == pytest.approx(skm.mean_squared_error(t, p), rel=1e-5)
    assert got["val/r2"] == pytest.approx(skm.r2_score(t, p), rel=1e-5)


def test_token_metrics_leave_padding_out():
    g = torch.Generator().manual_seed(3)
    n, t, v = 12, 9, 5
    logits = torch.randn(n, t, v, generator=g)
    target = torch.randint(0, v, (n, t), generator=g)
    target[:, 6:] = IGNORE_INDEX  # padding at the end of every sequence
    target[0, 2:] = IGNORE_INDEX
    got, _ = _run(["accuracy", "perplexity"], "classification", logits, target, v, v)
    keep = (target != IGNORE_INDEX).reshape(-1)
    probs = logits.reshape(-1, v).softmax(-1)[keep].numpy()
    y = target.reshape(-1)[keep].numpy()
    assert got["val/accuracy"] == pytest.approx(skm.accuracy_score(y, probs.argmax(1)), abs=1e-6)
    assert got["val/perplexity"] == pytest.approx(
        math.exp(skm.log_loss(y, probs.astype(np.float64), labels=list(range(v)))), rel=1e-5
    )


def test_dict_outputs_are_read_for_their_logits():
    logits = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 0.0]])
    target = torch.tensor([0, 1, 1])
    ms = build_metric_set(["accuracy"], "classification", 2, 2)
    ms.update({"logits": logits, "loss": torch.tensor(0.0)}, target)
    assert ms.compute()["val/accuracy"].item() == pytest.approx(2 / 3)


def test_defaults_per_task_and_a_metric_for_another_task_is_a_config_error():
    assert build_metric_set(None, "classification", 3, 3).scalar_keys() == ["accuracy"]
    assert build_metric_set(None, "regression", None, 1).scalar_keys() == ["mae", "r2"]
    assert build_metric_set(None, "classification", 9, 9, defaults=("perplexity",)).scalar_keys() == ["perplexity"]
    with pytest.raises(ConfigError) as info:
        build_metric_set(["mae", "top5_accuracy"], "classification", 3, 3)
    text = str(info.value)
    assert "metrics.0" in text and "regression" in text
    assert "metrics.1" in text and "at least 6 classes" in text


# Packages torchmetrics imports for domains gradloop's metrics do not use (see gradloop.torchmetrics_import).
OTHER_DOMAINS = ("transformers", "torchvision", "matplotlib")

RUN_WITH_ACCURACY = textwrap.dedent("""
    import json, sys
    from gradloop import train
    result = train(json.loads(sys.argv[1]))
    loaded = [m for m in ("torchmetrics",) + tuple(sys.argv[2].split(",")) if m in sys.modules]
    print("RESULT", result.status, result.metrics.get("val/accuracy", "none"), ",".join(loaded), flush=True)
""")


def test_a_run_validated_with_accuracy_does_not_import_other_domains_packages(tmp_path):
    """The digits MLP with `metrics: [accuracy]`, in a fresh process: torchmetrics without transformers & co."""
    cfg = {
        "name": "imports",
        "seed": 0,
        "device": "cpu",
        "output_dir": str(tmp_path / "runs"),
        "model": {"name": "mlp", "options": {"in_features": 64, "hidden": [8], "out_features": 10}},
        "data": {"name": "sklearn", "options": {"dataset": "digits"}, "batch_size": 64, "val_fraction": 0.2},
        "loss": {"name": "cross_entropy"},
        "optimizer": {"name": "sgd", "options": {"lr": 0.1}},
        "metrics": ["accuracy"],
        "trainer": {"epochs": 1, "progress": "none"},
        "tracking": {"enabled": False},
    }
    proc = subprocess.run(
        [sys.executable, "-c", RUN_WITH_ACCURACY, json.dumps(cfg), ",".join(OTHER_DOMAINS)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    status, accuracy, loaded = proc.stdout.split("RESULT ", 1)[1].split()
    assert status == "FINISHED" and 0.0 <= float(accuracy) <= 1.0
    assert loaded.split(",") == ["torchmetrics"], loaded


METRIC_FROM_ELSEWHERE = textwrap.dedent("""
    import sys
    from gradloop import registry
    from gradloop.val_metrics import build_metric_set

    @registry.metrics.register("outside")
    def build(*, options, ctx):
        from torchmetrics.classification import MulticlassAccuracy  # torchmetrics as its writer knows it
        return MulticlassAccuracy(ctx.classes)

    build_metric_set(["accuracy", "outside"], "classification", 3, 3)
    print("LOADED", "matplotlib" in sys.modules, flush=True)
""")


def test_a_metric_plugin_from_elsewhere_gets_torchmetrics_in_full():
    """Built after a built-in one in the same run, it still finds every domain (here: matplotlib's plots)."""
    proc = subprocess.run([sys.executable, "-c", METRIC_FROM_ELSEWHERE], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split("LOADED ", 1)[1].split() == ["True"]

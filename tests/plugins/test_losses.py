"""Built-in loss plugins against torch.nn.functional, their options and their shape checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from gradloop.errors import TrainingError
from gradloop.registry import losses


@pytest.fixture
def reg() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(6, 2, generator=g) * 3, torch.randn(6, 2, generator=g)


def test_mse_l1_huber_match_functional(reg):
    out, target = reg
    assert torch.allclose(losses.build("mse")(out, target), F.mse_loss(out, target))
    assert torch.allclose(losses.build("l1")(out, target), F.l1_loss(out, target))
    assert torch.allclose(losses.build("huber")(out, target), F.huber_loss(out, target, delta=1.0))
    h = losses.build("huber", {"delta": 0.3})(out, target)
    assert torch.allclose(h, F.huber_loss(out, target, delta=0.3))
    assert not torch.allclose(h, F.huber_loss(out, target, delta=1.0))


def test_regression_losses_refuse_broadcasting():
    out, target = torch.randn(5), torch.randn(5, 1)
    for name in ("mse", "l1", "huber"):
        with pytest.raises(TrainingError, match=r"shape \(5,\) and targets of shape \(5, 1\)"):
            losses.build(name)(out, target)


def test_cross_entropy_plain_smoothing_and_weights():
    g = torch.Generator().manual_seed(1)
    logits, target = torch.randn(8, 3, generator=g), torch.randint(3, (8,), generator=g)
    assert torch.allclose(losses.build("cross_entropy")(logits, target), F.cross_entropy(logits, target))
    smooth = losses.build("cross_entropy", {"label_smoothing": 0.1})(logits, target)
    assert torch.allclose(smooth, F.cross_entropy(logits, target, label_smoothing=0.1))
    w = [1.0, 2.0, 0.5]
    weighted = losses.build("cross_entropy", {"class_weights": w})
    assert torch.allclose(weighted(logits, target), F.cross_entropy(logits, target, weight=torch.tensor(w)))
    assert "class_weights" in dict(weighted.named_buffers())  # moves with loss.to(device)


def test_cross_entropy_per_sample_and_per_token_paths_agree():
    """Per sample the loss is torch's mean in one kernel; per token it is a sum over real targets
    divided by their count. Both are the mean over the non-ignored targets, also with smoothing."""
    g = torch.Generator().manual_seed(2)
    logits, target = torch.randn(6, 4, generator=g), torch.randint(4, (6,), generator=g)
    target[1] = -100  # an ignored sample counts for nothing in either path
    for options in ({}, {"label_smoothing": 0.2}):
        loss = losses.build("cross_entropy", options)
        per_sample = loss(logits, target)
        per_token = loss(logits.unsqueeze(0), target.unsqueeze(0))  # one sequence of 6 tokens
        assert torch.allclose(per_sample, per_token, rtol=1e-6)
        assert loss.units(target).item() == 5
    # All padding: per token the micro-batch counts for nothing; per sample there is no mean.
    empty = torch.full((6,), -100)
    assert losses.build("cross_entropy")(logits.unsqueeze(0), empty.unsqueeze(0)).item() == 0.0
    assert torch.isnan(losses.build("cross_entropy")(logits, empty))


def test_cross_entropy_rejects_float_targets():
    with pytest.raises(TrainingError, match="int64 class indices"):
        losses.build("cross_entropy")(torch.randn(4, 1), torch.ones(4, 1))


def test_bce_with_logits_and_pos_weight():
    g = torch.Generator().manual_seed(2)
    logits, target = torch.randn(7, 1, generator=g), torch.randint(2, (7, 1), generator=g).float()
    assert torch.allclose(
        losses.build("bce_with_logits")(logits, target), F.binary_cross_entropy_with_logits(logits, target)
    )
    pw = losses.build("bce_with_logits", {"pos_weight": 3.0})(logits, target)
    assert torch.allclose(pw, F.binary_cross_entropy_with_logits(logits, target, pos_weight=torch.tensor([3.0])))
    # int 0/1 targets are accepted as floats
    assert torch.allclose(
        losses.build("bce_with_logits")(logits, target.long()), F.binary_cross_entropy_with_logits(logits, target)
    )


def test_losses_compute_in_float32_under_bf16_outputs(reg):
    out, target = reg
    value = losses.build("mse")(out.bfloat16(), target)
    assert value.dtype == torch.float32


def test_task_capabilities():
    tasks = {p.name: p.capabilities["task"] for p in losses}
    assert tasks == {
        "mse": "regression",
        "l1": "regression",
        "huber": "regression",
        "cross_entropy": "classification",
        "bce_with_logits": "binary",
    }


@pytest.mark.parametrize(
    "name, options, field",
    [
        ("huber", {"delta": 0}, "delta"),
        ("cross_entropy", {"label_smoothing": 1.0}, "label_smoothing"),
        ("cross_entropy", {"class_weights": [0.0, 0.0]}, "all 0"),
        ("cross_entropy", {"class_weights": [-1.0, 1.0]}, "class_weights"),
        ("bce_with_logits", {"pos_weight": -2}, "pos_weight"),
        ("mse", {"reduction": "sum"}, "reduction"),
    ],
)
def test_bad_loss_options(name: str, options: dict, field: str):
    with pytest.raises(ValidationError, match=field):
        losses.parse_options(name, options)

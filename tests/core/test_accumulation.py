"""Gradient accumulation equals one big batch (also for a short last window), and the batch plan it relies on."""

from __future__ import annotations

import pytest
import torch

import tests.support.trainer_helpers as h
from gradloop import train
from gradloop.batching import BatchPlan, LoaderBatches, TensorBatches, plan_sizes
from gradloop.data import TensorData


@pytest.fixture(autouse=True)
def _clean_trace():
    h.reset()
    yield
    h.reset()


def _run(tmp_path, name: str, batch_size: int, accum: int, epochs: int = 2, lr: float = 0.5):
    cfg = h.base_config(
        tmp_path / name,
        data={
            "name": "synthetic_classification",
            "options": {"n_samples": 10, "n_features": 8, "n_classes": 3, "seed": 1},
            "batch_size": batch_size,
            "val_fraction": 0.0,
        },
        optimizer={"name": "sgd", "options": {"lr": lr}},
        trainer__grad_accum_steps=accum,
        trainer__epochs=epochs,
        trainer__val_every_epochs=0,
    )
    result = train(cfg)
    return result, h.model_state(result.checkpoint_path)


@pytest.mark.parametrize("batch_size, accum", [(3, 2), (2, 3), (1, 6)])
def test_k_micro_batches_equal_one_batch_including_a_partial_last_window(tmp_path, batch_size, accum):
    # 10 samples: with (3, 2) the windows are [3, 3] and [3, 1]; one batch of 6 gives [6] and [4].
    # The short window must be weighted by its 4 real samples, not as 1/k of each micro-mean.
    big, big_state = _run(tmp_path, "big", batch_size * accum, 1)
    small, small_state = _run(tmp_path, "small", batch_size, accum)
    assert big.steps == small.steps == 4
    for name in big_state:
        torch.testing.assert_close(small_state[name], big_state[name], rtol=1e-5, atol=1e-6)
    # The runs did train: weights moved away from a run that never stepped.
    _, still = _run(tmp_path, "still", 6, 1, epochs=1, lr=1e-30)
    assert not torch.allclose(still["net.0.weight"], big_state["net.0.weight"])


def test_naive_averaging_of_micro_batch_means_would_differ(tmp_path):
    # The same comparison with a window whose micro-batches differ in size, against the
    # average of micro-batch means (what scaling every micro-batch by 1/k computes).
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 3)
    x, y = torch.randn(4, 8), torch.tensor([0, 1, 2, 0])
    loss = torch.nn.functional.cross_entropy
    full = torch.autograd.grad(loss(model(x), y), model.weight)[0]
    naive = torch.autograd.grad((loss(model(x[:3]), y[:3]) + loss(model(x[3:]), y[3:])) / 2, model.weight)[0]
    weighted = torch.autograd.grad(loss(model(x[:3]), y[:3]) * 3 / 4 + loss(model(x[3:]), y[3:]) * 1 / 4, model.weight)[
        0
    ]
    torch.testing.assert_close(weighted, full)
    assert not torch.allclose(naive, full, atol=1e-4)


def test_accumulated_loss_is_the_sample_mean_over_the_window(tmp_path):
    rec = h.Recorder()
    cfg = h.base_config(
        tmp_path,
        data={
            "name": "synthetic_classification",
            "options": {"n_samples": 10, "n_features": 8, "n_classes": 3, "seed": 1},
            "batch_size": 3,
            "val_fraction": 0.0,
        },
        optimizer={"name": "sgd", "options": {"lr": 1e-30}},  # weights stay put: losses comparable
        trainer__grad_accum_steps=2,
        trainer__epochs=1,
        trainer__val_every_epochs=0,
        tracking__log_every=100,
    )
    train(cfg, observers=[rec])
    logged = [c[2]["train/loss"] for c in rec.calls if c[0] == "after"]
    big = h.base_config(
        tmp_path / "b",
        data={**cfg["data"], "batch_size": 10},
        optimizer=cfg["optimizer"],
        trainer__epochs=1,
        trainer__val_every_epochs=0,
    )
    rec_big = h.Recorder()
    train(big, observers=[rec_big])
    full = [c[2]["train/loss"] for c in rec_big.calls if c[0] == "after"]
    assert logged == pytest.approx(full, rel=1e-5)  # mean over all 10 samples either way


def test_batch_plan_windows():
    plan = BatchPlan(plan_sizes(10, 3, drop_last=False), accum=2)
    assert plan.sizes == (3, 3, 3, 1) and plan.steps_per_epoch == 2
    assert [(w.start, w.sizes, w.samples) for w in plan.windows()] == [(0, (3, 3), 6), (2, (3, 1), 4)]
    assert [w.start for w in plan.windows(2)] == [2]
    assert plan.windows(4) == []
    assert plan_sizes(10, 3, drop_last=True) == (3, 3, 3)
    with pytest.raises(ValueError):
        plan.windows(1)


def test_resumed_epoch_skips_consumed_batches_in_the_same_order():
    data = TensorData(torch.arange(20.0).unsqueeze(1), torch.arange(20))
    batches = TensorBatches(data, 4, shuffle=True, drop_last=False, seed=7, device=torch.device("cpu"))
    whole = [y.tolist() for _, y in batches.epoch(3)]
    tail = [y.tolist() for _, y in batches.epoch(3, start=2)]
    assert tail == whole[2:]
    assert sorted(sum(whole, [])) == list(range(20))
    assert whole != [y.tolist() for _, y in batches.epoch(4)]  # each epoch has its own order


def test_dataloader_path_gives_the_same_batches_as_tensor_slicing():
    data = TensorData(torch.randn(23, 3), torch.arange(23))
    cpu = torch.device("cpu")
    sliced = TensorBatches(data, 5, shuffle=True, drop_last=False, seed=1, device=cpu)
    loaded = LoaderBatches(h.Pairs(data), 5, shuffle=True, drop_last=False, seed=1, device=cpu)
    assert sliced.plan == loaded.plan
    for (xa, ya), (xb, yb) in zip(sliced.epoch(2, start=1), loaded.epoch(2, start=1), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_a_torch_dataset_trains_to_the_same_weights_as_tensor_data(tmp_path):
    # Same samples, same seeded order: the DataLoader path and the slicing path agree bitwise.
    sliced = train(h.base_config(tmp_path / "a", trainer__grad_accum_steps=3))
    data = {**h.base_config(tmp_path)["data"], "name": "pairs_classification", "num_workers": 0}
    loaded = train(h.base_config(tmp_path / "b", data=data, trainer__grad_accum_steps=3))
    assert loaded.steps == sliced.steps == 8
    h.assert_bitwise_equal(h.model_state(loaded.checkpoint_path), h.model_state(sliced.checkpoint_path))
    assert loaded.metrics == sliced.metrics

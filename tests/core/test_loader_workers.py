"""DataLoader workers: stopped when a run ends (finished, stopped or failed), not left to exit; each
sample seeded from (seed, epoch, index) on torch's CPU generator and Python's."""

from __future__ import annotations

import random
import threading

import psutil
import pytest
import torch
from torch.utils.data import Dataset

import tests.support.trainer_helpers as h
from gradloop import train
from gradloop.batching import LoaderBatches, _SeededItems
from gradloop.data import TensorData
from gradloop.observer import NullObserver
from gradloop.seeding import derive_seed


def _children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def _worker_config(tmp_path, **changes):
    data = {**h.base_config(tmp_path)["data"], "name": "pairs_classification", "num_workers": 2}
    return h.base_config(tmp_path, data=data, **changes)


class _FailAt(NullObserver):
    def wants_step_stats(self, step: int) -> bool:
        return step == 3  # (so that after_optimizer_step is called at step 3)

    def after_optimizer_step(self, step: int, snapshot, metrics) -> None:
        if step == 3:
            raise RuntimeError("observer failed on purpose")


def test_a_finished_run_leaves_no_worker_alive(tmp_path):
    before = _children()
    result = train(_worker_config(tmp_path))
    assert result.status == "FINISHED" and result.steps == 20
    assert _children() - before == set()


def test_a_stopped_or_failed_run_leaves_no_worker_alive(tmp_path):
    before = _children()
    event = threading.Event()
    stopped = train(_worker_config(tmp_path / "stop"), observers=[h.StopAt(4, event)], stop_event=event)
    assert stopped.status == "KILLED" and stopped.steps == 4
    assert _children() - before == set()
    with pytest.raises(RuntimeError, match="on purpose"):
        train(_worker_config(tmp_path / "fail"), observers=[_FailAt()])
    assert _children() - before == set()


def test_closed_batches_start_their_workers_again(tmp_path):
    data = h.Pairs(TensorData(torch.arange(12.0).unsqueeze(1), torch.arange(12)))
    batches = LoaderBatches(data, 4, shuffle=True, drop_last=False, seed=1, device=torch.device("cpu"), num_workers=2)
    first = [y.tolist() for _, y in batches.epoch(0)]
    batches.close()
    assert [y.tolist() for _, y in batches.epoch(0)] == first
    batches.close()


class _Draws(Dataset):
    def __len__(self) -> int:
        return 10

    def __getitem__(self, i: int) -> tuple[torch.Tensor, float]:
        return torch.rand(3), random.random()


def test_each_sample_draws_from_generators_seeded_by_seed_epoch_and_index():
    items = _SeededItems(_Draws(), seed=5)
    for epoch, index in ((0, 0), (0, 7), (2, 7)):
        drawn, py = items[(epoch, index)]
        seed = derive_seed(5, epoch, index)
        assert torch.equal(drawn, torch.rand(3, generator=torch.Generator().manual_seed(seed)))
        assert py == random.Random(seed).random()
    assert not torch.equal(items[(0, 7)][0], items[(2, 7)][0])  # another epoch, other draws

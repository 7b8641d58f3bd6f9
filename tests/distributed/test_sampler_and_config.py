"""Distributed pieces that need no second process: the sampler's partition and the config checks."""

from __future__ import annotations

import pytest
import torch

import tests.support.trainer_helpers as h
from gradloop.batching import LoaderBatches, TensorBatches, make_batches
from gradloop.config import load_config
from gradloop.data import TensorData
from gradloop.distributed.sampler import Shard
from gradloop.errors import ConfigError

CPU = torch.device("cpu")


def _data(n: int) -> TensorData:
    return TensorData(torch.arange(n, dtype=torch.float32).unsqueeze(1), torch.arange(n))


def _epoch_ids(batches, epoch: int) -> list[list[int]]:
    return [y.tolist() for _, y in batches.epoch(epoch)]


@pytest.mark.parametrize("n,world,batch", [(75, 2, 8), (80, 2, 8), (29, 3, 4)])
def test_ranks_partition_every_epoch_and_take_equal_steps(n, world, batch):
    per_rank = [
        TensorBatches(_data(n), batch, shuffle=True, drop_last=False, seed=5, device=CPU, shard=Shard(r, world))
        for r in range(world)
    ]
    one = TensorBatches(_data(n), batch * world, shuffle=True, drop_last=False, seed=5, device=CPU)
    assert len({len(b.plan) for b in per_rank}) == 1  # the same number of batches (and steps) everywhere
    orders = []
    for epoch in (0, 1):
        parts = [_epoch_ids(b, epoch) for b in per_rank]
        seen = [i for p in parts for batch_ids in p for i in batch_ids]
        assert sorted(seen) == list(range(n)), "the ranks' samples are the epoch, none twice"
        # Global batch k of the ranks together is batch k of one process with batch x world.
        for k, whole in enumerate(_epoch_ids(one, epoch)):
            assert sorted(sum((p[k] for p in parts), [])) == sorted(whole)
        orders.append(parts[0])
        # The windows count every rank's samples, as one process counts its batch.
        assert [w.samples for w in per_rank[0].plan.windows()] == list(one.plan.sizes)
    assert orders[0] != orders[1], "set_epoch: each epoch has its own order"


def test_loader_batches_shard_like_tensor_batches():
    data = _data(75)
    for rank in (0, 1):
        sliced = TensorBatches(data, 8, shuffle=True, drop_last=False, seed=2, device=CPU, shard=Shard(rank, 2))
        loaded = LoaderBatches(
            h.Pairs(data), 8, shuffle=True, drop_last=False, seed=2, device=CPU, shard=Shard(rank, 2)
        )
        assert _epoch_ids(sliced, 1) == _epoch_ids(loaded, 1)
        assert _epoch_ids(sliced, 1)[1:] == [y.tolist() for _, y in sliced.epoch(1, start=1)]  # resume mid-epoch


def test_a_last_batch_smaller_than_the_world_is_refused_with_the_numbers():
    with pytest.raises(ConfigError) as info:
        make_batches(_data(33), 8, shuffle=True, drop_last=False, seed=0, device=CPU, shard=Shard(0, 2))
    text = str(info.value)
    assert "33 samples" in text and "1 sample(s) for 2 ranks" in text and "drop_last" in text
    # Validation may leave a rank without a sample: nothing to back-propagate there.
    val = make_batches(_data(33), 8, shuffle=False, drop_last=False, seed=0, device=CPU, shard=Shard(1, 2), what="val")
    assert sum(len(y) for _, y in val.epoch(0)) == 16


def _dist_config(tmp_path, **distributed):
    return h.base_config(tmp_path, distributed={"strategy": "ddp", **distributed})


def test_the_http_policy_holds_distributed_jobs_to_one_host_and_the_process_limit(tmp_path):
    """The job limits leave a distributed job to the HTTP policy, which refuses what one host
    cannot run: several machines, a chosen rendezvous, more ranks than --max-procs-per-job."""
    from gradloop.http_policy import HttpPolicy, _distributed_rule
    from gradloop.limits import ServiceLimits, check_limits

    two_ranks = load_config(_dist_config(tmp_path, nproc_per_node=2))
    assert check_limits(two_ranks, ServiceLimits(), tmp_path) == []
    assert (
        _distributed_rule(two_ranks, HttpPolicy(data_root=tmp_path, limits=ServiceLimits(max_procs_per_job=2)), False)
        == []
    )
    one_proc = HttpPolicy(data_root=tmp_path, limits=ServiceLimits(max_procs_per_job=1))
    two_nodes = load_config(_dist_config(tmp_path, nproc_per_node=2, nnodes=2, rdzv_endpoint="127.0.0.1:29400"))
    errors = _distributed_rule(two_nodes, one_proc, False)
    assert [e.path for e in errors] == ["distributed.nnodes", "distributed.rdzv_endpoint", "distributed.nproc_per_node"]
    assert "limit of 1" in errors[-1].message


def test_nccl_without_gpus_is_a_config_error_before_anything_starts(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: nccl is available")
    with pytest.raises(ConfigError) as info:
        load_config(_dist_config(tmp_path, backend="nccl"))
    assert info.value.errors[0].path == "distributed.backend" and "no" in str(info.value)
    assert not (tmp_path / "runs").exists()


def test_distributed_block_shape_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(_dist_config(tmp_path, nnodes="3:2", nproc_per_node=0))
    paths = {e.path for e in info.value.errors}
    assert {"distributed.nnodes", "distributed.nproc_per_node"} <= paths
    cfg = load_config(_dist_config(tmp_path, nnodes="1:2", nproc_per_node="auto"))
    assert cfg.distributed.node_range() == (1, 2)
    with pytest.raises(ConfigError) as info:
        load_config(h.base_config(tmp_path, distributed={"strategy": "ddp"}, optimizer={"name": "lbfgs"}))
    assert "optimizer.name" in {e.path for e in info.value.errors}
    # FSDP with tracking's defaults (histograms, the logged model): every rank gathers what rank 0
    # logs (tests/distributed/test_fsdp.py), so nothing is refused.
    tracked = {"enabled": True, "uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    cfg = load_config(h.base_config(tmp_path, distributed={"strategy": "fsdp"}, tracking=tracked))
    assert cfg.tracking.histogram_every > 0 and cfg.tracking.log_model and cfg.distributed.enabled

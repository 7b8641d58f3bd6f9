"""DDP inside this process, in a gloo group of one rank: gradients sync once per window.

A group of one still runs DDP's reducer and its communication hook, so counting the hook's calls
counts the all-reduces the trainer asks for, without starting a second process.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

import tests.support.trainer_helpers as h
from gradloop.config import load_config
from gradloop.distributed.process_group import DistContext
from gradloop.runner import build_components
from gradloop.trainer import Trainer

CPU = torch.device("cpu")


@pytest.fixture
def one_rank_group(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield DistContext(rank=0, world_size=1, local_rank=0, node_rank=0, backend="gloo")
    dist.destroy_process_group()


def _fit(cfg, ctx=None, calls=None):
    torch.manual_seed(cfg.seed)
    parts = build_components(cfg, CPU, ctx)
    if calls is not None:

        def counting_hook(state, bucket):
            calls.append(bucket.buffer().numel())
            fut = dist.all_reduce(bucket.buffer(), async_op=True).get_future()
            return fut.then(lambda f: f.value()[0])

        parts.parallel.module.register_comm_hook(None, counting_hook)
    trainer = Trainer(cfg, parts, device=CPU, run_dir=cfg.output_dir)
    outcome = trainer.fit()
    return outcome, {k: v.clone() for k, v in trainer.model.state_dict().items()}


def test_micro_batches_before_a_windows_last_do_not_all_reduce(tmp_path, one_rank_group):
    changes = dict(
        trainer__grad_accum_steps=3, trainer__epochs=1, trainer__checkpoint_at_end=False, data__val_fraction=0.0
    )
    cfg = load_config(h.base_config(tmp_path, distributed={"strategy": "ddp"}, **changes))
    calls: list[int] = []
    outcome, ddp_weights = _fit(cfg, one_rank_group, calls)
    # 100 samples in batches of 8: 13 micro-batches, windows of 3 -> 5 optimizer steps.
    assert outcome.steps == 5
    n_params = sum(p.numel() for p in ddp_weights.values())
    assert sum(calls) == 5 * n_params, "one all-reduce of every gradient per window, none inside it"

    plain = load_config(h.base_config(tmp_path, **changes))
    _, plain_weights = _fit(plain)
    for name in plain_weights:
        torch.testing.assert_close(ddp_weights[name], plain_weights[name], rtol=1e-6, atol=1e-7)

"""The model as the ranks train it: DistributedDataParallel around it.

`Parallel` is what the trainer holds: the module to call forward on, and `grad_sync(on)` for the
micro-batches of an accumulation window -- off before the last one (DDP's `no_sync`), so that
gradients are all-reduced once per window. (FSDP2 is refused by the config checks until its
sharded checkpoints and global gradient statistics are written.)
The trainer keeps the unwrapped model for its state dict, so a DDP checkpoint has the same keys
as a one-process checkpoint and loads in either.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from gradloop.distributed.process_group import DistContext

if TYPE_CHECKING:
    from gradloop.config.schema import DistributedConfig


@dataclass
class Parallel:
    """A data-parallel model and the process group it trains in."""

    module: nn.Module  # call this for forward passes
    ctx: DistContext
    strategy: str  # "ddp"

    @contextlib.contextmanager
    def grad_sync(self, on: bool) -> Iterator[None]:
        """Whether the backward passes inside all-reduce the gradients (on: the window's last)."""
        if on:
            yield
        else:
            with self.module.no_sync():  # type: ignore[operator]
                yield


def prepare_model(model: nn.Module, cfg: DistributedConfig) -> nn.Module:
    """What must happen to the model before its optimizer is built (SyncBatchNorm layers)."""
    if cfg.sync_batchnorm:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def wrap_model(model: nn.Module, cfg: DistributedConfig, ctx: DistContext, device: torch.device) -> Parallel:
    """The model wrapped in DDP, which broadcasts rank 0's weights to every rank."""
    from torch.nn.parallel import DistributedDataParallel as DDP  # torch.distributed: ranks only

    ddp = DDP(
        model,
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=cfg.find_unused_parameters,
    )
    return Parallel(ddp, ctx, "ddp")


__all__ = ["Parallel", "prepare_model", "wrap_model"]

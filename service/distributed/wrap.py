"""The model as the ranks train it: DistributedDataParallel around it, or sharded by FSDP2.

`Parallel` is what the trainer holds: the module to call forward on, and `grad_sync(on)` for the
micro-batches of an accumulation window -- off before the last one (DDP's `no_sync`, FSDP's
`set_requires_gradient_sync(False)`), so that gradients are reduced once per window.
Under DDP the trainer keeps the unwrapped model for its state dict, so a DDP checkpoint has the
same keys as a one-process checkpoint and loads in either. Under FSDP the model is sharded in
place (before its optimizer is built, which must hold the sharded parameters) and its state goes
to sharded checkpoints (gradloop.distributed.fsdp).
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
    strategy: str  # "ddp" or "fsdp"

    @property
    def sharded(self) -> bool:
        """Parameters, gradients and optimizer state are DTensor shards (FSDP)."""
        return self.strategy == "fsdp"

    @contextlib.contextmanager
    def grad_sync(self, on: bool) -> Iterator[None]:
        """Whether the backward passes inside reduce the gradients (on: the window's last)."""
        if on:
            yield
        elif self.sharded:
            # Without sync FSDP2 keeps each rank's unsharded gradients and adds the next
            # micro-batch's to them; the window's last backward reduce-scatters the sum.
            self.module.set_requires_gradient_sync(False)  # type: ignore[operator]
            try:
                yield
            finally:
                self.module.set_requires_gradient_sync(True)  # type: ignore[operator]
        else:
            with self.module.no_sync():  # type: ignore[operator]
                yield


def prepare_model(
    model: nn.Module, cfg: DistributedConfig, ctx: DistContext, device: torch.device, precision: str
) -> nn.Module:
    """What must happen to the model before its optimizer is built: SyncBatchNorm layers, and
    under FSDP the sharding itself (the optimizer must hold the sharded parameters)."""
    if cfg.sync_batchnorm:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if cfg.strategy == "fsdp":
        from gradloop.distributed.fsdp import shard_model  # FSDP's modules: only for sharded runs

        model = shard_model(model, ctx, device, precision)
    return model


def wrap_model(model: nn.Module, cfg: DistributedConfig, ctx: DistContext, device: torch.device) -> Parallel:
    """DDP: the model wrapped in DDP, which broadcasts rank 0's weights to every rank.
    FSDP: the model prepare_model sharded, as it is (every rank built the same weights)."""
    if cfg.strategy == "fsdp":
        return Parallel(model, ctx, "fsdp")
    from torch.nn.parallel import DistributedDataParallel as DDP  # torch.distributed: ranks only

    ddp = DDP(
        model,
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=cfg.find_unused_parameters,
    )
    return Parallel(ddp, ctx, "ddp")


__all__ = ["Parallel", "prepare_model", "wrap_model"]

"""FSDP2 (`strategy: fsdp`): every rank holds a shard of each parameter, gradient and optimizer state.

torch's `fully_shard` turns the model's parameters into DTensors sharded along their first
dimension; each forward and backward all-gathers a layer's parameters and reduce-scatters its
gradients (averaged over the ranks, as DDP does). What the trainer needs besides:

- `shard_model`: fully_shard every module that owns parameters, then the root, from weights that
  are already the same on every rank (each rank built the model from the run's seed): unlike DDP,
  nothing broadcasts rank 0's weights.
- `full_norms`: the L2 norm of each whole (unsharded) tensor, from the local shards and one
  all-reduce of their squared norms; every rank gets the same values. The trainer clips with
  them and hands them to the observers, whose per-layer gradient norms are then the full ones.
- `full_tensors`: whole gradients and weights, all-gathered, for rank 0's histograms (at their
  steps only: every rank holds a full copy of them while it lasts).
- `unsharded_copy`: the final weights in a plain model on rank 0's CPU, for the logged model.
- `save_sharded` / `load_sharded`: model and optimizer state through torch.distributed.checkpoint
  (each rank writes and reads its own shards; a checkpoint loads on another number of ranks too).

Every function here is a collective: every rank calls it at the same point of the loop.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh

from gradloop.devices import autocast_dtype
from gradloop.torch_ops import foreach_norm

if TYPE_CHECKING:
    from gradloop.distributed.process_group import DistContext

log = logging.getLogger("gradloop.tracking")


def shard_model(model: nn.Module, ctx: DistContext, device: torch.device, precision: str) -> nn.Module:
    """The model with its parameters sharded over the ranks (in place: fully_shard swaps classes).

    Each module that owns parameters is a unit of its own, so one layer's full parameters exist
    only while that layer runs. On CUDA, bf16/fp16 compute through FSDP's MixedPrecisionPolicy:
    parameters all-gathered in that dtype, gradients reduced in float32, the sharded weights and
    the optimizer state kept in float32."""
    # torch's FSDP modules: a large import, only for sharded runs (every run imports this module).
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (ctx.world_size,))
    dtype = autocast_dtype(precision)
    policy = (
        MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
        if dtype is not None and device.type == "cuda"
        else MixedPrecisionPolicy()
    )
    # Children before their parents (fully_shard's rule): modules() lists parents first.
    owners = [m for m in model.modules() if m is not model and any(True for _ in m.parameters(recurse=False))]
    for module in reversed(owners):
        fully_shard(module, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


def is_sharded(t: torch.Tensor) -> bool:
    """Whether `t` is a DTensor (without importing torch.distributed.tensor where no run sharded)."""
    tensor_mod = sys.modules.get("torch.distributed.tensor")
    return tensor_mod is not None and isinstance(t, tensor_mod.DTensor)


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor (a view of its storage), or `t` itself."""
    return t.to_local() if is_sharded(t) else t  # type: ignore[attr-defined]


def full_norms(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The L2 norm of each whole tensor (1-d, float32): squared local norms summed over the ranks.
    A collective: every rank passes its shards of the same tensors, in the same order."""
    shards = [local(t) for t in tensors]
    squares = torch.stack([n.float() for n in foreach_norm(shards)]).square()
    dist.all_reduce(squares, op=dist.ReduceOp.SUM)
    return squares.sqrt()


def whole(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a DTensor, all-gathered from every rank's shard (a collective), or `t`."""
    return t.full_tensor() if is_sharded(t) else t  # type: ignore[attr-defined]


def full_tensors(params: list[torch.Tensor]) -> tuple[list[torch.Tensor | None], list[torch.Tensor]]:
    """The whole gradient (None where a parameter has none) and weight of each of `params`, on
    every rank. A collective: every rank passes the same parameters, in the same order (the
    ranks' gradients are present alike, since every rank runs the same model)."""
    grads = [None if p.grad is None else whole(p.grad) for p in params]
    weights = [whole(p.detach()) for p in params]
    return grads, weights


def unsharded_copy(model: nn.Module, build: Callable[[], nn.Module], is_main: bool) -> nn.Module | None:
    """On rank 0, a plain model from `build` (the same architecture, unsharded) holding the
    sharded model's weights, on the CPU; None on the other ranks. A collective: every rank
    gathers its shards into rank 0's full state dict, layer by layer, so rank 0 alone holds the
    whole model and only in CPU memory."""
    # torch.distributed.checkpoint's state dicts: only for a sharded run that logs its model.
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = get_model_state_dict(model, options=options)  # empty on every rank but 0
    if not is_main:
        return None
    try:
        plain = build()
        plain.load_state_dict(state)
    except Exception as exc:  # (as in tracking.modellog: never worth failing a finished run)
        log.warning("the model is not logged: its unsharded copy could not be built (%s)", exc)
        return None
    return plain


def sharded_grad_scaler(device_type: str) -> torch.amp.GradScaler:
    """fp16 loss scaling whose overflow check is all-reduced, so every rank skips the same steps."""
    from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler  # fp16 runs only

    return ShardedGradScaler(device_type)


def save_sharded(model: nn.Module, optimizer: torch.optim.Optimizer, directory: Path) -> None:
    """Write model and optimizer state to `directory` (every rank its shards; rank 0 the metadata,
    once every rank has written)."""
    # torch.distributed.checkpoint: only when a sharded run saves or loads (as FSDP's modules above).
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=str(directory))


def load_sharded(model: nn.Module, optimizer: torch.optim.Optimizer, directory: Path) -> None:
    """Read model and optimizer state from `directory` into this rank's shards."""
    # torch.distributed.checkpoint: only when a sharded run saves or loads (see save_sharded).
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    # get_state_dict gives the target tensors (this rank's shards) that dcp.load fills in place;
    # an optimizer without state yet gets it initialised first, so its entries exist to be filled.
    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.load({"model": model_state, "optimizer": optim_state}, checkpoint_id=str(directory))
    set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optim_state)


__all__ = [
    "full_norms",
    "full_tensors",
    "is_sharded",
    "load_sharded",
    "local",
    "save_sharded",
    "shard_model",
    "sharded_grad_scaler",
    "unsharded_copy",
    "whole",
]

"""A rank's view of a distributed run: who it is, its process group, and the trainer's collectives.

The trainer calls these at fixed points that every rank reaches in the same order (a window's end,
a logging step, a validation, a checkpoint), so no rank waits for a collective another rank skips.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

if TYPE_CHECKING:
    from gradloop.config.schema import DistributedConfig


# Set by torchrun / the elastic agent in every worker it starts.
_WORKER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def node_id() -> str | None:
    """This machine's id in system-metric keys ("node0", "node1", ...) on a run of several
    machines; None on one machine, whose keys keep MLflow's plain `system/` prefix."""
    if int(os.environ.get("GROUP_WORLD_SIZE", "1")) <= 1:
        return None
    return f"node{int(os.environ.get('GROUP_RANK', '0'))}"


def in_worker() -> bool:
    """True in a process that torchrun or gradloop's launcher started as one rank of a group."""
    return all(v in os.environ for v in _WORKER_VARS)


def resolve_backend(cfg: DistributedConfig, device: torch.device) -> str:
    if cfg.backend != "auto":
        return cfg.backend
    return "nccl" if device.type == "cuda" else "gloo"


@dataclass
class DistContext:
    """This rank's place in the group and the collectives the trainer needs."""

    rank: int
    world_size: int
    local_rank: int
    node_rank: int
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def reduce_sum(self, tensor: torch.Tensor) -> None:
        """Sum `tensor` over all ranks, in place."""
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)

    def any(self, flag: bool, device: torch.device) -> bool:
        """Whether `flag` is set on any rank (every rank gets the same answer)."""
        t = torch.tensor([1.0 if flag else 0.0], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def barrier(self) -> None:
        """Wait until every rank has come here."""
        dist.barrier()

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank (pickled: for small host values only)."""
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order, on every rank."""
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out


def init_process_group(cfg: DistributedConfig, device: torch.device) -> DistContext:
    """Join the group the launcher set up (env:// rendezvous); idempotent within a process."""
    backend = resolve_backend(cfg, device)
    if not dist.is_initialized():
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        timeout = timedelta(seconds=cfg.timeout_s)
        # The elastic agent hosts the store and keeps it across restarts; each attempt's keys get
        # a prefix of their own, or a restarted group would read the dead group's addresses.
        agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
        store = dist.TCPStore(
            os.environ["MASTER_ADDR"],
            int(os.environ["MASTER_PORT"]),
            world,
            is_master=not agent_store and rank == 0,
            timeout=timeout,
            multi_tenant=True,
        )
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        kwargs: dict[str, Any] = {
            "backend": backend,
            "store": dist.PrefixStore(f"gradloop/attempt_{attempt}", store),
            "rank": rank,
            "world_size": world,
            "timeout": timeout,
        }
        if backend == "nccl":
            kwargs["device_id"] = device  # binds the communicator to this rank's GPU up front
        dist.init_process_group(**kwargs)
    return DistContext(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        node_rank=int(os.environ.get("GROUP_RANK", os.environ.get("NODE_RANK", "0"))),
        backend=backend,
    )


def worker_device(spec: str) -> torch.device:
    """This rank's device: its own GPU (cuda:LOCAL_RANK) when the run uses CUDA, else the CPU."""
    if spec in ("cpu", "mps") or not torch.cuda.is_available():
        return torch.device(spec if spec == "mps" else "cpu")
    index = int(os.environ.get("LOCAL_RANK", "0")) if ":" not in spec else int(spec.split(":", 1)[1])
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


__all__ = ["DistContext", "in_worker", "init_process_group", "resolve_backend", "worker_device", "destroy"]

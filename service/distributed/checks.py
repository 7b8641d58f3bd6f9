"""The `distributed:` block checked against this machine: backend, GPUs, torch features.

Called by config validation's machine checks, so `gradloop validate`, `gradloop run` and `train()`
refuse a distributed config that cannot run here before any process starts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from gradloop import registry

if TYPE_CHECKING:
    from gradloop.config.schema import RunConfig


Report = Callable[[str, str], None]


def nproc_per_node(cfg: RunConfig) -> int:
    """Processes on this machine: the number given, or for `auto` one per visible GPU (else 1)."""
    n = cfg.distributed.nproc_per_node
    if n == "auto":
        return max(torch.cuda.device_count(), 1) if _uses_cuda(cfg.device) else 1
    return int(n)


def check_distributed(cfg: RunConfig, err: Report) -> None:
    """Report (field, message) for every reason the distributed block cannot run on this machine."""
    d = cfg.distributed
    if not d.enabled:
        return
    import torch.distributed as dist  # only for distributed configs: it is a large import

    if not dist.is_available():
        err(
            "distributed.strategy",
            f"this torch build ({torch.__version__}) has no torch.distributed; set strategy: none",
        )
        return
    cuda = _uses_cuda(cfg.device)
    backend = d.backend if d.backend != "auto" else ("nccl" if cuda else "gloo")
    if backend == "nccl":
        if not torch.cuda.is_available():
            err("distributed.backend", "nccl needs CUDA GPUs and this machine has none; use backend: gloo (or auto)")
            return
        if not dist.is_nccl_available():
            err("distributed.backend", f"this torch build ({torch.__version__}) has no NCCL; use backend: gloo")
        if cfg.device == "cpu":
            err("distributed.backend", "nccl cannot train on device: cpu; use backend: gloo, or device: cuda")
    elif not dist.is_gloo_available():
        err("distributed.backend", f"this torch build ({torch.__version__}) has no gloo backend; use backend: nccl")
    nproc = nproc_per_node(cfg)
    if cuda and torch.cuda.is_available() and nproc > torch.cuda.device_count():
        count = torch.cuda.device_count()
        err(
            "distributed.nproc_per_node",
            f"{nproc} processes need {nproc} GPUs but this machine has {count}; "
            f"set nproc_per_node to at most {count} (or auto)",
        )
    if cfg.device.startswith("cuda:") and nproc > 1:
        err("device", f"{cfg.device} would put every rank on one GPU; use device: cuda (rank i takes cuda:i)")
    if cfg.optimizer.name in registry.optimizers and registry.optimizers.get(cfg.optimizer.name).capabilities.get(
        "closure"
    ):
        # Its line search runs as many evaluations as the local loss asks for, so ranks would
        # disagree on how many gradient all-reduces a step has.
        err(
            "optimizer.name",
            f"{cfg.optimizer.name} re-evaluates the loss and cannot train on several ranks; "
            "use another optimizer or strategy: none",
        )


def _uses_cuda(device: str) -> bool:
    return device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())


__all__ = ["check_distributed", "nproc_per_node"]

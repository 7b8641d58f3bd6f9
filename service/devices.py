"""Which device a run uses, and the autocast settings for its precision."""

from __future__ import annotations

import torch

from gradloop.errors import GradloopError


class DeviceError(GradloopError, ValueError):
    """The config asks for a device this machine does not have."""


def resolve_device(spec: str) -> torch.device:
    """`auto` takes CUDA when present, else CPU; `cuda`/`cuda:N` must exist here."""
    if spec == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(f"{spec!r} was asked for but this machine has no CUDA device; use device: cpu or auto")
        index = int(spec.split(":", 1)[1]) if ":" in spec else torch.cuda.current_device()
        count = torch.cuda.device_count()
        if index >= count:
            raise DeviceError(
                f"{spec!r} was asked for but this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1})"
            )
        return torch.device("cuda", index)
    if spec == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise DeviceError("'mps' was asked for but this machine has no Apple GPU; use device: cpu or auto")
        return torch.device("mps")
    raise DeviceError(f"unknown device {spec!r}; use auto, cpu, cuda or cuda:N")


def cpu_if_no_cuda() -> torch.device | None:
    """The CPU on a machine without CUDA (every valid device spec but mps resolves to it there), else None."""
    return None if torch.cuda.is_available() else torch.device("cpu")


def autocast_dtype(precision: str) -> torch.dtype | None:
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type

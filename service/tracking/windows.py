"""A logging window's values, held from its step until the observer's once-a-second write.

On the training thread a window only keeps what the trainer and gradstats handed over: on a
GPU the device tensors themselves (moved to the host together at write time, one
synchronisation a second), on the CPU their values, read at once (no synchronisation to save,
and no tensors kept alive for the garbage collector to walk). The write pass turns each into
its metrics with `HeldWindow.host_values`, and the journal lines and the sender's requests
are made for a second's windows at once (what that saves: docs/benchmarks.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from gradloop.tracking import gradstats
from gradloop.tracking.gradstats import GradSnapshot, SnapshotShape, StatLayout
from gradloop.tracking.metric_keys import metric_safe


@dataclass(slots=True)
class HeldWindow:
    """One logging window's values as the training thread left them: host floats, and the
    values of 0-d and 1-d tensors (the named ones first, then the snapshot's): read already
    when `on_host`, else the device tensors themselves. Those are the trainer's and gradstats'
    own results, made fresh for this window, so nothing changes them while they are held; they
    are gathered with every other held window's and moved at write time."""

    step: int
    ts: int
    plain: dict[str, float]
    keys: list[str]
    parts: list[Any]  # torch.Tensor, or float when on_host
    snap: SnapshotShape | None
    on_host: bool

    def host_values(self, flat: list[float], layout: StatLayout | None) -> dict[str, float]:
        """The window's metrics, given its parts as host floats (in `parts` order)."""
        values = (
            {}
            if self.snap is None or layout is None
            else gradstats.host_metrics(self.snap, flat[len(self.keys) :], layout)
        )
        # The trainer's values come last: its own train/grad_norm wins over the one derived here.
        values.update(zip(map(metric_safe, self.plain), self.plain.values()))
        values.update(zip(map(metric_safe, self.keys), flat))
        return values


def held_window(
    step: int, ts: int, metrics: Mapping[str, Any], snap: GradSnapshot | None, on_host: bool = False
) -> HeldWindow | None:
    plain: dict[str, float] = {}
    keys: list[str] = []
    parts: list[torch.Tensor] = []
    for key, value in metrics.items():
        if value is None:
            continue
        if isinstance(value, torch.Tensor):
            keys.append(key)
            value = value.detach() if value.requires_grad else value  # the trainer's are detached already
            parts.append(value.reshape(()) if value.dim() else value)
        else:
            plain[key] = float(value)
    if snap is not None:
        parts += snap.tensors()
    held: list[torch.Tensor] | list[float] = read_values(parts) if on_host else parts
    return (
        HeldWindow(step, ts, plain, keys, held, snap.shape() if snap is not None else None, on_host)
        if held or plain
        else None
    )


def to_host(tensors: list[torch.Tensor]) -> list[float]:
    """0-d and 1-d device tensors as one flat list of numbers: one concatenation and one
    transfer (on a GPU, the one synchronisation). Integer tensors give ints: the journal's
    readers and the store take any number."""
    if not tensors:
        return []
    try:
        return torch.cat([t.reshape(-1) for t in tensors]).tolist()
    except RuntimeError:  # tensors on different devices (or dtypes torch.cat refuses)
        return read_values(tensors)


def read_values(tensors: list[torch.Tensor]) -> list[float]:
    """The same, tensor by tensor: on the CPU, where there is nothing to gather, a handful of
    tolist() calls cost less than the concatenation."""
    out: list[float] = []
    for t in tensors:
        value = t.tolist()
        if isinstance(value, list):
            out += value
        else:
            out.append(value)
    return out

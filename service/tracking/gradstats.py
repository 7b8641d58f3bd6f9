"""Gradient and weight statistics: fused kernels on the device, arithmetic on the host.

On the device, per logging window: one `torch._foreach_norm` over all gradients before the
optimizer step, one fused copy of the weights, and after the step one `_foreach_sub` (the
update) and one `_foreach_norm` over updates and weights together. The observer stacks those
0-d norms with the window's loss and moves them to the host in one transfer; everything
derived from them (total norm, non-finite count, update/weight ratios, per-module norms) is
a handful of float operations on the host, so it adds no kernels and no synchronisation.
"""
from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, field
from typing import Literal

import torch

GradStatsMode = Literal["none", "total", "per_layer", "per_module"]

_BAD_KEY_CHARS = re.compile(r"[^A-Za-z0-9_\-. /]")


@functools.lru_cache(maxsize=4096)  # the same few keys come back every logging window
def metric_safe(name: str) -> str:
    """MLflow metric keys allow letters, digits, `_-. /`; anything else becomes `_`."""
    return _BAD_KEY_CHARS.sub("_", name)


def module_of(param_name: str) -> str:
    """`encoder.layers.0.weight` -> `encoder.layers.0` (a parameter's owning module)."""
    return param_name.rsplit(".", 1)[0] if "." in param_name else param_name


@dataclass
class StatLayout:
    """Which parameters are watched and how their norms are labelled and grouped."""

    names: list[str]                    # one per watched parameter, metric-safe
    params: list[torch.nn.Parameter]
    mode: GradStatsMode
    groups: list[str] = field(default_factory=list)         # per_module: module names
    members: list[list[int]] = field(default_factory=list)  # per_module: param indices per module

    @classmethod
    def build(cls, named: list[tuple[str, torch.nn.Parameter]], mode: GradStatsMode) -> "StatLayout":
        named = [(n, p) for n, p in named if p.requires_grad]
        layout = cls([metric_safe(n) for n, _ in named], [p for _, p in named], mode)
        if mode == "per_module":
            modules: dict[str, list[int]] = {}
            for i, name in enumerate(layout.names):
                modules.setdefault(module_of(name), []).append(i)
            layout.groups, layout.members = list(modules), list(modules.values())
        return layout

    @property
    def per_layer(self) -> bool:
        return self.mode in ("per_layer", "per_module")

    @property
    def labels(self) -> list[str]:
        """Labels of the per-layer values (parameters, or modules for per_module)."""
        return self.groups if self.mode == "per_module" else self.names

    def group(self, per_param: list[float]) -> list[float]:
        """Per-module norm = sqrt(sum of its parameters' squared norms)."""
        if self.mode != "per_module":
            return per_param
        return [math.sqrt(sum(per_param[i] ** 2 for i in idx)) for idx in self.members]


@dataclass
class GradSnapshot:
    """Device tensors taken before the optimizer step; nothing here has touched the host."""

    step: int
    grad_norms: list[torch.Tensor]               # 0-d, one per watched parameter
    weights_before: list[torch.Tensor] | None    # per_layer modes: a copy, for the update
    update_norms: list[torch.Tensor] = field(default_factory=list)   # filled after the step
    weight_norms: list[torch.Tensor] = field(default_factory=list)

    def tensors(self) -> list[torch.Tensor]:
        return [*self.grad_norms, *self.update_norms, *self.weight_norms]


def snapshot(step: int, layout: StatLayout) -> GradSnapshot | None:
    """Norms of the current gradients (pre-clip) and, per layer, a copy of the weights."""
    if not layout.params or any(p.grad is None for p in layout.params):
        # A parameter without a gradient this step would shift every label after it.
        grads = [p.grad.detach() for p in layout.params if p.grad is not None]
        if not grads:
            return None
        return GradSnapshot(step, list(torch._foreach_norm(grads)), None)
    grads = [p.grad.detach() for p in layout.params]
    # A plain clone per tensor measured faster on CPU than a fused _foreach_mul(ws, 1.0) copy.
    before = [p.detach().clone() for p in layout.params] if layout.per_layer else None
    return GradSnapshot(step, list(torch._foreach_norm(grads)), before)


def after_step(snap: GradSnapshot, layout: StatLayout) -> None:
    """Add the update and weight norms (device tensors) once the optimizer has stepped."""
    if snap.weights_before is None:
        return
    after = [p.detach() for p in layout.params]
    delta = torch._foreach_sub(after, snap.weights_before)
    norms = torch._foreach_norm([*delta, *after])
    n = len(after)
    snap.update_norms, snap.weight_norms = list(norms[:n]), list(norms[n:])
    snap.weights_before = None  # free the copy as soon as it has served


def host_metrics(snap: GradSnapshot, values: list[float], layout: StatLayout) -> dict[str, float]:
    """Metrics from the snapshot's norms, given as host floats in `snap.tensors()` order."""
    n = len(snap.grad_norms)
    gn = values[:n]
    out = {
        "train/grad_norm": math.sqrt(sum(v * v for v in gn)),
        "train/grad_nonfinite": float(sum(1 for v in gn if not math.isfinite(v))),
    }
    if snap.update_norms and n == len(layout.params):
        un, wn = values[n : 2 * n], values[2 * n : 3 * n]
        labels = layout.labels
        g, u, w = layout.group(gn), layout.group(un), layout.group(wn)
        for i, label in enumerate(labels):
            out[f"grad_norm/{label}"] = g[i]
            out[f"weight_norm/{label}"] = w[i]
            # ||w_t - w_{t-1}|| / ||w_t||: how far one step moves a layer, relative to its size.
            out[f"update_ratio/{label}"] = u[i] / w[i] if w[i] > 0 else 0.0
    return out

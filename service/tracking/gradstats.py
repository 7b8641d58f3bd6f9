"""Gradient and weight statistics computed on the device, in a handful of fused kernels.

Nothing here synchronises with the host: per-parameter norms come from one
`torch._foreach_norm` call over all gradients (and one over all weights), the total norm and
the non-finite count are reductions of that stacked vector, and per-module norms are one
`index_add_` of squared norms. The observer moves the resulting vectors to the host once per
logging window, together with the loss, in a single transfer.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

import torch

GradStatsMode = Literal["none", "total", "per_layer", "per_module"]

_BAD_KEY_CHARS = re.compile(r"[^A-Za-z0-9_\-. /]")


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
    groups: list[str] = field(default_factory=list)        # per_module: module names
    group_index: torch.Tensor | None = None                 # per_module: param -> module index

    @classmethod
    def build(cls, named: list[tuple[str, torch.nn.Parameter]], mode: GradStatsMode) -> "StatLayout":
        named = [(n, p) for n, p in named if p.requires_grad]
        layout = cls([metric_safe(n) for n, _ in named], [p for _, p in named], mode)
        if mode == "per_module" and named:
            modules: dict[str, int] = {}
            index = [modules.setdefault(module_of(n), len(modules)) for n in layout.names]
            layout.groups = list(modules)
            layout.group_index = torch.tensor(index, dtype=torch.long, device=named[0][1].device)
        return layout

    @property
    def labels(self) -> list[str]:
        """Labels of the per-layer vectors the snapshot carries (params or modules)."""
        return self.groups if self.mode == "per_module" else self.names


@dataclass
class GradSnapshot:
    """Device tensors taken before the optimizer step; nothing here has touched the host."""

    step: int
    grad_norms: torch.Tensor | None     # (L,) per layer label, or None for mode total
    total_norm: torch.Tensor            # 0-d
    nonfinite: torch.Tensor             # 0-d: parameters whose gradient has a NaN/inf
    weight_norms: torch.Tensor | None   # (L,) before the step
    weights_before: list[torch.Tensor] | None
    histograms: dict | None = None


def _stack_norms(tensors: list[torch.Tensor]) -> torch.Tensor:
    norms = torch._foreach_norm(tensors)
    device = norms[0].device
    # Parameters spread over devices (model parallel) are gathered on the first one.
    return torch.stack([n if n.device == device else n.to(device, non_blocking=True) for n in norms]).float()


def _group(per_param: torch.Tensor, layout: StatLayout) -> torch.Tensor:
    """Per-module norm = sqrt(sum of its parameters' squared norms)."""
    if layout.mode != "per_module" or layout.group_index is None:
        return per_param
    index = layout.group_index.to(per_param.device)
    sq = torch.zeros(len(layout.groups), device=per_param.device, dtype=per_param.dtype)
    return sq.index_add_(0, index, per_param.square()).sqrt()


def snapshot(step: int, layout: StatLayout, *, with_layers: bool) -> GradSnapshot | None:
    """Norms of the current gradients (pre-clip) and weights; None when no gradient exists."""
    pairs = [(p, p.grad) for p in layout.params if p.grad is not None]
    if not pairs:
        return None
    grads = [g.detach() for _, g in pairs]
    gnorms = _stack_norms(grads)
    total = torch.linalg.vector_norm(gnorms)
    nonfinite = (~torch.isfinite(gnorms)).sum()
    if not with_layers or layout.mode in ("none", "total") or len(pairs) != len(layout.params):
        # A parameter without a gradient this step would shift the labels; report the total only.
        return GradSnapshot(step, None, total, nonfinite, None, None)
    weights = [p.detach() for p, _ in pairs]
    wnorms = _stack_norms(weights)
    before = torch._foreach_mul(weights, 1.0)  # one fused copy: the update is after - before
    return GradSnapshot(step, _group(gnorms, layout), total, nonfinite, _group(wnorms, layout), before)


def update_ratios(snap: GradSnapshot, layout: StatLayout) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(weight norms after the step, ||update|| / ||weight before||) per layer label, on device."""
    if snap.weights_before is None or snap.weight_norms is None:
        return None
    after = [p.detach() for p in layout.params]
    delta = torch._foreach_sub(after, snap.weights_before)
    dnorms = _group(_stack_norms(delta), layout)
    wafter = _group(_stack_norms(after), layout)
    ratio = dnorms / snap.weight_norms.clamp_min(1e-12)
    snap.weights_before = None  # free the copy as soon as it has served
    return wafter, ratio

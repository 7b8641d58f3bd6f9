"""Gradient and weight statistics: fused kernels on the device, arithmetic on the host.

On the device, per logging window: one `torch._foreach_norm` over all gradients before the
optimizer step (the trainer's own, at logging steps) and one fused copy of the weights into
buffers kept for the whole run, and after the step one in-place `_foreach_sub_` (the update)
and one `_foreach_norm` over updates and weights together. The observer moves those norms to
the host with the window's loss, in one transfer for all held windows. Everything
derived from them (total norm, non-finite count, update/weight ratios, per-module norms) is
a handful of float operations on the host, so it adds no kernels and no synchronisation.

Sharded parameters (FSDP): the observer runs on rank 0 alone, so it cannot take part in a
collective, and a shard's norm is not the layer's. The gradient norms are then the trainer's
(RunContext.grad_norms: measured every step from all ranks' shards, so the full ones); the
per-layer weight and update norms, which would need every rank's shards, are not logged.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import torch

from gradloop.distributed.fsdp import is_sharded
from gradloop.torch_ops import foreach_copy_, foreach_norm, foreach_sub_
from gradloop.tracking.metric_keys import metric_safe

GradStatsMode = Literal["none", "total", "per_layer", "per_module"]


def module_of(param_name: str) -> str:
    """`encoder.layers.0.weight` -> `encoder.layers.0` (a parameter's owning module)."""
    return param_name.rsplit(".", 1)[0] if "." in param_name else param_name


@dataclass
class StatLayout:
    """Which parameters are watched and how their norms are labelled and grouped."""

    names: list[str]  # one per watched parameter, metric-safe
    params: list[torch.nn.Parameter]
    mode: GradStatsMode
    groups: list[str] = field(default_factory=list)  # per_module: module names
    members: list[list[int]] = field(default_factory=list)  # per_module: param indices per module
    # Detached views of the weights, made once: optimizers and load_state_dict update
    # parameters in place, so a view sees every step (and reading it builds no graph).
    weights: list[torch.Tensor] = field(init=False, default_factory=list)
    # per_layer modes: the weights before a step, copied in place each window (allocating
    # fresh tensors per window cost more than the copy itself on a small model).
    _before: list[torch.Tensor] | None = field(init=False, default=None)
    all_params: bool = field(init=False, default=False)
    # DTensor shards (FSDP): only the trainer's full gradient norms are used (module docstring).
    sharded: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self.weights = [p.detach() for p in self.params]

    def weights_before(self) -> list[torch.Tensor]:
        """The weights, copied into the run's buffers with one fused kernel."""
        if self._before is None:
            self._before = [w.clone() for w in self.weights]
        else:
            foreach_copy_(self._before, self.weights)
        return self._before

    @classmethod
    def build(cls, named: list[tuple[str, torch.nn.Parameter]], mode: GradStatsMode) -> StatLayout:
        watched = [(n, p) for n, p in named if p.requires_grad]
        layout = cls([metric_safe(n) for n, _ in watched], [p for _, p in watched], mode)
        layout.all_params = len(watched) == len(named)  # the optimizer's parameters, all, in order
        layout.sharded = any(is_sharded(p) for p in layout.params)
        if mode == "per_module":
            modules: dict[str, list[int]] = {}
            for i, name in enumerate(layout.names):
                modules.setdefault(module_of(name), []).append(i)
            layout.groups, layout.members = list(modules), list(modules.values())
        return layout

    @property
    def per_layer(self) -> bool:
        return self.mode in ("per_layer", "per_module")

    @functools.cached_property
    def metric_keys(self) -> tuple[list[str], list[str], list[str]]:
        """grad_norm/, weight_norm/ and update_ratio/ keys per label (built once, not per window)."""
        return (
            [f"grad_norm/{x}" for x in self.labels],
            [f"weight_norm/{x}" for x in self.labels],
            [f"update_ratio/{x}" for x in self.labels],
        )

    @property
    def labels(self) -> list[str]:
        """Labels of the per-layer values (parameters, or modules for per_module)."""
        return self.groups if self.mode == "per_module" else self.names

    def group(self, per_param: list[float]) -> list[float]:
        """Per-module norm = sqrt(sum of its parameters' squared norms)."""
        if self.mode != "per_module":
            return per_param
        return [math.sqrt(sum(per_param[i] ** 2 for i in idx)) for idx in self.members]


class SnapshotShape(NamedTuple):
    grad_norms: int  # how many gradient norms lead the values
    with_updates: bool  # whether update and weight norms follow them


@dataclass
class GradSnapshot:
    """Device tensors taken before the optimizer step; nothing here has touched the host."""

    step: int
    grad_norms: torch.Tensor  # 1-d, one per watched parameter
    weights_before: list[torch.Tensor] | None  # per_layer modes: the layout's buffers
    update_weight_norms: list[torch.Tensor] | None = None  # after the step: updates, then weights

    def shape(self) -> SnapshotShape:
        """What host_metrics needs besides the values: kept once the tensors are gone."""
        return SnapshotShape(len(self.grad_norms), self.update_weight_norms is not None)

    def tensors(self) -> list[torch.Tensor]:
        """The norms in the order host_metrics reads them, flattened (the observer moves them to
        the host with the window's loss: one transfer for all held windows)."""
        return [self.grad_norms] + (self.update_weight_norms or [])


def snapshot(step: int, layout: StatLayout, measured: torch.Tensor | None = None) -> GradSnapshot | None:
    """Norms of the current gradients (pre-clip) and, per layer, a copy of the weights.

    measured: the trainer's own per-parameter norms of these gradients, in optimizer order
    (RunContext.grad_norms); used when they cover exactly the watched parameters."""
    if measured is not None and layout.all_params and len(measured) == len(layout.params):
        # The trainer measured every watched gradient (so none is missing): nothing to read.
        return _with_weights(GradSnapshot(step, measured, None), layout)
    if layout.sharded:
        return None  # a shard's norms are not the layer's, and the whole ones need every rank
    # .grad of a leaf is itself detached (short of create_graph), so it is read as it is.
    grads = [p.grad for p in layout.params if p.grad is not None]
    if not grads or len(grads) < len(layout.params):
        # A parameter without a gradient this step would shift every label after it.
        return GradSnapshot(step, torch.stack(foreach_norm(grads)), None) if grads else None
    return _with_weights(GradSnapshot(step, torch.stack(foreach_norm(grads)), None), layout)


def _with_weights(snap: GradSnapshot, layout: StatLayout) -> GradSnapshot:
    """per_layer modes: the weights before the step, in the layout's buffers."""
    if layout.per_layer and not layout.sharded:
        snap.weights_before = layout.weights_before()
    return snap


def after_step(snap: GradSnapshot, layout: StatLayout) -> None:
    """Add the update and weight norms (device tensors) once the optimizer has stepped."""
    if snap.weights_before is None:
        return
    # before - after, in the buffers themselves: the same norm as the update, no new tensors.
    foreach_sub_(snap.weights_before, layout.weights)
    snap.update_weight_norms = list(foreach_norm(snap.weights_before + layout.weights))
    snap.weights_before = None


def host_metrics(shape: SnapshotShape, values: list[float], layout: StatLayout) -> dict[str, float]:
    """Metrics from a snapshot's norms (GradSnapshot.shape() describes them), given as host
    floats in `tensors()` order."""
    n, with_updates = shape
    gn = values[:n]
    out = {
        "train/grad_norm": math.sqrt(sum(v * v for v in gn)),
        "train/grad_nonfinite": float(n - sum(map(math.isfinite, gn))),
    }
    if not layout.per_layer or n != len(layout.params):
        return out
    grad_keys, weight_keys, ratio_keys = layout.metric_keys
    out.update(zip(grad_keys, layout.group(gn)))
    if with_updates:
        u, w = layout.group(values[n : 2 * n]), layout.group(values[2 * n : 3 * n])
        out.update(zip(weight_keys, w))
        # ||w_t - w_{t-1}|| / ||w_t||: how far one step moves a layer, relative to its size.
        out.update(zip(ratio_keys, [ui / wi if wi > 0 else 0.0 for ui, wi in zip(u, w)]))
    return out

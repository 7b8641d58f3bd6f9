"""torch's private fused list ops, each behind a public fallback that gives the same answer.

The underscore functions (`torch._foreach_norm`, `torch._amp_foreach_non_finite_check_and_unscale_`
...) do a whole list of tensors in one kernel launch, which matters on a loop that runs them
every step; but they are not torch's public API and may change or go in any release. gradloop
calls them here and nowhere else. Each function takes `fused`: None uses the fused kernel when
this torch has it, False forces the public fallback (tests/core/test_torch_ops.py checks that
both give the same answers).
"""

from __future__ import annotations

import torch


def _fused(name: str, fused: bool | None) -> bool:
    return hasattr(torch, name) if fused is None else fused


def foreach_norm(tensors: list[torch.Tensor], *, fused: bool | None = None) -> tuple[torch.Tensor, ...]:
    """The L2 norm of each tensor, as 0-d tensors on its device and in its dtype."""
    if _fused("_foreach_norm", fused):
        return torch._foreach_norm(tensors)
    return tuple(torch.linalg.vector_norm(t) for t in tensors)


def flag_non_finite(
    tensors: list[torch.Tensor], found: torch.Tensor, unit_scale: torch.Tensor, *, fused: bool | None = None
) -> None:
    """Write 1.0 into `found` when any element of `tensors` is inf or NaN (leave it otherwise),
    without a host sync. found and unit_scale: one-element float tensors on the tensors' device,
    unit_scale holding 1.0 (the fused kernel, GradScaler's, multiplies the tensors by it in place,
    so they stay as they are). The tensors must share one device and dtype."""
    if _fused("_amp_foreach_non_finite_check_and_unscale_", fused):
        torch._amp_foreach_non_finite_check_and_unscale_(tensors, found, unit_scale)
        return
    bad = torch.stack([torch.logical_not(torch.isfinite(t)).any() for t in tensors]).any()
    found.masked_fill_(bad.reshape(1), 1.0)


def foreach_copy_(dst: list[torch.Tensor], src: list[torch.Tensor], *, fused: bool | None = None) -> None:
    """dst[i].copy_(src[i]) for every i."""
    if _fused("_foreach_copy_", fused):
        torch._foreach_copy_(dst, src)
        return
    for d, s in zip(dst, src):
        d.copy_(s)


def foreach_sub_(dst: list[torch.Tensor], src: list[torch.Tensor], *, fused: bool | None = None) -> None:
    """dst[i].sub_(src[i]) for every i."""
    if _fused("_foreach_sub_", fused):
        torch._foreach_sub_(dst, src)
        return
    for d, s in zip(dst, src):
        d.sub_(s)


def foreach_max(tensors: list[torch.Tensor], *, fused: bool | None = None) -> tuple[torch.Tensor, ...]:
    """The largest element of each (non-empty) tensor, as 0-d tensors."""
    if _fused("_foreach_max", fused):
        return torch._foreach_max(tensors)
    return tuple(t.max() for t in tensors)


__all__ = ["flag_non_finite", "foreach_copy_", "foreach_max", "foreach_norm", "foreach_sub_"]

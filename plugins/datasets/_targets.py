"""Turning raw target values into the task's convention (shared by csv and tensors).

classification: int64 class indices (N,); binary: float (N, 1) in {0, 1}; regression: float (N, k).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from gradloop.errors import ConfigError

FileTask = Literal["classification", "regression", "binary"]


def encode_labels(values: Sequence[str]) -> tuple[torch.Tensor, list[str]]:
    """Map label strings to indices 0..K-1 in sorted order (numeric order when all are integers)."""
    distinct = set(values)
    try:
        ordered = sorted(distinct, key=lambda v: float(v))
    except ValueError:
        ordered = sorted(distinct)
    index = {label: i for i, label in enumerate(ordered)}
    return torch.tensor([index[v] for v in values], dtype=torch.int64), ordered


def binary_from_labels(values: Sequence[str], field: str) -> torch.Tensor:
    y, labels = encode_labels(values)
    if len(labels) > 2:
        raise ConfigError.single(
            field,
            f"a binary task needs at most two distinct target values, found {len(labels)} ({_few(labels)}); use task: "
            "classification",
        )
    return y.float().unsqueeze(1)


def targets_from_tensor(y: torch.Tensor, task: FileTask, field: str) -> torch.Tensor:
    """Check and convert a target tensor from a file to the task's convention."""
    if task == "regression":
        y = y.float()
        return y.unsqueeze(1) if y.dim() == 1 else y.reshape(len(y), -1)
    flat = y.reshape(len(y), -1)
    if flat.shape[1] != 1:
        raise ConfigError.single(
            field,
            f"{task} targets need one value per sample, got shape {tuple(y.shape)}; use task: regression for several "
            "targets",
        )
    flat = flat[:, 0]
    if flat.is_floating_point():
        if not torch.equal(flat, flat.round()):
            raise ConfigError.single(
                field,
                f"{task} targets must be whole numbers (class indices), found fractional values; use task: regression",
            )
    flat = flat.long()
    if len(flat) and flat.min() < 0:
        raise ConfigError.single(field, f"class indices must be >= 0, found {int(flat.min())}")
    if task == "binary":
        if len(flat) and flat.max() > 1:
            raise ConfigError.single(
                field, f"binary targets must be 0 or 1, found {int(flat.max())}; use task: classification"
            )
        return flat.float().unsqueeze(1)
    return flat


def _few(items: Sequence[str], n: int = 5) -> str:
    shown = ", ".join(repr(i) for i in items[:n])
    return shown + (", ..." if len(items) > n else "")

"""What a dataset plugin hands the trainer, and the helpers plugin authors share.

A dataset factory is called as `factory(options=..., ctx=DataContext)` and returns DataSplits.
In-memory data is a TensorData (features and targets as tensors): the trainer batches it by
indexing with a permutation, with no per-sample DataLoader. Anything else may be a
torch.utils.data.Dataset, which the trainer wraps in a DataLoader.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Union

import torch
from torch.utils.data import Dataset

from .errors import ConfigError

Task = Literal["classification", "regression", "binary"]


@dataclass(frozen=True)
class TensorData:
    """Features `x` (N, ...) and targets `y` (N, ...) held in memory."""

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        if self.x.shape[0] != self.y.shape[0]:
            raise ValueError(f"x has {self.x.shape[0]} rows but y has {self.y.shape[0]}")

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def subset(self, index: torch.Tensor) -> "TensorData":
        return TensorData(self.x[index], self.y[index])

    def to(self, device: torch.device) -> "TensorData":
        return TensorData(self.x.to(device), self.y.to(device))


Data = Union[TensorData, Dataset]


@dataclass(frozen=True)
class DataSplits:
    train: Data
    val: Data | None
    task: Task
    num_features: int | tuple[int, ...]     # per-sample input size (an int for flat features)
    num_outputs: int                        # what the model's last layer must produce
    num_classes: int | None = None          # classification only
    description: str = ""


@dataclass(frozen=True)
class DataContext:
    root: Path            # data root: relative paths resolve here and may not leave it
    val_fraction: float
    split_seed: int


def default_data_root(configured: str | None) -> Path:
    return Path(configured or os.environ.get("GRADLOOP_DATA_ROOT") or os.getcwd()).resolve()


def resolve_data_path(ctx: DataContext, path: str, field: str) -> Path:
    """Resolve `path` under the data root; a path that leaves the root is a config error."""
    candidate = (ctx.root / path).resolve()
    if candidate != ctx.root and ctx.root not in candidate.parents:
        raise ConfigError.single(field, f"path {path!r} leaves the data root {str(ctx.root)!r}; put the file under it or change data.root")
    if not candidate.exists():
        raise ConfigError.single(field, f"file {path!r} does not exist under the data root {str(ctx.root)!r}")
    return candidate


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random split into (train, val) index tensors; val is empty when the fraction is 0."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g)
    n_val = int(round(n * val_fraction)) if val_fraction > 0 else 0
    if val_fraction > 0 and n - n_val < 1:
        raise ConfigError.single("data.val_fraction", f"val_fraction {val_fraction} leaves no training samples out of {n}")
    return perm[n_val:].sort().values, perm[:n_val].sort().values


def split_tensors(data: TensorData, ctx: DataContext) -> tuple[TensorData, TensorData | None]:
    train_idx, val_idx = split_indices(len(data), ctx.val_fraction, ctx.split_seed)
    return data.subset(train_idx), (data.subset(val_idx) if len(val_idx) else None)


def standardize(train: TensorData, val: TensorData | None) -> tuple[TensorData, TensorData | None]:
    """Scale features with mean/std of the training split only (no leak from validation)."""
    mean = train.x.mean(dim=0, keepdim=True)
    std = train.x.std(dim=0, keepdim=True).clamp_min(1e-8)
    scale = lambda d: TensorData((d.x - mean) / std, d.y)  # noqa: E731
    return scale(train), (scale(val) if val is not None else None)

"""What a dataset plugin hands the trainer, and the helpers plugin authors share.

A dataset factory is called as `factory(options=..., ctx=DataContext)` and returns DataSplits.
In-memory data is a TensorData (features and targets as tensors): the trainer batches it by
indexing with a permutation, with no per-sample DataLoader. Anything else may be a
torch.utils.data.Dataset, which the trainer wraps in a DataLoader.

Plugin authors with in-memory data call make_splits(): the seeded split, then standardisation
with training-split statistics only. Target conventions: classification int64 (N,) class
indices, binary float (N, 1) in {0, 1}, regression float (N, k).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch.utils.data import Dataset

from gradloop.errors import ConfigError

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

    def subset(self, index: torch.Tensor) -> TensorData:
        return TensorData(self.x[index], self.y[index])

    def to(self, device: torch.device) -> TensorData:
        return TensorData(self.x.to(device), self.y.to(device))


Data = TensorData | Dataset


@dataclass(frozen=True)
class DataSplits:
    train: Data
    val: Data | None
    task: Task
    num_features: int | tuple[int, ...]  # per-sample input size (an int for flat features)
    num_outputs: int  # what the model's last layer must produce
    num_classes: int | None = None  # classification only
    description: str = ""
    class_names: tuple[str, ...] | None = None  # for the confusion matrix's axes
    default_metrics: tuple[str, ...] | None = None  # when the config names none (default: the task's)


@dataclass(frozen=True)
class DataContext:
    root: Path  # data root: relative paths resolve here and may not leave it
    val_fraction: float
    split_seed: int


def resolve_data_path(ctx: DataContext, path: str, field: str) -> Path:
    """Resolve `path` under the data root; a path that leaves the root is a config error."""
    candidate = (ctx.root / path).resolve()
    if candidate != ctx.root and ctx.root not in candidate.parents:
        raise ConfigError.single(
            field, f"path {path!r} leaves the data root {str(ctx.root)!r}; put the file under it or change data.root"
        )
    if not candidate.exists():
        raise ConfigError.single(field, f"file {path!r} does not exist under the data root {str(ctx.root)!r}")
    return candidate


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random split into (train, val) index tensors; val is empty when the fraction is 0."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g)
    n_val = int(round(n * val_fraction)) if val_fraction > 0 else 0
    if val_fraction > 0 and n - n_val < 1:
        raise ConfigError.single(
            "data.val_fraction", f"val_fraction {val_fraction} leaves no training samples out of {n}"
        )
    return perm[n_val:].sort().values, perm[:n_val].sort().values


def split_tensors(data: TensorData, ctx: DataContext) -> tuple[TensorData, TensorData | None]:
    train_idx, val_idx = split_indices(len(data), ctx.val_fraction, ctx.split_seed)
    return data.subset(train_idx), (data.subset(val_idx) if len(val_idx) else None)


def standardize(
    train: TensorData, val: TensorData | None, dims: tuple[int, ...] = (0,)
) -> tuple[TensorData, TensorData | None]:
    """Scale features with mean/std of the training split only (no leak from validation).

    `dims` are reduced over: (0,) gives one statistic per feature (or per pixel); (0, 2, 3)
    one per image channel. A feature that is constant in the training split keeps scale 1
    (like scikit-learn's StandardScaler): dividing by a clamped ~0 std would turn any
    different value in validation into ~1e8.
    """
    mean = train.x.mean(dim=dims, keepdim=True)
    std = train.x.std(dim=dims, keepdim=True, correction=0)
    std = torch.where(std > 1e-8, std, torch.ones_like(std))
    scale = lambda d: TensorData((d.x - mean) / std, d.y)  # noqa: E731
    return scale(train), (scale(val) if val is not None else None)


def standardize_targets(train: TensorData, val: TensorData | None) -> tuple[TensorData, TensorData | None]:
    """Scale float regression targets with the training split's mean/std (per target column)."""
    mean = train.y.mean(dim=0, keepdim=True)
    std = train.y.std(dim=0, keepdim=True, correction=0)
    std = torch.where(std > 1e-8, std, torch.ones_like(std))
    scale = lambda d: TensorData(d.x, (d.y - mean) / std)  # noqa: E731
    return scale(train), (scale(val) if val is not None else None)


def sample_shape(x: torch.Tensor) -> int | tuple[int, ...]:
    """Per-sample input size as DataSplits.num_features wants it: an int for flat features."""
    shape = tuple(int(d) for d in x.shape[1:])
    return shape[0] if len(shape) == 1 else shape


def make_splits(
    data: TensorData,
    ctx: DataContext,
    task: Task,
    *,
    num_classes: int | None = None,
    standardize_x: bool = False,
    standardize_dims: tuple[int, ...] = (0,),
    standardize_y: bool = False,
    description: str = "",
) -> DataSplits:
    """Split in-memory data with the context's seed, then standardise with train statistics.

    Targets must already follow the task's convention: classification int64 (N,) class
    indices, binary float (N, 1) in {0, 1}, regression float (N, k).
    """
    train, val = split_tensors(data, ctx)
    if standardize_x:
        train, val = standardize(train, val, standardize_dims)
    if standardize_y and task == "regression":
        train, val = standardize_targets(train, val)
    if task == "classification":
        if num_classes is None:
            num_classes = int(data.y.max().item()) + 1 if len(data) else 0
        outputs = num_classes
    elif task == "binary":
        outputs = 1
    else:
        outputs = int(data.y.shape[1]) if data.y.dim() > 1 else 1
    return DataSplits(
        train=train,
        val=val,
        task=task,
        num_features=sample_shape(data.x),
        num_outputs=outputs,
        num_classes=num_classes if task == "classification" else None,
        description=description,
    )

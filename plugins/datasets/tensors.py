"""The `tensors` dataset: x and y tensors from a .pt file (a dict) or a .npz archive."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from gradloop.data import DataContext, DataSplits, TensorData, make_splits, resolve_data_path
from gradloop.errors import ConfigError
from gradloop.plugins.datasets._targets import FileTask, targets_from_tensor
from gradloop.registry import datasets


class TensorsOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(min_length=1, description=".pt (a dict of tensors) or .npz file, relative to the data root")
    x_key: str = Field("x", min_length=1, description="key of the features (N, ...)")
    y_key: str = Field("y", min_length=1, description="key of the targets (N,) or (N, k)")
    task: FileTask = Field(
        "classification", description="classification (int class indices), binary (0/1) or regression"
    )
    num_classes: int | None = Field(
        None, ge=2, description="classification: number of classes (default: largest label + 1)"
    )
    standardize: bool = Field(False, description="scale features per position with the training split's mean and std")


@datasets.register(
    "tensors",
    options=TensorsOptions,
    description="Features and targets from a .pt or .npz file.",
    path_options=("path",),
)
def tensors_dataset(*, options: TensorsOptions, ctx: DataContext) -> DataSplits:
    path = resolve_data_path(ctx, options.path, "data.options.path")
    arrays = _load(path, options.path)
    x, y = (
        _get(arrays, k, f, options.path)
        for k, f in ((options.x_key, "data.options.x_key"), (options.y_key, "data.options.y_key"))
    )
    if x.dim() < 2:
        raise ConfigError.single(
            "data.options.x_key",
            f"features {options.x_key!r} have shape {tuple(x.shape)}; "
            "they need a sample axis and a feature axis, (N, features)",
        )
    if len(x) != len(y):
        raise ConfigError.single(
            "data.options.path", f"{options.path!r} holds {len(x)} feature rows but {len(y)} targets; they must match"
        )
    y = targets_from_tensor(y, options.task, "data.options.y_key")
    num_classes = None
    if options.task == "classification":
        seen = int(y.max()) + 1 if len(y) else 0
        if options.num_classes is not None and seen > options.num_classes:
            raise ConfigError.single(
                "data.options.num_classes",
                f"labels go up to {seen - 1} but num_classes is {options.num_classes}; set num_classes: {seen} or more",
            )
        num_classes = options.num_classes or seen
    return make_splits(
        TensorData(x.float(), y),
        ctx,
        options.task,
        num_classes=num_classes,
        standardize_x=options.standardize,
        description=f"tensors {options.path}: {len(x)} samples of shape {tuple(x.shape[1:])}",
    )


def _load(path: Path, shown: str) -> dict[str, Any]:
    suffix = path.suffix.lower()
    try:
        if suffix == ".pt":
            # weights_only: a data file must not be able to run code when loaded.
            data = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(data, dict):
                raise ConfigError.single(
                    "data.options.path", f"{shown!r} holds a {type(data).__name__}; save a dict like {{'x': x, 'y': y}}"
                )
            return data
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                return {k: npz[k] for k in npz.files}
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError.single("data.options.path", f"cannot read {shown!r}: {type(exc).__name__}: {exc}") from None
    raise ConfigError.single("data.options.path", f"{shown!r} must be a .pt or .npz file")


def _get(arrays: dict[str, Any], key: str, field: str, shown: str) -> torch.Tensor:
    if key not in arrays:
        raise ConfigError.single(field, f"{shown!r} has no {key!r}; keys: {', '.join(map(str, arrays)) or '(none)'}")
    value = arrays[key]
    try:
        return torch.as_tensor(value)
    except Exception:
        raise ConfigError.single(
            field, f"{key!r} in {shown!r} is a {type(value).__name__}, not an array or tensor"
        ) from None

"""The `sklearn` dataset: the small real datasets bundled with scikit-learn (no download).

Features are standardised with the training split's statistics only. Classification targets
are int64 class indices; regression targets (diabetes) float (N, 1), standardised too unless
scale_target is false. digits can come as 8x8 images (N, 1, 8, 8) for the cnn.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from gradloop.data import DataContext, DataSplits, TensorData, make_splits
from gradloop.fitcheck import DataShape, shape_from_options
from gradloop.registry import datasets

_REGRESSION = {"diabetes"}
_BINARY_OK = {"breast_cancer"}
# The full datasets' class counts, so a small max_samples subset cannot shrink the output layer.
_NUM_CLASSES = {"digits": 10, "iris": 3, "wine": 3, "breast_cancer": 2}
_NUM_FEATURES = {"digits": 64, "iris": 4, "wine": 13, "breast_cancer": 30, "diabetes": 10}
_NUM_SAMPLES = {"digits": 1797, "iris": 150, "wine": 178, "breast_cancer": 569, "diabetes": 442}


class SklearnOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dataset: Literal["digits", "iris", "wine", "breast_cancer", "diabetes"] = Field(description="which bundled dataset")
    max_samples: int | None = Field(
        None, ge=2, description="keep a fixed random subset of this many samples (fast tests)"
    )
    standardize: bool = Field(True, description="scale features with the training split's mean and std")
    scale_target: bool = Field(
        True, description="regression only: scale targets with the training split's mean and std"
    )
    as_images: bool = Field(False, description="digits only: samples as images (1, 8, 8) for the cnn")
    binary: bool = Field(False, description="breast_cancer only: float (N, 1) 0/1 targets for bce_with_logits")

    @model_validator(mode="after")
    def _dataset_specific(self) -> SklearnOptions:
        if self.as_images and self.dataset != "digits":
            raise ValueError(f"as_images works for digits only (the others are not images), not {self.dataset}")
        if self.binary and self.dataset not in _BINARY_OK:
            raise ValueError(f"binary works for breast_cancer only (the one two-class dataset), not {self.dataset}")
        return self


def _load(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    # Imported here: sklearn is a large import and only this plugin needs it.
    from sklearn import datasets as skd

    loader = {
        "digits": skd.load_digits,
        "iris": skd.load_iris,
        "wine": skd.load_wine,
        "breast_cancer": skd.load_breast_cancer,
        "diabetes": skd.load_diabetes,
    }[name]
    bunch = loader()
    return torch.as_tensor(bunch.data, dtype=torch.float32), torch.as_tensor(bunch.target)


def _samples(options: dict) -> int:
    """Samples the dataset has with these (validated) options, known without loading it."""
    total = _NUM_SAMPLES[options["dataset"]]
    subset = options.get("max_samples")
    return min(total, subset) if subset else total


@datasets.register(
    "sklearn",
    options=SklearnOptions,
    description="scikit-learn's bundled datasets: digits, iris, wine, breast_cancer, diabetes.",
    samples=_samples,
)
def sklearn_dataset(*, options: SklearnOptions, ctx: DataContext) -> DataSplits:
    x, y = _load(options.dataset)
    if options.max_samples is not None and options.max_samples < len(x):
        # A fixed subset (seed 0), independent of the run's seed; iris is sorted by class,
        # so taking the first rows would drop whole classes.
        keep = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[: options.max_samples].sort().values
        x, y = x[keep], y[keep]
    dims: tuple[int, ...] = (0,)
    if options.as_images:
        x = x.reshape(-1, 1, 8, 8)
        dims = (0, 2, 3)  # one mean/std for the channel: per-pixel stats would blow up the border
    desc = f"sklearn {options.dataset}: {len(x)} samples"
    if options.dataset in _REGRESSION:
        return make_splits(
            TensorData(x, y.float().reshape(-1, 1)),
            ctx,
            "regression",
            standardize_x=options.standardize,
            standardize_y=options.scale_target,
            description=desc,
        )
    if options.binary:
        return make_splits(
            TensorData(x, y.float().reshape(-1, 1)),
            ctx,
            "binary",
            standardize_x=options.standardize,
            description=desc,
        )
    num_classes = _NUM_CLASSES[options.dataset]
    return make_splits(
        TensorData(x, y.long()),
        ctx,
        "classification",
        num_classes=num_classes,
        standardize_x=options.standardize,
        standardize_dims=dims,
        description=desc,
    )


@shape_from_options("sklearn")
def _shape(options: SklearnOptions) -> DataShape:
    """What sklearn_dataset returns, known without loading scikit-learn (tested against it)."""
    features: int | tuple[int, ...] = (1, 8, 8) if options.as_images else _NUM_FEATURES[options.dataset]
    if options.dataset in _REGRESSION:
        return DataShape("regression", features, 1, None)
    if options.binary:
        return DataShape("binary", features, 1, None)
    classes = _NUM_CLASSES[options.dataset]
    return DataShape("classification", features, classes, classes)

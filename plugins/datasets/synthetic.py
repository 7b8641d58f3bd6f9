"""Synthetic datasets, generated from their own seed: `synthetic_regression`, `synthetic_classification`.

The generating seed (options.seed) fixes the data; the train/validation split follows the
run's split seed, so two runs with different seeds see the same samples split differently.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from gradloop.data import DataContext, DataSplits, TensorData, make_splits
from gradloop.fitcheck import DataShape, shape_from_options
from gradloop.registry import datasets


class RegressionOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n_samples: int = Field(1000, ge=2, le=10_000_000)
    n_features: int = Field(10, ge=1, le=100_000)
    n_targets: int = Field(1, ge=1, le=10_000, description="regression targets per sample")
    noise: float = Field(0.1, ge=0.0, description="std of Gaussian noise added to the targets")
    seed: int = Field(0, ge=0, description="seed of the data itself (the split uses the run's seed)")


class ClassificationOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n_samples: int = Field(1000, ge=2, le=10_000_000)
    n_features: int = Field(10, ge=1, le=100_000)
    n_classes: int = Field(2, ge=2, le=100_000)
    noise: float = Field(1.0, ge=0.0, description="std of the Gaussian cloud around each class centre")
    seed: int = Field(0, ge=0, description="seed of the data itself (the split uses the run's seed)")
    binary: bool = Field(False, description="float (N, 1) 0/1 targets for bce_with_logits; needs n_classes 2")

    @model_validator(mode="after")
    def _binary_two_classes(self) -> ClassificationOptions:
        if self.binary and self.n_classes != 2:
            raise ValueError(
                f"binary targets need n_classes 2, got {self.n_classes}; set n_classes: 2 or binary: false"
            )
        return self


@datasets.register(
    "synthetic_regression",
    options=RegressionOptions,
    description="Gaussian features, targets a random linear map of them plus noise.",
)
def synthetic_regression(*, options: RegressionOptions, ctx: DataContext) -> DataSplits:
    g = torch.Generator().manual_seed(options.seed)
    x = torch.randn(options.n_samples, options.n_features, generator=g)
    w = torch.randn(options.n_features, options.n_targets, generator=g) / options.n_features**0.5
    b = torch.randn(options.n_targets, generator=g)
    y = x @ w + b + options.noise * torch.randn(options.n_samples, options.n_targets, generator=g)
    return make_splits(
        TensorData(x, y),
        ctx,
        "regression",
        description=f"synthetic regression: {options.n_samples} x {options.n_features}, {options.n_targets} target(s)",
    )


@datasets.register(
    "synthetic_classification",
    options=ClassificationOptions,
    description="Gaussian clouds around random class centres (int64 labels, or 0/1 floats with binary).",
)
def synthetic_classification(*, options: ClassificationOptions, ctx: DataContext) -> DataSplits:
    g = torch.Generator().manual_seed(options.seed)
    # Centres spread like unit-variance noise in each dimension: separable, but not trivially.
    centres = torch.randn(options.n_classes, options.n_features, generator=g) * 2.0
    y = torch.randint(options.n_classes, (options.n_samples,), generator=g)
    x = centres[y] + options.noise * torch.randn(options.n_samples, options.n_features, generator=g)
    desc = f"synthetic classification: {options.n_samples} x {options.n_features}, {options.n_classes} classes"
    if options.binary:
        return make_splits(TensorData(x, y.float().unsqueeze(1)), ctx, "binary", description=desc)
    return make_splits(TensorData(x, y), ctx, "classification", num_classes=options.n_classes, description=desc)


@shape_from_options("synthetic_regression")
def _regression_shape(options: RegressionOptions) -> DataShape:
    return DataShape("regression", options.n_features, options.n_targets, None)


@shape_from_options("synthetic_classification")
def _classification_shape(options: ClassificationOptions) -> DataShape:
    if options.binary:
        return DataShape("binary", options.n_features, 1, None)
    return DataShape("classification", options.n_features, options.n_classes, options.n_classes)

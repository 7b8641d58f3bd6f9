"""The `torchvision` dataset: MNIST, FashionMNIST, CIFAR-10 or CIFAR-100 from their standard
on-disk files under the data root. Nothing is ever downloaded: when the files are missing the
error names each file expected and the folder it goes in. Validation is the dataset's own test set.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from pydantic import Field
from torch.utils.data import Subset

from gradloop.data import DataContext, DataSplits, resolve_data_path
from gradloop.errors import ConfigError
from gradloop.plugins.datasets._images import ImageTransforms
from gradloop.plugins.datasets._transforms import build_pipeline
from gradloop.registry import datasets

Name = Literal["MNIST", "FashionMNIST", "CIFAR10", "CIFAR100"]

_IDX = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
# The folder under `root` each dataset reads, and the files torchvision checks for there.
EXPECTED: dict[str, tuple[str, tuple[str, ...]]] = {
    "MNIST": ("MNIST/raw", _IDX),
    "FashionMNIST": ("FashionMNIST/raw", _IDX),
    "CIFAR10": (
        "cifar-10-batches-py",
        ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch", "batches.meta"),
    ),
    "CIFAR100": ("cifar-100-python", ("train", "test", "meta")),
}


class TorchvisionDataOptions(ImageTransforms):
    name: Name = Field(description="which dataset")
    path: str = Field(".", min_length=1, description="the folder (under the data root) that holds the dataset's folder")
    max_samples: int | None = Field(None, ge=1, description="use only the first N training and N test images")


def expected_files(name: str, root: Path) -> list[Path]:
    folder, files = EXPECTED[name]
    return [root / folder / f for f in files]


def torchvision_files(options: dict, root: Path) -> list[Path]:
    name = options.get("name")
    return expected_files(name, root / str(options.get("path", "."))) if name in EXPECTED else []


@datasets.register(
    "torchvision",
    options=TorchvisionDataOptions,
    description="MNIST, FashionMNIST, CIFAR10 or CIFAR100 from local files (never downloaded); the test set validates.",
    path_options=("path",),
    files=torchvision_files,
    extra="vision",
)
def torchvision_data(*, options: TorchvisionDataOptions, ctx: DataContext) -> DataSplits:
    import torchvision.datasets as tvd  # the vision extra, checked by config validation

    root = resolve_data_path(ctx, options.path, "data.options.path")
    missing = [p for p in expected_files(options.name, root) if not p.is_file()]
    if missing:
        folder = root / EXPECTED[options.name][0]
        raise ConfigError.single(
            "data.options.name",
            f"{options.name} files are missing: {', '.join(p.name for p in missing)}; "
            f"put them (uncompressed) in {str(folder)!r} — gradloop never downloads data",
        )
    cls = getattr(tvd, options.name)
    train_tf, val_tf = build_pipeline(options.train_transforms), build_pipeline(options.val_transforms)
    try:
        train = cls(str(root), train=True, transform=train_tf, download=False)
        val = cls(str(root), train=False, transform=val_tf, download=False)
    except RuntimeError as exc:  # files present but not what torchvision expects (a checksum, a format)
        raise ConfigError.single(
            "data.options.name", f"{options.name} files in {str(root)!r} cannot be read: {exc}"
        ) from None
    classes = list(train.classes)
    if options.max_samples is not None:
        train = Subset(train, range(min(options.max_samples, len(train))))
        val = Subset(val, range(min(options.max_samples, len(val))))
    sample, _ = val[0]
    return DataSplits(
        train=train,
        val=val,
        task="classification",
        num_features=tuple(int(d) for d in torch.as_tensor(sample).shape),
        num_outputs=len(classes),
        num_classes=len(classes),
        description=f"torchvision {options.name}: {len(train)} training and {len(val)} test images",
        class_names=tuple(str(c) for c in classes),
    )

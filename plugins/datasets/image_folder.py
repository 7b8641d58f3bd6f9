"""The `image_folder` dataset: torchvision's ImageFolder layout, one sub-folder of images per class.

Images are decoded and transformed in the DataLoader's workers (data.num_workers); training and
validation get their own transform lists. Validation is `val_path` (another folder in the same
layout) or, without it, a seeded `data.val_fraction` of the images.
"""

from __future__ import annotations

import copy
from pathlib import Path

from pydantic import Field
from torch.utils.data import Subset

from gradloop.data import DataContext, DataSplits, resolve_data_path, split_indices
from gradloop.errors import ConfigError
from gradloop.plugins.datasets._images import ImageTransforms, image_files
from gradloop.plugins.datasets._transforms import build_pipeline
from gradloop.registry import datasets


class ImageFolderOptions(ImageTransforms):
    path: str = Field(min_length=1, description="folder with one sub-folder of images per class, under the data root")
    val_path: str | None = Field(None, min_length=1, description="a validation folder in the same layout")


def folder_files(options: dict, root: Path) -> list[Path]:
    found = image_files(root / str(options.get("path", "")))
    if options.get("val_path"):
        found += image_files(root / str(options["val_path"]))
    return found


@datasets.register(
    "image_folder",
    options=ImageFolderOptions,
    description="Images in one folder per class (torchvision ImageFolder); transforms from torchvision.transforms.v2.",
    path_options=("path", "val_path"),
    files=folder_files,
    extra="vision",
)
def image_folder(*, options: ImageFolderOptions, ctx: DataContext) -> DataSplits:
    from torchvision.datasets import ImageFolder  # the vision extra, checked by config validation

    root = resolve_data_path(ctx, options.path, "data.options.path")
    train_tf, val_tf = build_pipeline(options.train_transforms), build_pipeline(options.val_transforms)
    try:
        full = ImageFolder(str(root), transform=train_tf)
    except (FileNotFoundError, OSError) as exc:
        raise ConfigError.single(
            "data.options.path",
            f"{options.path!r} is not an image folder ({exc}); give a folder with one sub-folder of images per class",
        ) from None
    if options.val_path is not None:
        val_root = resolve_data_path(ctx, options.val_path, "data.options.val_path")
        val_full = ImageFolder(str(val_root), transform=val_tf)
        if val_full.classes != full.classes:
            raise ConfigError.single(
                "data.options.val_path",
                f"the validation folder's classes {val_full.classes} differ from the training folder's {full.classes}; "
                f"use the same class folders",
            )
        train, val = full, val_full
    else:
        train_idx, val_idx = split_indices(len(full), ctx.val_fraction, ctx.split_seed)
        val_full = copy.copy(full)  # the same file list, scanned once, with the validation transforms
        val_full.transform = val_tf
        train = Subset(full, train_idx.tolist())
        val = Subset(val_full, val_idx.tolist()) if len(val_idx) else None
    sample, _ = val_full[0]
    n = len(full.classes)
    return DataSplits(
        train=train,
        val=val,
        task="classification",
        num_features=tuple(int(d) for d in sample.shape),
        num_outputs=n,
        num_classes=n,
        description=f"image_folder {options.path}: {len(full)} images, {n} classes",
        class_names=tuple(full.classes),
    )

"""What the image datasets share: the train/val transform options and the image file suffixes."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from gradloop.plugins.datasets._transforms import TransformSpec

# torchvision's ImageFolder suffixes, without importing torchvision to list a folder.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class ImageTransforms(BaseModel):
    model_config = ConfigDict(extra="forbid")
    train_transforms: list[TransformSpec] = Field(
        default_factory=list, max_length=32, description="applied to training images, in order"
    )
    val_transforms: list[TransformSpec] = Field(
        default_factory=list, max_length=32, description="applied to validation images, in order"
    )


def image_files(folder: Path) -> list[Path]:
    """Every image under `folder`, at any depth, in name order."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())

"""Image transforms configured as a list of {name, options}, built with torchvision.transforms.v2.

The names and each one's options are pydantic models, so a typo or a bad value is reported
with the rest of the config, before torchvision is imported. Every pipeline starts by turning
the decoded image into a float tensor in [0, 1] (ToImage, ToDtype(scale=True)); the listed
transforms follow in order. Random transforms draw from torch's RNG, which the DataLoader's
workers seed per sample (gradloop.batching), so a run is reproducible.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

Size = int | tuple[int, int]


class _Opts(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ResizeOpts(_Opts):
    size: Size = Field(description="shorter side (an int) or (height, width)")
    antialias: bool = True


class CropOpts(_Opts):
    size: Size


class RandomCropOpts(_Opts):
    size: Size
    padding: int | None = Field(None, ge=0, le=1024)


class RandomResizedCropOpts(_Opts):
    size: Size
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    antialias: bool = True


class FlipOpts(_Opts):
    p: float = Field(0.5, ge=0.0, le=1.0)


class RotationOpts(_Opts):
    degrees: float = Field(ge=0.0, le=360.0)


class ColorJitterOpts(_Opts):
    brightness: float = Field(0.0, ge=0.0)
    contrast: float = Field(0.0, ge=0.0)
    saturation: float = Field(0.0, ge=0.0)
    hue: float = Field(0.0, ge=0.0, le=0.5)


class GrayscaleOpts(_Opts):
    num_output_channels: Literal[1, 3] = 1


class NormalizeOpts(_Opts):
    mean: list[float] = Field(min_length=1, max_length=4)
    std: list[float] = Field(min_length=1, max_length=4)

    @model_validator(mode="after")
    def _same_length(self) -> NormalizeOpts:
        if len(self.mean) != len(self.std):
            raise ValueError(f"mean has {len(self.mean)} values but std has {len(self.std)}; give one per channel")
        if any(s <= 0 for s in self.std):
            raise ValueError("std values must be above 0")
        return self


class RandomErasingOpts(_Opts):
    p: float = Field(0.5, ge=0.0, le=1.0)


# name -> (torchvision.transforms.v2 class, options model)
TRANSFORMS: dict[str, tuple[str, type[_Opts]]] = {
    "resize": ("Resize", ResizeOpts),
    "center_crop": ("CenterCrop", CropOpts),
    "random_crop": ("RandomCrop", RandomCropOpts),
    "random_resized_crop": ("RandomResizedCrop", RandomResizedCropOpts),
    "horizontal_flip": ("RandomHorizontalFlip", FlipOpts),
    "vertical_flip": ("RandomVerticalFlip", FlipOpts),
    "rotation": ("RandomRotation", RotationOpts),
    "color_jitter": ("ColorJitter", ColorJitterOpts),
    "grayscale": ("Grayscale", GrayscaleOpts),
    "normalize": ("Normalize", NormalizeOpts),
    "random_erasing": ("RandomErasing", RandomErasingOpts),
}

TransformName = Literal[
    "resize",
    "center_crop",
    "random_crop",
    "random_resized_crop",
    "horizontal_flip",
    "vertical_flip",
    "rotation",
    "color_jitter",
    "grayscale",
    "normalize",
    "random_erasing",
]


class TransformSpec(BaseModel):
    """One step of a pipeline: a name from TRANSFORMS and that transform's options."""

    model_config = ConfigDict(extra="forbid")
    name: TransformName
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _options_fit(self) -> TransformSpec:
        model = TRANSFORMS[self.name][1]
        try:
            self.options = model.model_validate(self.options).model_dump()
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(map(str, first["loc"]))
            raise ValueError(
                f"{self.name} options: {where + ': ' if where else ''}{first['msg']} "
                f"(allowed options: {', '.join(model.model_fields)})"
            ) from None
        return self


def build_pipeline(specs: list[TransformSpec]) -> Any:
    """torchvision.transforms.v2.Compose: to a float tensor in [0, 1], then `specs` in order."""
    # Here, not at the top: the API process reads this plugin's options without torch or the vision extra.
    import torch
    from torchvision.transforms import v2

    steps: list[Any] = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    for spec in specs:
        cls = getattr(v2, TRANSFORMS[spec.name][0])
        steps.append(cls(**spec.options))
    return v2.Compose(steps)

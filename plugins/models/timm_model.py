"""The `timm` model: `timm.create_model` by name, randomly initialised or from local weights
(weights_path under the data root); `pretrained` is always off, so nothing is fetched."""

from __future__ import annotations

import importlib.util
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from gradloop.plugins.models._weights import load_weights
from gradloop.registry import models


class TimmOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(
        min_length=1, max_length=200, description="a timm architecture, e.g. resnet18 or vit_tiny_patch16_224"
    )
    num_classes: int = Field(
        ge=1, le=1_000_000, description="outputs of the classifier; must equal the dataset's classes"
    )
    in_chans: int = Field(3, ge=1, le=64, description="image channels")
    weights_path: str | None = Field(
        None, min_length=1, description="a state dict (.pt/.pth/.safetensors) under the data root"
    )
    kwargs: dict[str, Any] = Field(
        default_factory=dict, description="more arguments for the architecture (e.g. img_size, depth, embed_dim)"
    )

    @field_validator("name")
    @classmethod
    def _known_architecture(cls, v: str) -> str:
        if importlib.util.find_spec("timm") is None:
            return v  # the missing extra is reported on model.name by validation
        import timm  # the vision extra: only to check the name

        if not timm.is_model(v):
            close = timm.list_models(f"*{v.split('_')[0]}*")[:3]
            raise ValueError(f"timm has no model {v!r}" + (f"; e.g. {', '.join(close)}" if close else ""))
        return v

    @field_validator("kwargs")
    @classmethod
    def _no_hub(cls, v: dict[str, Any]) -> dict[str, Any]:
        for key in ("pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path"):
            if key in v:
                raise ValueError(f"{key!r} is not taken here; give weights_path (a local file under the data root)")
        return v


@models.register(
    "timm",
    options=TimmOptions,
    description="A timm architecture by name (timm.create_model, pretrained off), random init or local weights_path.",
    out_option="num_classes",
    path_options=("weights_path",),
    extra="vision",
)
def build_timm_model(*, options: TimmOptions) -> nn.Module:
    import timm  # the vision extra, checked by config validation

    model = timm.create_model(
        options.name, pretrained=False, num_classes=options.num_classes, in_chans=options.in_chans, **options.kwargs
    )
    return load_weights(model, options.weights_path)

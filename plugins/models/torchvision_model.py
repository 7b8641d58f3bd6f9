"""The `torchvision` model: any `torchvision.models` builder by name, randomly initialised or
from local weights (weights_path under the data root); nothing is fetched from a hub."""

from __future__ import annotations

import difflib
import importlib.util
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from gradloop.plugins.models._weights import load_weights
from gradloop.registry import models


class TorchvisionModelOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=100, description="a torchvision.models builder, e.g. resnet18")
    num_classes: int = Field(
        ge=1, le=1_000_000, description="outputs of the classifier; must equal the dataset's classes"
    )
    weights_path: str | None = Field(
        None, min_length=1, description="a state dict (.pt/.pth/.safetensors) under the data root"
    )
    kwargs: dict[str, Any] = Field(default_factory=dict, description="more arguments for the builder")

    @field_validator("name")
    @classmethod
    def _known_builder(cls, v: str) -> str:
        if importlib.util.find_spec("torchvision") is None:
            return v  # the missing extra is reported on model.name by validation
        from torchvision.models import list_models  # the vision extra: only to check the name

        known = list_models()
        if v not in known:
            close = difflib.get_close_matches(v, known, n=3)
            raise ValueError(
                f"torchvision has no model {v!r}" + (f"; did you mean {', '.join(close)}?" if close else "")
            )
        return v

    @field_validator("kwargs")
    @classmethod
    def _no_weights(cls, v: dict[str, Any]) -> dict[str, Any]:
        for key in ("weights", "pretrained", "progress"):
            if key in v:
                raise ValueError(f"{key!r} would fetch weights from a hub; give weights_path (a local file) instead")
        return v


@models.register(
    "torchvision",
    options=TorchvisionModelOptions,
    description="A torchvision.models builder by name (resnet18, vit_b_16, ...), random init or local weights_path.",
    out_option="num_classes",
    path_options=("weights_path",),
    extra="vision",
)
def build_torchvision_model(*, options: TorchvisionModelOptions) -> nn.Module:
    from torchvision.models import get_model  # the vision extra, checked by config validation

    model = get_model(options.name, weights=None, num_classes=options.num_classes, **options.kwargs)
    return load_weights(model, options.weights_path)

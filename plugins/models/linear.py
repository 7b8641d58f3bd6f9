"""The `linear` model: one affine map from features to outputs (parameters layers.0.*)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from gradloop.plugins.models._layers import FeedForward
from gradloop.registry import models


class LinearOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    in_features: int = Field(ge=1, le=10_000_000, description="input features; must equal the dataset's")
    out_features: int = Field(ge=1, le=1_000_000, description="outputs: classes, 1 for binary, or regression targets")
    bias: bool = Field(True, description="learn an additive bias")


@models.register(
    "linear",
    options=LinearOptions,
    description="One linear layer (logistic/linear regression); parameters layers.0.weight, layers.0.bias.",
    in_option="in_features",
    out_option="out_features",
)
def build_linear(*, options: LinearOptions) -> nn.Module:
    # Same module as mlp with no hidden layers, so names and param_groups patterns carry over.
    return FeedForward(options.in_features, [], options.out_features, bias=options.bias)

"""The `mlp` model: a multi-layer perceptron on flat features."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from gradloop.plugins.models._layers import Activation, FeedForward, Norm
from gradloop.registry import models


class MLPOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    in_features: int = Field(ge=1, le=10_000_000, description="input features; must equal the dataset's")
    hidden: list[Annotated[int, Field(ge=1, le=1_000_000)]] = Field(
        default_factory=lambda: [128], max_length=64, description="sizes of the hidden layers, in order"
    )
    out_features: int = Field(ge=1, le=1_000_000, description="outputs: classes, 1 for binary, or regression targets")
    activation: Activation = Field("relu", description="non-linearity after each hidden layer")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout probability after each hidden activation")
    norm: Norm = Field("none", description="normalisation after each hidden linear layer (norms.i)")


@models.register(
    "mlp",
    options=MLPOptions,
    description="Multi-layer perceptron; Linear layers layers.0..layers.N (the last is the output), norms in norms.i.",
    in_option="in_features",
    out_option="out_features",
)
def build_mlp(*, options: MLPOptions) -> nn.Module:
    return FeedForward(
        options.in_features,
        options.hidden,
        options.out_features,
        act=options.activation,
        dropout=options.dropout,
        norm=options.norm,
    )

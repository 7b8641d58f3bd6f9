"""The `cnn` model: a small conv net for square images (N, C, H, W), e.g. digits as 8x8.

Compatibility: its `in_option` is the tuple ("in_channels", "image_size", "image_size"),
which gradloop.build compares position by position with the dataset's sample shape (C, H, W).
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from gradloop.plugins.models._layers import Activation, activation
from gradloop.registry import models


class CNNOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    in_channels: int = Field(1, ge=1, le=4096, description="image channels; must equal the dataset's C")
    image_size: int = Field(ge=1, le=16384, description="side of the square input images (H = W)")
    channels: list[Annotated[int, Field(ge=1, le=4096)]] = Field(
        default_factory=lambda: [16, 32],
        min_length=1,
        max_length=16,
        description="output channels of each conv block; each block halves H and W",
    )
    out_features: int = Field(ge=1, le=1_000_000, description="outputs: classes, 1 for binary, or regression targets")
    kernel_size: int = Field(3, ge=1, le=31, description="conv kernel side (odd, padded to keep the size)")
    activation: Activation = "relu"
    norm: Literal["none", "batch"] = Field("none", description="BatchNorm2d after each conv (norms.i)")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout before the head")

    @model_validator(mode="after")
    def _fits(self) -> CNNOptions:
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd so convs keep the image size, got {self.kernel_size}")
        if self.image_size >> len(self.channels) < 1:
            raise ValueError(
                f"{len(self.channels)} conv blocks halve an image of side {self.image_size} below 1 pixel; "
                f"use at most {self.image_size.bit_length() - 1} entries in channels or larger images"
            )
        return self


class SmallCNN(nn.Module):
    """conv -> [norm] -> activation -> 2x2 max-pool per block, then `head` (a Linear)."""

    def __init__(self, o: CNNOptions):
        super().__init__()
        sizes = [o.in_channels, *o.channels]
        self.convs = nn.ModuleList(
            nn.Conv2d(a, b, o.kernel_size, padding=o.kernel_size // 2) for a, b in zip(sizes[:-1], sizes[1:])
        )
        self.norms = nn.ModuleList(nn.BatchNorm2d(c) for c in o.channels) if o.norm == "batch" else None
        self.activation = activation(o.activation)
        self.pool = nn.MaxPool2d(2)
        self.dropout = nn.Dropout(o.dropout) if o.dropout > 0 else None
        side = o.image_size >> len(o.channels)
        self.head = nn.Linear(o.channels[-1] * side * side, o.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if self.norms is not None:
                x = self.norms[i](x)
            x = self.pool(self.activation(x))
        x = x.flatten(1)
        if self.dropout is not None:
            x = self.dropout(x)
        return self.head(x)


@models.register(
    "cnn",
    options=CNNOptions,
    description="Small conv net for square images (N, C, H, W); parameters convs.i.*, norms.i.*, head.*.",
    in_option=("in_channels", "image_size", "image_size"),
    out_option="out_features",
)
def build_cnn(*, options: CNNOptions) -> nn.Module:
    return SmallCNN(options)

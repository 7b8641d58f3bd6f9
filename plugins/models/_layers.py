"""Pieces the built-in models share: activation choice and the feed-forward stack."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

Activation = Literal["relu", "gelu", "tanh", "silu"]
Norm = Literal["none", "batch", "layer"]

_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}


def activation(name: Activation) -> nn.Module:
    return _ACTIVATIONS[name]()


class FeedForward(nn.Module):
    """Linear layers `layers.0 .. layers.N`; the last one produces the outputs.

    Hidden layers run linear -> norm -> activation -> dropout. Norms live in `norms.i` (one
    per hidden layer) so that parameter names stay stable when norm or dropout are switched:
    `layers.0.weight` is always the first Linear, whatever else is configured.
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int],
        out_features: int,
        *,
        act: Activation = "relu",
        dropout: float = 0.0,
        norm: Norm = "none",
        bias: bool = True,
    ):
        super().__init__()
        sizes = [in_features, *hidden, out_features]
        self.layers = nn.ModuleList(nn.Linear(a, b, bias=bias) for a, b in zip(sizes[:-1], sizes[1:]))
        self.norms: nn.ModuleList | None
        if norm == "batch":
            self.norms = nn.ModuleList(nn.BatchNorm1d(h) for h in hidden)
        elif norm == "layer":
            self.norms = nn.ModuleList(nn.LayerNorm(h) for h in hidden)
        else:
            self.norms = None
        self.activation: nn.Module = activation(act) if hidden else nn.Identity()  # (no state either way)
        self.dropout = nn.Dropout(dropout) if hidden and dropout > 0 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        *hidden, last = self.layers
        for i, layer in enumerate(hidden):
            x = layer(x)
            if self.norms is not None:
                x = self.norms[i](x)
            x = self.activation(x)
            if self.dropout is not None:
                x = self.dropout(x)
        return last(x)

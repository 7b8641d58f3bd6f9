"""Loading a model's weights from a local file (never from a hub): a .safetensors file, or a
torch state dict read with weights_only=True (no pickled code runs). On the meta device (when
the HTTP service counts parameters) nothing is read."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from gradloop.errors import ConfigError


def load_weights(model: nn.Module, path: str | None, field: str = "model.options.weights_path") -> nn.Module:
    if path is None or torch.get_default_device().type == "meta":
        return model
    file = Path(path)
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file  # installed with the vision and text extras

            state = load_file(str(file))
        else:
            state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError.single(
            field, f"{file.name!r} is not a readable state dict ({type(exc).__name__}: {exc})"
        ) from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # a gradloop checkpoint
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()
        raise ConfigError.single(
            field,
            f"{file.name!r} does not fit this model ({' '.join(first[:3])[:300]}); "
            f"use weights saved from the same architecture and options",
        ) from None
    return model

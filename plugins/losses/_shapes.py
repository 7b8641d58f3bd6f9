"""Shape checks the built-in losses share: a mismatch must fail loudly, never broadcast."""

from __future__ import annotations

import torch

from gradloop.errors import TrainingError


def same_shape(loss: str, output: torch.Tensor, target: torch.Tensor) -> None:
    # mse on outputs (N,) and targets (N, 1) would silently broadcast to (N, N).
    if output.shape != target.shape:
        raise TrainingError(
            f"{loss} got model outputs of shape {tuple(output.shape)} and targets of shape "
            f"{tuple(target.shape)}; make the model output one value per target, shape {tuple(target.shape)}"
        )

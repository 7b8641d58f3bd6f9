"""What a model returned, read one way everywhere: the trainer's loss, validation metrics, the
fit check before training, and the benchmarks all call `logits_of`.

A model may return a tensor, a mapping with a "logits" entry (a dict, or a Hugging Face
`ModelOutput`, which is an OrderedDict), or a tuple whose first item is the logits (what
`return_dict=False` gives). Targets at IGNORE_INDEX are padding: losses and metrics skip them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from gradloop.errors import TrainingError

IGNORE_INDEX = -100  # torch's and Hugging Face's default for "no target here"


def logits_of(output: Any) -> torch.Tensor:
    """The prediction tensor inside a model's output."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping):
        logits = output.get("logits")
        if isinstance(logits, torch.Tensor):
            return logits
        raise TrainingError(
            f"the model returned a mapping with keys {sorted(map(str, output))} but no 'logits' tensor; "
            "return a tensor or a mapping with 'logits'"
        )
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TrainingError(
        f"the model returned a {type(output).__name__}; "
        "return a tensor, a mapping with 'logits', or a tuple starting with them"
    )


__all__ = ["IGNORE_INDEX", "logits_of"]

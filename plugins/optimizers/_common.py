"""Option fields shared by the built-in optimizer plugins' options models.

Each plugin still declares every option it takes in its own model; these are only the
constrained types, so that "lr > 0" or "betas in [0, 1)" reads the same everywhere.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

LearningRate = Annotated[float, Field(gt=0, description="learning rate")]
Beta = Annotated[float, Field(ge=0, lt=1)]
Betas = Annotated[
    tuple[Beta, Beta], Field(description="coefficients of the running averages (beta1, beta2), each in [0, 1)")
]
Eps = Annotated[float, Field(gt=0, description="term added to the denominator for numerical stability")]
WeightDecay = Annotated[
    float, Field(ge=0, description="weight decay (biases and 1-D parameters get 0 unless no_weight_decay is false)")
]
Momentum = Annotated[float, Field(ge=0, lt=1, description="momentum factor, in [0, 1)")]
Foreach = Annotated[bool | None, Field(description="multi-tensor implementation (None: torch picks)")]
Fused = Annotated[bool | None, Field(description="fused kernel (None: torch picks); not together with foreach")]


class OptimizerOptions(BaseModel):
    """Base of built-in optimizer options: unknown option names are errors, and an optimizer
    that offers both implementations (foreach and fused) may not be asked for both."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="after")
    def _one_implementation(self) -> OptimizerOptions:
        if getattr(self, "foreach", None) and getattr(self, "fused", None):  # torch refuses both
            raise ValueError("foreach and fused cannot both be true; pick one (or leave both unset)")
        return self

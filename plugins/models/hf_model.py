"""The `hf` model: a Hugging Face transformers model for sequence classification, causal
language modelling or token classification, built from a config dict (random init, e.g. a
2-layer BERT) or from a local folder saved with `save_pretrained`. Nothing is fetched from a
hub (local_files_only) and `trust_remote_code` is always refused.

The model takes the batch's inputs as keyword arguments (input_ids, attention_mask, ...) or a
tensor of token ids, and returns its ModelOutput; the loop reads the logits from it with
gradloop.outputs.logits_of, like any other model's output.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from gradloop.errors import ConfigError
from gradloop.registry import models

Task = Literal["sequence_classification", "causal_lm", "token_classification"]
_AUTO = {
    "sequence_classification": "AutoModelForSequenceClassification",
    "causal_lm": "AutoModelForCausalLM",
    "token_classification": "AutoModelForTokenClassification",
}


class HFModelOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    task: Task = Field("sequence_classification", description="which AutoModelFor... class builds it")
    config: dict[str, Any] | None = Field(
        None, description="a transformers config as a dict, with model_type (e.g. bert) and its sizes: random init"
    )
    path: str | None = Field(None, min_length=1, description="a folder saved with save_pretrained, under the data root")
    num_labels: int | None = Field(None, ge=1, le=1_000_000, description="classes (classification tasks)")

    @model_validator(mode="before")
    @classmethod
    def _no_remote_code(cls, data: Any) -> Any:
        config = data.get("config") if isinstance(data, Mapping) else None
        if (isinstance(data, Mapping) and "trust_remote_code" in data) or (
            isinstance(config, Mapping) and "trust_remote_code" in config
        ):
            raise ValueError("trust_remote_code is always refused: gradloop runs no code that comes with a model")
        if isinstance(config, Mapping) and "auto_map" in config:
            raise ValueError("config.auto_map names remote code, which is always refused; use a built-in model_type")
        return data

    @model_validator(mode="after")
    def _one_source(self) -> HFModelOptions:
        if (self.config is None) == (self.path is None):
            raise ValueError("give exactly one of config (a dict with model_type) or path (a saved model folder)")
        if self.config is not None and not isinstance(self.config.get("model_type"), str):
            raise ValueError("config needs a model_type, e.g. bert, gpt2, distilbert")
        if self.task != "causal_lm" and self.num_labels is None:
            raise ValueError(f"a {self.task} model needs num_labels (the dataset's classes)")
        return self


class HFModel(nn.Module):
    """A transformers model that takes a mapping of inputs (or token ids) and returns its output."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Any) -> Any:
        if isinstance(x, Mapping):
            return self.model(**x, return_dict=True)
        return self.model(input_ids=x, return_dict=True)


@models.register(
    "hf",
    options=HFModelOptions,
    description="transformers AutoModelFor... (sequence/token classification, causal LM): a config dict or folder.",
    path_options=("path",),
    extra="text",
)
def build_hf_model(*, options: HFModelOptions) -> nn.Module:
    import transformers  # the text extra, checked by config validation

    auto = getattr(transformers, _AUTO[options.task])
    extra = {"num_labels": options.num_labels} if options.num_labels is not None else {}
    path = str(options.path)  # used only without a config: the options give exactly one of the two
    try:
        if options.config is not None:
            cfg = dict(options.config)
            config = transformers.AutoConfig.for_model(cfg.pop("model_type"), **cfg, **extra)
            return HFModel(auto.from_config(config, trust_remote_code=False))
        if torch.get_default_device().type == "meta":  # counting parameters: the shapes, not the weights
            config = transformers.AutoConfig.from_pretrained(
                path, local_files_only=True, trust_remote_code=False, **extra
            )
            return HFModel(auto.from_config(config, trust_remote_code=False))
        return HFModel(auto.from_pretrained(path, local_files_only=True, trust_remote_code=False, **extra))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        field = "model.options.config" if options.config is not None else "model.options.path"
        raise ConfigError.single(
            field, f"transformers cannot build this model: {str(exc).splitlines()[0][:300]}"
        ) from None

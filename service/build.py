"""Building a run's model, data and loss from its config, and checking they fit together.

This is the one place that decides between a registered model and a model named by import
path (`package.module:fn`, called as `fn(**options)`); the HTTP service never gets here with
an import path because config validation refuses them there.

check_compatible() runs after the data and model are built and before any training step:
a mismatch (features vs in_features, classes vs out_features, a loss for another task) is a
ConfigError naming both numbers and the config key to change.

Shape-valued capabilities: a model plugin's `in_option` is either one option name, whose value
must equal the dataset's flat `num_features`, or a tuple of option names, one per axis of the
dataset's per-sample shape (the cnn says ("in_channels", "image_size", "image_size") for
(C, H, W)). `out_option` names the option that must equal `num_outputs`.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import ValidationError
from torch import nn
from torch.utils.data import default_collate

from gradloop import registry
from gradloop.batching import to_device
from gradloop.config import DataConfig, ModelConfig, PluginSpec, RunConfig, is_import_path
from gradloop.data import DataContext, DataSplits, TensorData
from gradloop.errors import ConfigError, FieldError, TrainingError
from gradloop.import_paths import resolve_import_path
from gradloop.outputs import logits_of
from gradloop.plugin_files import default_data_root, resolve_model_paths

_TASK_WORDS = {"classification": "a classification", "regression": "a regression", "binary": "a binary"}


# -- building -----------------------------------------------------------------------------


def build_model(spec: ModelConfig, data_root: str | None = None) -> nn.Module:
    """A registered model by name, or `package.module:fn` called as fn(**options). Path options
    (weights, a model folder) resolve under the data root, like a dataset's."""
    if not is_import_path(spec.name):
        return registry.models.build(spec.name, resolve_model_paths(spec.name, spec.options, data_root))
    factory = resolve_import_path(spec.name)
    try:
        model = factory(**spec.options)
    except TypeError as exc:
        # Most often the options do not match the factory's parameters.
        raise ConfigError.single(
            "model.options",
            f"{spec.name} cannot be called with these options: {exc}; make model.options match its parameters",
        ) from None
    if not isinstance(model, nn.Module):
        raise ConfigError.single(
            "model.name",
            f"{spec.name} returned a {type(model).__name__}, not a torch.nn.Module; make it return the model",
        )
    return model


def data_context(cfg: DataConfig, seed: int) -> DataContext:
    return DataContext(
        root=default_data_root(cfg.root),
        val_fraction=cfg.val_fraction,
        split_seed=cfg.split_seed if cfg.split_seed is not None else seed,
    )


def build_data(cfg: DataConfig, seed: int) -> DataSplits:
    """Build the dataset plugin; the split uses data.split_seed, else the run's seed."""
    return registry.datasets.build(cfg.name, cfg.options, ctx=data_context(cfg, seed))


def build_loss(spec: PluginSpec) -> nn.Module:
    return registry.losses.build(spec.name, spec.options)


# -- checking -----------------------------------------------------------------------------


def check_compatible(cfg: RunConfig, splits: DataSplits, model: nn.Module | None = None) -> None:
    """Raise ConfigError listing every way the data, model and loss disagree.

    With `model` given, one forward pass on two training samples (eval mode, no grad, then the
    previous mode restored) also catches what options cannot show, e.g. an import-path model
    whose output shape is wrong.
    """
    errors: list[FieldError] = []
    errors += model_vs_data(cfg.model, splits)
    errors += loss_vs_data(cfg.loss, splits)
    if model is not None and not errors:
        errors += _trial_forward(cfg, splits, model)
    if errors:
        raise ConfigError(errors)


def model_vs_data(spec: ModelConfig, splits: DataSplits | Any) -> list[FieldError]:
    """The model's input and output options against the data's shape (a DataSplits or fitcheck.DataShape)."""
    if is_import_path(spec.name) or spec.name not in registry.models:
        return []
    plugin = registry.models.get(spec.name)
    try:
        opts = plugin.parse_options(spec.options)
    except ValidationError as exc:
        return [FieldError(f"model.options.{'.'.join(map(str, e['loc']))}", e["msg"]) for e in exc.errors()]
    errors: list[FieldError] = []
    in_option = plugin.capabilities.get("in_option")
    if isinstance(in_option, str):
        errors += _flat_input(spec.name, in_option, getattr(opts, in_option), splits.num_features)
    elif isinstance(in_option, (tuple, list)):
        errors += _shaped_input(spec.name, tuple(in_option), opts, splits.num_features)
    out_option = plugin.capabilities.get("out_option")
    if out_option is not None:
        want = getattr(opts, out_option)
        if want != splits.num_outputs:
            errors.append(
                FieldError(
                    f"model.options.{out_option}",
                    f"{_outputs_phrase(splits)} but model.options.{out_option} is {want}; set "
                    f"model.options.{out_option}: {splits.num_outputs}",
                )
            )
    return errors


def _flat_input(model: str, option: str, value: int, data_features: int | tuple[int, ...]) -> list[FieldError]:
    key = f"model.options.{option}"
    if isinstance(data_features, tuple):
        return [
            FieldError(
                key,
                f"data samples have shape {data_features} but {model} takes flat vectors of {key}={value}; use a "
                "model for images (e.g. cnn) or flat data (e.g. data.options.as_images: false)",
            )
        ]
    if value != data_features:
        return [FieldError(key, f"data has {data_features} features but {key} is {value}; set {key}: {data_features}")]
    return []


def _shaped_input(
    model: str, options: tuple[str, ...], opts: Any, data_features: int | tuple[int, ...]
) -> list[FieldError]:
    expected = tuple(getattr(opts, o) for o in options)
    names = ", ".join(options)
    if not isinstance(data_features, tuple) or len(data_features) != len(options):
        shown = (
            f"{data_features} flat features" if isinstance(data_features, int) else f"samples of shape {data_features}"
        )
        return [
            FieldError(
                f"model.options.{options[0]}",
                f"data has {shown} but {model} takes samples of shape ({names}) = {expected}; use a model for this "
                f"data (e.g. mlp for flat features) or data shaped {len(options)}-D (e.g. data.options.as_images: "
                "true)",
            )
        ]
    needed: dict[str, set[int]] = {}
    for option, size in zip(options, data_features):
        needed.setdefault(option, set()).add(size)
    errors = []
    for option, sizes in needed.items():
        key = f"model.options.{option}"
        if len(sizes) > 1:
            errors.append(
                FieldError(
                    key,
                    f"data samples have shape {data_features}, but {key} sets {len(sizes)} of those axes "
                    f"({sorted(sizes)}), which must then be equal; reshape the data",
                )
            )
        elif getattr(opts, option) not in sizes:
            (size,) = sizes
            errors.append(
                FieldError(
                    key,
                    f"data samples have shape {data_features} but the model expects ({names}) = {expected}; set "
                    f"{key}: {size}",
                )
            )
    return errors


def _outputs_phrase(splits: DataSplits | Any) -> str:
    if splits.task == "classification":
        return f"data has {splits.num_classes} classes"
    if splits.task == "binary":
        return "data is binary (one logit per sample, num_outputs 1)"
    return f"data has {splits.num_outputs} regression target{'s' if splits.num_outputs != 1 else ''}"


def loss_vs_data(spec: PluginSpec, splits: DataSplits | Any) -> list[FieldError]:
    """The loss's task and class weights against the data's."""
    if spec.name not in registry.losses:
        return []
    plugin = registry.losses.get(spec.name)
    task = plugin.capabilities.get("task")
    errors: list[FieldError] = []
    if task is not None and task != splits.task:
        fitting = [p.name for p in registry.losses if p.capabilities.get("task") == splits.task]
        errors.append(
            FieldError(
                "loss.name",
                f"{spec.name} is {_TASK_WORDS.get(task, task)} loss but the data is {_TASK_WORDS[splits.task]} "
                f"dataset; set loss.name to one of: {', '.join(fitting) or '(none registered)'}",
            )
        )
    weights = spec.options.get("class_weights")
    if weights and splits.task == "classification" and len(weights) != splits.num_classes:
        errors.append(
            FieldError(
                "loss.options.class_weights",
                f"data has {splits.num_classes} classes but loss.options.class_weights has {len(weights)} weights; "
                f"give exactly {splits.num_classes}",
            )
        )
    return errors


def _trial_forward(cfg: RunConfig, splits: DataSplits, model: nn.Module) -> list[FieldError]:
    batch = _first_samples(splits.train, 2)
    if batch is None:
        return []
    x, y = batch
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(to_device(x, device))
    except Exception as exc:
        return [
            FieldError(
                "model.name",
                f"{cfg.model.name} fails on a batch of data samples {_input_phrase(x)}: {type(exc).__name__}: {exc}; "
                f"make the model take this input",
            )
        ]
    finally:
        model.train(was_training)
    try:
        logits = logits_of(out)
    except TrainingError as exc:
        return [FieldError("model.name", f"{cfg.model.name}: {exc}")]
    # Per sample (N, outputs), or per token (N, T, outputs) against targets (N, T).
    want = (len(y), *tuple(y.shape[1:-1] if splits.task != "classification" else y.shape[1:]), splits.num_outputs)
    if tuple(logits.shape) != want:
        return [
            FieldError(
                "model.name",
                f"{cfg.model.name} returns {tuple(logits.shape)} for a batch of {len(y)}, but "
                f"{_outputs_phrase(splits)}, so it must return {want}; "
                f"make its output {want}",
            )
        ]
    try:
        loss = build_loss(cfg.loss).to(device)
        loss(logits, y.to(device))
    except Exception as exc:
        return [
            FieldError(
                "loss.name",
                f"{cfg.loss.name} fails on the model's output {tuple(logits.shape)} and targets {tuple(y.shape)} of "
                f"{y.dtype}: {type(exc).__name__}: {exc}",
            )
        ]
    return []


def _input_phrase(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        return f"of shape {tuple(x.shape[1:])}"
    if isinstance(x, dict):
        return "with " + ", ".join(f"{k} {tuple(v.shape[1:])}" for k, v in x.items() if isinstance(v, torch.Tensor))
    return f"of type {type(x).__name__}"


def _first_samples(data: Any, n: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    if isinstance(data, TensorData):
        return (data.x[:n], data.y[:n]) if len(data) else None
    try:
        count = min(n, len(data))
        if count == 0:
            return None
        x, y = default_collate([data[i] for i in range(count)])
    except Exception:
        return None  # an unusual Dataset: leave it to the trainer's first step
    return x, y

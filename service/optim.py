"""Building an optimizer: validated options + param groups (gradloop.params) + the plugin's factory.

`build_optimizer(name, params, **options)` is the public Python entry point; the trainer uses
`build_optimizer_from_config(cfg.optimizer, model)`. Both validate every option -- the
optimizer-wide ones and each group's or rule's overrides -- with the plugin's own options
model before anything is built, and report problems as ConfigError entries that name the
option, the value and what is allowed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from pydantic import BaseModel, ValidationError

from gradloop import registry
from gradloop.errors import ConfigError, FieldError
from gradloop.params import build_param_groups, collect

if TYPE_CHECKING:
    from torch import nn

    from gradloop.config import OptimizerConfig, ParamGroupRule


def build_optimizer(
    name: str,
    params: Any,
    *,
    param_groups: Sequence[Mapping[str, Any] | ParamGroupRule] | None = None,
    no_weight_decay: bool | None = None,
    **options: Any,
) -> torch.optim.Optimizer:
    """An optimizer of the registered plugin `name` over `params`.

    params: a tensor, tensors, an nn.Module, named parameters, a dict name->tensor, or
    param-group dicts (see gradloop.params). param_groups: rules `{"match": glob, **overrides}`.
    no_weight_decay: None puts biases and 1-D parameters in weight_decay=0 groups wherever the
    effective weight_decay is > 0; False keeps them where they are.
    """
    return _build(name, params, options, param_groups or (), no_weight_decay, prefix="", source=f"optimizer {name!r}")


def build_optimizer_from_config(cfg: OptimizerConfig, model: nn.Module) -> torch.optim.Optimizer:
    """The optimizer a run config asks for, over the model's trainable parameters."""
    return _build(
        cfg.name, model, dict(cfg.options), cfg.param_groups, cfg.no_weight_decay, prefix="optimizer.", source=None
    )


def _build(
    name: str,
    params: Any,
    options: Mapping[str, Any],
    rules: Sequence[Any],
    no_weight_decay: bool | None,
    *,
    prefix: str,
    source: str | None,
) -> torch.optim.Optimizer:
    plugin = registry.optimizers.get(name)
    opts_path = f"{prefix}options" if prefix else ""
    parsed = _validate(plugin, dict(options), {}, opts_path, source)

    sources = collect(params)
    rule_dicts = [dict(r) if isinstance(r, Mapping) else r.model_dump() for r in rules]
    errors: list[FieldError] = []
    for src in sources:
        src.options = _overrides(plugin, options, src.options, src.label, errors)
    for i, rule in enumerate(rule_dicts):
        overrides = {k: v for k, v in rule.items() if k != "match"}
        rule_dicts[i] = {
            "match": rule.get("match"),
            **_overrides(plugin, options, overrides, f"{prefix}param_groups.{i}", errors),
        }
    if errors:
        raise ConfigError(errors, source)

    groups = build_param_groups(
        sources,
        rules=rule_dicts,
        no_weight_decay=no_weight_decay,
        weight_decay=float(getattr(parsed, "weight_decay", 0.0) or 0.0),
    )
    return plugin.factory(groups, options=parsed)


def _validate(
    plugin: registry.Plugin, base: dict[str, Any], overrides: Mapping[str, Any], path: str, source: str | None
) -> BaseModel:
    try:
        return plugin.parse_options({**base, **overrides})
    except ValidationError as exc:
        raise ConfigError(_field_errors(exc, plugin, path), source) from None


def _overrides(
    plugin: registry.Plugin, base: Mapping[str, Any], overrides: Mapping[str, Any], path: str, errors: list[FieldError]
) -> dict[str, Any]:
    """A group's or rule's overrides, validated together with the optimizer-wide options and
    returned as validated values (e.g. betas as a tuple), so torch sees what the model allows."""
    if not overrides:
        return {}
    try:
        parsed = plugin.parse_options({**base, **overrides})
    except ValidationError as exc:
        errors.extend(_field_errors(exc, plugin, path))
        return {}
    return {k: getattr(parsed, k) for k in overrides}


def _field_errors(exc: ValidationError, plugin: registry.Plugin, path: str) -> list[FieldError]:
    # One wording for option errors, whether they come from a config file or from Python. Imported
    # on an error only: build_optimizer from Python never loads the config package otherwise.
    from gradloop.config.messages import did_you_mean, pydantic_message

    allowed = list(plugin.options.model_fields)
    out = []
    for e in exc.errors():
        loc = [str(p) for p in e["loc"]]
        if e.get("type") == "extra_forbidden":
            message = (
                f"{plugin.name} has no option {loc[-1]!r}{did_you_mean(loc[-1], allowed)}; allowed: "
                f"{', '.join(allowed)}"
            )
        elif e.get("type") == "value_error":  # our validators' own sentences, without pydantic's prefix
            message = str(e.get("ctx", {}).get("error", e["msg"]))
        else:
            message = pydantic_message(e, plugin.options)
        out.append(FieldError(".".join(p for p in (path, *loc) if p) or "options", message))
    return out

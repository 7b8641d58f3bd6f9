"""Validation in one pass before anything is built.

The structure (pydantic), then every plugin's options against that plugin's own options model,
then the checks that span fields and the ones that depend on this machine. All problems are
reported together as one ConfigError whose entries name the dotted field, the value given, what
is allowed and, for YAML files, the line.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from gradloop import registry
from gradloop.config.messages import did_you_mean, pydantic_message
from gradloop.config.schema import (
    DEVICE_PATTERN,
    DataConfig,
    ModelConfig,
    OptimizerConfig,
    PluginSpec,
    RunConfig,
    SchedulerConfig,
    TrainerConfig,
)
from gradloop.errors import ConfigError, FieldError, PluginNotFoundError, singular
from gradloop.extras import missing_message
from gradloop.import_paths import resolve_import_path

PLUGIN_FIELDS = (
    ("model", "models"),
    ("data", "datasets"),
    ("loss", "losses"),
    ("optimizer", "optimizers"),
    ("scheduler", "schedulers"),
)


def is_import_path(name: str) -> bool:
    """`package.module:factory` names a factory by import path instead of a registered plugin."""
    return ":" in name


def validate_config(
    raw: Mapping[str, Any],
    *,
    lines: Mapping[str, int] | None = None,
    source: str | None = None,
    allow_import_paths: bool = True,
    check_runtime: bool = True,
    overridden: Mapping[str, str] | None = None,
) -> RunConfig:
    """The validated config, or one ConfigError with every problem found.

    overridden: dotted key -> `--set` text; an error at or under such a key names the override
    instead of the file's line, which no longer holds the value.
    """
    from gradloop import registry  # late: plugins register on first registry use

    lines = lines or {}
    errors: list[FieldError] = []

    def err(path: str, message: str) -> None:
        origin = override_of(path, overridden or {})
        if origin is not None:
            errors.append(FieldError(path, f"{message} (set by --set {origin})"))
        else:
            errors.append(FieldError(path, message, line_for(path, lines)))

    try:
        cfg: RunConfig | None = RunConfig.model_validate(raw)
    except ValidationError as exc:
        cfg = None
        for e in exc.errors():
            path = ".".join(str(p) for p in e["loc"])
            err(path, pydantic_message(e, RunConfig))

    # Plugin options are checked from the raw sections, so that they are reported together with
    # any structural errors elsewhere in the config rather than only after those are fixed.
    resolved_options: dict[str, dict[str, Any]] = {}
    for field_name, kind in PLUGIN_FIELDS:
        spec = raw.get(field_name) if isinstance(raw, Mapping) else None
        if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str) or not spec["name"]:
            continue
        name, options = spec["name"], spec.get("options") or {}
        if not isinstance(options, Mapping):
            continue  # the structural pass has reported it
        if field_name == "model" and is_import_path(name):
            _check_import_path(name, allow_import_paths, err)
            continue
        try:
            plugin = registry.registry(kind).get(name)
        except PluginNotFoundError as exc:
            err(f"{field_name}.name", str(exc))
            continue
        extra = plugin.capabilities.get("extra")
        missing = missing_message(f"{singular(kind)} {name!r}", extra) if extra else None
        if missing:
            err(f"{field_name}.name", missing)
            continue
        try:
            parsed = plugin.parse_options(dict(options))
        except ValidationError as exc:
            for e in exc.errors():
                path = ".".join([field_name, "options", *(str(p) for p in e["loc"])])
                err(path, pydantic_message(e, plugin.options))
            continue
        resolved_options[field_name] = parsed.model_dump(mode="json")
        if field_name == "optimizer":
            _check_param_group_options(plugin, spec, err)

    metrics = raw.get("metrics") if isinstance(raw, Mapping) else None
    if isinstance(metrics, list):
        _check_metric_options(metrics, registry, err)

    if cfg is None:
        # The checks between fields still run on the sections that are valid on their own, so
        # that fixing the errors above does not reveal a second round of them.
        sections = _valid_sections(raw)
    else:
        # `cfg` is new: validation built its own containers, so it is resolved in place (a deep
        # copy here was a fifth of a submission's validation time).
        for field_name, options in resolved_options.items():
            getattr(cfg, field_name).options = options
        sections = {name: getattr(cfg, name) for name in _SECTIONS}
        sections["device"] = cfg.device
        sections["config"] = cfg
    _cross_field_checks(sections, err)
    if check_runtime:
        _runtime_checks(sections, err)
    if errors or cfg is None:
        raise ConfigError(errors, source)
    return cfg


_SECTIONS: dict[str, type[BaseModel]] = {
    "model": ModelConfig,
    "data": DataConfig,
    "loss": PluginSpec,
    "optimizer": OptimizerConfig,
    "scheduler": SchedulerConfig,
    "trainer": TrainerConfig,
}


def _valid_sections(raw: Any) -> dict[str, Any]:
    """Each top-level section that validates on its own (defaults where it is left out); None for the others."""
    found: dict[str, Any] = {name: None for name in _SECTIONS}
    if not isinstance(raw, Mapping):
        return found
    for name, model in _SECTIONS.items():
        value = raw.get(name)
        if value is None and name in ("trainer", "scheduler"):
            found[name] = TrainerConfig() if name == "trainer" else None
            continue
        found[name] = without_bad_fields(model, value)
    device = raw.get("device", "auto")
    found["device"] = device if isinstance(device, str) and re.match(DEVICE_PATTERN, device) else None
    return found


Section = TypeVar("Section", bound=BaseModel)


def without_bad_fields(model: type[Section], value: Any) -> Section | None:
    """The section validated with its invalid fields left at their defaults, so that one bad
    field (trainer.epochs: 0) does not hide the checks that read its neighbours
    (grad_clip_norm with grad_clip_value); None when a required field itself is wrong."""
    if not isinstance(value, Mapping):
        return None
    kept = dict(value)
    while True:
        try:
            return model.model_validate(kept)
        except ValidationError as exc:
            bad = {e["loc"][0] for e in exc.errors() if e["loc"]} & kept.keys()
            if not bad:
                return None  # a required field is missing or the section as a whole is wrong
            for key in bad:
                del kept[key]


def _check_import_path(name: str, allowed: bool, err: Any) -> None:
    if not allowed:
        err(
            "model.name",
            f"import path {name!r} is refused here; use a registered model: {', '.join(registry.models.names())}",
        )
        return
    try:
        resolve_import_path(name)
    except ConfigError as exc:
        err("model.name", exc.errors[0].message)


def _check_metric_options(metrics: list[Any], registry: Any, err: Any) -> None:
    """Each metric's name and options, by its plugin (its fit to the data is checked once the data is built)."""
    for i, item in enumerate(metrics):
        name = item if isinstance(item, str) else item.get("name") if isinstance(item, Mapping) else None
        options = item.get("options") or {} if isinstance(item, Mapping) else {}
        if not isinstance(name, str) or not isinstance(options, Mapping):
            continue  # the structural pass has reported it
        field = f"metrics.{i}" if isinstance(item, str) else f"metrics.{i}.name"
        try:
            plugin = registry.metrics.get(name)
        except PluginNotFoundError as exc:
            err(field, str(exc))
            continue
        try:
            plugin.parse_options(dict(options))
        except ValidationError as exc:
            for e in exc.errors():
                err(
                    ".".join([f"metrics.{i}", "options", *(str(p) for p in e["loc"])]),
                    pydantic_message(e, plugin.options),
                )


def _check_param_group_options(plugin: Any, spec: Mapping[str, Any], err: Any) -> None:
    """Per-group options are the optimizer's own options: validate each group's with its model."""
    groups = spec.get("param_groups") or []
    if not isinstance(groups, list):
        return
    fields = plugin.options.model_fields
    for i, rule in enumerate(groups):
        if not isinstance(rule, Mapping):
            continue
        overrides = {k: v for k, v in rule.items() if k != "match"}
        unknown = [k for k in overrides if k not in fields]
        for k in unknown:
            err(
                f"optimizer.param_groups.{i}.{k}",
                f"{plugin.name} has no option {k!r}{did_you_mean(k, fields)}; allowed: {', '.join(fields)}",
            )
        if unknown:
            continue
        try:
            plugin.parse_options({**(spec.get("options") or {}), **overrides})
        except ValidationError as exc:
            for e in exc.errors():
                loc = [str(p) for p in e["loc"]]
                if loc and loc[0] in overrides:  # errors in the base options are reported once, above
                    err(".".join(["optimizer", "param_groups", str(i), *loc]), pydantic_message(e, plugin.options))


def _cross_field_checks(sections: Mapping[str, Any], err: Any) -> None:
    """Rules between fields; each runs when the sections it reads are valid (see _valid_sections)."""
    optimizer, trainer, scheduler, data = (sections.get(k) for k in ("optimizer", "trainer", "scheduler", "data"))
    if optimizer is not None and trainer is not None and optimizer.name in registry.optimizers:
        caps = registry.optimizers.get(optimizer.name).capabilities
        if caps.get("closure") and trainer.grad_accum_steps > 1:
            err(
                "trainer.grad_accum_steps",
                f"{optimizer.name} re-evaluates the loss through a closure and cannot accumulate gradients; "
                "set grad_accum_steps to 1",
            )
        if caps.get("closure") and trainer.precision == "fp16":
            err("trainer.precision", f"{optimizer.name} cannot run with fp16 gradient scaling; use fp32 or bf16")
    if scheduler is not None and data is not None and scheduler.name in registry.schedulers:
        caps = registry.schedulers.get(scheduler.name).capabilities
        if caps.get("monitor") and data.val_fraction == 0:
            err(
                "scheduler.name",
                f"{scheduler.name} watches a validation metric but data.val_fraction is 0; "
                "hold out some data (e.g. 0.2)",
            )
        elif (
            caps.get("monitor") and trainer is not None and not trainer.val_every_epochs and not trainer.val_every_steps
        ):
            err(
                "trainer.val_every_epochs",
                f"{scheduler.name} steps after each validation but validation is off; "
                "set trainer.val_every_epochs or trainer.val_every_steps",
            )
    if trainer is not None and trainer.grad_clip_norm is not None and trainer.grad_clip_value is not None:
        err("trainer.grad_clip_value", "set grad_clip_norm or grad_clip_value, not both")


def _runtime_checks(sections: Mapping[str, Any], err: Any) -> None:
    """Checks that depend on this machine: is the asked-for device here, and its precision?"""
    # torch: the API process validates without it
    from gradloop.devices import DeviceError, cpu_if_no_cuda, resolve_device

    if sections.get("device") is None:
        return  # the structural pass has reported it
    device_failed = False
    try:
        device = resolve_device(sections["device"])
    except DeviceError as exc:
        device_failed = True
        err("device", str(exc))
        # The device a fixed config gets here: with no CUDA at all, the CPU whatever it names,
        # so a CPU-only problem (fp16) is reported now rather than in a second round.
        fallback = cpu_if_no_cuda()
        if fallback is None:
            return
        device = fallback
    trainer = sections.get("trainer")
    if trainer is not None and trainer.precision == "fp16" and device.type != "cuda":
        where = "this machine has none" if device_failed else f"this run uses {device}"
        err("trainer.precision", f"fp16 needs a CUDA device ({where}); use bf16 or fp32 on CPU")
    cfg = sections.get("config")  # the whole config, when it is valid: the distributed checks read all of it
    if cfg is not None and cfg.distributed.enabled:
        from gradloop.distributed.checks import check_distributed  # torch.distributed only when asked for

        check_distributed(cfg, err)


def override_of(path: str, overridden: Mapping[str, str]) -> str | None:
    """The `--set` text that set `path` or a key above it, if any."""
    parts = path.split(".")
    while parts:
        found = overridden.get(".".join(parts))
        if found is not None:
            return found
        parts.pop()
    return None


def line_for(path: str, lines: Mapping[str, int]) -> int | None:
    """The line of `path` in the file, else of the nearest enclosing key written there."""
    parts = path.split(".")
    while parts:
        line = lines.get(".".join(parts))
        if line is not None:
            return line
        parts.pop()
    return None

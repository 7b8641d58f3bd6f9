"""The run config: pydantic models, loading from YAML/JSON/dict, `--set` overrides, validation.

Validation happens in one pass before anything is built: the structure (pydantic, extra fields
forbidden everywhere), then every plugin's options against that plugin's own options model, then
the checks that span fields (device available, fp16 needs CUDA, ...). All problems are reported
together as one ConfigError whose entries name the dotted field, the value given, what is
allowed and, for YAML files, the line.
"""
from __future__ import annotations

import copy
import difflib
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gradloop.errors import ConfigError, FieldError, PluginNotFoundError
from gradloop.yamlio import dump_yaml, load_yaml, parse_scalar

DEVICE_PATTERN = r"^(auto|cpu|cuda|cuda:\d+|mps)$"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class PluginSpec(Strict):
    name: str = Field(min_length=1, description="registered plugin name")
    options: dict[str, Any] = Field(default_factory=dict, description="options, validated by the plugin's own model")


class ModelConfig(PluginSpec):
    name: str = Field(min_length=1, description="registered model name, or `package.module:factory` (CLI and Python only)")


class DataConfig(PluginSpec):
    batch_size: int = Field(32, ge=1, le=1_000_000)
    eval_batch_size: int | None = Field(None, ge=1, le=1_000_000, description="validation batch size (default: batch_size)")
    val_fraction: float = Field(0.2, ge=0.0, lt=1.0, description="fraction held out for validation")
    split_seed: int | None = Field(None, description="seed of the train/validation split (default: the run's seed)")
    shuffle: bool = True
    drop_last: bool = False
    num_workers: int = Field(0, ge=0, le=64, description="DataLoader workers, for datasets that need a DataLoader")
    root: str | None = Field(None, description="data root that relative paths resolve against (default: $GRADLOOP_DATA_ROOT or the working directory)")


class ParamGroupRule(BaseModel):
    """`{match: "encoder.*", lr: 1e-4, ...}`: optimizer options for the parameters whose name matches."""

    model_config = ConfigDict(extra="allow")
    match: str = Field(min_length=1, description="glob on parameter names (fnmatch); first matching rule wins")


class OptimizerConfig(PluginSpec):
    param_groups: list[ParamGroupRule] = Field(default_factory=list)
    no_weight_decay: bool | None = Field(
        None, description="biases and 1-D parameters get weight_decay 0 (default: on when weight_decay > 0)"
    )


class SchedulerConfig(PluginSpec):
    pass


class TrainerConfig(Strict):
    epochs: int = Field(1, ge=1, le=100_000)
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps")
    grad_accum_steps: int = Field(1, ge=1, le=10_000)
    grad_clip_norm: float | None = Field(None, gt=0, description="clip the total gradient norm to this value")
    grad_clip_value: float | None = Field(None, gt=0, description="clip each gradient element to [-v, v]")
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    on_nonfinite: Literal["fail", "skip_step"] = "fail"
    val_every_epochs: int = Field(1, ge=0, description="validate every N epochs (0: only when val_every_steps says)")
    val_every_steps: int | None = Field(None, ge=1)
    checkpoint_every_steps: int | None = Field(None, ge=1)
    checkpoint_at_end: bool = True
    keep_checkpoints: int = Field(2, ge=1, description="how many step checkpoints to keep besides the last")
    compile: bool = False
    progress: Literal["auto", "bar", "lines", "none"] = "auto"


class TrackingConfig(Strict):
    enabled: bool = True
    uri: str | None = Field(None, description="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    experiment: str = Field("gradloop", min_length=1)
    log_every: int = Field(10, ge=1, description="log metrics every N optimizer steps")
    histogram_every: int = Field(100, ge=0, description="record gradient/weight histograms every N steps (0: never)")
    grad_stats: Literal["none", "total", "per_layer", "per_module"] = "per_layer"
    log_checkpoint: bool = True
    log_model: bool = True
    system_metrics: bool = True
    plots: bool = True
    flush_timeout_s: float = Field(30.0, ge=0, description="at the end of a run, how long to keep trying to send unsent points (the rest waits for `gradloop sync`)")


class RunConfig(Strict):
    name: str = Field("run", min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    seed: int = Field(0, ge=0, le=2**32 - 1)
    device: str = Field("auto", pattern=DEVICE_PATTERN)
    output_dir: str = Field("runs", description="run directories (checkpoints, metrics.jsonl, logs) go under it")
    model: ModelConfig
    data: DataConfig
    loss: PluginSpec
    optimizer: OptimizerConfig
    scheduler: SchedulerConfig | None = None
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    sweep: dict[str, list[Any]] | None = Field(None, description="grid over dotted keys; each combination is one run")

    @field_validator("sweep")
    @classmethod
    def _sweep_non_empty(cls, v: dict[str, list[Any]] | None) -> dict[str, list[Any]] | None:
        if v is not None:
            for key, values in v.items():
                if not values:
                    raise ValueError(f"sweep.{key} has no values; give at least one")
        return v

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return dump_yaml(self.to_dict())

    def config_hash(self) -> str:
        """Stable short hash of the resolved config (the same run config gives the same hash)."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


# -- loading ------------------------------------------------------------------------------

def load_config(
    config: str | os.PathLike[str] | Mapping[str, Any] | RunConfig,
    overrides: Iterable[str] = (),
    *,
    allow_import_paths: bool = True,
    check_runtime: bool = True,
) -> RunConfig:
    """Load, override and fully validate a run config; raise ConfigError listing every problem."""
    raw, lines, source = read_raw(config)
    raw = apply_overrides(raw, overrides, source)
    return validate_config(raw, lines=lines, source=source, allow_import_paths=allow_import_paths, check_runtime=check_runtime)


def read_raw(config: Any) -> tuple[dict[str, Any], dict[str, int], str | None]:
    """The config as a plain dict, its line map (for files) and a name for error messages."""
    if isinstance(config, RunConfig):
        return config.to_dict(), {}, None
    if isinstance(config, Mapping):
        return copy.deepcopy(dict(config)), {}, None
    path = Path(config)
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError.single("", f"config file {str(path)!r} does not exist; check the path", str(path)) from None
    except IsADirectoryError:
        raise ConfigError.single("", f"{str(path)!r} is a directory; give a .yaml or .json file", str(path)) from None
    data, lines = load_yaml(text, source=str(path))
    if not isinstance(data, dict):
        raise ConfigError.single("", f"the top level must be a mapping of fields (name, model, data, ...), got {_type_name(data)}", str(path))
    return data, lines, str(path)


def load_raw_text(text: str | bytes, source: str | None = None) -> tuple[dict[str, Any], dict[str, int]]:
    """Parse YAML or JSON text (e.g. an HTTP body) into a raw config dict."""
    data, lines = load_yaml(text, source=source)
    if not isinstance(data, dict):
        raise ConfigError.single("", f"the top level must be a mapping of fields (name, model, data, ...), got {_type_name(data)}", source)
    return data, lines


_OVERRIDE = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*=(.*)$", re.S)


def apply_overrides(raw: dict[str, Any], overrides: Iterable[str], source: str | None = None) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides; values are parsed as YAML (`lr=0.1`, `hidden=[64,64]`)."""
    raw = copy.deepcopy(raw)
    errors: list[FieldError] = []
    for item in overrides:
        m = _OVERRIDE.match(item)
        if not m:
            errors.append(FieldError("--set", f"{item!r} is not of the form key.path=value (e.g. optimizer.options.lr=0.1)"))
            continue
        key, text = m.group(1), m.group(2)
        try:
            value = parse_scalar(text)
        except ConfigError as exc:
            errors.append(FieldError(key, f"cannot parse the --set value {text!r}: {exc.errors[0].message}"))
            continue
        try:
            set_dotted(raw, key, value)
        except (KeyError, IndexError, TypeError) as exc:
            errors.append(FieldError(key, f"--set cannot reach this key: {exc.args[0]}"))
    if errors:
        raise ConfigError(errors, source)
    return raw


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        here = ".".join(parts[: i + 1])
        if isinstance(node, list):
            idx = _index(part, node, here)
            node = node[idx]
        elif isinstance(node, dict):
            if node.get(part) is None:  # create what is missing: a list when indexed by number next
                node[part] = [] if parts[i + 1].isdigit() else {}
            node = node[part]
        else:
            raise TypeError(f"{here} is a {_type_name(node)}, not a mapping")
    last = parts[-1]
    if isinstance(node, list):
        idx = _index(last, node, dotted, allow_append=True)
        if idx == len(node):
            node.append(value)
        else:
            node[idx] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise TypeError(f"{'.'.join(parts[:-1])} is a {_type_name(node)}, not a mapping")


def _index(part: str, node: list, where: str, allow_append: bool = False) -> int:
    if not part.isdigit():
        raise TypeError(f"{where} indexes a list; use a number")
    idx = int(part)
    limit = len(node) + (1 if allow_append else 0)
    if idx >= limit:
        raise IndexError(f"{where}: index {idx} is past the end of a list of {len(node)}")
    return idx


def get_dotted(data: Mapping[str, Any], dotted: str) -> Any:
    node: Any = data
    for part in dotted.split("."):
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


# -- validation ---------------------------------------------------------------------------

PLUGIN_FIELDS = (("model", "models"), ("data", "datasets"), ("loss", "losses"), ("optimizer", "optimizers"), ("scheduler", "schedulers"))


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
) -> RunConfig:
    from gradloop import registry  # late: plugins register on first registry use

    lines = lines or {}
    errors: list[FieldError] = []

    def err(path: str, message: str) -> None:
        errors.append(FieldError(path, message, _line_for(path, lines)))

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

    if cfg is None:
        raise ConfigError(errors, source)
    # `cfg` is new: validation built its own containers, so it is resolved in place (a deep
    # copy here was a fifth of a submission's validation time).
    resolved = cfg
    for field_name, options in resolved_options.items():
        getattr(resolved, field_name).options = options

    _cross_field_checks(resolved, err)
    if check_runtime:
        _runtime_checks(resolved, err)
    if errors:
        raise ConfigError(errors, source)
    return resolved


def _check_import_path(name: str, allowed: bool, err: Any) -> None:
    from gradloop import registry
    from gradloop.import_paths import resolve_import_path

    if not allowed:
        err("model.name", f"import path {name!r} is refused here; use a registered model: {', '.join(registry.models.names())}")
        return
    try:
        resolve_import_path(name)
    except ConfigError as exc:
        err("model.name", exc.errors[0].message)


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
            err(f"optimizer.param_groups.{i}.{k}", f"{plugin.name} has no option {k!r}{did_you_mean(k, fields)}; allowed: {', '.join(fields)}")
        if unknown:
            continue
        try:
            plugin.parse_options({**(spec.get("options") or {}), **overrides})
        except ValidationError as exc:
            for e in exc.errors():
                loc = [str(p) for p in e["loc"]]
                if loc and loc[0] in overrides:  # errors in the base options are reported once, above
                    err(".".join(["optimizer", "param_groups", str(i), *loc]), pydantic_message(e, plugin.options))


def _cross_field_checks(cfg: RunConfig, err: Any) -> None:
    from gradloop import registry

    if cfg.optimizer.name in registry.optimizers:
        caps = registry.optimizers.get(cfg.optimizer.name).capabilities
        if caps.get("closure") and cfg.trainer.grad_accum_steps > 1:
            err("trainer.grad_accum_steps", f"{cfg.optimizer.name} re-evaluates the loss through a closure and cannot accumulate gradients; set grad_accum_steps to 1")
        if caps.get("closure") and cfg.trainer.precision == "fp16":
            err("trainer.precision", f"{cfg.optimizer.name} cannot run with fp16 gradient scaling; use fp32 or bf16")
    if cfg.scheduler is not None and cfg.scheduler.name in registry.schedulers:
        caps = registry.schedulers.get(cfg.scheduler.name).capabilities
        if caps.get("monitor") and cfg.data.val_fraction == 0:
            err("scheduler.name", f"{cfg.scheduler.name} watches a validation metric but data.val_fraction is 0; hold out some data (e.g. 0.2)")
    if cfg.trainer.grad_clip_norm is not None and cfg.trainer.grad_clip_value is not None:
        err("trainer.grad_clip_value", "set grad_clip_norm or grad_clip_value, not both")


def _runtime_checks(cfg: RunConfig, err: Any) -> None:
    """Checks that depend on this machine: is the asked-for device here?"""
    from gradloop.devices import DeviceError, resolve_device

    try:
        device = resolve_device(cfg.device)
    except DeviceError as exc:
        err("device", str(exc))
        return
    if cfg.trainer.precision == "fp16" and device.type != "cuda":
        err("trainer.precision", f"fp16 needs a CUDA device (this run uses {device}); use bf16 or fp32 on CPU")


def _line_for(path: str, lines: Mapping[str, int]) -> int | None:
    parts = path.split(".")
    while parts:
        line = lines.get(".".join(parts))
        if line is not None:
            return line
        parts.pop()
    return None


def pydantic_message(e: Mapping[str, Any], root_model: type[BaseModel]) -> str:
    kind = e.get("type", "")
    loc = [str(p) for p in e.get("loc", ())]
    if kind == "extra_forbidden":
        allowed = _allowed_fields(root_model, loc[:-1])
        hint = did_you_mean(loc[-1], allowed)
        return f"unknown field{hint}; allowed here: {', '.join(allowed)}" if allowed else "unknown field; remove it"
    if kind == "missing":
        return "field required"
    msg = e.get("msg", "invalid value")
    if "input" in e and kind not in ("model_type", "dict_type"):
        return f"{msg} (got {_short(e['input'])})"
    return f"{msg} (got {_type_name(e.get('input'))})"


def _allowed_fields(model: type[BaseModel], loc: list[str]) -> list[str]:
    current: Any = model
    for part in loc:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        field = current.model_fields.get(part)
        if field is None:
            if part.isdigit():
                continue
            return []
        current = _model_in(field.annotation)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _model_in(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _type_name(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", type(None): "nothing"}.get(type(value), type(value).__name__)

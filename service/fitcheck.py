"""Whether a config's model, data and loss fit together, known before the run starts.

Validation (gradloop.config) checks each field and plugin on its own; the fit between the model,
the data and the loss needs the dataset's shape: its per-sample features, outputs and task.
data_shape() builds the dataset once per data config and keeps only that shape (a few numbers,
never the tensors), so a second check of the same data (a resubmitted job, validate then run)
costs a dictionary lookup.

checked() wraps a validation so that its answer holds every problem at once: the field errors
and the fit errors together, including when other sections of the config are broken, as long
as the model, data and loss sections are valid on their own.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import ValidationError

from gradloop.config import DataConfig, ModelConfig, PluginSpec, RunConfig
from gradloop.config.loading import apply_overrides, overridden_keys, read_raw
from gradloop.config.validation import line_for, validate_config, without_bad_fields
from gradloop.errors import ConfigError, FieldError, GradloopError


@dataclass(frozen=True)
class DataShape:
    """What the fit check needs of a dataset (the fields of gradloop.data.DataSplits it reads)."""

    task: str
    num_features: int | tuple[int, ...]
    num_outputs: int
    num_classes: int | None


_CACHE_SIZE = 64
_shapes: OrderedDict[str, DataShape] = OrderedDict()
_fits: OrderedDict[str, tuple[FieldError, ...]] = OrderedDict()  # fit check answers, by config fields
_lock = threading.Lock()


def _key(data: DataConfig, seed: int) -> str:
    # repr, not sorted JSON: a few microseconds instead of tens on the submit path; the same
    # options in another key order only miss the cache, they never share an entry wrongly.
    split_seed = data.split_seed if data.split_seed is not None else seed
    return repr((data.name, data.options, data.val_fraction, split_seed, data.root))


ShapeFromOptions = Callable[[Any], DataShape]
_from_options: dict[str, ShapeFromOptions] = {}


def shape_from_options(dataset: str) -> Callable[[ShapeFromOptions], ShapeFromOptions]:
    """Decorator: `fn(options) -> DataShape` gives dataset plugin `dataset`'s shape from its
    validated options alone, without reading any data (the job service checks a submission's fit
    with it; a dataset without one is built to learn its shape, or checked when its job starts)."""

    def register(fn: ShapeFromOptions) -> ShapeFromOptions:
        _from_options[dataset] = fn
        return fn

    return register


def cached_shape(data: DataConfig, seed: int) -> DataShape | None:
    """The shape of this data config if it was read before in this process, else None."""
    with _lock:
        return _shapes.get(_key(data, seed))


def data_shape(data: DataConfig, seed: int, *, build: bool = True) -> DataShape | None:
    """The dataset's shape: known before, from its options, or (build=True) by building it on
    the CPU; None when none of these may be used. Raises what the dataset plugin raises."""
    key = _key(data, seed)
    with _lock:
        found = _shapes.get(key)
    if found is not None:
        return found
    from gradloop import registry  # plugins register their shape functions on import

    plugin = registry.datasets.get(data.name)
    if data.name in _from_options:
        shape = _from_options[data.name](plugin.parse_options(data.options))
    elif build:
        from gradloop.build import build_data  # imports torch and the dataset plugins

        splits = build_data(data, seed)
        shape = DataShape(splits.task, splits.num_features, splits.num_outputs, splits.num_classes)
    else:
        return None
    with _lock:
        _shapes[key] = shape
        while len(_shapes) > _CACHE_SIZE:
            _shapes.popitem(last=False)
    return shape


def fit_errors(
    model: ModelConfig, data: DataConfig, loss: PluginSpec, seed: int, *, probe: bool = True
) -> list[FieldError]:
    """Every way the model and loss disagree with the data; the dataset's own errors if it cannot be read.

    probe=False: never build the dataset (a shape known before or from the options only); no
    errors when the shape is not known that way.
    """
    from gradloop.build import loss_vs_data, model_vs_data  # torch: the API imports it only to check a fit

    # A resubmitted config (the common case for the job service) is one lookup: the answer
    # depends on nothing but these fields and the data's shape, itself cached by _key.
    fit_key = repr((model.name, model.options, loss.name, loss.options, _key(data, seed)))
    with _lock:
        known = _fits.get(fit_key)
    if known is not None:
        return list(known)
    try:
        shape = data_shape(data, seed, build=probe)
    except ConfigError as exc:
        return [FieldError(e.path or "data", e.message, e.line) for e in exc.errors]
    except ValidationError:
        return []  # the options' own errors are validation's to report
    except GradloopError as exc:
        return [FieldError("data", str(exc))]
    if shape is None:
        return []
    errors = model_vs_data(model, shape) + loss_vs_data(loss, shape)
    with _lock:
        _fits[fit_key] = tuple(errors)
        while len(_fits) > _CACHE_SIZE * 4:
            _fits.popitem(last=False)
    return errors


def load_checked(
    config: Any,
    overrides: Iterable[str] = (),
    *,
    fit: Literal["always", "on_error"] = "always",
    allow_import_paths: bool = True,
) -> RunConfig:
    """load_config() and the fit check in one answer.

    fit="on_error": the fit check runs only to complete the answer of a config that already
    fails, for train(), which builds the data anyway and checks the fit there before any step.
    """
    raw, lines, source = read_raw(config)
    overrides = list(overrides)
    raw = apply_overrides(raw, overrides, source)

    def validate() -> RunConfig:
        return validate_config(
            raw,
            lines=lines,
            source=source,
            allow_import_paths=allow_import_paths,
            overridden=overridden_keys(overrides),
        )

    if fit == "always":
        return checked(validate, raw, lines=lines, source=source)
    try:
        return validate()
    except ConfigError as exc:
        extra = _fit_errors_of_raw(raw, exc.errors, probe=True)
        if not extra:
            raise
        raise ConfigError(exc.errors + _with_lines(extra, lines), exc.source) from None


def checked(
    validate: Callable[[], RunConfig],
    raw: Any,
    *,
    lines: Mapping[str, int] | None = None,
    source: str | None = None,
    probe: bool = True,
) -> RunConfig:
    """validate(), then the fit check; one ConfigError with all of both, in that order.

    When validate() fails, the fit check still runs if the model, data and loss sections of
    `raw` are valid on their own and none of them is named in an error.
    """
    try:
        cfg = validate()
    except ConfigError as exc:
        extra = _fit_errors_of_raw(raw, exc.errors, probe=probe)
        if not extra:
            raise
        raise ConfigError(exc.errors + _with_lines(extra, lines), exc.source) from None
    if cfg.sweep:
        return cfg  # each child has its own model and data: the runner checks each one before it starts
    errors = fit_errors(cfg.model, cfg.data, cfg.loss, cfg.seed, probe=probe)
    if errors:
        raise ConfigError(_with_lines(errors, lines), source)
    return cfg


def _fit_errors_of_raw(raw: Any, known: list[FieldError], *, probe: bool) -> list[FieldError]:
    if not isinstance(raw, Mapping) or raw.get("sweep"):
        return []
    if any(_blocks_the_fit(e.path) for e in known):
        return []
    try:
        model = ModelConfig.model_validate(raw.get("model"))
        # data.batch_size: 0 and the like say nothing about the data's shape: checked without them.
        data = without_bad_fields(DataConfig, raw.get("data"))
        if data is None:
            return []
        loss = PluginSpec.model_validate(raw.get("loss"))
        seed = RunConfig.model_fields["seed"].default if raw.get("seed") is None else int(raw["seed"])
    except (ValidationError, TypeError, ValueError):
        return []
    return fit_errors(model, data, loss, seed, probe=probe)


# The data fields the data's shape depends on; an error in another (batch_size, num_workers)
# leaves the fit check to run.
_SHAPE_FIELDS = ("data.name", "data.options", "data.val_fraction", "data.split_seed", "data.root")


def _blocks_the_fit(path: str) -> bool:
    """Whether an error at `path` leaves the fit check without what it reads."""
    top = path.split(".")[0]
    if top in ("model", "loss", "seed") or path in ("", "data"):
        return True
    return top == "data" and any(path == f or path.startswith(f + ".") for f in _SHAPE_FIELDS)


def _with_lines(errors: list[FieldError], lines: Mapping[str, int] | None) -> list[FieldError]:
    if not lines:
        return errors
    return [FieldError(e.path, e.message, e.line if e.line is not None else line_for(e.path, lines)) for e in errors]


__all__ = ["DataShape", "cached_shape", "checked", "data_shape", "fit_errors", "load_checked", "shape_from_options"]

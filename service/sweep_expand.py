"""What a `sweep:` block expands to: its size, counted without building anything, and its child
configs, built one at a time.

The runner (gradloop.sweep) trains the children and the job service's policy
(gradloop.http_policy) checks them; both take them from `sweep_children`, so the configs the
service checks at submission are the configs its workers train.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
from collections.abc import Iterator, Mapping
from typing import Any

from gradloop import registry
from gradloop.config import PLUGIN_FIELDS, RunConfig, set_dotted, sweep_grid
from gradloop.config.yaml_source import MAX_DEPTH
from gradloop.errors import ConfigError, FieldError


def grid_size(sweep: Any) -> int:
    """Combinations of a raw `sweep:` block, from the lengths of its lists alone (a value that is
    not a list counts once: validation reports it)."""
    if not isinstance(sweep, Mapping):
        return 0
    return math.prod(len(v) for v in sweep_grid(sweep).values() if isinstance(v, list))


def iter_sweep(raw_config: Mapping[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(label, child raw config) for every combination of the grid, in key order, one at a time;
    the grid's keys are checked before the first child is built."""
    for label, _, child in _combinations(raw_config):
        yield label, child


def _combinations(raw_config: Mapping[str, Any]) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(label, swept values, child raw config), as iter_sweep."""
    block = raw_config.get("sweep") or {}
    grid = sweep_grid(block) if isinstance(block, Mapping) else block
    if not isinstance(grid, Mapping) or not grid:
        raise ConfigError.single(
            "sweep", "give a mapping of dotted keys to lists of values, e.g. {optimizer.options.lr: [0.1, 0.01]}"
        )
    errors = [e for key, values in grid.items() for e in _key_errors(str(key), values)]
    if errors:
        raise ConfigError(errors)
    base = {k: v for k, v in raw_config.items() if k != "sweep"}
    keys = list(grid)
    for combo in itertools.product(*(grid[k] for k in keys)):
        child = copy.deepcopy(base)
        for key, value in zip(keys, combo):
            try:
                set_dotted(child, key, copy.deepcopy(value))
            except (KeyError, IndexError, TypeError) as exc:
                raise ConfigError.single(
                    f"sweep.{key}", f"this key cannot be set in the config: {exc.args[0]}"
                ) from None
        label = ",".join(f"{k}={label_value(v)}" for k, v in zip(keys, combo))
        yield label, {k: copy.deepcopy(v) for k, v in zip(keys, combo)}, child


def expand_sweep(raw_config: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Every (label, child raw config) of the grid at once; see iter_sweep."""
    return list(iter_sweep(raw_config))


def sweep_children(config: RunConfig) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(label, swept values, child raw config) of a validated config's sweep, one at a time: each
    child named after the parent (name-NN) and without the parent's output_dir (whoever runs it
    picks one)."""
    grid_keys = list(sweep_grid(config.sweep))
    base = config.to_dict()
    del base["output_dir"]  # a swept output_dir stays, for whoever checks the child to see
    for i, (label, values, raw) in enumerate(_combinations(base)):
        raw["name"] = f"{config.name}-{i:02d}"[:100]
        _fit_options_to_swapped_plugins(raw, grid_keys)
        yield label, values, raw


def label_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text  # never cut: two labels that differ only at the end must stay told apart


def _key_errors(key: str, values: Any) -> list[FieldError]:
    where = f"sweep.{key}"
    if not isinstance(values, list) or not values:
        return [FieldError(where, "give a non-empty list of values to try")]
    if key == "sweep" or key.startswith("sweep."):
        return [FieldError(where, "a sweep's children cannot have sweeps of their own; remove this key")]
    if key.count(".") >= MAX_DEPTH:
        return [FieldError(where, f"the key nests deeper than {MAX_DEPTH} levels; give a config field")]
    return []


def _fit_options_to_swapped_plugins(raw: dict[str, Any], grid_keys: list[str]) -> None:
    """A sweep over `optimizer.name` starts from the *resolved* base config, whose options hold
    the first plugin's defaults (sgd's momentum...). Keep only the options the swept-in plugin
    has, so shared ones (lr, weight_decay) carry over and foreign ones do not fail validation."""
    kinds = dict(PLUGIN_FIELDS)
    for key in grid_keys:
        field_name, _, rest = key.partition(".")
        spec = raw.get(field_name)
        if rest != "name" or field_name not in kinds or not isinstance(spec, dict):
            continue
        reg = registry.registry(kinds[field_name])
        name = spec.get("name")
        if isinstance(name, str) and name in reg:
            allowed = reg.get(name).options.model_fields
            swept_options = {k.split(".", 2)[2] for k in grid_keys if k.startswith(f"{field_name}.options.")}
            options = spec.get("options")
            if not isinstance(options, dict):
                options = {}
            spec["options"] = {k: v for k, v in options.items() if k in allowed or k in swept_options}


__all__ = ["expand_sweep", "grid_size", "iter_sweep", "label_value", "sweep_children"]

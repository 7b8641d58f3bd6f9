"""Reading a config: a file, YAML/JSON text or a dict, plus `--set key.path=value` overrides, then validation."""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from gradloop.config.messages import type_name
from gradloop.config.schema import RunConfig
from gradloop.config.validation import validate_config
from gradloop.config.yaml_source import load_yaml, parse_scalar
from gradloop.errors import ConfigError, FieldError


def load_config(
    config: str | os.PathLike[str] | Mapping[str, Any] | RunConfig,
    overrides: Iterable[str] = (),
    *,
    allow_import_paths: bool = True,
    check_runtime: bool = True,
) -> RunConfig:
    """Load, override and fully validate a run config; raise ConfigError listing every problem."""
    raw, lines, source = read_raw(config)
    overrides = list(overrides)
    raw = apply_overrides(raw, overrides, source)
    return validate_config(
        raw,
        lines=lines,
        source=source,
        allow_import_paths=allow_import_paths,
        check_runtime=check_runtime,
        overridden=overridden_keys(overrides),
    )


def overridden_keys(overrides: Iterable[str]) -> dict[str, str]:
    """Dotted key -> the `--set` text that set it: an error there names the override, not a file line."""
    found = {}
    for item in overrides:
        m = _OVERRIDE.match(item)
        if m:
            found[m.group(1)] = item.strip()
    return found


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
        raise ConfigError.single(
            "", f"the top level must be a mapping of fields (name, model, data, ...), got {type_name(data)}", str(path)
        )
    return data, lines, str(path)


def load_raw_text(text: str | bytes, source: str | None = None) -> tuple[dict[str, Any], dict[str, int]]:
    """Parse YAML or JSON text (e.g. an HTTP body) into a raw config dict."""
    data, lines = load_yaml(text, source=source)
    if not isinstance(data, dict):
        raise ConfigError.single(
            "", f"the top level must be a mapping of fields (name, model, data, ...), got {type_name(data)}", source
        )
    return data, lines


_OVERRIDE = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*=(.*)$", re.S)


def apply_overrides(raw: dict[str, Any], overrides: Iterable[str], source: str | None = None) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides; values are parsed as YAML (`lr=0.1`, `hidden=[64,64]`)."""
    raw = copy.deepcopy(raw)
    errors: list[FieldError] = []
    for item in overrides:
        m = _OVERRIDE.match(item)
        if not m:
            errors.append(
                FieldError("--set", f"{item!r} is not of the form key.path=value (e.g. optimizer.options.lr=0.1)")
            )
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
            raise TypeError(f"{here} is a {type_name(node)}, not a mapping")
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
        raise TypeError(f"{'.'.join(parts[:-1])} is a {type_name(node)}, not a mapping")


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

"""What a config's plugins read from disk, from their declared capabilities, for whoever must
check or resolve it without building anything: the HTTP policy (every path under the data root,
--max-dataset-bytes) and the builder (a model's weights or folder resolve under the data root).

- `path_options=("path", "tokenizer_path", ...)`: the options of a dataset or model plugin that
  name a file or folder, relative to the data root. A dataset that declares none but has a
  `path` option is taken to read that path.
- `files=callable(options, data_root) -> list[Path]`: the files a dataset will read (an image
  folder's images, a corpus folder's texts). Without it, a dataset's `path` option is the file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gradloop import registry
from gradloop.config import RunConfig, is_import_path
from gradloop.errors import ConfigError, FieldError

_SECTIONS = (("data", "datasets"), ("model", "models"))


def path_options(kind: str, name: str) -> tuple[str, ...]:
    """Option names of plugin `name` of `kind` that are paths under the data root."""
    if is_import_path(name) or name not in registry.registry(kind):
        return ()
    plugin = registry.registry(kind).get(name)
    declared = plugin.capabilities.get("path_options")
    if declared is None and kind == "datasets" and "path" in plugin.options.model_fields:
        return ("path",)  # what dataset_files reads for a dataset that says nothing
    return tuple(declared or ())


def declared_paths(config: RunConfig) -> list[tuple[str, str]]:
    """(field, value) of every path option the config's dataset and model set."""
    found = []
    for section, kind in _SECTIONS:
        spec = getattr(config, section)
        for key in path_options(kind, spec.name):
            value = spec.options.get(key)
            if isinstance(value, str):
                found.append((f"{section}.options.{key}", value))
    return found


def paths_outside(config: RunConfig, data_root: Path) -> list[FieldError]:
    """A FieldError for each declared path that leaves `data_root` (symlinks followed). Decided
    from the path alone, so the answer never says whether a file outside the root exists."""
    root = Path(data_root).resolve()
    try:
        base = Path(config.data.root).resolve() if config.data.root else root
    except (OSError, ValueError, RuntimeError):
        base = root  # data.root itself cannot be used: its own check reports it
    errors = []
    for field, value in declared_paths(config):
        if not under_root(base / value, root):
            errors.append(FieldError(field, f"{value!r} is outside the service's data root; give a path under it"))
    return errors


def dataset_files(config: RunConfig, data_root: Path) -> list[Path]:
    """The files under `data_root` that the config's dataset will read (those that exist now).
    A file outside it is left out without a look at it (paths_outside reports it)."""
    data = config.data
    top = Path(data_root).resolve()
    root = Path(data.root) if data.root else top
    if data.name not in registry.datasets:
        return []
    files = registry.datasets.get(data.name).capabilities.get("files")
    try:
        if files is not None:
            candidates = list(files(dict(data.options), root))
        else:
            path = data.options.get("path")
            candidates = [root / path] if isinstance(path, str) else []
        return [p for p in candidates if under_root(p, top) and p.is_file()]
    except (OSError, ValueError):
        return []  # a missing or unreadable path is the dataset plugin's error to report


def under_root(path: Path, root: Path) -> bool:
    """Whether `path` resolves (symlinks followed) to `root` or below it; a path that cannot be
    resolved (a NUL byte, a symlink loop) counts as outside."""
    try:
        resolved = path.resolve()
    except (OSError, ValueError, RuntimeError):
        return False
    return resolved == root or root in resolved.parents


def dataset_bytes(config: RunConfig, data_root: Path) -> int | None:
    """Bytes the dataset will read, or None when it reads no file (generated data)."""
    files = dataset_files(config, data_root)
    if not files:
        return None
    total = 0
    for path in files:
        try:
            total += path.stat().st_size
        except OSError:
            pass
    return total


def default_data_root(configured: str | None) -> Path:
    """data.root, else $GRADLOOP_DATA_ROOT, else the working directory (absolute)."""
    return Path(configured or os.environ.get("GRADLOOP_DATA_ROOT") or os.getcwd()).resolve()


def resolve_model_paths(name: str, options: Mapping[str, Any], data_root: str | None) -> dict[str, Any]:
    """The model's options with its path options made absolute under the data root; a path that
    leaves it, or does not exist, is a ConfigError."""
    keys = [k for k in path_options("models", name) if isinstance(options.get(k), str)]
    if not keys:
        return dict(options)
    root = default_data_root(data_root)
    resolved = dict(options)
    for key in keys:
        value = str(options[key])
        candidate = (root / value).resolve()
        field = f"model.options.{key}"
        if candidate != root and root not in candidate.parents:
            raise ConfigError.single(
                field, f"path {value!r} leaves the data root {str(root)!r}; put it under the data root"
            )
        if not candidate.exists():
            raise ConfigError.single(field, f"{value!r} does not exist under the data root {str(root)!r}")
        resolved[key] = str(candidate)
    return resolved


__all__ = [
    "dataset_bytes",
    "dataset_files",
    "declared_paths",
    "path_options",
    "paths_outside",
    "resolve_model_paths",
    "under_root",
]

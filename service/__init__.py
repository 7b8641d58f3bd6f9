"""gradloop: config-driven PyTorch training, as a CLI, an HTTP job service and a Python API.

Public names: build_optimizer, train, load_config (and RunConfig, RunResult, ConfigError).
They are imported lazily so that `import service` stays cheap for the CLI and the API process.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["build_optimizer", "train", "load_config", "RunConfig", "RunResult", "ConfigError", "GradloopError", "__version__"]

_LAZY = {
    "build_optimizer": ("service.optim", "build_optimizer"),
    "train": ("service.runner", "train"),
    "RunResult": ("service.runner", "RunResult"),
    "load_config": ("service.config", "load_config"),
    "RunConfig": ("service.config", "RunConfig"),
    "ConfigError": ("service.errors", "ConfigError"),
    "GradloopError": ("service.errors", "GradloopError"),
}

if TYPE_CHECKING:
    from .config import RunConfig, load_config
    from .errors import ConfigError, GradloopError
    from .optim import build_optimizer
    from .runner import RunResult, train


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'service' has no attribute {name!r}")

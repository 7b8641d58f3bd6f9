"""gradloop: config-driven PyTorch training, as a CLI, an HTTP job service and a Python API.

Public names: build_optimizer, train, run, load_config (and RunConfig, RunResult, ConfigError).
They are imported lazily so that `import gradloop` stays cheap for the CLI and the API process.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "build_optimizer",
    "train",
    "run",
    "load_config",
    "RunConfig",
    "RunResult",
    "ConfigError",
    "GradloopError",
    "__version__",
]

_LAZY = {
    "build_optimizer": ("gradloop.optim", "build_optimizer"),
    "train": ("gradloop.runner", "train"),
    "run": ("gradloop.dispatch", "run"),
    "RunResult": ("gradloop.result", "RunResult"),
    "load_config": ("gradloop.config", "load_config"),
    "RunConfig": ("gradloop.config", "RunConfig"),
    "ConfigError": ("gradloop.errors", "ConfigError"),
    "GradloopError": ("gradloop.errors", "GradloopError"),
}

if TYPE_CHECKING:
    from gradloop.config import RunConfig, load_config
    from gradloop.dispatch import run
    from gradloop.errors import ConfigError, GradloopError
    from gradloop.optim import build_optimizer
    from gradloop.result import RunResult
    from gradloop.runner import train


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'gradloop' has no attribute {name!r}")

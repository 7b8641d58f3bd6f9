"""gradloop: config-driven PyTorch training, as a CLI, an HTTP job service and a Python API.

Public names: build_optimizer, train, run, load_config (and RunConfig, RunResult, ConfigError).
They are imported lazily so that `import gradloop` stays cheap for the CLI and the API process.

Module map (docs/architecture.md has it whole, with the data flows):
  config/        the run config: schema, loading and --set overrides, validation, messages
  registry       one Registry per plugin kind; built-ins in gradloop.plugins, others by entry points
  params, optim  "anything a user passes" -> param groups -> the optimizer (build_optimizer)
  build          config -> model, data, loss, checked to fit together (fitcheck: the same, upfront)
  dispatch       run(): one run (runner.train) or a sweep (sweep.run_sweep)
  runner         train(): seed, build, run directory, Trainer.fit(), RunResult (result)
  trainer        Trainer.fit(): the loop, read top to bottom (log_window, torch_ops, batching beside it)
  checkpoint, seeding, devices, data, observer, terminal_progress, lifecycle, filelock, errors
  distributed/   process groups, the elastic launcher, samplers, DDP wrapping
  tracking/      MLflow: journal first, sender off the training thread
  jobs/          job store, claims and leases, the pool, the fork server, a job's child
  api/           the FastAPI job service
  cli/           the `gradloop` command
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

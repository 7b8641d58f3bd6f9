"""RunResult: what a finished (or stopped) run reports back, for train(), run() and a sweep's parent.

Its own module so that the runner, the sweep and their callers share it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal


@dataclass
class RunResult:
    """What a finished (or stopped) run reports back."""

    steps: int
    epochs: int
    duration_s: float
    metrics: dict[str, float]
    run_dir: Path
    checkpoint_path: Path | None
    mlflow_run_id: str | None
    status: Literal["FINISHED", "KILLED", "FAILED"]
    name: str
    config_hash: str
    skipped_steps: int = 0
    resumed_from: Path | None = None
    world_size: int = 1  # processes that trained the model together
    global_batch_size: int | None = None  # data.batch_size x world_size x grad_accum_steps

    @property
    def stopped(self) -> bool:
        """True when a stop request (a stop event set by a signal handler or a cancel) ended the run early."""
        return self.status == "KILLED"


__all__ = ["RunResult"]

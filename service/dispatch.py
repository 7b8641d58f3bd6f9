"""`run()`: a config to its result, whatever it holds -- one run, or a sweep of many.

The CLI (`gradloop run`) and the job worker call this; `train()` trains exactly one run. Keeping
the choice here is what lets the runner and the sweep depend on each other in one direction
only: the sweep trains its children through the runner, and nothing in the runner knows sweeps.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from gradloop.config import RunConfig
from gradloop.fitcheck import load_checked
from gradloop.observer import Observer
from gradloop.result import RunResult
from gradloop.runner import RankObservers, train_validated
from gradloop.sweep import CheckChild, run_sweep


def run(
    config: RunConfig | Mapping[str, Any] | str | os.PathLike[str],
    *,
    overrides: Iterable[str] = (),
    resume: str | os.PathLike[str] | None = None,
    observers: Sequence[Observer] = (),
    job_id: str | None = None,
    stop_event: threading.Event | None = None,
    check_child: CheckChild | None = None,
    rank_observers: RankObservers | None = None,
    group_signalled: bool = False,
) -> RunResult:
    """Train `config`: a config with a `sweep:` block trains each of its children (and returns a
    gradloop.sweep.SweepResult), any other config is one `train()`. The arguments are train()'s;
    check_child: for a sweep, what validates each child's raw config (the job service passes its
    HTTP policy), see run_sweep; rank_observers and group_signalled: for a distributed config,
    see train_validated (a sweep's children take neither)."""
    cfg = load_checked(config, overrides, fit="on_error")  # the fit itself is checked once the data is built
    if cfg.sweep:
        return run_sweep(
            cfg, resume=resume, observers=observers, job_id=job_id, stop_event=stop_event, check_child=check_child
        )
    return train_validated(
        cfg,
        resume=resume,
        observers=observers,
        job_id=job_id,
        stop_event=stop_event,
        rank_observers=rank_observers,
        group_signalled=group_signalled,
    )


__all__ = ["run"]

"""Starting the ranks: torch's elastic launcher, as `torchrun` uses it, called from `gradloop run`.

One agent per machine (this process) rendezvouses with the others through c10d at
`distributed.rdzv_endpoint` (a free local port on one machine), starts `nproc_per_node` workers,
watches them, restarts the whole group up to `max_restarts` times, and stops every worker as soon as
one fails -- so a failed rank ends the run within seconds, not after the collective timeout.
Each worker writes `{run_dir}/logs/.../{local_rank}/stdout.log` and `stderr.log`; local rank 0's
output is also shown on this terminal.

In a job of the job service, the launcher runs inside the job's process: its workers stay in that
process's group, so the service's SIGTERM (cancel, drain) reaches every rank at once, and SIGKILL
(after the grace period, or a lost lease) leaves none behind. There the agent leaves SIGTERM to
the ranks (`group_signalled`): they agree to stop at the next logging step and write a checkpoint,
which torch's own handling (SIGTERM the workers, SIGKILL 3 s later) could cut short.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import secrets
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gradloop.distributed.checks import nproc_per_node
from gradloop.errors import ConfigError, TrainingError
from gradloop.lifecycle import handlers_restored

if TYPE_CHECKING:
    from gradloop.config.schema import RunConfig

# How long stopped workers get to exit before SIGKILL: a worker blocked in a collective cannot
# run its SIGTERM handler, and torch's default (30 s) is what "within seconds" rules out.
SHUTDOWN_TIMEOUT_S = 3
# The signals torch's agent turns into "stop the workers now" (torch reads this variable).
_AGENT_SIGNALS_VAR = "TORCHELASTIC_SIGNALS_TO_HANDLE"
_AGENT_SIGNALS_NOT_TERM = "SIGINT,SIGHUP,SIGQUIT"
# The signals torch's agent takes over by default, and leaves taken when it returns.
_AGENT_HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


def launch(
    cfg: RunConfig,
    entry: Callable[..., Any],
    args: tuple[Any, ...],
    *,
    run_dir: Path,
    group_signalled: bool = False,
) -> dict[int, Any]:
    """Run `entry(*args)` on every rank of this machine; return {global rank: return value}.

    group_signalled: SIGTERM reaches the workers through their process group (a job of the
    service), so this process's own SIGTERM handler (the caller's) stays in place and the agent
    waits for the workers to stop by themselves, with their checkpoint.
    Raises TrainingError naming the first failed rank and its error when the group fails (after
    the restarts the config allows)."""
    # torch's elastic launcher: only when a run starts ranks (the checks above need none of it).
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, Std
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    d = cfg.distributed
    lo, hi = d.node_range()
    if hi > 1 and d.rdzv_endpoint is None:
        raise ConfigError.single(
            "distributed.rdzv_endpoint",
            f"{d.nnodes} machines need a rendezvous HOST:PORT that every machine reaches; set it (--rdzv-endpoint)",
        )
    rdzv_configs: dict[str, Any] = {}
    if d.node_rank is not None:
        rdzv_configs["is_host"] = d.node_rank == 0
    nproc = nproc_per_node(cfg)
    options: dict[str, Any] = dict(
        min_nodes=lo,
        max_nodes=hi,
        nproc_per_node=nproc,
        # One machine: a fresh id per run. Several: every machine must name the same run.
        run_id=f"gradloop-{cfg.name}" if hi > 1 else f"gradloop-{secrets.token_hex(4)}",
        rdzv_backend="c10d",
        rdzv_endpoint=d.rdzv_endpoint or "localhost:0",
        rdzv_configs=rdzv_configs,
        max_restarts=d.max_restarts,
        monitor_interval=0.1,
        start_method="spawn",
        logs_specs=DefaultLogsSpecs(log_dir=str(run_dir / "logs"), redirects=Std.ALL, tee={0: Std.ALL}),
    )
    fields = {f.name for f in dataclasses.fields(LaunchConfig)}
    if "shutdown_timeout" in fields:
        options["shutdown_timeout"] = SHUTDOWN_TIMEOUT_S
    agent_signals = _AGENT_SIGNALS_NOT_TERM if group_signalled else None
    if agent_signals is not None and "signals_to_handle" in fields:
        options["signals_to_handle"] = agent_signals  # (older torch reads only the variable)
    # The agent narrates every rendezvous round at INFO/WARNING; the run's own output says enough.
    logging.getLogger("torch.distributed.elastic").setLevel(logging.ERROR)
    try:
        with _agent_signals(agent_signals), handlers_restored(*_AGENT_HANDLED):
            return dict(elastic_launch(LaunchConfig(**options), entry)(*args))
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        message = failure.message if isinstance(failure.message, str) else str(failure.message)
        if not failure.error_file_data:  # no error recorded: the process died (a signal, os._exit)
            message = f"exit code {failure.exitcode}"
        raise TrainingError(
            f"rank {rank} failed: {message.strip().splitlines()[-1] if message.strip() else message}"
            f" (logs: {run_dir / 'logs'})"
        ) from None


@contextlib.contextmanager
def _agent_signals(names: str | None) -> Iterator[None]:
    """While inside, torch's agent handles only `names` (None: torch's default set)."""
    if names is None:
        yield
        return
    previous = os.environ.get(_AGENT_SIGNALS_VAR)
    os.environ[_AGENT_SIGNALS_VAR] = names
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(_AGENT_SIGNALS_VAR, None)
        else:
            os.environ[_AGENT_SIGNALS_VAR] = previous


__all__ = ["launch", "SHUTDOWN_TIMEOUT_S"]

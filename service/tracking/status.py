"""How a run ends in MLflow: FINISHED, FAILED (with the error as tags) or KILLED.

A run must never stay RUNNING while its process lives on or exits normally: the trainer ends
its observers whatever ends the loop (an interrupt is KILLED, an error FAILED). SIGTERM is the
entry point's to handle (gradloop.lifecycle: the run stops at a step boundary, KILLED). After a
SIGKILL, or a SIGTERM that nobody handles, nothing in the process can act: `close_stale_run` is
for the next resume or the job service's recovery.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from gradloop.observer import RunStatus

ERROR_TYPE_TAG = "gradloop.error.type"
ERROR_MESSAGE_TAG = "gradloop.error.message"
MAX_TAG_VALUE = 5000


def status_for(error: BaseException | None) -> RunStatus:
    """The MLflow status for a run that ended with `error` (None: success)."""
    if error is None:
        return "FINISHED"
    if isinstance(error, (KeyboardInterrupt, SystemExit)):
        return "KILLED"
    if type(error).__name__ in ("JobCancelled", "Cancelled", "CancelledError"):
        return "KILLED"
    return "FAILED"


def error_tags(error: BaseException | None) -> dict[str, str]:
    if error is None:
        return {}
    message = str(error) or repr(error)
    return {ERROR_TYPE_TAG: type(error).__name__, ERROR_MESSAGE_TAG: message[:MAX_TAG_VALUE]}


def close_stale_run(run_id: str, tracking_uri: str, status: RunStatus = "KILLED", reason: str = "") -> bool:
    """End a run left RUNNING by a process that died (SIGKILL, OOM, power loss).

    Returns True when the run was RUNNING and is now closed.
    """
    from gradloop.tracking.mlflow_store import open_client

    client = open_client(tracking_uri)
    run = client.get_run(run_id)
    if run.info.status != "RUNNING":
        return False
    if reason:
        client.set_tag(run_id, ERROR_MESSAGE_TAG, reason[:MAX_TAG_VALUE])
    client.set_terminated(run_id, status, end_time=int(time.time() * 1000))
    return True


def run_with_status(fn: Callable[[], Any], finish: Callable[[RunStatus, BaseException | None], None]) -> Any:
    """Call fn, then finish(status, error) whatever happens (helper for simple loops and tests)."""
    try:
        result = fn()
    except BaseException as exc:
        finish(status_for(exc), exc)
        raise
    finish("FINISHED", None)
    return result

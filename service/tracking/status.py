"""How a run ends in MLflow: FINISHED, FAILED (with the error as tags) or KILLED.

A run must never stay RUNNING while its process lives on or exits normally: the trainer ends
its observers whatever ends the loop (an interrupt is KILLED, an error FAILED). SIGTERM is the
entry point's to handle (gradloop.lifecycle: the run stops at a step boundary, KILLED). After a
SIGKILL, or a SIGTERM that nobody handles, nothing in the process can act: a resume (`--resume`,
or the job service's next attempt) continues the same run.
"""

from __future__ import annotations

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

"""How a run ends in MLflow: FINISHED, FAILED (with the error as tags) or KILLED.

A run must never stay RUNNING while its process lives on or exits normally. SIGTERM would
otherwise end Python without unwinding, so while a run is tracked on the main thread, SIGTERM
raises `Terminated` (a KeyboardInterrupt, as SIGINT does) and the trainer's usual clean-up
ends the run as KILLED; an atexit hook is the last net for a run nobody finished. After a
SIGKILL nothing in the process can act: a resume (`--resume`, or the job service's next attempt)
continues the same run.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

from gradloop.observer import RunStatus

ERROR_TYPE_TAG = "gradloop.error.type"
ERROR_MESSAGE_TAG = "gradloop.error.message"
MAX_TAG_VALUE = 5000


class Terminated(KeyboardInterrupt):
    """The process received SIGTERM (e.g. `kill`, a container stop, a job cancellation)."""

    def __init__(self, signum: int = signal.SIGTERM):
        self.signum = signum
        super().__init__(f"terminated by signal {signal.Signals(signum).name}")


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


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated(signum)


class SigtermGuard:
    """Turns SIGTERM into `Terminated` while installed, when nobody else handles SIGTERM."""

    def __init__(self) -> None:
        self._previous: Any = None
        self._installed = False

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        current = signal.getsignal(signal.SIGTERM)
        if current not in (signal.SIG_DFL, None):
            return  # the trainer, the job worker or the user already handle it: leave theirs
        self._previous = current
        signal.signal(signal.SIGTERM, _raise_terminated)
        self._installed = True

    def uninstall(self) -> None:
        if self._installed and threading.current_thread() is threading.main_thread():
            if signal.getsignal(signal.SIGTERM) is _raise_terminated:
                signal.signal(signal.SIGTERM, self._previous if self._previous is not None else signal.SIG_DFL)
        self._installed = False

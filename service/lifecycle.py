"""Signal handlers for entry points: the one module of gradloop that installs any.

Library code (train(), run(), the trainer, a job's run_job()) installs no signal handler and no
atexit hook: it takes a `threading.Event` and stops at the next optimizer step, with a checkpoint,
once the event is set. Each entry point decides here what a signal means for its process:

- `gradloop run` and each rank of a distributed run: stop_on_signals() (SIGTERM or Ctrl-C stops
  the run at a step boundary; a second Ctrl-C interrupts at once);
- a job's child process: stop_on_signals(signals=(SIGTERM,)) after default_signals(), since it
  was forked from a process whose handlers are not its own;
- helper processes whose parent decides when they end (the fork server, MLflow's store process):
  ignore_signals();
- `gradloop serve`: uvicorn's own handlers (drain, then stop the pool), see cli/job_commands.py.

A Python program that calls gradloop.train() is its own entry point; to stop cleanly on SIGTERM:
`with stop_on_signals() as stop: train(config, stop_event=stop)`.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator, Sequence
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextlib.contextmanager
def stop_on_signals(
    stop: threading.Event | None = None, signals: Sequence[signal.Signals] = STOP_SIGNALS
) -> Iterator[threading.Event]:
    """While inside, `signals` set the stop event (a new one unless given), which is yielded.

    A second SIGINT raises KeyboardInterrupt: the user insists, so the step is not waited for.
    The previous handlers come back on exit. Off the main thread Python cannot install
    handlers: then nothing is installed and only the event stops the run."""
    stop = stop if stop is not None else threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    asked = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        if asked.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        asked.set()
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in signals}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def ignore_signals(*signals: signal.Signals) -> None:
    """For a helper process that its parent stops: a Ctrl-C in the terminal reaches the whole
    process group, and the parent, not each helper, decides what it means."""
    for sig in signals:
        signal.signal(sig, signal.SIG_IGN)


def default_signals(*signals: signal.Signals) -> None:
    """For a forked child: the default actions instead of the handlers inherited from its parent."""
    for sig in signals:
        signal.signal(sig, signal.SIG_DFL)


__all__ = ["STOP_SIGNALS", "default_signals", "ignore_signals", "stop_on_signals"]


@contextlib.contextmanager
def handlers_restored(*signals: signal.Signals) -> Iterator[None]:
    """Whatever handles `signals` now handles them again on the way out: library code that calls
    something which installs handlers and leaves them (torch's elastic agent) gives a caller of
    train() (a notebook, a service, a test) its own back. Only the main thread can set them."""
    saved = {sig: signal.getsignal(sig) for sig in signals}
    try:
        yield
    finally:
        if threading.current_thread() is threading.main_thread():
            for sig, handler in saved.items():
                if handler is not None:
                    signal.signal(sig, handler)

"""Signal handlers: installed by entry points through gradloop.lifecycle, nowhere else."""

from __future__ import annotations

import ast
import os
import signal
import threading
from pathlib import Path

import pytest

from gradloop.lifecycle import stop_on_signals

ROOT = Path(__file__).resolve().parents[2]


def test_the_first_signal_sets_the_event_a_second_ctrl_c_interrupts() -> None:
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        with stop_on_signals() as stop:
            os.kill(os.getpid(), signal.SIGTERM)
            assert stop.wait(10)
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(100):  # the handler runs between bytecodes of the main thread
                threading.Event().wait(0.05)
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_a_given_event_is_the_one_set() -> None:
    mine = threading.Event()
    sigint = signal.getsignal(signal.SIGINT)  # (ignored when the suite itself runs in the background)
    with stop_on_signals(mine, signals=(signal.SIGTERM,)) as stop:
        assert stop is mine
        assert signal.getsignal(signal.SIGINT) is sigint  # only the signals asked for are taken
        os.kill(os.getpid(), signal.SIGTERM)
        assert mine.wait(10)


def test_off_the_main_thread_nothing_is_installed() -> None:
    seen: dict = {}

    def body() -> None:
        before = signal.getsignal(signal.SIGTERM)
        with stop_on_signals() as stop:
            seen["same"] = signal.getsignal(signal.SIGTERM) is before
            seen["event"] = isinstance(stop, threading.Event)

    t = threading.Thread(target=body)
    t.start()
    t.join(30)
    assert seen == {"same": True, "event": True}


def _calls(path: Path, names: set[str]) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            if isinstance(owner, ast.Name) and f"{owner.id}.{node.func.attr}" in names:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {owner.id}.{node.func.attr}")
    return found


def test_only_lifecycle_installs_signal_handlers_or_exit_hooks() -> None:
    files = [p for folder in ("service", "plugins") for p in (ROOT / folder).rglob("*.py")]
    offenders = [
        hit
        for p in files
        if p.name != "lifecycle.py" or p.parent != ROOT / "service"
        for hit in _calls(p, {"signal.signal", "atexit.register"})
    ]
    assert offenders == [], "install signal handlers and exit hooks through gradloop.lifecycle, at entry points"

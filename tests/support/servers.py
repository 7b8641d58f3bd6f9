"""Every server process the tests start (`gradloop serve`, `mlflow server`), so that none outlives
its test: a test that fails between starting a server and stopping it would otherwise leave the
server running, holding its port and CPU, for the rest of the session (or past it).

Service and MlflowServer call `track()` when they are made; tests/conftest.py stops what a test
started and left running after that test, and whatever is left at the end of the session. Servers
made by module- or session-scoped fixtures exist before a test's snapshot, so their fixtures stop
them as before.
"""

from __future__ import annotations

from typing import Protocol


class Server(Protocol):
    def running(self) -> bool: ...

    def stop(self) -> None: ...


_tracked: list[Server] = []


def track(server: Server) -> None:
    _tracked.append(server)


def snapshot() -> frozenset[int]:
    """What is tracked now, to compare with after a test."""
    return frozenset(id(s) for s in _tracked)


def stop_left_running(before: frozenset[int] = frozenset()) -> list[str]:
    """Stop every tracked server made after `before` that still runs; describe each one stopped.
    Stopped or not, they are no longer tracked."""
    left: list[str] = []
    for server in [s for s in _tracked if id(s) not in before]:
        _tracked.remove(server)
        if server.running():
            left.append(repr(server))
            server.stop()
    return left

"""The markers of the test that is running, so that a helper that starts a server or opens
PostgreSQL refuses to run for a test that does not carry the marker: `make test-fast` selects
tests by these markers, and a forgotten one would slip a server into it.

tests/conftest.py records each test's markers here before its fixtures are set up; outside
pytest (bench/ scripts import these helpers too) nothing is checked.
"""

from __future__ import annotations

import pytest

current: frozenset[str] | None = None  # None: not under pytest


def require(mark: str, what: str) -> None:
    """Raise when the running test is not marked `mark` (what: what the helper is about to do)."""
    if current is not None and mark not in current:
        raise RuntimeError(
            f"this test {what} but is not marked; add @pytest.mark.{mark} (or pytestmark) to it, "
            "so that `make test-fast` leaves it out"
        )


# Under pytest-xdist (--dist=loadgroup) the tests in one xdist_group run one after another on one
# worker. CPU-hungry tests (several torch processes, hundreds of requests) go in this group: two of
# them at once on a small machine starve each other, and the other workers, into their timeouts.
heavy = pytest.mark.xdist_group("heavy")

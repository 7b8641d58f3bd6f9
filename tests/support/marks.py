"""The markers of the test that is running, so that a helper that starts a server or opens
PostgreSQL refuses to run for a test that does not carry the marker: `make test-fast` selects
tests by these markers, and a forgotten one would slip a server into it.

tests/conftest.py records each test's markers here before its fixtures are set up; outside
pytest (bench/ scripts import these helpers too) nothing is checked.
"""

from __future__ import annotations

current: frozenset[str] | None = None  # None: not under pytest


def require(mark: str, what: str) -> None:
    """Raise when the running test is not marked `mark` (what: what the helper is about to do)."""
    if current is not None and mark not in current:
        raise RuntimeError(
            f"this test {what} but is not marked; add @pytest.mark.{mark} (or pytestmark) to it, "
            "so that `make test-fast` leaves it out"
        )

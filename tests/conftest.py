"""Shared test set-up: fixtures registered for every test, and MLflow never writes into the repository.

Tests are grouped by what they cover: core/ (config, build, loop, checkpoints), plugins/, tracking/,
jobs/ (store and durability), api/ (the HTTP service), cli/, packaging/ and gpu/. Helpers that
tests import live in support/; fixtures are registered here through `pytest_plugins`.
"""

from __future__ import annotations

import os

import pytest

from tests.support import marks

pytest_plugins = ["tests.support.mlflow_stores"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that takes the `mlflow_server` fixture starts a server: marked so here, once."""
    for item in items:
        if "mlflow_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.server)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Before the test's fixtures start anything: its markers, for tests/support/marks.require."""
    marks.current = frozenset(m.name for m in item.iter_markers())


@pytest.fixture(scope="session", autouse=True)
def _isolated_mlflow_store(tmp_path_factory: pytest.TempPathFactory):
    """A session-wide sqlite store in a temp dir unless a test points elsewhere itself."""
    store = tmp_path_factory.mktemp("mlflow-default")
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{store}/mlflow.db"
    yield
    if old is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = old

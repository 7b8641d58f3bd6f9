"""Shared test set-up: MLflow never writes into the repository during tests."""
from __future__ import annotations

import os

import pytest


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

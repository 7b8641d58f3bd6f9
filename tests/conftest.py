"""Shared test set-up: fixtures registered for every test, and MLflow never writes into the repository.

Tests are grouped by what they cover: core/ (config, build, loop, checkpoints), plugins/, tracking/,
jobs/ (store and durability), api/ (the HTTP service), cli/, packaging/ and gpu/. Helpers that
tests import live in support/; fixtures are registered here through `pytest_plugins`.

The suite runs in parallel (pytest-xdist, `--numprocesses=auto --dist=loadgroup` in pyproject.toml):
each worker has its own temp dirs, MLflow stores and server ports (support/ports.py), and tests
marked `marks.heavy` run one at a time. `pytest -n 0 tests/x.py` runs in one process (for -x,
--pdb, print debugging); `-m "not server and not postgres and not slow"` selects as usual.
"""

from __future__ import annotations

import os
import warnings

import pytest

from tests.support import empty_store, marks, servers

pytest_plugins = ["tests.support.mlflow_stores"]

# `make test` sets this: there the vision and text tests must run, and an extra that did not
# install would otherwise only turn them into skips.
REQUIRED_EXTRAS = ("torchvision", "timm", "PIL", "transformers", "datasets", "tokenizers")


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("GRADLOOP_REQUIRE_EXTRAS") != "1":
        return
    import importlib.util

    missing = [name for name in REQUIRED_EXTRAS if importlib.util.find_spec(name) is None]
    if missing:
        raise pytest.UsageError(
            f"the vision/text extras are not installed ({', '.join(missing)} missing), so their tests would be "
            'skipped; install them with: pip install -e ".[dev,vision,text]" (make setup-dev does)'
        )


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the xdist_group marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test that takes the `mlflow_server` fixture starts a server: marked so here, once.

    The tests of a module that share a server started by a module-scoped fixture go to one
    xdist worker (a group of their module), else each worker would start that server again.
    Under xdist the heavy group, the longest one, is handed out first so it does not end last.
    """
    for item in items:
        if "mlflow_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.server)
        if _shares_a_module_server(item) and not any(True for _ in item.iter_markers("xdist_group")):
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))
    if hasattr(config, "workerinput"):
        items.sort(key=lambda item: item.get_closest_marker("xdist_group") != marks.heavy.mark)


def _shares_a_module_server(item: pytest.Item) -> bool:
    if item.get_closest_marker("server") is None:
        return False
    info = getattr(item, "_fixtureinfo", None)  # pytest's own record of the test's fixtures
    defs = info.name2fixturedefs.values() if info is not None else ()
    return any(d.scope in ("module", "package") for chain in defs for d in chain)


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """How many pytest-xdist workers `--numprocesses=auto` (pyproject.toml) starts: one more than
    the CPUs, since most tests wait on servers and subprocesses; at most 8 (each worker imports
    torch and MLflow). PYTEST_XDIST_AUTO_NUM_WORKERS=N sets N, and `-n 0` runs in this process."""
    override = os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS", "")
    if override.isdigit():
        return int(override)
    return min(len(os.sched_getaffinity(0)) + 1, 8)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Before the test's fixtures start anything: its markers, for tests/support/marks.require."""
    marks.current = frozenset(m.name for m in item.iter_markers())
    _check_xdist_group(item)


def _check_xdist_group(item: pytest.Item) -> None:
    """Fail a grouped test when --dist=loadgroup would not keep its group on one worker.

    pytest-xdist groups a test by appending "@group" to its node ID on each worker; pytest 9.2
    drops that change (pytest-xdist issue 1386), and the heavy tests would then run side by side
    without a word. pyproject.toml pins pytest below 9.2; this catches a venv with another one.
    """
    if not hasattr(item.config, "workerinput") or not item.config.getoption("loadgroup", False):
        return
    if any(True for _ in item.iter_markers("xdist_group")) and "@" not in item.nodeid:
        pytest.fail(
            f"pytest {pytest.__version__} drops pytest-xdist's group from the node ID, so --dist=loadgroup "
            "does not keep this test's group on one worker; install pytest<9.2 (as pyproject.toml says)",
            pytrace=False,
        )


@pytest.fixture(autouse=True)
def _stop_servers_the_test_left_running():
    """A server that a test (or its function-scoped fixtures) started and did not stop is stopped
    here, with a warning, instead of running on for the rest of the session."""
    before = servers.snapshot()
    yield
    left = servers.stop_left_running(before)
    if left:
        warnings.warn(f"the test left running, now stopped: {', '.join(left)}", stacklevel=1)


@pytest.fixture(scope="session", autouse=True)
def _stop_servers_left_at_the_end():
    yield
    servers.stop_left_running()


@pytest.fixture(scope="session", autouse=True)
def _isolated_mlflow_store(tmp_path_factory: pytest.TempPathFactory):
    """A session-wide sqlite store in a temp dir unless a test points elsewhere itself; and the
    temp dir where support/empty_store.py keeps its template."""
    store = tmp_path_factory.mktemp("mlflow-default")
    empty_store.folder = tmp_path_factory.mktemp("mlflow-template")
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{store}/mlflow.db"
    yield
    if old is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = old

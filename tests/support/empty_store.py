"""Empty MLflow sqlite stores, copied from one template per process.

Creating a store runs all of MLflow's Alembic migrations: seconds of CPU, which every test that
takes `sqlite_uri` and every `gradloop serve` the tests start (its fork server prepares the
store) would otherwise pay again. The template is made on first use, so each pytest-xdist worker
makes its own once: under pytest in `folder` (tests/conftest.py sets it to a pytest temp dir,
which pytest cleans up; xdist workers end without running atexit), else in a temp folder
removed when the process exits.
"""

from __future__ import annotations

import atexit
import shutil
import sqlite3
import tempfile
from contextlib import closing
from pathlib import Path

folder: Path | None = None
_template: Path | None = None


def _make_template() -> Path:
    # Imported here: mlflow takes seconds to import, and only tests that make a store need it.
    from gradloop.tracking.mlflow_store import open_client

    where = folder
    if where is None:
        where = Path(tempfile.mkdtemp(prefix="gradloop-test-store-"))
        atexit.register(shutil.rmtree, where, True)
    path = where / "mlflow.db"
    open_client(f"sqlite:///{path}")  # tables made and WAL on, as gradloop does for a new store
    return path


def put_empty_store(dest: Path) -> Path:
    """An empty MLflow store at `dest` (a sqlite file that must not exist yet); returns `dest`."""
    global _template
    if _template is None:
        _template = _make_template()
    if dest.exists():
        raise FileExistsError(f"{dest} exists: an empty store goes where there is none")
    # SQLite's backup, not a file copy: consistent while the template is open in WAL mode.
    with closing(sqlite3.connect(_template)) as src, closing(sqlite3.connect(dest)) as dst:
        src.backup(dst)
    return dest

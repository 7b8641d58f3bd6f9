"""tracking.json in the run directory: which MLflow run this directory feeds, and what is owed.

Written when a run starts and again when it ends. `pending_ops` are the params, tags,
artifacts and final status that MLflow does not have yet: those that could not reach it before
the end-of-run deadline, and those the store process is doing in the background (then
`background_pid` names it, and it rewrites this file as it goes);
`create` describes a run that could not even be created (server down at start).
`gradloop sync` reads this file, does what is owed and rewrites it.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

STATE_NAME = "tracking.json"


@dataclass
class TrackingState:
    uri: str
    experiment: str
    run_name: str
    run_id: str | None = None
    experiment_id: str | None = None
    status: str = "RUNNING"  # the status this process gave (or will give) the run
    create: dict[str, Any] | None = None  # {"tags": {...}, "parent_run_id": ...} while not created
    pending_ops: list[dict[str, Any]] = field(default_factory=list)
    unsent_points: int = 0
    # The store process still doing the end-of-run ops in pending_ops, in the background; None
    # once it has done them (or when nothing was handed over).
    background_pid: int | None = None

    def save(self, run_dir: Path) -> None:
        path = Path(run_dir) / STATE_NAME
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        os.replace(tmp, path)  # atomic: a crash never leaves half a file

    @classmethod
    def load(cls, run_dir: Path) -> TrackingState | None:
        path = Path(run_dir) / STATE_NAME
        if not path.exists():
            return None
        data = json.loads(path.read_text())
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

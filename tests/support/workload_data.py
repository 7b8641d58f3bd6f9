"""The workload examples' data makers (configs/workloads/make_data.py), importable by tests."""

from __future__ import annotations

import runpy
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
_MAKERS = runpy.run_path(str(REPO / "configs" / "workloads" / "make_data.py"))

make_images = _MAKERS["make_images"]
make_texts = _MAKERS["make_texts"]
CORPUS = REPO / "configs" / "data" / "shakespeare.txt"

"""Metric keys as MLflow accepts them. Torch-free: the job service's processes use it too."""

from __future__ import annotations

import functools
import re

_BAD_KEY_CHARS = re.compile(r"[^A-Za-z0-9_\-. /]")


@functools.lru_cache(maxsize=4096)  # the same few keys come back every logging window
def metric_safe(name: str) -> str:
    """MLflow metric keys allow letters, digits, `_-. /`; anything else becomes `_`."""
    return _BAD_KEY_CHARS.sub("_", name)

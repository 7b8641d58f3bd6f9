"""torchmetrics, imported without the optional packages that its other domains load.

`import torchmetrics` runs the package's __init__ (so does `from torchmetrics.classification
import X`), which imports every domain it has; each domain then imports the optional packages
it finds installed: transformers (text), torchvision and with it torch._dynamo (image,
detection), scipy.signal (audio), matplotlib (the `plot` methods). gradloop's metrics use none of
them, yet together they cost more CPU than a small run's training. So while torchmetrics is
imported here, its availability checks report those packages absent and its domains skip them.

The price: in this process torchmetrics lacks the metrics built on them (BERTScore, LPIPS,
detection mAP, ...) and its `plot` methods. A metric plugin that is not built in may need them:
gradloop.val_metrics imports torchmetrics in full (`full`) before it builds one.
"""

from __future__ import annotations

import importlib
import re
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import ModuleType

# The packages torchmetrics would import for domains gradloop does not use.
SKIPPED = frozenset({"transformers", "torchvision", "scipy", "matplotlib"})

_lock = threading.Lock()


def light() -> ModuleType:
    """torchmetrics; imported here, when it is not yet, without the packages in SKIPPED."""
    with _lock:
        if "torchmetrics" not in sys.modules:
            with _reported_absent(SKIPPED):
                importlib.import_module("torchmetrics")
    return sys.modules["torchmetrics"]


def full() -> ModuleType:
    """torchmetrics with every domain its installed packages allow (unless `light` came first)."""
    with _lock:
        return importlib.import_module("torchmetrics")


@contextmanager
def _reported_absent(names: frozenset[str]) -> Iterator[None]:
    """lightning_utilities' checks, which torchmetrics asks, report `names` absent meanwhile.

    torchmetrics asks RequirementCache (bool() of a cached instance) and package_available; a
    RequirementCache answered here keeps its answer, so torchmetrics stays consistent with what
    it imported. Where lightning_utilities has changed, nothing is patched: torchmetrics then
    imports its usual way, only slower.
    """
    try:
        from lightning_utilities.core import imports as lu
    except ImportError:
        yield
        return
    cache = getattr(lu, "RequirementCache", None)
    found_check = getattr(cache, "_check_available", None)
    found_available = getattr(lu, "package_available", None)
    if cache is None or not callable(found_check) or not callable(found_available):
        yield
        return
    check: Callable[[object], None] = found_check
    package_available: Callable[[str], bool] = found_available

    def check_available(self: object) -> None:
        if not hasattr(self, "available") and _top_name(self) in names:
            self.available = False  # type: ignore[attr-defined]
            self.message = "left out by gradloop: its metrics do not use it"  # type: ignore[attr-defined]
            return
        check(self)

    def available(package_name: str) -> bool:
        return package_name.split(".")[0] not in names and package_available(package_name)

    swaps = [
        (cache, "_check_available", check_available, check),
        (lu, "package_available", available, package_available),
    ]
    for owner, name, patched, _ in swaps:
        setattr(owner, name, patched)
    try:
        yield
    finally:
        for owner, name, _, original in swaps:
            setattr(owner, name, original)


def _top_name(requirement: object) -> str:
    """'transformers' for RequirementCache('transformers>=4.4') or RequirementCache(module='a.b')."""
    text = getattr(requirement, "requirement", None) or getattr(requirement, "module", None) or ""
    match = re.match(r"[A-Za-z0-9_\-]+", str(text))
    return match.group(0).replace("-", "_").lower() if match else ""


__all__ = ["SKIPPED", "full", "light"]

"""Optional dependencies (pip extras): which plugin needs which, and the error when one is missing.

A plugin that needs an extra says so with the capability `extra="vision"` (or "text"); config
validation then reports a missing one before anything is built, as one sentence that names the
command to run. The plugins import those libraries only when they build, so `import gradloop`
and every other plugin work without them.
"""

from __future__ import annotations

import importlib.util

from gradloop.errors import ConfigError

EXTRAS: dict[str, tuple[str, ...]] = {
    "vision": ("torchvision", "timm", "PIL"),
    "text": ("transformers", "datasets", "tokenizers"),
}


def missing_modules(extra: str) -> list[str]:
    """The modules of `extra` that cannot be imported here."""
    return [m for m in EXTRAS[extra] if importlib.util.find_spec(m) is None]


def missing_message(what: str, extra: str) -> str | None:
    """The sentence for a plugin `what` whose extra is not installed, or None when it is."""
    missing = missing_modules(extra)
    if not missing:
        return None
    verb = "is" if len(missing) == 1 else "are"
    return f"{what} needs {', '.join(missing)}, which {verb} not installed; run: pip install 'gradloop[{extra}]'"


def require(extra: str, what: str, field: str) -> None:
    """Raise ConfigError at `field` when the extra is missing (plugins call it before importing)."""
    message = missing_message(what, extra)
    if message is not None:
        raise ConfigError.single(field, message)


__all__ = ["EXTRAS", "missing_message", "missing_modules", "require"]

"""The one place where a config may name code by import path (`package.module:factory`).

Only `gradloop run` and `train()` allow it; the HTTP service refuses import paths so that no
client can make it import code (see config.validate_config(allow_import_paths=False)).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from gradloop.errors import ConfigError


def resolve_import_path(path: str) -> Callable[..., Any]:
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ConfigError.single("model.name", f"import path {path!r} must look like package.module:factory")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise ConfigError.single(
            "model.name", f"cannot import module {module_name!r} from {path!r}: {type(exc).__name__}: {exc}"
        ) from None
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise ConfigError.single(
                "model.name", f"module {module_name!r} has no attribute {attr!r}; check the name after the colon"
            )
    if not callable(obj):
        raise ConfigError.single("model.name", f"{path!r} is a {type(obj).__name__}, not a callable factory")
    return obj

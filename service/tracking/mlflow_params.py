"""The resolved config as MLflow params: dotted keys within MLflow's limits.

MLflow takes at most 100 params per request (the sender splits), keys up to 250 characters
and values up to 6000. A longer value is not truncated silently: the param says where the
whole value is (the config artifact). Params are immutable in MLflow, so a resumed run only
adds keys the run does not have yet.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

MAX_KEY = 250
MAX_VALUE = 6000
CONFIG_ARTIFACT = "config/config.yaml"


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}, "l": [{"m": 2}]} -> {"a.b": 1, "l.0.m": 2}; lists of scalars stay whole."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            if value:
                out.update(flatten(value, dotted + "."))
            else:
                out[dotted] = "{}"
        elif isinstance(value, list) and any(isinstance(v, (Mapping, list)) for v in value):
            out.update(flatten({str(i): v for i, v in enumerate(value)}, dotted + "."))
        else:
            out[dotted] = value
    return out


def to_param_value(value: Any) -> str:
    if value is None:
        return "None"
    if isinstance(value, (list, tuple)):
        return json.dumps(list(value))
    return str(value)


def config_params(config: Mapping[str, Any]) -> dict[str, str]:
    """Flattened, stringified and fitted to MLflow's limits."""
    params: dict[str, str] = {}
    for key, value in flatten(config).items():
        text = to_param_value(value)
        if len(key) > MAX_KEY:
            digest = hashlib.sha1(key.encode()).hexdigest()[:8]
            key = key[: MAX_KEY - 9] + "~" + digest
        if len(text) > MAX_VALUE:
            text = f"<{len(text)} characters: see the {CONFIG_ARTIFACT} artifact>"
        params[key] = text
    return params

"""How a config problem is worded: pydantic errors as one sentence each, did-you-mean, short values."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel


def pydantic_message(e: Mapping[str, Any], root_model: type[BaseModel]) -> str:
    kind = e.get("type", "")
    loc = [str(p) for p in e.get("loc", ())]
    if kind == "extra_forbidden":
        allowed = _allowed_fields(root_model, loc[:-1])
        hint = did_you_mean(loc[-1], allowed)
        return f"unknown field{hint}; allowed here: {', '.join(allowed)}" if allowed else "unknown field; remove it"
    if kind == "missing":
        return "field required"
    msg = e.get("msg", "invalid value")
    if "input" in e and kind not in ("model_type", "dict_type"):
        return f"{msg} (got {_short(e['input'])})"
    return f"{msg} (got {type_name(e.get('input'))})"


def _allowed_fields(model: type[BaseModel], loc: list[str]) -> list[str]:
    current: Any = model
    for part in loc:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        field = current.model_fields.get(part)
        if field is None:
            if part.isdigit():
                continue
            return []
        current = _model_in(field.annotation)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _model_in(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def type_name(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", type(None): "nothing"}.get(
        type(value), type(value).__name__
    )

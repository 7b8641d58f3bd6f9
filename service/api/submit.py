"""From an HTTP body to a raw config: JSON or YAML, read as `gradloop run` reads a file.

What a network client may ask for in it is the HTTP policy's to decide (gradloop.http_policy).
Every problem is a FieldError, so the 422 lists them all with the same messages the CLI prints.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from gradloop.config import load_raw_text
from gradloop.config.yaml_source import MAX_DEPTH
from gradloop.errors import ConfigError, FieldError, GradloopError

YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")
JSON_TYPES = ("application/json", "")


class UnsupportedMediaTypeError(GradloopError):
    """The body is neither JSON nor YAML."""


def parse_body(body: bytes, content_type: str) -> tuple[dict[str, Any], dict[str, int]]:
    media = content_type.split(";", 1)[0].strip().lower()
    if media in YAML_TYPES:
        raw, lines = load_raw_text(body, source=None)
        # JSON-native from here on, as a JSON body is: YAML's dates and the like become
        # strings, so hashing and storing the config see the same types either way.
        return json.loads(json.dumps(raw, default=str)), lines
    if media in JSON_TYPES or media.endswith("+json"):
        return _parse_json(body), {}
    raise UnsupportedMediaTypeError(
        f"Content-Type {media!r} is not supported; send the config as application/json or application/yaml"
    )


def _parse_json(body: bytes) -> dict[str, Any]:
    def refuse_constant(name: str) -> Any:
        raise ConfigError.single("", f"{name} is not a number JSON allows; give a finite value")

    try:
        data = json.loads(body.decode("utf-8"), parse_constant=refuse_constant, object_pairs_hook=_object)
    except UnicodeDecodeError as exc:
        raise ConfigError.single("", f"the body is not valid UTF-8 (byte {exc.start}); send UTF-8 JSON") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(
            [FieldError("", f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}", exc.lineno)]
        ) from None
    except RecursionError:
        raise ConfigError.single("", "the JSON nests too deeply; flatten it") from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise ConfigError.single(
            "", f"the JSON holds a value that cannot be read ({exc}); give ordinary numbers"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError.single("", "the top level must be an object of fields (name, model, data, ...)")
    _check_structure(data)
    return data


class _RepeatedKeys(dict[str, Any]):
    """A JSON object whose text gives some key twice: json keeps the last silently, where YAML
    refuses; kept aside so that the 422 can name each repeated key by its path."""

    repeated: list[str]


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    seen: set[str] = set()
    repeated = _RepeatedKeys(obj)
    repeated.repeated = []
    for key, _ in pairs:
        if key in seen and key not in repeated.repeated:
            repeated.repeated.append(key)
        seen.add(key)
    return repeated


def _check_structure(data: Any) -> None:
    """The YAML reader's nesting bound for JSON too (deeper documents would reach recursive code
    further on, validation, hashing, the store, and fail there without a useful message), and
    no key given twice in one object."""
    errors: list[FieldError] = []
    stack: list[tuple[Any, int, str]] = [(data, 0, "")]
    while stack:
        value, depth, path = stack.pop()
        if depth > MAX_DEPTH:
            raise ConfigError.single("", f"the JSON nests deeper than {MAX_DEPTH} levels; flatten it")
        if isinstance(value, _RepeatedKeys):
            errors += [
                FieldError(_join(path, k), "this key appears twice in one JSON object; keep one")
                for k in value.repeated
            ]
        if isinstance(value, dict):
            stack.extend((v, depth + 1, _join(path, k)) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((v, depth + 1, _join(path, str(i))) for i, v in enumerate(value))
    if errors:
        raise ConfigError(errors)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def request_hash(raw: dict[str, Any], priority: int) -> str:
    """Identity of a request for Idempotency-Key: the parsed config (not its bytes) and priority."""
    blob = json.dumps({"config": raw, "priority": priority}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()

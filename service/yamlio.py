"""Safe YAML reading that remembers where each value came from.

Only plain YAML is accepted (no tags that construct Python objects). Every mapping key's line is
recorded under its dotted path so that a config error can point at the line to edit.
"""
from __future__ import annotations

from typing import Any

import yaml

from .errors import ConfigError, FieldError

# Bounds that keep a hostile document from costing the service unbounded memory or time.
MAX_DEPTH = 64
MAX_NODES = 100_000


_PLAIN_COLLECTION_TAGS = ("tag:yaml.org,2002:map", "tag:yaml.org,2002:seq")


class _Limits:
    def __init__(self) -> None:
        self.nodes = 0


def load_yaml(text: str | bytes, source: str | None = None) -> tuple[Any, dict[str, int]]:
    """Parse `text`; return (data, {dotted.path: line}). Raises ConfigError with file:line:col."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError.single("", f"the config is not valid UTF-8 (byte {exc.start}); save it as UTF-8", source) from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        problem = exc.problem or exc.context or "syntax error"
        raise ConfigError(
            [FieldError("", f"YAML syntax error at {where}: {problem}", mark.line + 1 if mark else None)], source
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError.single("", f"YAML error: {exc}", source) from None
    if node is None:
        return None, {}
    lines: dict[str, int] = {}
    data = _construct(node, "", lines, 0, _Limits(), source, set())
    return data, lines


def _construct(node: yaml.Node, path: str, lines: dict[str, int], depth: int, limits: _Limits, source: str | None, active: set[int]) -> Any:
    if depth > MAX_DEPTH:
        raise ConfigError.single(path, f"the document nests deeper than {MAX_DEPTH} levels; flatten it", source)
    limits.nodes += 1
    if limits.nodes > MAX_NODES:
        raise ConfigError.single(path, f"the document has more than {MAX_NODES} values (aliases count each time they are used)", source)
    if not isinstance(node, yaml.ScalarNode) and node.tag not in _PLAIN_COLLECTION_TAGS:
        raise ConfigError(
            [FieldError(path, f"YAML tag {node.tag!r} is not allowed; configs hold plain values only", node.start_mark.line + 1)],
            source,
        )
    if id(node) in active:
        raise ConfigError.single(path, "the document refers to itself through an alias; remove the recursive alias", source)
    if isinstance(node, yaml.MappingNode):
        active.add(id(node))
        out: dict[str, Any] = {}
        if any(k.tag == "tag:yaml.org,2002:merge" for k, _ in node.value):
            yaml.SafeLoader("").flatten_mapping(node)  # resolve `<<: *anchor` merge keys in place
        for key_node, value_node in node.value:
            key = _scalar(key_node, path, source)
            if not isinstance(key, (str, int, float, bool)) or key is None:
                raise ConfigError.single(path, f"mapping keys must be plain scalars (line {key_node.start_mark.line + 1})", source)
            key = str(key)
            sub = f"{path}.{key}" if path else key
            if key in out:
                raise ConfigError([FieldError(sub, "this key appears twice in one mapping; keep one", key_node.start_mark.line + 1)], source)
            lines[sub] = key_node.start_mark.line + 1
            out[key] = _construct(value_node, sub, lines, depth + 1, limits, source, active)
        active.discard(id(node))
        return out
    if isinstance(node, yaml.SequenceNode):
        active.add(id(node))
        items = []
        for i, item in enumerate(node.value):
            sub = f"{path}.{i}" if path else str(i)
            lines.setdefault(sub, item.start_mark.line + 1)
            items.append(_construct(item, sub, lines, depth + 1, limits, source, active))
        active.discard(id(node))
        return items
    return _scalar(node, path, source)


def _scalar(node: yaml.Node, path: str, source: str | None) -> Any:
    if not isinstance(node, yaml.ScalarNode):
        raise ConfigError.single(path, f"expected a plain value (line {node.start_mark.line + 1})", source)
    if node.tag.startswith("tag:yaml.org,2002:") or node.tag == "!":
        loader = yaml.SafeLoader("")
        try:
            return loader.construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            raise ConfigError([FieldError(path, f"cannot read this value: {exc}", node.start_mark.line + 1)], source) from None
    raise ConfigError(
        [FieldError(path, f"YAML tag {node.tag!r} is not allowed; configs hold plain values only", node.start_mark.line + 1)],
        source,
    )


def parse_scalar(text: str) -> Any:
    """Parse the value of a `--set key=value` override as a YAML scalar or flow list/mapping."""
    data, _ = load_yaml(text if text.strip() else "''", source="--set")
    return data


def dump_yaml(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None, allow_unicode=True)

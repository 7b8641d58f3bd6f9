"""Safe YAML reading that remembers where each value came from.

Only plain YAML is accepted (no tags that construct Python objects). Every mapping key's line is
recorded under its dotted path so that a config error can point at the line to edit.
"""

from __future__ import annotations

from typing import Any

import yaml

from gradloop.errors import ConfigError, FieldError

# Bounds that keep a hostile document from costing the service unbounded memory or time.
MAX_DEPTH = 64
MAX_NODES = 100_000


_PLAIN_COLLECTION_TAGS = ("tag:yaml.org,2002:map", "tag:yaml.org,2002:seq")
# What SafeLoader constructs from a scalar; anything else (python/*, ...) is refused by name.
_PLAIN_SCALAR_TAGS = frozenset(
    f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "timestamp", "binary", "merge", "value")
)


class _Limits:
    def __init__(self) -> None:
        self.nodes = 0
        self.loader = yaml.SafeLoader("")  # one per document: building one per scalar is slow


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML composes nested nodes recursively: refuse depth before Python's stack runs out."""

    depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise ConfigError(
                    [FieldError("", f"the document nests deeper than {MAX_DEPTH} levels; flatten it", mark.line + 1)]
                )
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def _expanded_size(node: yaml.Node, memo: dict[int, int], active: set[int]) -> int:
    """Values the document would hold once every alias is expanded, without expanding them
    (a few hundred bytes of aliases can stand for billions of values)."""
    if id(node) in memo:
        return memo[id(node)]
    if id(node) in active:
        return 0  # a recursive alias: _construct names it
    active.add(id(node))
    children: list[yaml.Node] = []
    if isinstance(node, yaml.MappingNode):
        children = [n for pair in node.value for n in pair]
    elif isinstance(node, yaml.SequenceNode):
        children = list(node.value)
    size = 1
    for child in children:
        size += _expanded_size(child, memo, active)
        if size > MAX_NODES:
            break
    active.discard(id(node))
    memo[id(node)] = size
    return size


def load_yaml(text: str | bytes, source: str | None = None) -> tuple[Any, dict[str, int]]:
    """Parse `text`; return (data, {dotted.path: line}). Raises ConfigError with file:line:col."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError.single(
                "", f"the config is not valid UTF-8 (byte {exc.start}); save it as UTF-8", source
            ) from None
    try:
        node = yaml.compose(text, Loader=_BoundedLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        problem = exc.problem or exc.context or "syntax error"
        raise ConfigError(
            [FieldError("", f"YAML syntax error at {where}: {problem}", mark.line + 1 if mark else None)], source
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError.single("", f"YAML error: {exc}", source) from None
    except ConfigError as exc:
        raise ConfigError(exc.errors, source) from None
    if node is None:
        return None, {}
    if _expanded_size(node, {}, set()) > MAX_NODES:
        raise ConfigError.single(
            "",
            f"the document has more than {MAX_NODES} values (aliases count each time they are used); send the values themselves",
            source,
        )
    lines: dict[str, int] = {}
    data = _construct(node, "", lines, 0, _Limits(), source, set())
    return data, lines


def _construct(
    node: yaml.Node, path: str, lines: dict[str, int], depth: int, limits: _Limits, source: str | None, active: set[int]
) -> Any:
    if depth > MAX_DEPTH:
        raise ConfigError.single(path, f"the document nests deeper than {MAX_DEPTH} levels; flatten it", source)
    limits.nodes += 1
    if limits.nodes > MAX_NODES:
        raise ConfigError.single(
            path, f"the document has more than {MAX_NODES} values (aliases count each time they are used)", source
        )
    if not isinstance(node, yaml.ScalarNode) and node.tag not in _PLAIN_COLLECTION_TAGS:
        raise ConfigError(
            [
                FieldError(
                    path,
                    f"YAML tag {node.tag!r} is not allowed; configs hold plain values only",
                    node.start_mark.line + 1,
                )
            ],
            source,
        )
    if id(node) in active:
        raise ConfigError.single(
            path, "the document refers to itself through an alias; remove the recursive alias", source
        )
    if isinstance(node, yaml.MappingNode):
        active.add(id(node))
        out: dict[str, Any] = {}
        if any(k.tag == "tag:yaml.org,2002:merge" for k, _ in node.value):
            yaml.SafeLoader("").flatten_mapping(node)  # resolve `<<: *anchor` merge keys in place
        for key_node, value_node in node.value:
            key = _scalar(key_node, path, source, limits.loader)
            if not isinstance(key, (str, int, float, bool)) or key is None:
                raise ConfigError.single(
                    path, f"mapping keys must be plain scalars (line {key_node.start_mark.line + 1})", source
                )
            key = str(key)
            sub = f"{path}.{key}" if path else key
            if key in out:
                raise ConfigError(
                    [FieldError(sub, "this key appears twice in one mapping; keep one", key_node.start_mark.line + 1)],
                    source,
                )
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
    return _scalar(node, path, source, limits.loader)


def _scalar(node: yaml.Node, path: str, source: str | None, loader: yaml.SafeLoader | None = None) -> Any:
    if not isinstance(node, yaml.ScalarNode):
        raise ConfigError.single(path, f"expected a plain value (line {node.start_mark.line + 1})", source)
    if node.tag in _PLAIN_SCALAR_TAGS or node.tag == "!":
        loader = loader or yaml.SafeLoader("")
        try:
            return loader.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError) as exc:  # ValueError: an int longer than Python converts
            raise ConfigError(
                [FieldError(path, f"cannot read this value: {exc}", node.start_mark.line + 1)], source
            ) from None
    raise ConfigError(
        [
            FieldError(
                path, f"YAML tag {node.tag!r} is not allowed; configs hold plain values only", node.start_mark.line + 1
            )
        ],
        source,
    )


def parse_scalar(text: str) -> Any:
    """Parse the value of a `--set key=value` override as a YAML scalar or flow list/mapping."""
    data, _ = load_yaml(text if text.strip() else "''", source="--set")
    return data


def dump_yaml(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None, allow_unicode=True)

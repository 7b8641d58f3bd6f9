"""Safe YAML reading that remembers where each value came from.

Only plain YAML is accepted (no tags that construct Python objects). Every mapping key's line is
recorded under its dotted path so that a config error can point at the line to edit.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.resolver import Resolver

from gradloop.errors import ConfigError, FieldError

# Bounds that keep a hostile document from costing the service unbounded memory or time.
MAX_DEPTH = 64
MAX_NODES = 100_000


_PLAIN_COLLECTION_TAGS = ("tag:yaml.org,2002:map", "tag:yaml.org,2002:seq")
# What SafeLoader constructs from a scalar; anything else (python/*, ...) is refused by name.
_PLAIN_SCALAR_TAGS = frozenset(
    f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "timestamp", "binary", "merge", "value")
)


if yaml.__with_libyaml__:
    from yaml.cyaml import CParser  # type: ignore[attr-defined]

    class _Composing(Composer, CParser, SafeConstructor, Resolver):
        """libyaml's parser (C) for the events, PyYAML's composer (Python, before CParser in the
        MRO) for the nodes, so that composing can be counted: scanning is most of a parse's
        cost, and in C it is several times faster."""

        def __init__(self, stream: str) -> None:
            CParser.__init__(self, stream)
            Composer.__init__(self)
            SafeConstructor.__init__(self)
            Resolver.__init__(self)

else:  # a PyYAML built without libyaml: the same, all in Python
    _Composing = yaml.SafeLoader  # type: ignore[misc,assignment]


class _CountingLoader(_Composing):
    """Counts values while the document is composed and stops at MAX_NODES there, so a large or
    alias-heavy document costs no more than the limit allows. An alias counts as the values it
    stands for (a few hundred bytes of aliases can stand for billions), without expanding it.
    PyYAML composes nested nodes recursively: depth is refused before Python's stack runs out."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.depth = 0
        self.nodes = 0
        self.anchored_sizes: dict[int, int] = {}  # id(anchored node) -> values it expands to

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            target = self.anchors.get(event.anchor)
            # A recursive alias (its node not finished yet) counts once; _construct names it.
            self._count(self.anchored_sizes.get(id(target), 1), event)
            return super().compose_node(parent, index)
        if self.depth >= MAX_DEPTH:
            raise ConfigError(
                [FieldError("", f"the document nests deeper than {MAX_DEPTH} levels; flatten it", _line(event))]
            )
        before = self.nodes
        self._count(1, event)
        self.depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self.depth -= 1
        if getattr(event, "anchor", None) is not None:
            self.anchored_sizes[id(node)] = self.nodes - before
        return node

    def _count(self, n: int, event: Any) -> None:
        self.nodes += n
        if self.nodes > MAX_NODES:
            raise ConfigError(
                [
                    FieldError(
                        "",
                        f"the document has more than {MAX_NODES} values (aliases count each time they are used); "
                        "send a smaller config",
                        _line(event),
                    )
                ]
            )


def _line(event: Any) -> int | None:
    mark = getattr(event, "start_mark", None)
    return mark.line + 1 if mark is not None else None


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
        loader = _CountingLoader(text)
        try:
            node = loader.get_single_node()
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        problem = exc.problem or exc.context or "syntax error"
        message = f"YAML syntax error at {where}: {problem}"
        if "maximum nesting depth" in problem:  # libyaml's own bound (1000), met before ours when scanning ahead
            message = f"the document nests deeper than {MAX_DEPTH} levels; flatten it"
        raise ConfigError([FieldError("", message, mark.line + 1 if mark else None)], source) from None
    except yaml.YAMLError as exc:
        raise ConfigError.single("", f"YAML error: {exc}", source) from None
    except ConfigError as exc:
        raise ConfigError(exc.errors, source) from None
    if node is None:
        return None, {}
    lines: dict[str, int] = {}
    # One constructor per document for the scalars: building one per scalar is slow.
    data = _construct(node, "", lines, 0, yaml.SafeLoader(""), source, set())
    return data, lines


def _construct(
    node: yaml.Node,
    path: str,
    lines: dict[str, int],
    depth: int,
    loader: yaml.SafeLoader,
    source: str | None,
    active: set[int],
) -> Any:
    # Composing counted every value (aliases expanded); depth is checked again because aliases
    # nest what they stand for deeper than the text that names them.
    if depth > MAX_DEPTH:
        raise ConfigError.single(path, f"the document nests deeper than {MAX_DEPTH} levels; flatten it", source)
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
        _merge(node, path, loader, source)
        for key_node, value_node in node.value:
            key = _scalar(key_node, path, source, loader)
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
            out[key] = _construct(value_node, sub, lines, depth + 1, loader, source, active)
        active.discard(id(node))
        return out
    if isinstance(node, yaml.SequenceNode):
        active.add(id(node))
        items = []
        for i, item in enumerate(node.value):
            sub = f"{path}.{i}" if path else str(i)
            lines.setdefault(sub, item.start_mark.line + 1)
            items.append(_construct(item, sub, lines, depth + 1, loader, source, active))
        active.discard(id(node))
        return items
    return _scalar(node, path, source, loader)


def _merge(node: yaml.MappingNode, path: str, loader: yaml.SafeLoader, source: str | None) -> None:
    """Resolve `<<: *anchor` merge keys in place, by YAML's rules: the mapping's own keys win
    over merged ones, and of several merged mappings the first listed wins (only a key the
    mapping itself gives twice is an error). A merge of something other than mappings is the
    user's error, named by its key."""
    merges = [k for k, _ in node.value if k.tag == "tag:yaml.org,2002:merge"]
    if not merges:
        return
    own = len(node.value) - len(merges)
    try:
        loader.flatten_mapping(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or merges[0].start_mark
        raise ConfigError(
            [
                FieldError(
                    f"{path}.<<" if path else "<<",
                    "the merge key << takes a mapping or a list of mappings (<<: *defaults); "
                    f"{exc.problem or 'it got something else'}",
                    mark.line + 1,
                )
            ],
            source,
        ) from None
    # flatten_mapping puts the merged pairs first, later-listed mappings before earlier ones.
    merged, own_pairs = node.value[: len(node.value) - own], node.value[len(node.value) - own :]
    taken = {k.value for k, _ in own_pairs if isinstance(k, yaml.ScalarNode)}
    kept: list[tuple[yaml.Node, yaml.Node]] = []
    for key, value in reversed(merged):
        name = key.value if isinstance(key, yaml.ScalarNode) else None  # other keys are refused later
        if name is None or name not in taken:
            kept.append((key, value))
            taken.add(name)
    node.value = kept[::-1] + own_pairs


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

"""Turning "anything a user passes" into ordered, named, validated optimizer param groups.

Two steps, kept apart so that the optimizer factory can validate options in between:

1. `collect(params)` reads what the user passed -- a tensor, a list/tuple/generator of tensors,
   an nn.Module, named parameters, a dict name->tensor, or a list of param-group dicts -- into
   `ParamSource`s: named tensors plus the option overrides of that source. It rejects what an
   optimizer cannot use (sets, non-tensors, non-leaf tensors, one tensor given twice) and drops
   frozen parameters, failing only when nothing trainable is left.
2. `build_param_groups(sources, rules=..., no_weight_decay=..., weight_decay=...)` splits the
   sources by the config's `param_groups` rules (fnmatch on names, first match wins) and moves
   biases and 1-D parameters into weight_decay=0 groups.

Names: named inputs keep their names ("layers.0.weight"); unnamed tensors are named by where
they came from ("params.0", or "groups.1.params.0" inside the second group dict).

Order (deterministic, documented in README): sources in the order given; within a source the
default group (parameters no rule matched) first, then one group per rule in rule order; each
of those is followed by its "/no_decay" twin. Parameters keep model order inside every group.
Empty groups are left out.

Each group is a dict torch.optim accepts: "params" (tensors), "param_names" (torch >= 2.6
stores these in state_dict and checks them on load), "group_name", and option overrides.
"""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from gradloop.errors import ParamsError

DEFAULT_GROUP = "default"
NO_DECAY_SUFFIX = "/no_decay"
# Keys of a param-group dict that are not optimizer options.
_GROUP_META = ("params", "param_names", "group_name")


@dataclass
class ParamSource:
    """One place parameters came from: the whole input, or one param-group dict of it."""

    label: str  # "params" or "groups.1": how messages refer to this source
    named: list[tuple[str, torch.Tensor]]  # trainable parameters, in the order given
    options: dict[str, Any] = field(default_factory=dict)  # overrides from a group dict
    group_name: str | None = None  # a name the user gave the group dict
    frozen: list[str] = field(default_factory=list)  # names of requires_grad=False parameters dropped


# -- step 1: reading the input ----------------------------------------------------------------


def collect(params: Any) -> list[ParamSource]:
    """Read any accepted form of `params` into sources; raise ParamsError saying what to change."""
    if _is_group_list_candidate(params):
        items = list(params)
        if items and all(isinstance(g, Mapping) for g in items):
            sources = [_read_group(g, i) for i, g in enumerate(items)]
            _check_no_shared(sources)
            _check_some_trainable(params, sources)
            return sources
        params = items  # a generator is consumed once: hand the list on
    if _is_group_dict(params):
        sources = [_read_group(params, 0)]  # a single group dict, not wrapped in a list
    else:
        named, frozen = _read_params(params, "params")
        sources = [ParamSource("params", named, frozen=frozen)]
    _check_no_shared(sources)
    _check_some_trainable(params, sources)
    return sources


def _is_group_list_candidate(params: Any) -> bool:
    return isinstance(params, (list, tuple)) or inspect.isgenerator(params) or isinstance(params, Iterator)


def _is_group_dict(obj: Any) -> bool:
    # {"params": ..., "lr": ...} is a group; {"params": t1, "other": t2} is a dict name->tensor
    # whose model happens to have a parameter called "params".
    if not isinstance(obj, Mapping) or "params" not in obj:
        return False
    return len(obj) == 1 or not all(isinstance(v, torch.Tensor) for v in obj.values())


def _read_group(group: Mapping[str, Any], index: int) -> ParamSource:
    label = f"groups.{index}"
    if "params" not in group:
        raise ParamsError(
            f"{label} has no 'params' key (keys: {', '.join(map(str, group)) or 'none'}); "
            "each param-group dict needs {'params': <tensors or a module>, ...options}"
        )
    named, frozen = _read_params(group["params"], f"{label}.params")
    names = group.get("param_names")
    if names is not None:
        # A group copied from optimizer.param_groups carries its own names: keep them.
        given = list(group["params"]) if not isinstance(group["params"], torch.Tensor) else [group["params"]]
        if len(names) != len(given) or not all(isinstance(n, str) for n in names):
            raise ParamsError(
                f"{label}.param_names has {len(names)} entries for {len(given)} parameters; "
                "give one string per parameter, or leave param_names out"
            )
        by_id = {id(t): n for n, t in zip(names, given)}
        named = [(by_id.get(id(t), n), t) for n, t in named]
    group_name = group.get("group_name")
    if group_name is not None and not isinstance(group_name, str):
        raise ParamsError(f"{label}.group_name is a {type(group_name).__name__}; give a string")
    options = {k: v for k, v in group.items() if k not in _GROUP_META}
    return ParamSource(label, named, options, group_name, frozen)


def _read_params(params: Any, where: str) -> tuple[list[tuple[str, torch.Tensor]], list[str]]:
    """Named trainable tensors of one `params` value, and the names of the frozen ones dropped."""
    if isinstance(params, torch.Tensor):
        pairs = [(f"{where}.0", params)]
        labels = [where]
    elif isinstance(params, nn.Module):
        pairs = list(params.named_parameters())
        labels = [f"{type(params).__name__} parameter {n!r}" for n, _ in pairs]
    elif isinstance(params, (set, frozenset)):
        raise ParamsError(
            f"{where} is a {type(params).__name__}, which has no order, so optimizer state could not be "
            "matched on resume; pass a list (e.g. list(model.parameters())) or the module itself"
        )
    elif isinstance(params, Mapping):
        pairs = []
        for key, value in params.items():
            if not isinstance(key, str):
                raise ParamsError(
                    f"{where} has a key of type {type(key).__name__} ({key!r}); parameter names must be strings"
                )
            pairs.append((key, value))
        labels = [f"{where}[{k!r}]" for k, _ in pairs]
    elif isinstance(params, (str, bytes)) or params is None or not isinstance(params, Iterable):
        raise ParamsError(
            f"{where} is a {type(params).__name__}; pass a tensor, a list of tensors, an nn.Module, "
            "named parameters, a dict name->tensor or a list of param-group dicts"
        )
    else:
        pairs, labels = [], []
        for i, item in enumerate(params):
            if _is_name_tensor_pair(item):
                pairs.append((item[0], item[1]))
                labels.append(f"{where}.{i} ({item[0]!r})")
            else:
                pairs.append((f"{where}.{i}", item))
                labels.append(f"{where}.{i}")
    if not pairs:
        raise ParamsError(f"{where} is empty; pass the model or the tensors to optimize")

    kept: list[tuple[str, torch.Tensor]] = []
    seen: dict[int, str] = {}
    frozen: list[str] = []
    for (name, tensor), label in zip(pairs, labels):
        if not isinstance(tensor, torch.Tensor):
            raise ParamsError(f"{label} is a {type(tensor).__name__}, not a tensor; {_hint_for(tensor)}")
        if not tensor.is_leaf:
            made_by = type(tensor.grad_fn).__name__ if tensor.grad_fn is not None else "an operation"
            raise ParamsError(
                f"{label} is not a leaf tensor (it was computed by {made_by}), so the optimizer's updates would "
                "never reach the tensor you created; pass that leaf tensor, or x.detach().requires_grad_() for a new "
                "one"
            )
        if id(tensor) in seen:
            raise ParamsError(f"{label} is the same tensor as {seen[id(tensor)]}; pass each parameter once")
        seen[id(tensor)] = label
        if not tensor.requires_grad:
            frozen.append(name)
            continue
        kept.append((name, tensor))
    return kept, frozen


def _is_name_tensor_pair(item: Any) -> bool:
    return isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str) and isinstance(item[1], torch.Tensor)


def _hint_for(obj: Any) -> str:
    if isinstance(obj, nn.Module):
        return "pass the module itself (not inside a list), or its .parameters(), or one param-group dict per module"
    if isinstance(obj, Mapping):
        return "param-group dicts go in a list of their own, not mixed with tensors"
    if isinstance(obj, (list, tuple)):
        return "flatten the list, or make it a param-group dict {'params': [...]}"
    return "pass tensors created with requires_grad=True (or nn.Parameter)"


def _check_no_shared(sources: Sequence[ParamSource]) -> None:
    where: dict[int, str] = {}
    for src in sources:
        for name, tensor in src.named:
            here = f"{src.label} ({name!r})" if len(sources) > 1 else repr(name)
            if id(tensor) in where:
                raise ParamsError(
                    f"one parameter is in two groups: {where[id(tensor)]} and {here}; put each parameter in one group "
                    "only"
                )
            where[id(tensor)] = here


def _check_some_trainable(params: Any, sources: Sequence[ParamSource]) -> None:
    if any(src.named for src in sources):
        return
    frozen = sum(len(src.frozen) for src in sources)
    if isinstance(params, nn.Module):
        what = f"all {frozen} parameters of {type(params).__name__} are frozen (requires_grad=False)"
    elif isinstance(params, torch.Tensor):
        what = "the tensor passed as params does not require grad"
    elif len(sources) > 1:
        what = f"all {frozen} parameters in the {len(sources)} param groups are frozen (requires_grad=False)"
    else:
        what = f"all {frozen} tensors in {sources[0].label} are frozen (requires_grad=False)"
    raise ParamsError(
        f"nothing to optimize: {what}; unfreeze what should train (p.requires_grad_(True)) "
        "or create the tensors with requires_grad=True"
    )


# -- step 2: groups ----------------------------------------------------------------------------


def build_param_groups(
    params: Any,
    *,
    rules: Sequence[Mapping[str, Any] | Any] = (),
    no_weight_decay: bool | None = None,
    weight_decay: float = 0.0,
) -> list[dict[str, Any]]:
    """Param-group dicts for torch.optim from any accepted `params` (or from `collect`'s sources).

    rules: `{"match": glob, **option_overrides}` (dicts or config ParamGroupRule models).
    no_weight_decay: None means on wherever a group's effective weight_decay is > 0.
    weight_decay: the optimizer-wide value, used where neither a group nor a rule overrides it.
    """
    sources = params if _is_sources(params) else collect(params)
    parsed_rules = [_rule_dict(r, i) for i, r in enumerate(rules)]
    _check_rules_match(sources, parsed_rules)

    groups: list[dict[str, Any]] = []
    for src in sources:
        base = src.group_name or (DEFAULT_GROUP if len(sources) == 1 else src.label)
        buckets: list[list[tuple[str, torch.Tensor]]] = [[] for _ in range(len(parsed_rules) + 1)]
        for name, tensor in src.named:
            buckets[_first_match(name, parsed_rules) + 1].append((name, tensor))
        for slot, named in enumerate(buckets):
            if not named:
                continue
            options = dict(src.options)
            label = base
            if slot > 0:
                pattern, overrides = parsed_rules[slot - 1]
                options.update(overrides)
                label = pattern if len(sources) == 1 and src.group_name is None else f"{base}/{pattern}"
            groups.extend(_split_decay(label, named, options, no_weight_decay, weight_decay))
    return groups


def _is_sources(obj: Any) -> bool:
    return isinstance(obj, list) and bool(obj) and all(isinstance(s, ParamSource) for s in obj)


def _rule_dict(rule: Any, index: int) -> tuple[str, dict[str, Any]]:
    data = dict(rule) if isinstance(rule, Mapping) else rule.model_dump()
    pattern = data.pop("match", None)
    if not isinstance(pattern, str) or not pattern:
        raise ParamsError(f"param_groups.{index} has no 'match' glob; write e.g. {{match: 'encoder.*', lr: 1e-4}}")
    return pattern, data


def _first_match(name: str, rules: Sequence[tuple[str, dict[str, Any]]]) -> int:
    for i, (pattern, _) in enumerate(rules):
        if fnmatch.fnmatchcase(name, pattern):
            return i
    return -1


def _check_rules_match(sources: Sequence[ParamSource], rules: Sequence[tuple[str, dict[str, Any]]]) -> None:
    """A rule that matches no parameter name is a typo; one whose matches an earlier rule took is dead.

    A rule that matches only frozen parameters is fine (fine-tuning configs keep their rules while
    a backbone is frozen): it just produces no group.
    """
    trainable = [name for src in sources for name, _ in src.named]
    frozen = [name for src in sources for name in src.frozen]
    for i, (pattern, _) in enumerate(rules):
        hits = [n for n in trainable if fnmatch.fnmatchcase(n, pattern)]
        if not hits and not any(fnmatch.fnmatchcase(n, pattern) for n in frozen):
            names = trainable + frozen
            sample = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
            raise ParamsError(
                f"param_groups.{i} match {pattern!r} matches no parameter; "
                f"parameter names look like: {sample} (globs use fnmatch: * ? [seq])"
            )
        if hits and all(_first_match(n, rules) < i for n in hits):
            earlier = rules[_first_match(hits[0], rules)][0]
            raise ParamsError(
                f"param_groups.{i} match {pattern!r} gets no parameter because an earlier rule ({earlier!r}) "
                "takes all it matches (first match wins); put the more specific rule first"
            )


def _is_no_decay(name: str, tensor: torch.Tensor) -> bool:
    return tensor.ndim <= 1 or name.rsplit(".", 1)[-1] == "bias"


def _split_decay(
    label: str,
    named: list[tuple[str, torch.Tensor]],
    options: dict[str, Any],
    no_weight_decay: bool | None,
    weight_decay: float,
) -> list[dict[str, Any]]:
    effective = float(options.get("weight_decay", weight_decay) or 0.0)
    if no_weight_decay is False or effective <= 0:
        return [_group(label, named, options)]
    decay = [(n, t) for n, t in named if not _is_no_decay(n, t)]
    no_decay = [(n, t) for n, t in named if _is_no_decay(n, t)]
    out = []
    if decay:
        out.append(_group(label, decay, options))
    if no_decay:
        out.append(_group(label + NO_DECAY_SUFFIX, no_decay, {**options, "weight_decay": 0.0}))
    return out


def _group(label: str, named: list[tuple[str, torch.Tensor]], options: dict[str, Any]) -> dict[str, Any]:
    return {
        "params": [t for _, t in named],
        "param_names": [n for n, _ in named],
        "group_name": label,
        **options,
    }

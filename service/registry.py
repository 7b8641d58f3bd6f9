"""Plugin registries: one generic Registry type for every kind of plugin.

A plugin is a small frozen description: a name, a description, a pydantic model of its options,
a factory, and a few capabilities (e.g. whether a scheduler steps per optimizer step or per
epoch). Built-in plugins live in `plugins/<kind>/`, one module each, and register themselves
when that package is imported. Third-party plugins arrive through the entry-point groups
`gradloop.<kind>` and are loaded the first time a registry is used; a plugin that fails to load
is a warning that names it and its error, never a crash.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from types import MappingProxyType
from typing import Any

from pydantic import BaseModel, ConfigDict

from gradloop.errors import PluginLoadError, PluginNotFoundError, singular

KINDS = ("optimizers", "schedulers", "models", "datasets", "losses", "metrics")


class NoOptions(BaseModel):
    """Options model of a plugin that takes none."""

    model_config = ConfigDict(extra="forbid")


class PluginLoadWarning(UserWarning):
    """A third-party plugin could not be loaded; the rest of gradloop goes on without it."""


@dataclass(frozen=True)
class Plugin:
    """What a registry knows of one plugin.

    factory: called as documented for its kind (see README, "Writing a plugin"), always with
    an instance of `options` as its `options` argument.
    capabilities: facts the trainer needs without building the plugin, e.g.
    {"interval": "step"} for a scheduler or {"closure": True} for L-BFGS.
    """

    name: str
    factory: Callable[..., Any]
    options: type[BaseModel] = NoOptions
    description: str = ""
    capabilities: Mapping[str, Any] = field(default_factory=dict)
    override: bool = False
    source: str = "builtin"

    def __post_init__(self) -> None:
        object.__setattr__(self, "capabilities", MappingProxyType(dict(self.capabilities)))

    def parse_options(self, options: Mapping[str, Any] | BaseModel | None) -> BaseModel:
        """Validate raw options with this plugin's model (raises pydantic.ValidationError)."""
        if isinstance(options, self.options):
            return options
        if isinstance(options, BaseModel):
            options = options.model_dump()
        return self.options.model_validate(dict(options or {}))

    def options_schema(self) -> dict:
        return self.options.model_json_schema()

    def describe(self) -> dict:
        """A JSON-ready description: name, description, capabilities and each option."""
        schema = self.options_schema()
        required = set(schema.get("required", []))
        opts = []
        for name, finfo in self.options.model_fields.items():
            prop = schema.get("properties", {}).get(name, {})
            opts.append(
                {
                    "name": name,
                    "type": _type_label(prop),
                    "default": None if finfo.is_required() else _jsonable(finfo.get_default(call_default_factory=True)),
                    "required": name in required,
                    "constraints": {k: prop[k] for k in _CONSTRAINT_KEYS if k in prop},
                    "description": finfo.description or "",
                }
            )
        return {
            "name": self.name,
            "description": self.description,
            "source": self.source,
            # Hooks (a dataset's `files` callable) are code for the policy, not facts for a client.
            "capabilities": {k: _jsonable(v) for k, v in self.capabilities.items() if not callable(v)},
            "options": opts,
            "schema": schema,
        }


_CONSTRAINT_KEYS = (
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "enum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "pattern",
)


def _type_label(prop: dict) -> str:
    if "type" in prop:
        t = prop["type"]
        if t == "array" and isinstance(prop.get("prefixItems"), list):
            return f"tuple[{', '.join(_type_label(p) for p in prop['prefixItems'])}]"
        if t == "array" and isinstance(prop.get("items"), dict) and prop["items"]:
            return f"list[{_type_label(prop['items'])}]"
        return str(t)
    if "enum" in prop:
        return "enum"
    if "anyOf" in prop:
        return " | ".join(_type_label(p) for p in prop["anyOf"])
    if "const" in prop:
        return repr(prop["const"])
    return "any"


def _jsonable(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    return repr(value)


class DuplicatePluginError(ValueError):
    """Two plugins of one kind claim the same name and the later one did not ask to override."""


class Registry:
    """Name -> Plugin for one kind, filled by built-ins and by entry points on first use."""

    def __init__(self, kind: str, builtin_package: str | None = None):
        if kind not in KINDS:
            raise ValueError(f"unknown plugin kind {kind!r}; expected one of {KINDS}")
        self.kind = kind
        self.group = f"gradloop.{kind}"
        self._builtin_package = builtin_package if builtin_package is not None else f"gradloop.plugins.{kind}"
        self._plugins: dict[str, Plugin] = {}
        self._loaded = False
        self._loading = False
        self._lock = threading.RLock()
        self.load_warnings: list[str] = []
        self._failed: dict[str, str] = {}  # entry-point name -> why it failed to load

    # -- registration -------------------------------------------------------------------
    def register(
        self,
        name: str,
        *,
        options: type[BaseModel] = NoOptions,
        description: str | None = None,
        override: bool = False,
        **capabilities: Any,
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator that registers a factory under `name`; the factory is returned unchanged."""

        def decorate(factory: Callable[..., Any]) -> Callable[..., Any]:
            desc = description if description is not None else _first_line(factory.__doc__)
            self.add(
                Plugin(name, factory, options, desc, capabilities, override, _source_of(factory)),
            )
            return factory

        return decorate

    def add(self, plugin: Plugin) -> Plugin:
        with self._lock:
            existing = self._plugins.get(plugin.name)
            if existing is not None and not plugin.override:
                raise DuplicatePluginError(
                    f"{singular(self.kind)} plugin {plugin.name!r} from {plugin.source} clashes with the one "
                    f"from {existing.source}; rename it, or set override=True to replace it on purpose"
                )
            self._plugins[plugin.name] = plugin
            return plugin

    def unregister(self, name: str) -> None:
        with self._lock:
            self._plugins.pop(name, None)

    # -- lookup -------------------------------------------------------------------------
    def get(self, name: str) -> Plugin:
        self._ensure_loaded()
        try:
            return self._plugins[name]
        except KeyError:
            if name in self._failed:
                raise PluginLoadError(self.kind, name, self._failed[name]) from None
            known = sorted(self._plugins)
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
            raise PluginNotFoundError(self.kind, name, known, close[0] if close else None) from None

    def __contains__(self, name: object) -> bool:
        self._ensure_loaded()
        return name in self._plugins

    def __iter__(self) -> Iterator[Plugin]:
        self._ensure_loaded()
        return iter([self._plugins[n] for n in sorted(self._plugins)])

    def names(self) -> list[str]:
        self._ensure_loaded()
        return sorted(self._plugins)

    def parse_options(self, name: str, options: Mapping[str, Any] | None) -> BaseModel:
        return self.get(name).parse_options(options)

    def build(
        self, name: str, options: Mapping[str, Any] | BaseModel | None = None, /, *args: Any, **kwargs: Any
    ) -> Any:
        """Validate `options` and call the plugin's factory(*args, options=..., **kwargs)."""
        plugin = self.get(name)
        return plugin.factory(*args, options=plugin.parse_options(options), **kwargs)

    def options_schema(self, name: str) -> dict:
        return self.get(name).options_schema()

    # -- loading ------------------------------------------------------------------------
    def _ensure_loaded(self) -> None:
        # Only `_loaded` may skip the lock: another thread's load in progress (`_loading`) must
        # be waited for, or it sees a half-filled registry; the loading thread itself re-enters.
        if self._loaded:
            return
        with self._lock:
            if self._loaded or self._loading:
                return
            self._loading = True
            try:
                if self._builtin_package:
                    _import_package_modules(self._builtin_package)
                self._load_entry_points()
                self._loaded = True
            finally:
                self._loading = False

    def _load_entry_points(self) -> None:
        for ep in entry_points(group=self.group):
            try:
                obj = ep.load()
                plugin = _as_plugin(ep.name, obj, source=f"entry point {ep.value}")
                if plugin is not None:
                    self.add(plugin)
            except Exception as exc:  # a broken plugin must not take gradloop down
                dist = getattr(ep, "dist", None)
                package = f"package {dist.name}, " if dist is not None else ""
                error = f"{type(exc).__name__}: {_one_line(exc)}"
                msg = (
                    f"{singular(self.kind)} plugin {ep.name!r} ({package}entry point {ep.value}) "
                    f"failed to load: {error}"
                )
                self._failed[ep.name] = error
                self.load_warnings.append(msg)
                warnings.warn(msg, PluginLoadWarning, stacklevel=2)

    def reload(self) -> None:
        """Forget entry-point plugins and load them again (tests, after installing a plugin).
        Plugins registered in code (built-ins, a test's or an application's own) stay."""
        with self._lock:
            self._plugins = {n: p for n, p in self._plugins.items() if not p.source.startswith("entry point")}
            self.load_warnings = []
            self._failed = {}
            self._loaded = False
        self._ensure_loaded()


def _as_plugin(ep_name: str, obj: Any, source: str) -> Plugin | None:
    """An entry point may name a Plugin, or a module that registered itself on import."""
    if isinstance(obj, Plugin):
        if obj.name != ep_name:
            raise ValueError(f"entry point name {ep_name!r} differs from the plugin's name {obj.name!r}")
        return Plugin(obj.name, obj.factory, obj.options, obj.description, obj.capabilities, obj.override, source)
    if isinstance(obj, type(importlib)):
        return None
    raise TypeError(f"expected a gradloop Plugin object or a module, got {type(obj).__name__}")


def _import_package_modules(package: str) -> None:
    pkg = importlib.import_module(package)
    for info in pkgutil.iter_modules(pkg.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package}.{info.name}")


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else "(no message)"


def _first_line(doc: str | None) -> str:
    return (doc or "").strip().split("\n", 1)[0].strip()


def _source_of(factory: Callable[..., Any]) -> str:
    module = getattr(factory, "__module__", "") or ""
    return "builtin" if module.startswith("gradloop.plugins.") else f"module {module}"


optimizers = Registry("optimizers")
schedulers = Registry("schedulers")
models = Registry("models")
datasets = Registry("datasets")
losses = Registry("losses")
metrics = Registry("metrics")

REGISTRIES: dict[str, Registry] = {
    "optimizers": optimizers,
    "schedulers": schedulers,
    "models": models,
    "datasets": datasets,
    "losses": losses,
    "metrics": metrics,
}


def registry(kind: str) -> Registry:
    try:
        return REGISTRIES[kind]
    except KeyError:
        raise PluginNotFoundError(
            "kinds", kind, list(REGISTRIES), next(iter(difflib.get_close_matches(kind, REGISTRIES, n=1)), None)
        ) from None

"""The generic Registry: registration, lookup errors, schemas, and third-party entry points."""

from __future__ import annotations

import dataclasses
import textwrap
import warnings
from pathlib import Path

import pytest
from pydantic import BaseModel, Field

from gradloop import registry
from gradloop.errors import PluginNotFoundError
from gradloop.registry import DuplicatePluginError, Plugin, PluginLoadWarning, Registry


class _Opts(BaseModel):
    lr: float = Field(0.1, gt=0, description="step size")
    name: str = "x"


def _factory(*, options):
    return options


def test_register_lookup_and_build_validates_options():
    reg = Registry("losses", builtin_package="")
    reg.register("toy", options=_Opts, description="a toy")(_factory)
    assert reg.names() == ["toy"]
    assert reg.build("toy", {"lr": 0.5}).lr == 0.5
    with pytest.raises(Exception) as info:
        reg.build("toy", {"lr": -1})
    assert "greater than 0" in str(info.value)


def test_unknown_name_lists_registered_names_with_suggestion():
    reg = Registry("losses", builtin_package="")
    for name in ("cross_entropy", "mse", "huber"):
        reg.register(name)(_factory)
    with pytest.raises(PluginNotFoundError) as info:
        reg.get("cross_entopy")
    msg = str(info.value)
    assert "Did you mean 'cross_entropy'?" in msg
    assert "cross_entropy, huber, mse" in msg


def test_duplicate_is_an_error_unless_override():
    reg = Registry("models", builtin_package="")
    reg.register("m", description="first")(_factory)
    with pytest.raises(DuplicatePluginError, match="override=True"):
        reg.register("m", description="second")(_factory)
    reg.register("m", description="third", override=True)(_factory)
    assert reg.get("m").description == "third"


def test_describe_gives_types_defaults_constraints_and_schema():
    reg = Registry("optimizers", builtin_package="")
    reg.register("toy", options=_Opts, description="a toy", closure=False)(_factory)
    d = reg.get("toy").describe()
    lr = next(o for o in d["options"] if o["name"] == "lr")
    assert lr == {
        "name": "lr",
        "type": "number",
        "default": 0.1,
        "required": False,
        "constraints": {"exclusiveMinimum": 0.0},
        "description": "step size",
    }
    assert d["schema"]["properties"]["lr"]["exclusiveMinimum"] == 0
    assert d["capabilities"] == {"closure": False}


def test_every_builtin_kind_is_populated_and_has_schemas():
    for kind, reg in registry.REGISTRIES.items():
        names = reg.names()
        assert names, f"no {kind} registered"
        for name in names:
            schema = reg.options_schema(name)
            assert schema.get("type") == "object", (kind, name)


def test_lion_arrives_through_the_projects_own_entry_point():
    plugin = registry.optimizers.get("lion")
    assert plugin.source.startswith("entry point gradloop.plugins.optimizers.lion")


def _write_dist(root: Path, dist: str, module: str, code: str, entry_points: str) -> None:
    """A minimal installed distribution: a module and a .dist-info with entry_points.txt."""
    (root / f"{module}.py").write_text(textwrap.dedent(code))
    info = root / f"{dist}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))


def test_third_party_plugins_load_lazily_and_broken_ones_only_warn(tmp_path, monkeypatch):
    _write_dist(
        tmp_path,
        "gradloop_toy",
        "gradloop_toy",
        """
        from pydantic import BaseModel
        from gradloop.registry import Plugin
        LOADED = True
        class Opts(BaseModel):
            scale: float = 2.0
        def make(*, options):
            return options.scale
        plugin = Plugin(name="toy", factory=make, options=Opts, description="a third-party loss")
        """,
        """
        [gradloop.losses]
        toy = gradloop_toy:plugin
        """,
    )
    _write_dist(
        tmp_path,
        "gradloop_broken",
        "gradloop_broken",
        "raise ImportError('needs a library that is not installed')\n",
        """
        [gradloop.losses]
        broken = gradloop_broken:plugin
        """,
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry("losses", builtin_package="")
    import sys

    assert "gradloop_toy" not in sys.modules  # nothing is imported before the registry is used
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        names = reg.names()
    assert "toy" in names and "broken" not in names
    assert reg.build("toy", {"scale": 3}) == 3.0
    assert reg.get("toy").source == "entry point gradloop_toy:plugin"
    msgs = [str(w.message) for w in caught if issubclass(w.category, PluginLoadWarning)]
    assert len(msgs) == 1
    assert "'broken'" in msgs[0] and "gradloop_broken:plugin" in msgs[0] and "needs a library" in msgs[0]
    assert reg.load_warnings == msgs


def test_entry_point_clashing_with_a_builtin_warns_unless_override(tmp_path, monkeypatch):
    _write_dist(
        tmp_path,
        "gradloop_clash",
        "gradloop_clash",
        """
        from gradloop.registry import Plugin
        plugin = Plugin(name="mse", factory=lambda *, options: "theirs", description="clash")
        override = Plugin(name="huber", factory=lambda *, options: "theirs", description="on purpose", override=True)
        """,
        """
        [gradloop.losses]
        mse = gradloop_clash:plugin
        huber = gradloop_clash:override
        """,
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry("losses", builtin_package="")
    reg.register("mse", description="ours")(lambda *, options: "ours")
    reg.register("huber", description="ours")(lambda *, options: "ours")
    with pytest.warns(PluginLoadWarning, match="'mse'.*clashes"):
        reg.names()
    assert reg.build("mse") == "ours"
    assert reg.build("huber") == "theirs"


def test_entry_point_name_must_match_plugin_name(tmp_path, monkeypatch):
    _write_dist(
        tmp_path,
        "gradloop_misnamed",
        "gradloop_misnamed",
        """
        from gradloop.registry import Plugin
        plugin = Plugin(name="other", factory=lambda *, options: 1)
        """,
        "[gradloop.models]\nmine = gradloop_misnamed:plugin\n",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry("models", builtin_package="")
    with pytest.warns(PluginLoadWarning, match="differs from the plugin's name"):
        assert reg.names() == []


def test_registry_lookup_of_unknown_kind():
    with pytest.raises(PluginNotFoundError, match="Did you mean 'models'"):
        registry.registry("modles")


def test_plugin_is_frozen():
    p = Plugin("p", _factory, capabilities={"interval": "step"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.name = "q"  # type: ignore[misc]
    with pytest.raises(TypeError):
        p.capabilities["interval"] = "epoch"  # type: ignore[index]


def test_messages_name_the_kind_in_the_singular():
    reg = Registry("losses", builtin_package="")
    reg.register("mse")(_factory)
    with pytest.raises(PluginNotFoundError, match="^unknown loss 'msee'"):
        reg.get("msee")

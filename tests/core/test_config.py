"""Config loading: YAML with line numbers, --set overrides, every error at once, plugin options."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from gradloop import load_config
from gradloop.config import RunConfig, apply_overrides, load_raw_text
from gradloop.errors import ConfigError

BASE = {
    "name": "cfg-test",
    "model": {"name": "mlp", "options": {"in_features": 4, "hidden": [8], "out_features": 3}},
    "data": {"name": "sklearn", "options": {"dataset": "iris"}, "batch_size": 16},
    "loss": {"name": "cross_entropy"},
    "optimizer": {"name": "sgd", "options": {"lr": 0.1, "momentum": 0.9}},
    "trainer": {"epochs": 2},
}


def write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_valid_config_fills_plugin_defaults():
    cfg = load_config(BASE)
    assert isinstance(cfg, RunConfig)
    assert cfg.optimizer.options["lr"] == 0.1
    assert "nesterov" in cfg.optimizer.options  # defaults of the plugin's options model are resolved
    assert cfg.trainer.grad_accum_steps == 1


def test_yaml_and_json_files_give_the_same_config(tmp_path):
    y = load_config(write(tmp_path, yaml.safe_dump(BASE)))
    j = load_config(write(tmp_path, json.dumps(BASE), "c.json"))
    assert y == j
    assert y.config_hash() == j.config_hash()


def test_yaml_syntax_error_names_file_line_and_column(tmp_path):
    path = write(tmp_path, "name: x\nmodel: {name: mlp\ndata: 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert str(path) in msg and "line 3" in msg and "column" in msg


def test_every_error_is_reported_at_once_with_path_value_and_line(tmp_path):
    text = yaml.safe_dump(BASE, sort_keys=False).replace("lr: 0.1", "lr: -0.5").replace("epochs: 2", "epochs: 0")
    text = text.replace("batch_size: 16", "batch_size: 16\n  batch_sise: 3")
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    by_path = {e.path: e for e in info.value.errors}
    assert set(by_path) >= {"optimizer.options.lr", "trainer.epochs", "data.batch_sise"}
    lr = by_path["optimizer.options.lr"]
    assert "-0.5" in lr.message and "greater than 0" in lr.message
    assert lr.line == text.splitlines().index("    lr: -0.5") + 1
    assert "did you mean 'batch_size'" in by_path["data.batch_sise"].message
    assert "allowed here:" in by_path["data.batch_sise"].message


def test_unknown_plugin_name_lists_names_with_did_you_mean():
    bad = {**BASE, "optimizer": {"name": "adamm", "options": {"lr": 0.1}}}
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    (e,) = info.value.errors
    assert e.path == "optimizer.name"
    assert "Did you mean 'adam'" in e.message and "sgd" in e.message


def test_unknown_plugin_option_is_named():
    bad = {**BASE, "optimizer": {"name": "sgd", "options": {"lr": 0.1, "momentun": 0.9}}}
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    (e,) = info.value.errors
    assert e.path == "optimizer.options.momentun"
    assert "momentum" in e.message


def test_param_group_options_are_validated_by_the_optimizer():
    bad = {
        **BASE,
        "optimizer": {
            "name": "sgd",
            "options": {"lr": 0.1},
            "param_groups": [{"match": "layers.0.*", "lr": -1}, {"match": "x", "betas": [0.9, 0.9]}],
        },
    }
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    paths = {e.path for e in info.value.errors}
    assert paths == {"optimizer.param_groups.0.lr", "optimizer.param_groups.1.betas"}


def test_overrides_parse_yaml_values_and_reach_nested_keys(tmp_path):
    path = write(tmp_path, yaml.safe_dump(BASE))
    cfg = load_config(
        path,
        [
            "optimizer.options.lr=0.05",
            "trainer.epochs=3",
            "model.options.hidden=[16, 8]",
            "optimizer.param_groups.0={match: 'layers.0.*', lr: 0.2}",
            "scheduler.name=step",
        ],
    )
    assert cfg.optimizer.options["lr"] == 0.05
    assert cfg.trainer.epochs == 3
    assert cfg.model.options["hidden"] == [16, 8]
    assert cfg.optimizer.param_groups[0].match == "layers.0.*"
    assert cfg.scheduler is not None and cfg.scheduler.name == "step"


def test_bad_overrides_are_config_errors():
    with pytest.raises(ConfigError, match="key.path=value"):
        apply_overrides(BASE, ["no-equals-sign"])
    with pytest.raises(ConfigError, match="not a mapping"):
        apply_overrides(BASE, ["name.sub=1"])
    with pytest.raises(ConfigError, match="past the end"):
        apply_overrides(BASE, ["optimizer.param_groups.3.lr=1"])


def test_cuda_on_a_machine_without_one_and_fp16_on_cpu_are_config_errors():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError) as info:
        load_config({**BASE, "device": "cuda:0"})
    assert info.value.errors[0].path == "device" and "no CUDA device" in info.value.errors[0].message
    with pytest.raises(ConfigError) as info:
        load_config({**BASE, "trainer": {"precision": "fp16"}})
    assert info.value.errors[0].path == "trainer.precision"


def test_import_paths_can_be_refused():
    cfg = {**BASE, "model": {"name": "torch.nn:Identity"}}
    assert load_config(cfg).model.name == "torch.nn:Identity"
    with pytest.raises(ConfigError) as info:
        load_config(cfg, allow_import_paths=False)
    assert info.value.errors[0].path == "model.name" and "refused" in info.value.errors[0].message
    with pytest.raises(ConfigError, match="cannot import module"):
        load_config({**BASE, "model": {"name": "no_such_pkg.mod:fn"}})


def test_yaml_tags_aliases_and_depth_are_bounded():
    with pytest.raises(ConfigError, match="not allowed"):
        load_raw_text("name: !!python/object/apply:os.system ['true']\n")
    laughs = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n" for p, c in zip("abcdefg", "bcdefgh")
    )
    with pytest.raises(ConfigError, match="more than"):
        load_raw_text(laughs)
    with pytest.raises(ConfigError, match="nests deeper"):
        load_raw_text("a: " + "[" * 100 + "]" * 100)
    with pytest.raises(ConfigError, match="UTF-8"):
        load_raw_text(b"name: \xff\xfe\n")
    with pytest.raises(ConfigError, match="appears twice"):
        load_raw_text("name: a\nname: b\n")


def test_yaml_merge_keys_follow_yaml_rules_and_refuse_non_mappings():
    data, _ = load_raw_text("a: &a {x: 1, y: 1}\nb: &b {x: 2, z: 2}\nc:\n  <<: [*a, *b]\n  y: 3\n")
    assert data["c"] == {"x": 1, "y": 3, "z": 2}  # own keys win, then the first mapping listed
    with pytest.raises(ConfigError, match="appears twice"):
        load_raw_text("a: &a {x: 1}\nc:\n  <<: *a\n  k: 1\n  k: 2\n")
    with pytest.raises(ConfigError) as info:
        load_raw_text("name: x\na:\n  <<: 5\n")
    assert info.value.errors[0].path == "a.<<" and info.value.errors[0].line == 3


def test_yaml_values_are_counted_while_parsing():
    """Over the limit is refused at the value that passes it (its line), not after reading it all."""
    with pytest.raises(ConfigError, match="more than 100000 values") as info:
        load_raw_text("".join(f"k{i}: 1\n" for i in range(100_000)))
    assert info.value.errors[0].line == 50_000


def test_top_level_must_be_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_lbfgs_cannot_accumulate():
    cfg = {**BASE, "optimizer": {"name": "lbfgs", "options": {"lr": 1.0}}, "trainer": {"grad_accum_steps": 2}}
    with pytest.raises(ConfigError) as info:
        load_config(cfg)
    assert info.value.errors[0].path == "trainer.grad_accum_steps"

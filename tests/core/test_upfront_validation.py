"""Everything a run would meet before its first step is reported at once (issue 18, item 1 and 11).

Field errors, cross-field rules, this machine's device and precision, and the model/data/loss fit
(which needs the dataset's shape) come in one ConfigError: fixing the first round never reveals a
second. A `--set` value that is wrong names the override, not the file's line.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gradloop.errors import ConfigError
from gradloop.fitcheck import DataShape, cached_shape, load_checked
from gradloop.runner import train


def _base(tmp_path: Path, **changes: object) -> dict:
    cfg = {
        "name": "upfront",
        "device": "cpu",
        "output_dir": str(tmp_path / "runs"),
        "model": {"name": "mlp", "options": {"in_features": 4, "hidden": [8], "out_features": 3}},
        "data": {"name": "sklearn", "options": {"dataset": "iris"}, "batch_size": 16},
        "loss": {"name": "cross_entropy"},
        "optimizer": {"name": "sgd", "options": {"lr": 0.1}},
        "trainer": {"epochs": 1},
        "tracking": {"enabled": False},
    }
    cfg.update(changes)
    return cfg


def _paths(exc: ConfigError) -> list[str]:
    return [e.path for e in exc.errors]


def test_field_cross_field_runtime_and_fit_errors_come_in_one_answer(tmp_path: Path) -> None:
    cfg = _base(
        tmp_path,
        # the fit: iris has 4 features and 3 classes
        model={"name": "mlp", "options": {"in_features": 32, "hidden": [8], "out_features": 3}},
        trainer={"epochs": 0, "grad_clip_norm": 1.0, "grad_clip_value": 0.5, "precision": "fp16"},
        optimizer={"name": "sgd", "options": {"lr": -1}},
        seeed=3,
    )
    with pytest.raises(ConfigError) as caught:
        load_checked(cfg)
    paths = _paths(caught.value)
    # trainer.epochs makes the trainer section invalid; the clip and precision rules need it
    # whole, so this config has them fixed one at a time below. The rest is all here at once.
    assert {"seeed", "trainer.epochs", "optimizer.options.lr", "model.options.in_features"} <= set(paths), paths

    cfg["trainer"]["epochs"] = 1
    with pytest.raises(ConfigError) as caught:
        load_checked(cfg)
    paths = _paths(caught.value)
    assert {
        "seeed",
        "optimizer.options.lr",
        "trainer.grad_clip_value",
        "trainer.precision",
        "model.options.in_features",
    } == set(paths), paths
    fit = next(e for e in caught.value.errors if e.path == "model.options.in_features")
    assert "4 features" in fit.message and "in_features: 4" in fit.message


def test_a_fit_mismatch_alone_fails_validation(tmp_path: Path) -> None:
    cfg = _base(tmp_path, model={"name": "mlp", "options": {"in_features": 4, "hidden": [8], "out_features": 7}})
    with pytest.raises(ConfigError) as caught:
        load_checked(cfg)
    assert _paths(caught.value) == ["model.options.out_features"]
    assert "3 classes" in str(caught.value)
    good = load_checked(_base(tmp_path))
    shape = cached_shape(good.data, good.seed)
    assert shape == DataShape("classification", 4, 3, 3)  # read once, kept as four numbers


def test_the_data_shape_is_read_once_per_data_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import gradloop.build

    built = []
    real = gradloop.build.build_data
    monkeypatch.setattr(gradloop.build, "build_data", lambda *a, **k: built.append(a[0].name) or real(*a, **k))
    # A built-in dataset says its shape from its options: nothing is loaded to check the fit.
    wine = {"name": "sklearn", "options": {"dataset": "wine"}, "batch_size": 4}
    load_checked(_base(tmp_path, data=wine, model={"name": "mlp", "options": {"in_features": 13, "out_features": 3}}))
    assert built == []
    # A CSV file is read once; the second check of the same data config is a lookup.
    (tmp_path / "t.csv").write_text("a,b,label\n" + "".join(f"{i},{i % 3},{'xyz'[i % 3]}\n" for i in range(30)))
    csv = {"name": "csv", "options": {"path": "t.csv", "target": "label"}, "batch_size": 4, "root": str(tmp_path)}
    cfg = _base(
        tmp_path, data=csv, model={"name": "mlp", "options": {"in_features": 2, "hidden": [4], "out_features": 3}}
    )
    load_checked(cfg)
    load_checked(cfg)
    assert built == ["csv"]
    cfg["model"]["options"]["in_features"] = 5
    with pytest.raises(ConfigError, match="data has 2 features"):
        load_checked(cfg)


@pytest.mark.parametrize(
    "options",
    [
        {"dataset": "digits"},
        {"dataset": "digits", "as_images": True},
        {"dataset": "iris"},
        {"dataset": "wine"},
        {"dataset": "breast_cancer"},
        {"dataset": "breast_cancer", "binary": True},
        {"dataset": "diabetes"},
    ],
)
def test_sklearn_shape_from_options_is_what_the_dataset_gives(options: dict) -> None:
    from gradloop.build import build_data
    from gradloop.config import DataConfig
    from gradloop.fitcheck import _from_options

    data = DataConfig(name="sklearn", options=options)
    splits = build_data(data, 0)
    from gradloop import registry

    said = _from_options["sklearn"](registry.datasets.get("sklearn").parse_options(options))
    assert said == DataShape(splits.task, splits.num_features, splits.num_outputs, splits.num_classes)


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("synthetic_regression", {"n_samples": 20, "n_features": 3, "n_targets": 2}),
        ("synthetic_classification", {"n_samples": 20, "n_features": 5, "n_classes": 4}),
        ("synthetic_classification", {"n_samples": 20, "binary": True}),
    ],
)
def test_synthetic_shape_from_options_is_what_the_dataset_gives(name: str, options: dict) -> None:
    from gradloop import registry
    from gradloop.build import build_data
    from gradloop.config import DataConfig
    from gradloop.fitcheck import _from_options

    splits = build_data(DataConfig(name=name, options=options), 0)
    said = _from_options[name](registry.datasets.get(name).parse_options(options))
    assert said == DataShape(splits.task, splits.num_features, splits.num_outputs, splits.num_classes)


def test_train_reports_the_fit_together_with_other_errors(tmp_path: Path) -> None:
    cfg = _base(tmp_path, model={"name": "mlp", "options": {"in_features": 9, "hidden": [8], "out_features": 3}})
    cfg["trainer"] = {"epochs": 1, "grad_clip_norm": 1.0, "grad_clip_value": 1.0}
    with pytest.raises(ConfigError) as caught:
        train(cfg)
    assert set(_paths(caught.value)) == {"trainer.grad_clip_value", "model.options.in_features"}
    assert not (tmp_path / "runs").exists()


def test_a_bad_set_value_names_the_override_not_the_file_line(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(_base(tmp_path), sort_keys=False))
    with pytest.raises(ConfigError) as caught:
        load_checked(path, ["optimizer.options.lr=-0.5"])
    (error,) = caught.value.errors
    assert error.path == "optimizer.options.lr" and error.line is None
    assert "--set optimizer.options.lr=-0.5" in error.message

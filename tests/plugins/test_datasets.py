"""Built-in dataset plugins: shapes, targets, seeded splits, train-only standardisation, files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from gradloop.build import build_data
from gradloop.config import DataConfig
from gradloop.data import DataContext, DataSplits, split_indices
from gradloop.errors import ConfigError
from gradloop.registry import datasets


def ctx(root: Path | None = None, val: float = 0.25, seed: int = 0) -> DataContext:
    return DataContext(root=(root or Path.cwd()).resolve(), val_fraction=val, split_seed=seed)


def build(name: str, options: dict, **kw) -> DataSplits:
    return datasets.build(name, options, ctx=ctx(**kw))


# -- synthetic ----------------------------------------------------------------------------


def test_synthetic_classification_shapes_and_seeds():
    s = build("synthetic_classification", {"n_samples": 200, "n_features": 5, "n_classes": 4})
    assert (s.task, s.num_features, s.num_outputs, s.num_classes) == ("classification", 5, 4, 4)
    assert s.train.x.shape == (150, 5) and s.val.x.shape == (50, 5)
    assert s.train.y.dtype == torch.int64 and set(s.train.y.tolist()) == {0, 1, 2, 3}
    again = build("synthetic_classification", {"n_samples": 200, "n_features": 5, "n_classes": 4})
    assert torch.equal(s.train.x, again.train.x)
    other = build("synthetic_classification", {"n_samples": 200, "n_features": 5, "n_classes": 4, "seed": 1})
    assert not torch.equal(s.train.x, other.train.x)


def test_synthetic_binary_targets():
    s = build("synthetic_classification", {"n_samples": 50, "binary": True})
    assert (s.task, s.num_outputs, s.num_classes) == ("binary", 1, None)
    assert s.train.y.shape == (38, 1) and s.train.y.dtype == torch.float32
    assert set(s.train.y.flatten().tolist()) <= {0.0, 1.0}
    with pytest.raises(ValidationError, match="n_classes 2"):
        datasets.parse_options("synthetic_classification", {"n_classes": 3, "binary": True})


def test_synthetic_regression_targets_follow_a_linear_map():
    s = build("synthetic_regression", {"n_samples": 400, "n_features": 3, "n_targets": 2, "noise": 0.0}, val=0.0)
    assert (s.task, s.num_features, s.num_outputs, s.val) == ("regression", 3, 2, None)
    x1 = torch.cat([s.train.x, torch.ones(len(s.train), 1)], 1)
    solution = torch.linalg.lstsq(x1, s.train.y).solution
    assert torch.allclose(x1 @ solution, s.train.y, atol=1e-4)  # noise 0: exactly linear


# -- sklearn ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dataset, task, features, outputs",
    [
        ("digits", "classification", 64, 10),
        ("iris", "classification", 4, 3),
        ("wine", "classification", 13, 3),
        ("breast_cancer", "classification", 30, 2),
        ("diabetes", "regression", 10, 1),
    ],
)
def test_sklearn_datasets(dataset: str, task: str, features: int, outputs: int):
    s = build("sklearn", {"dataset": dataset, "max_samples": 80})
    assert (s.task, s.num_features, s.num_outputs) == (task, features, outputs)
    assert len(s.train) == 60 and len(s.val) == 20
    if task == "classification":
        assert s.train.y.dtype == torch.int64 and s.train.y.dim() == 1 and s.num_classes == outputs
        assert int(s.train.y.max()) < outputs
    else:
        assert s.train.y.dtype == torch.float32 and s.train.y.shape == (60, 1)


def test_sklearn_standardises_with_training_statistics_only():
    from sklearn.datasets import load_wine

    s = build("sklearn", {"dataset": "wine"})
    raw = torch.as_tensor(load_wine().data, dtype=torch.float32)
    train_idx, val_idx = split_indices(len(raw), 0.25, 0)
    mean = raw[train_idx].mean(0)
    std = raw[train_idx].std(0, correction=0)
    assert torch.allclose(s.train.x.mean(0), torch.zeros(13), atol=1e-5)
    assert torch.allclose(s.train.x.std(0, correction=0), torch.ones(13), atol=1e-4)
    assert s.val.x.mean(0).abs().max() > 1e-3  # validation statistics did not leak in
    assert torch.allclose(s.val.x, (raw[val_idx] - mean) / std, atol=1e-5)


def test_constant_training_feature_is_not_blown_up():
    s = build("sklearn", {"dataset": "digits", "max_samples": 60})
    # digits' corner pixels are 0 in almost every image; a tiny std would turn a rare ink
    # value in validation into ~1e8.
    assert s.val.x.abs().max() < 100 and s.train.x.abs().max() < 100


def test_split_is_reproducible_and_follows_the_seed():
    a = build("sklearn", {"dataset": "iris"}, seed=5)
    b = build("sklearn", {"dataset": "iris"}, seed=5)
    c = build("sklearn", {"dataset": "iris"}, seed=6)
    assert torch.equal(a.val.x, b.val.x) and torch.equal(a.train.y, b.train.y)
    assert not torch.equal(a.val.y, c.val.y) or not torch.equal(a.val.x, c.val.x)


def test_max_samples_subset_does_not_depend_on_the_split_seed():
    rows = []
    for seed in (0, 1):
        s = build("sklearn", {"dataset": "iris", "max_samples": 30, "standardize": False}, seed=seed)
        both = torch.cat([s.train.x, s.val.x])
        rows.append(sorted(map(tuple, both.tolist())))
    assert rows[0] == rows[1]
    s = build("sklearn", {"dataset": "iris", "max_samples": 30})
    assert set(torch.cat([s.train.y, s.val.y]).tolist()) == {0, 1, 2}  # iris is sorted by class


def test_digits_as_images_for_the_cnn():
    s = build("sklearn", {"dataset": "digits", "as_images": True, "max_samples": 100})
    assert s.num_features == (1, 8, 8) and s.train.x.shape == (75, 1, 8, 8)
    assert abs(float(s.train.x.mean())) < 1e-5 and abs(float(s.train.x.std(correction=0)) - 1) < 1e-4
    with pytest.raises(ValidationError, match="digits only"):
        datasets.parse_options("sklearn", {"dataset": "iris", "as_images": True})


def test_diabetes_targets_scaled_unless_asked_not_to():
    scaled = build("sklearn", {"dataset": "diabetes", "max_samples": 100})
    assert abs(float(scaled.train.y.mean())) < 1e-5
    raw = build("sklearn", {"dataset": "diabetes", "max_samples": 100, "scale_target": False})
    assert float(raw.train.y.min()) >= 25  # the real disease-progression scale


def test_breast_cancer_binary():
    s = build("sklearn", {"dataset": "breast_cancer", "binary": True, "max_samples": 40})
    assert (s.task, s.num_outputs) == ("binary", 1) and s.train.y.shape == (30, 1)


def test_no_validation_split():
    s = build("sklearn", {"dataset": "iris"}, val=0.0)
    assert s.val is None and len(s.train) == 150


# -- csv ----------------------------------------------------------------------------------


def write_csv(root: Path, name: str = "data.csv") -> Path:
    lines = ["a,b,label,amount"] + [f"{i},{i % 3 * 1.5},{'cat' if i % 2 else 'dog'},{i * 2.0}" for i in range(20)]
    (root / name).write_text("\n".join(lines) + "\n\n")
    return root / name


def test_csv_classification_with_string_labels(tmp_path: Path):
    write_csv(tmp_path)
    s = build("csv", {"path": "data.csv", "target": "label", "features": ["a", "b"]}, root=tmp_path)
    assert (s.task, s.num_features, s.num_classes) == ("classification", 2, 2)
    assert s.train.y.dtype == torch.int64 and len(s.train) + len(s.val) == 20


def test_csv_regression_uses_every_other_column_by_default(tmp_path: Path):
    write_csv(tmp_path)
    s = build(
        "csv",
        {"path": "data.csv", "target": "amount", "features": ["a"], "task": "regression", "standardize": False},
        root=tmp_path,
        val=0.0,
    )
    assert torch.equal(s.train.y, s.train.x * 2)
    with pytest.raises(ConfigError, match="data.options.features: column 'label' holds 'dog' on line 2"):
        build("csv", {"path": "data.csv", "target": "amount", "task": "regression"}, root=tmp_path)


def test_csv_binary(tmp_path: Path):
    write_csv(tmp_path)
    s = build(
        "csv", {"path": "data.csv", "target": "label", "features": ["a", "b"], "task": "binary"}, root=tmp_path, val=0.0
    )
    assert s.train.y.shape == (20, 1) and set(s.train.y.flatten().tolist()) == {0.0, 1.0}
    with pytest.raises(ConfigError, match="at most two distinct"):
        build("csv", {"path": "data.csv", "target": "b", "features": ["a"], "task": "binary"}, root=tmp_path)


def test_csv_errors_name_the_field(tmp_path: Path):
    write_csv(tmp_path)
    with pytest.raises(
        ConfigError, match=r"data.options.target: column 'lable' is not in the file \(did you mean 'label'\?\)"
    ) as e:
        build("csv", {"path": "data.csv", "target": "lable"}, root=tmp_path)
    assert e.value.errors[0].path == "data.options.target"
    with pytest.raises(ConfigError, match="data.options.features: column 'c'"):
        build("csv", {"path": "data.csv", "target": "label", "features": ["a", "c"]}, root=tmp_path)
    (tmp_path / "ragged.csv").write_text("a,b\n1,2\n3\n")
    with pytest.raises(ConfigError, match="line 3 .* has 1 fields"):
        build("csv", {"path": "ragged.csv", "target": "b"}, root=tmp_path)


def test_paths_may_not_leave_the_data_root(tmp_path: Path):
    root = tmp_path / "root"
    root.mkdir()
    write_csv(tmp_path, "outside.csv")
    with pytest.raises(ConfigError, match="leaves the data root") as e:
        build("csv", {"path": "../outside.csv", "target": "label"}, root=root)
    assert e.value.errors[0].path == "data.options.path"
    with pytest.raises(ConfigError, match="leaves the data root"):
        build("tensors", {"path": str(tmp_path / "outside.csv")}, root=root)
    with pytest.raises(ConfigError, match="does not exist") as e:
        build("tensors", {"path": "missing.pt"}, root=root)
    assert e.value.errors[0].path == "data.options.path"


# -- tensors ------------------------------------------------------------------------------


def test_tensors_from_pt_and_npz(tmp_path: Path):
    x = torch.randn(30, 4)
    y = torch.arange(30) % 3
    torch.save({"x": x, "y": y}, tmp_path / "d.pt")
    np.savez(tmp_path / "d.npz", feats=x.numpy(), y=y.numpy())
    pt = build("tensors", {"path": "d.pt"}, root=tmp_path, val=0.0)
    assert torch.equal(pt.train.x, x) and torch.equal(pt.train.y, y) and pt.num_classes == 3
    npz = build("tensors", {"path": "d.npz", "x_key": "feats", "num_classes": 5}, root=tmp_path, val=0.0)
    assert torch.equal(npz.train.x, x) and npz.num_outputs == 5
    reg = build("tensors", {"path": "d.pt", "task": "regression"}, root=tmp_path, val=0.0)
    assert reg.train.y.shape == (30, 1) and reg.train.y.dtype == torch.float32


def test_tensors_images_keep_their_shape(tmp_path: Path):
    torch.save({"x": torch.rand(10, 3, 4, 4), "y": torch.randint(2, (10,))}, tmp_path / "img.pt")
    s = build("tensors", {"path": "img.pt", "task": "binary"}, root=tmp_path)
    assert s.num_features == (3, 4, 4) and s.train.y.shape[1:] == (1,)


def test_tensors_errors(tmp_path: Path):
    torch.save({"x": torch.randn(4, 2), "y": torch.tensor([0.5, 1, 2, 3])}, tmp_path / "frac.pt")
    with pytest.raises(ConfigError, match="data.options.y_key: classification targets must be whole numbers"):
        build("tensors", {"path": "frac.pt"}, root=tmp_path)
    with pytest.raises(ConfigError, match="data.options.x_key: 'frac.pt' has no 'inputs'; keys: x, y"):
        build("tensors", {"path": "frac.pt", "x_key": "inputs"}, root=tmp_path)
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ConfigError, match="holds a list"):
        build("tensors", {"path": "list.pt"}, root=tmp_path)
    (tmp_path / "d.txt").write_text("1 2")
    with pytest.raises(ConfigError, match=r"must be a \.pt or \.npz"):
        build("tensors", {"path": "d.txt"}, root=tmp_path)
    torch.save({"x": torch.randn(4, 2), "y": torch.tensor([0, 1, 2, 3])}, tmp_path / "four.pt")
    with pytest.raises(ConfigError, match="set num_classes: 4"):
        build("tensors", {"path": "four.pt", "num_classes": 2}, root=tmp_path)


# -- build_data ---------------------------------------------------------------------------


def test_build_data_uses_root_and_split_seed(tmp_path: Path):
    write_csv(tmp_path)
    cfg = DataConfig(
        name="csv",
        options={"path": "data.csv", "target": "label", "features": ["a"]},
        root=str(tmp_path),
        val_fraction=0.5,
    )
    by_seed = {s: build_data(cfg, seed=s).val.x for s in (0, 1)}
    assert not torch.equal(by_seed[0], by_seed[1])
    pinned = cfg.model_copy(update={"split_seed": 0})
    assert torch.equal(build_data(pinned, seed=1).val.x, by_seed[0])

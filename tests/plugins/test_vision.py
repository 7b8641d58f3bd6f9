"""Vision plugins: image_folder and torchvision datasets (never a download), transforms validated
with the config, torchvision and timm models (random init or local weights), seeded workers."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
import torch

from gradloop import load_config, train
from gradloop.build import build_data, build_model
from gradloop.config import validate_config
from gradloop.errors import ConfigError
from gradloop.limits import model_parameters
from tests.support.workload_data import make_images

pytest.importorskip("torchvision")  # the vision extra: `make test` installs it, so this never skips there


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("vision")
    make_images(root, per_class=6, size=16)
    return root


def _cfg(root: Path, tmp_path: Path, **over) -> dict:
    cfg = {
        "name": "v",
        "device": "cpu",
        "output_dir": str(tmp_path / "runs"),
        "model": {"name": "torchvision", "options": {"name": "resnet18", "num_classes": 4}},
        "data": {
            "name": "image_folder",
            "root": str(root),
            "options": {"path": "images", "train_transforms": [{"name": "horizontal_flip"}]},
            "batch_size": 8,
            "val_fraction": 0.25,
        },
        "loss": {"name": "cross_entropy"},
        "optimizer": {"name": "sgd", "options": {"lr": 0.01}},
        "trainer": {"epochs": 1, "max_steps": 2, "progress": "none"},
        "tracking": {"enabled": False},
    }
    cfg.update(over)
    return cfg


def test_transforms_are_validated_with_the_config(root, tmp_path):
    cfg = _cfg(root, tmp_path)
    cfg["data"]["options"]["train_transforms"] = [
        {"name": "horizontal_flipp"},
        {"name": "normalize", "options": {"mean": [0.5], "std": [0.2, 0.2]}},
        {"name": "random_crop", "options": {"sise": 8}},
    ]
    with pytest.raises(ConfigError) as info:
        validate_config(cfg)
    text = str(info.value)
    assert "data.options.train_transforms.0.name" in text and "horizontal_flip" in text
    assert "data.options.train_transforms.1" in text and "one per channel" in text
    assert "data.options.train_transforms.2" in text and "sise" in text


def test_image_folder_splits_and_shapes(root, tmp_path):
    cfg = load_config(_cfg(root, tmp_path))
    splits = build_data(cfg.data, 0)
    assert splits.num_classes == 4 and splits.class_names == ("disc", "hbars", "square", "vbars")
    assert splits.num_features == (3, 16, 16)
    assert len(splits.train) == 18 and len(splits.val) == 6
    x, y = splits.val[0]
    assert x.dtype == torch.float32 and 0.0 <= float(x.min()) and float(x.max()) <= 1.0


def test_resnet18_trains_on_an_image_folder_with_two_seeded_workers(root, tmp_path):
    cfg = _cfg(root, tmp_path, metrics=["accuracy", "confusion_matrix"])
    cfg["data"]["num_workers"] = 2
    cfg["data"]["options"]["train_transforms"] = [
        {"name": "random_resized_crop", "options": {"size": 16, "scale": [0.5, 1.0]}},
        {"name": "horizontal_flip"},
    ]
    first = train(cfg)
    again = train({**cfg, "output_dir": str(tmp_path / "again")})
    assert first.status == "FINISHED" and first.steps == 2
    assert {"val/loss", "val/accuracy"} <= set(first.metrics)
    assert (first.run_dir / "figures" / "confusion_matrix.png").stat().st_size > 0
    # Random crops decoded in two workers, seeded per sample: the same weights again.
    a = torch.load(first.checkpoint_path, weights_only=True)["model"]
    b = torch.load(again.checkpoint_path, weights_only=True)["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_timm_vit_builds_from_local_weights_and_counts_on_meta(root, tmp_path):
    opts = {"name": "vit_tiny_patch16_224", "num_classes": 4, "kwargs": {"img_size": 16, "patch_size": 8, "depth": 1}}
    model = build_model(load_config(_cfg(root, tmp_path, model={"name": "timm", "options": opts})).model)
    weights = root / "vit.pt"
    torch.save(model.state_dict(), weights)
    loaded = build_model(
        load_config(_cfg(root, tmp_path, model={"name": "timm", "options": {**opts, "weights_path": "vit.pt"}})).model,
        str(root),
    )
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
    import json

    assert model_parameters("timm", json.dumps(opts, sort_keys=True)) == sum(p.numel() for p in model.parameters())


def test_hub_weights_and_unknown_builders_are_refused(root, tmp_path):
    bad = _cfg(root, tmp_path, model={"name": "torchvision", "options": {"name": "resnet181", "num_classes": 4}})
    with pytest.raises(ConfigError, match="resnet18"):
        validate_config(bad)
    hub = _cfg(
        root,
        tmp_path,
        model={"name": "timm", "options": {"name": "resnet18", "num_classes": 4, "kwargs": {"pretrained": True}}},
    )
    with pytest.raises(ConfigError, match="weights_path"):
        validate_config(hub)


def _idx(path: Path, magic: int, dims: tuple[int, ...], data: bytes) -> None:
    path.write_bytes(struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in dims) + data)


def test_mnist_reads_local_files_and_names_the_missing_ones(tmp_path):
    cfg = _cfg(tmp_path, tmp_path)
    cfg["model"] = {"name": "cnn", "options": {"in_channels": 1, "image_size": 28, "out_features": 10}}
    cfg["data"]["name"], cfg["data"]["options"] = "torchvision", {"name": "MNIST"}
    with pytest.raises(ConfigError) as info:
        train(cfg)
    text = str(info.value)
    assert "train-images-idx3-ubyte" in text and "t10k-labels-idx1-ubyte" in text and "MNIST/raw" in text
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    for prefix, n in (("train", 20), ("t10k", 10)):
        pixels = torch.randint(0, 256, (n, 28, 28), generator=g, dtype=torch.uint8)
        labels = (torch.arange(n) % 10).to(torch.uint8)
        _idx(raw / f"{prefix}-images-idx3-ubyte", 2051, (n, 28, 28), pixels.numpy().tobytes())
        _idx(raw / f"{prefix}-labels-idx1-ubyte", 2049, (n,), labels.numpy().tobytes())
    result = train(cfg)
    assert result.status == "FINISHED" and "val/accuracy" in result.metrics

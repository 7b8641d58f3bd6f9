"""Every config in configs/ validates and trains, scaled down with the same --set overrides a user has."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest

from gradloop import load_config, run, train

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.y*ml"))


def test_there_are_example_configs():
    names = {p.name for p in CONFIGS}
    assert {"quickstart.yaml", "digits_mlp.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_example_config_trains(path: Path, tmp_path: Path):
    overrides = [
        f"output_dir={tmp_path}",
        "trainer.epochs=2",
        "trainer.progress=none",
        "tracking.log_model=false",
        "tracking.system_metrics=false",
    ]
    cfg = load_config(path, overrides)
    if cfg.trainer.checkpoint_every_steps:
        overrides.append("trainer.checkpoint_every_steps=5")
    if cfg.sweep:  # keep the grid's shape but only two children, to keep the suite short
        raw = cfg.to_dict()
        first_key = next(iter(raw["sweep"]))
        raw["sweep"] = {k: (v[:2] if k == first_key else v[:1]) for k, v in raw["sweep"].items()}
        result = run(raw, overrides=overrides)
    else:
        result = run(path, overrides=overrides)
    children = getattr(result, "children", None)
    results = [child.result for child in children] if children is not None else [result]
    for r in results:
        assert r.status == "FINISHED"
        assert r.steps > 0
        assert all(math.isfinite(v) for v in r.metrics.values()), r.metrics
        if cfg.data.val_fraction > 0:
            assert "val/loss" in r.metrics
        assert r.checkpoint_path is not None and Path(r.checkpoint_path).exists()


WORKLOADS = sorted((Path(__file__).resolve().parents[2] / "configs" / "workloads").glob("*.y*ml"))


@pytest.fixture(scope="module")
def workload_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.support.workload_data import make_images, make_texts

    root = tmp_path_factory.mktemp("workload-data")
    make_images(root, per_class=8)
    make_texts(root, n=48)
    (root / "configs" / "data").mkdir(parents=True)
    shutil.copy(
        CONFIGS[0].parent / "data" / "shakespeare.txt", root / "configs" / "data"
    )  # a copy: a link leaves the root
    return root


def test_there_are_workload_examples():
    assert {p.stem for p in WORKLOADS} >= {"resnet18_images", "vit_tiny_images", "char_gpt", "bert_texts"}


@pytest.mark.parametrize("path", WORKLOADS, ids=[p.stem for p in WORKLOADS])
def test_workload_example_trains_briefly(path: Path, tmp_path: Path, workload_root: Path):
    pytest.importorskip("torchvision")  # the extras: `make test` installs them, so these never skip there
    pytest.importorskip("transformers")
    overrides = [
        f"output_dir={tmp_path}",
        f"data.root={workload_root}",
        "trainer.epochs=1",
        "trainer.max_steps=2",
        "trainer.progress=none",
        "tracking.log_model=false",
        "tracking.system_metrics=false",
    ]
    if load_config(path, overrides).scheduler is not None:
        overrides.append("scheduler.options.warmup_steps=1")
    result = train(path, overrides=overrides)
    assert result.status == "FINISHED" and result.steps == 2
    assert "val/loss" in result.metrics and all(math.isfinite(v) for v in result.metrics.values()), result.metrics

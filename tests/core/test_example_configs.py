"""Every config in configs/ validates and trains, scaled down with the same --set overrides a user has."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from gradloop import load_config, train

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
        result = train(raw, overrides=overrides)
    else:
        result = train(path, overrides=overrides)
    children = getattr(result, "children", None)
    results = [child.result for child in children] if children is not None else [result]
    for r in results:
        assert r.status == "FINISHED"
        assert r.steps > 0
        assert all(math.isfinite(v) for v in r.metrics.values()), r.metrics
        if cfg.data.val_fraction > 0:
            assert "val/loss" in r.metrics
        assert r.checkpoint_path is not None and Path(r.checkpoint_path).exists()

"""The job service's limits that need no server: the disk estimate of a job (--max-job-disk) and
the dataset sizes it rests on."""

from __future__ import annotations

from pathlib import Path

import pytest

from gradloop.build import build_data
from gradloop.config import DataConfig, validate_config
from gradloop.limits import CHECKPOINT_BYTES_PER_PARAM, HISTOGRAM_BYTES, ServiceLimits, job_disk, known_samples


def _config(**sections: dict) -> dict:
    raw = {
        "name": "limits",
        "device": "cpu",
        "model": {"name": "linear", "options": {"in_features": 4, "out_features": 3}},  # 15 parameters, 2 tensors
        "data": {"name": "sklearn", "options": {"dataset": "iris"}, "batch_size": 10, "val_fraction": 0.2},
        "loss": {"name": "cross_entropy"},
        "optimizer": {"name": "sgd", "options": {"lr": 0.1}},
    }
    for name, values in sections.items():
        raw[name] = {**raw.get(name, {}), **values}
    return raw


@pytest.mark.parametrize(
    "options",
    [
        {"dataset": "digits"},
        {"dataset": "iris"},
        {"dataset": "wine"},
        {"dataset": "breast_cancer"},
        {"dataset": "diabetes"},
        {"dataset": "digits", "max_samples": 40},
        {"dataset": "iris", "max_samples": 1000},
    ],
)
def test_sklearn_says_its_size_without_loading_it(options: dict) -> None:
    splits = build_data(DataConfig(name="sklearn", options=options), 0)
    size = len(splits.train) + (len(splits.val) if splits.val is not None else 0)
    assert known_samples(validate_config(_config(data={"name": "sklearn", "options": options}))) == size


def test_disk_estimate_counts_checkpoints_model_and_histograms(tmp_path: Path) -> None:
    # iris: 120 training samples in batches of 10, 5 epochs: 60 steps.
    config = validate_config(
        _config(
            trainer={"epochs": 5, "checkpoint_every_steps": 10, "keep_checkpoints": 3},
            tracking={"histogram_every": 20},
        )
    )
    disk = job_disk(config, ServiceLimits(), tmp_path)
    assert disk is not None
    checkpoint = CHECKPOINT_BYTES_PER_PARAM * 15
    assert disk.checkpoints == (3 + 1 + 1) * checkpoint  # kept, the newest, the copy in MLflow
    assert disk.model == 2 * 4 * 15
    assert disk.histograms == 2 * (60 // 20) * 2 * HISTOGRAM_BYTES


def test_disk_estimate_without_tracking_is_the_final_checkpoint(tmp_path: Path) -> None:
    config = validate_config(_config(tracking={"enabled": False, "histogram_every": 1}))
    disk = job_disk(config, ServiceLimits(), tmp_path)
    assert disk is not None and disk.total == CHECKPOINT_BYTES_PER_PARAM * 15


def test_unknown_dataset_size_is_bounded_by_its_bytes_then_by_max_steps(tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text("a,b,c,d,target\n" + "1,2,3,4,0\n" * 30)  # 315 bytes
    raw = _config(
        data={"name": "csv", "options": {"path": "d.csv", "target": "target"}, "root": str(tmp_path)},
        tracking={"histogram_every": 10},
    )
    limits = ServiceLimits(max_steps=1000)
    disk = job_disk(validate_config(raw), limits, tmp_path)
    # at most 315 samples, 252 of them training: 26 steps of 10
    assert disk is not None and disk.histograms == 2 * (26 // 10) * 2 * HISTOGRAM_BYTES
    raw["data"]["options"]["path"] = "missing.csv"
    disk = job_disk(validate_config(raw), limits, tmp_path)
    assert disk is not None and disk.histograms == 2 * (1000 // 10) * 2 * HISTOGRAM_BYTES

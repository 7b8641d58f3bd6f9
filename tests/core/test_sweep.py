"""Sweeps: grid expansion, and a real sweep with child runs nested under a parent MLflow run."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from gradloop import RunResult, run, train
from gradloop.config import RunConfig, load_config
from gradloop.errors import ConfigError, GradloopError
from gradloop.sweep import SweepResult, expand_sweep, run_sweep


def base(tmp_path: Path, uri: str) -> dict:
    return {
        "name": "sw",
        "device": "cpu",
        "output_dir": str(tmp_path / "runs"),
        "model": {"name": "mlp", "options": {"in_features": 4, "hidden": [8], "out_features": 2}},
        "data": {"name": "synthetic_classification", "options": {"n_samples": 96, "n_features": 4}, "batch_size": 32},
        "loss": {"name": "cross_entropy"},
        "optimizer": {"name": "sgd", "options": {"lr": 0.1, "momentum": 0.9}},
        "trainer": {"epochs": 2, "progress": "none"},
        "tracking": {
            "uri": uri,
            "log_every": 1,
            "histogram_every": 0,
            "system_metrics": False,
            "log_model": False,
            "plots": False,
            "log_checkpoint": False,
        },
        "sweep": {"optimizer.name": ["sgd", "adam"], "optimizer.options.lr": [0.1, 0.01]},
    }


def test_expand_sweep_is_the_full_grid_without_the_sweep_block() -> None:
    raw = {
        "name": "x",
        "optimizer": {"name": "sgd", "options": {"lr": 1}},
        "sweep": {"optimizer.name": ["sgd", "adam"], "seed": [1, 2, 3]},
    }
    children = expand_sweep(raw)
    assert len(children) == 6
    assert children[0] == (
        "optimizer.name=sgd,seed=1",
        {"name": "x", "optimizer": {"name": "sgd", "options": {"lr": 1}}, "seed": 1},
    )
    assert children[-1][1]["optimizer"]["name"] == "adam" and children[-1][1]["seed"] == 3
    assert all("sweep" not in child for _, child in children)
    assert raw["optimizer"]["name"] == "sgd"  # the base is not modified


def test_a_sweep_key_that_cannot_be_set_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"sweep\.name\.x"):
        expand_sweep({"name": "x", "sweep": {"name.x": [1]}})


def test_an_invalid_grid_value_fails_before_anything_trains(tmp_path: Path, sqlite_uri: str) -> None:
    raw = base(tmp_path, sqlite_uri)
    raw["sweep"] = {"optimizer.options.lr": [0.1, -1.0]}
    with pytest.raises(ConfigError, match="optimizer.options.lr"):
        run(raw)
    assert not (tmp_path / "runs").exists()


def test_sweep_children_nest_under_a_parent_with_a_summary(tmp_path: Path, sqlite_uri: str) -> None:
    cfg = load_config(base(tmp_path, sqlite_uri))

    def train_one(child: RunConfig, parent_run_id: str | None) -> RunResult:
        if child.optimizer.name == "adam" and child.optimizer.options["lr"] == 0.1:
            raise RuntimeError("this child fails")  # one failing child must not stop the others
        from gradloop.tracking import parent_run

        with parent_run(parent_run_id):
            return train(child)

    result = run_sweep(cfg, train_one=train_one)
    assert isinstance(result, SweepResult) and result.status == "FINISHED"
    assert [c.status for c in result.children] == ["FINISHED", "FINISHED", "FAILED", "FINISHED"]
    assert result.children[2].error == "RuntimeError: this child fails"

    client = MlflowClient(sqlite_uri)
    parent = client.get_run(result.mlflow_run_id)
    assert parent.info.status == "FINISHED"
    exp = parent.info.experiment_id
    kids = client.search_runs([exp], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(kids) == 3 and all(k.info.status == "FINISHED" for k in kids)
    # One short id per run, in MLflow and on disk (issue 18, item 11): the parent's is its sweep directory's.
    assert parent.info.run_name == f"{cfg.name}-sweep-{result.run_dir.name.rsplit('-', 1)[1]}"
    dirs = {c.result.mlflow_run_id: c.result.run_dir for c in result.children if c.result is not None}
    assert all(k.info.run_name.endswith("-" + dirs[k.info.run_id].name.rsplit("-", 1)[1]) for k in kids)

    best = result.best
    assert best is not None and best.result is not None
    finished = [c for c in result.children if c.status == "FINISHED"]
    assert best.result.metrics["val/loss"] == min(c.result.metrics["val/loss"] for c in finished)
    assert parent.data.metrics["val/loss"] == pytest.approx(best.result.metrics["val/loss"])
    assert parent.data.params["optimizer.name"] == best.config.optimizer.name
    assert parent.data.params["optimizer.options.lr"] == str(best.config.optimizer.options["lr"])
    assert parent.data.tags["gradloop.best_child_run_id"] == best.result.mlflow_run_id

    local = client.download_artifacts(parent.info.run_id, "sweep_summary.csv", str(tmp_path / "dl"))
    rows = list(csv.DictReader(open(local)))
    assert [r["status"] for r in rows] == ["FINISHED", "FINISHED", "FAILED", "FINISHED"]
    assert [r["optimizer.name"] for r in rows] == ["sgd", "sgd", "adam", "adam"]
    assert rows[0]["val/loss"] and rows[2]["val/loss"] == ""


def test_train_trains_one_run_and_names_run_for_a_sweep(tmp_path: Path) -> None:
    raw = base(tmp_path, "unused")
    raw["sweep"] = {"optimizer.options.lr": [0.1, 0.05]}
    with pytest.raises(GradloopError, match=r"sweep.*gradloop\.run\(config\)"):
        train(raw)
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_run_runs_a_sweep_from_a_config(tmp_path: Path, sqlite_uri: str) -> None:
    raw = base(tmp_path, sqlite_uri)
    raw["sweep"] = {"optimizer.options.lr": [0.1, 0.05]}
    result = run(raw)
    assert isinstance(result, SweepResult) and [c.status for c in result.children] == ["FINISHED", "FINISHED"]
    client = MlflowClient(sqlite_uri)
    kids = client.search_runs(
        [client.get_run(result.mlflow_run_id).info.experiment_id], f"tags.mlflow.parentRunId = '{result.mlflow_run_id}'"
    )
    assert sorted(k.data.params["optimizer.options.lr"] for k in kids) == ["0.05", "0.1"]


def test_sweep_metric_and_goal_choose_the_best_and_children_live_in_the_sweep_dir(tmp_path: Path) -> None:
    """sweep.metric / sweep.goal say what "best" is (issue 18, item 10); here the worst val/loss
    wins because the goal says maximize, which the default (minimize val/loss) never picks."""
    cfg = base(tmp_path, "unused")
    cfg["tracking"] = {"enabled": False}
    cfg["trainer"]["epochs"] = 1
    cfg["sweep"] = {"optimizer.options.lr": [0.3, 0.0001], "metric": "val/loss", "goal": "maximize"}
    result = run(cfg)
    assert isinstance(result, SweepResult) and [c.status for c in result.children] == ["FINISHED", "FINISHED"]
    losses = {c.label: c.result.metrics["val/loss"] for c in result.children}
    assert result.best is not None and losses[result.best.label] == max(losses.values())
    for child in result.children:  # sweep_dir/<name>-NN/<run id>
        assert child.result.run_dir.parent.parent == result.run_dir
    cfg["sweep"]["goal"] = "sideways"
    with pytest.raises(ConfigError, match="sweep.goal must be minimize or maximize"):
        load_config(cfg)

"""The end of a run hands its artifacts (plots, histograms, the model) to the store process,
which logs them in the background: tracking.json lists them as owed until each is done, so a
store process killed half-way leaves exactly the rest to `gradloop sync`, and a sync never
logs them a second time next to a store process that is still on them."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from mlflow import MlflowClient

from gradloop.tracking import background_logger, make_observer
from gradloop.tracking.state import TrackingState
from gradloop.tracking.sync import sync_run_dir
from tests.support.mlflow_stores import hand_loop, tiny_config


def _artifacts(client: MlflowClient, run_id: str) -> set[str]:
    return {a.path for a in client.list_artifacts(run_id)}


def test_a_store_process_killed_in_the_background_leaves_the_rest_to_sync(tmp_path: Path, sqlite_uri: str) -> None:
    cfg = tiny_config(sqlite_uri, log_model=True)
    run_dir = tmp_path / "run"
    obs = make_observer(cfg, run_dir)
    hand_loop(obs, cfg, run_dir, wait=False)
    client = MlflowClient(sqlite_uri)
    assert client.get_run(obs.mlflow_run_id).info.status == "FINISHED"  # the status did not wait
    handed = TrackingState.load(run_dir)
    assert handed is not None and handed.background_pid is not None
    assert {"log_plots", "log_artifacts", "log_model"} <= {op["name"] for op in handed.pending_ops}

    os.kill(handed.background_pid, signal.SIGKILL)  # half-way through, at best
    deadline = time.monotonic() + 30
    while background_logger(run_dir) is not None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    left = TrackingState.load(run_dir)
    assert left is not None and left.background_pid == handed.background_pid  # it never got to say it was done
    owed = [op["name"] for op in left.pending_ops]
    assert owed, "the store process finished before it was killed: nothing left to test"

    report = sync_run_dir(run_dir)
    assert sorted(report.ops_done) == sorted(owed)
    assert {"plots", "histograms", "checkpoints"} <= _artifacts(client, obs.mlflow_run_id)
    models = client.search_logged_models(experiment_ids=[client.get_run(obs.mlflow_run_id).info.experiment_id])
    assert obs.mlflow_run_id in {m.source_run_id for m in models}
    assert TrackingState.load(run_dir).pending_ops == []  # type: ignore[union-attr]
    assert sync_run_dir(run_dir).nothing_to_do


def test_a_sync_waits_for_the_store_process_and_logs_nothing_twice(tmp_path: Path, sqlite_uri: str) -> None:
    cfg = tiny_config(sqlite_uri, log_model=True)
    run_dir = tmp_path / "run"
    obs = make_observer(cfg, run_dir)
    hand_loop(obs, cfg, run_dir, wait=False)
    report = sync_run_dir(run_dir)  # at once: the store process is still drawing and logging
    assert report.ops_done == [] and report.records_sent == 0
    client = MlflowClient(sqlite_uri)
    assert {"plots", "histograms", "checkpoints"} <= _artifacts(client, obs.mlflow_run_id)
    models = client.search_logged_models(experiment_ids=[client.get_run(obs.mlflow_run_id).info.experiment_id])
    assert [m.source_run_id for m in models] == [obs.mlflow_run_id]
    state = TrackingState.load(run_dir)
    assert state is not None and state.pending_ops == [] and state.background_pid is None


FORKED_STORE_SCRIPT = """
import json, sys
import mlflow  # (imported already, as in the job service's fork server)
import gradloop.tracking
from gradloop import train
from gradloop.tracking import remote
uri = gradloop.tracking.resolve_uri(json.loads(sys.argv[1])["tracking"]["uri"])
remote.start_forked(uri)
result = train(json.loads(sys.argv[1]))
client = remote.shared_client(uri)
assert gradloop.tracking.wait(120)
print("RESULT", result.mlflow_run_id, type(client._proc).__name__, flush=True)
"""


def test_a_store_process_forked_from_a_process_with_mlflow_logs_the_whole_run(tmp_path: Path, sqlite_uri: str) -> None:
    """The job service's way: the store process is forked from the job (MLflow already imported)."""
    import json
    import subprocess
    import sys

    cfg = {
        "name": "forked",
        "output_dir": str(tmp_path / "runs"),
        "model": {"name": "mlp", "options": {"in_features": 64, "hidden": [16], "out_features": 10}},
        "data": {"name": "sklearn", "options": {"dataset": "digits"}, "batch_size": 64},
        "loss": {"name": "cross_entropy"},
        "optimizer": {"name": "sgd", "options": {"lr": 0.1}},
        "trainer": {"epochs": 2, "progress": "none"},
        "tracking": {"uri": sqlite_uri, "log_every": 2, "system_metrics": False, "log_model": True},
    }
    proc = subprocess.run(
        [sys.executable, "-c", FORKED_STORE_SCRIPT, json.dumps(cfg)], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_id, kind = proc.stdout.split("RESULT ")[1].split()
    assert kind == "_Forked"
    client = MlflowClient(sqlite_uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["optimizer.options.lr"] == "0.1"
    assert len(client.get_metric_history(run_id, "train/loss")) > 0
    assert {"plots", "config"} <= _artifacts(client, run_id)
    models = client.search_logged_models(experiment_ids=[run.info.experiment_id])
    assert [m.source_run_id for m in models] == [run_id]

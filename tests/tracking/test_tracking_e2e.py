"""Tracking through service.train(): a real mlflow server, SIGTERM, a server that dies mid-run,
`gradloop sync`, and resume, all read back with MlflowClient."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from mlflow.tracking import MlflowClient

from gradloop import train
from gradloop.observer import NullObserver
from gradloop.tracking.jsonl import Journal, read_records, unsent_records
from gradloop.tracking.remote import RemoteClient
from gradloop.tracking.sender import line_requests
from gradloop.tracking.sync import SyncError, sync_run_dir
from gradloop.tracking.tracking_observer import TrackingWarning
from tests.support.mlflow_stores import MlflowServer, all_logged
from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[2]


def small_config(tmp_path: Path, uri: str, epochs: int = 3, **tracking: Any) -> dict:
    return {
        "name": "e2e",
        "device": "cpu",
        "output_dir": str(tmp_path / "runs"),
        "model": {"name": "mlp", "options": {"in_features": 8, "hidden": [16], "out_features": 3}},
        "data": {
            "name": "synthetic_classification",
            "options": {"n_samples": 320, "n_features": 8, "n_classes": 3},
            "batch_size": 32,
            "val_fraction": 0.25,
        },
        "loss": {"name": "cross_entropy"},
        "optimizer": {"name": "sgd", "options": {"lr": 0.1}},
        "trainer": {"epochs": epochs, "progress": "none"},
        "tracking": {
            "uri": uri,
            "log_every": 2,
            "histogram_every": 0,
            "system_metrics": False,
            "log_model": False,
            "flush_timeout_s": 20,
            **tracking,
        },
    }


def points(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return [m.step for m in client.get_metric_history(run_id, key)]


def test_train_logs_to_a_real_mlflow_server(tmp_path: Path, mlflow_server: MlflowServer) -> None:
    result = train(small_config(tmp_path, mlflow_server.uri))
    client = MlflowClient(mlflow_server.uri)
    run = client.get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED"  # when train() returns; the artifacts follow in the background
    all_logged()
    assert result.steps == 24  # 240 training samples / 32 -> 8 steps x 3 epochs
    assert points(client, run.info.run_id, "train/loss") == list(range(2, 25, 2))
    assert points(client, run.info.run_id, "val/loss") == [8, 16, 24]
    assert {"samples_per_s", "steps_per_s", "epoch", "grad_norm/layers.0.weight"} <= set(run.data.metrics)
    assert any(k.startswith("train/lr/") for k in run.data.metrics)
    names = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert names == {"plots/loss_curves.png", "plots/grad_norm_heatmap.png"}


class StopServerAt(NullObserver):
    """An observer that takes the tracking server down when the run reaches `step`."""

    def __init__(self, server: MlflowServer, step: int):
        self.server, self.step = server, step

    def start(self, ctx: Any) -> None:
        self.sent_file = ctx.run_dir / "metrics.sent"

    def after_optimizer_step(self, step: int, snapshot: Any, metrics: Mapping[str, Any]) -> None:
        if step == self.step:
            deadline = time.monotonic() + 60
            while not self.sent_file.exists() and time.monotonic() < deadline:
                time.sleep(0.1)  # until the sender has delivered something, so the outage is mid-run
            self.server.stop()


def test_journal_lines_reach_the_store_through_the_child_process(tmp_path: Path, mlflow_server: MlflowServer) -> None:
    """The sender forwards metrics.jsonl lines as bytes; the store's child process turns them
    into metrics, a window larger than the 1000 metrics of one request too, and keeps NaN."""
    client = MlflowClient(mlflow_server.uri)
    run_id = client.create_run(client.create_experiment("lines")).info.run_id
    journal = Journal(tmp_path)
    records = [
        journal.append(7, 1234, {f"m{i}": float(i) for i in range(1500)}),
        journal.append(8, 1235, {"m0": 0.5, "train/loss": float("nan")}),
    ]
    remote = RemoteClient(mlflow_server.uri)
    try:
        for lines, _, _ in line_requests(records):
            remote.log_lines(run_id, lines)
    finally:
        remote.close()
    metrics = client.get_run(run_id).data.metrics
    assert len(metrics) == 1501 and metrics["m1499"] == 1499.0
    assert [(m.step, m.timestamp, m.value) for m in client.get_metric_history(run_id, "m0")] == [
        (7, 1234, 0.0),
        (8, 1235, 0.5),
    ]
    assert math.isnan(metrics["train/loss"])


@pytest.mark.server
def test_server_down_mid_run_nothing_is_lost_and_sync_completes_it(tmp_path: Path) -> None:
    server = MlflowServer(tmp_path / "server")
    (tmp_path / "server").mkdir()
    server.start()
    try:
        cfg = small_config(tmp_path, server.uri, epochs=6, flush_timeout_s=2)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = train(cfg, observers=[StopServerAt(server, 10)])
        assert result.status == "FINISHED" and result.steps == 48  # training went on without the server
        unsent = [w for w in caught if issubclass(w.category, TrackingWarning)]
        assert len(unsent) == 1 and "gradloop sync" in str(unsent[0].message)
        journal = list(read_records(result.run_dir / "metrics.jsonl"))
        assert [r.step for r in journal if "train/loss" in r.metrics] == list(range(2, 49, 2))
        left = unsent_records(result.run_dir)
        assert left and len(left) < len(journal)  # some went before the server died, the rest waits
        state = json.loads((result.run_dir / "tracking.json").read_text())
        assert state["status"] == "FINISHED" and state["unsent_points"] == sum(len(r.metrics) for r in left)

        server.start()  # same port, same store
        client = MlflowClient(server.uri)
        assert client.get_run(result.mlflow_run_id).info.status == "RUNNING"
        report = sync_run_dir(result.run_dir)
        assert report.records_sent == len(left) and report.status == "FINISHED"
        assert "set_terminated" in report.ops_done and "log_plots" in report.ops_done
        assert points(client, result.mlflow_run_id, "train/loss") == list(range(2, 49, 2))
        assert points(client, result.mlflow_run_id, "val/loss") == [8, 16, 24, 32, 40, 48]
        total = sum(
            len(client.get_metric_history(result.mlflow_run_id, k))
            for k in client.get_run(result.mlflow_run_id).data.metrics
        )
        assert total == sum(len(r.metrics) for r in journal)
        assert {a.path for a in client.list_artifacts(result.mlflow_run_id)} >= {"plots", "config"}

        again = sync_run_dir(result.run_dir)  # idempotent: nothing is sent twice
        assert again.nothing_to_do and again.points_sent == 0
        assert points(client, result.mlflow_run_id, "train/loss") == list(range(2, 49, 2))
    finally:
        server.stop()


def test_sync_of_a_directory_that_is_not_a_run(tmp_path: Path) -> None:
    with pytest.raises(SyncError, match="tracking.json"):
        sync_run_dir(tmp_path)


SIGTERM_SCRIPT = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, {root!r})
    from gradloop import train
    from gradloop.lifecycle import stop_on_signals
    cfg = json.loads(sys.argv[1])
    with stop_on_signals() as stop:  # this script is the entry point: it decides what SIGTERM means
        result = train(cfg, stop_event=stop)
    print("RESULT", result.status, result.mlflow_run_id, flush=True)
""")


@pytest.mark.slow
def test_sigterm_ends_the_run_killed(tmp_path: Path, sqlite_uri: str) -> None:
    cfg = small_config(tmp_path, sqlite_uri, epochs=2000)
    proc = subprocess.Popen(
        [sys.executable, "-c", SIGTERM_SCRIPT.format(root=str(ROOT)), json.dumps(cfg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        journals: list[Path] = []
        while time.monotonic() < deadline and not journals:
            journals = [p for p in (tmp_path / "runs").glob("e2e/*/metrics.jsonl") if p.stat().st_size > 0]
            time.sleep(0.2)
        assert journals, "the run never started logging"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "RESULT KILLED" in out, err[-3000:]
    run_id = out.split("RESULT KILLED ")[1].split()[0]
    run = MlflowClient(sqlite_uri).get_run(run_id)
    assert run.info.status == "KILLED"
    assert run.info.end_time is not None


def test_failed_run_through_train_is_failed(tmp_path: Path, sqlite_uri: str) -> None:
    cfg = small_config(tmp_path, sqlite_uri)
    cfg["optimizer"]["options"]["lr"] = 1e30  # diverges: a non-finite loss fails the run
    with pytest.raises(Exception) as info:
        train(cfg)
    client = MlflowClient(sqlite_uri)
    runs = client.search_runs([client.get_experiment_by_name("gradloop").experiment_id])
    assert len(runs) == 1
    assert runs[0].info.status == "FAILED"
    assert runs[0].data.tags["gradloop.error.type"] == type(info.value).__name__


class WeightsAround(NullObserver):
    """Copies of every weight and gradient around each optimizer step, for checking by hand."""

    def __init__(self) -> None:
        self.steps: dict[int, dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = {}

    def start(self, ctx: Any) -> None:
        self.named = list(ctx.model.named_parameters())

    def wants_step_stats(self, step: int) -> bool:
        return True

    def before_optimizer_step(self, step: int, model: Any) -> Any:
        return {n: (p.detach().clone(), p.grad.detach().clone()) for n, p in self.named}

    def after_optimizer_step(self, step: int, snapshot: Any, metrics: Mapping[str, Any]) -> None:
        self.steps[step] = {n: (*snapshot[n], p.detach().clone()) for n, p in self.named}


@pytest.mark.parametrize("grad_stats", ["per_layer", "per_module"])
def test_logged_per_layer_norms_are_the_norms_of_each_steps_weights_and_update(
    tmp_path: Path, sqlite_uri: str, grad_stats: str
) -> None:
    """A real run through train(): every logged grad_norm/, weight_norm/ and update_ratio/
    point is torch.linalg.vector_norm of that step's gradient, weights after the step and
    weight difference (per module: the root of its parameters' summed squares)."""
    weights = WeightsAround()
    result = train(small_config(tmp_path, sqlite_uri, epochs=2, grad_stats=grad_stats), observers=[weights])
    client = MlflowClient(sqlite_uri)
    norm = torch.linalg.vector_norm
    labels = {n: n.rsplit(".", 1)[0] if grad_stats == "per_module" else n for n, _ in weights.named}
    assert len(set(labels.values())) == (2 if grad_stats == "per_module" else 4)
    for label in set(labels.values()):
        members = [n for n in labels if labels[n] == label]
        logged = {
            kind: {m.step: m.value for m in client.get_metric_history(result.mlflow_run_id, f"{kind}/{label}")}
            for kind in ("grad_norm", "weight_norm", "update_ratio")
        }
        assert sorted(logged["weight_norm"]) == list(range(2, 17, 2))  # log_every: 2, 16 steps
        for step, weight_norm in logged["weight_norm"].items():
            around = weights.steps[step]

            def joint(norms: list[torch.Tensor]) -> float:
                return math.sqrt(sum(float(x) ** 2 for x in norms))

            grad = joint([norm(around[n][1]) for n in members])
            after = joint([norm(around[n][2]) for n in members])
            update = joint([norm(around[n][0] - around[n][2]) for n in members])
            assert update > 0  # the step moved the weights: the ratio checks something
            assert logged["grad_norm"][step] == pytest.approx(grad, rel=1e-5)
            assert weight_norm == pytest.approx(after, rel=1e-5)
            assert logged["update_ratio"][step] == pytest.approx(update / after, rel=1e-4)


def test_resume_through_train_continues_the_run(tmp_path: Path, sqlite_uri: str) -> None:
    cfg = small_config(tmp_path, sqlite_uri, epochs=2)
    cfg["trainer"]["checkpoint_every_steps"] = 4
    first = train(cfg)
    cfg["trainer"]["epochs"] = 4
    second = train(cfg, resume=str(first.run_dir))
    assert second.mlflow_run_id == first.mlflow_run_id
    client = MlflowClient(sqlite_uri)
    assert client.get_run(first.mlflow_run_id).info.status == "FINISHED"
    assert points(client, first.mlflow_run_id, "train/loss") == list(range(2, 33, 2))
    assert points(client, first.mlflow_run_id, "val/loss") == [8, 16, 24, 32]


@pytest.mark.server
def test_a_server_down_from_the_start_is_synced_later(tmp_path: Path) -> None:
    (tmp_path / "server").mkdir()
    server = MlflowServer(tmp_path / "server")  # its port is chosen but nothing listens yet
    cfg = small_config(tmp_path, server.uri, epochs=1, flush_timeout_s=1)
    with pytest.warns(TrackingWarning) as caught:
        result = train(cfg)
    assert result.status == "FINISHED" and result.mlflow_run_id is None
    journal = list(read_records(result.run_dir / "metrics.jsonl"))
    messages = [str(w.message) for w in caught]
    assert any("unreachable" in m for m in messages)
    assert any(f"{sum(len(r.metrics) for r in journal)} metric points" in m and "gradloop sync" in m for m in messages)
    assert journal and len(unsent_records(result.run_dir)) == len(journal)
    server.start()
    try:
        report = sync_run_dir(result.run_dir)
        assert report.created_run and report.records_sent == len(journal) and report.status == "FINISHED"
        client = MlflowClient(server.uri)
        run = client.get_run(report.run_id)
        assert run.info.run_name.startswith("e2e-") and run.data.params["optimizer.options.lr"] == "0.1"
        assert points(client, report.run_id, "train/loss") == [2, 4, 6, 8]
        assert sync_run_dir(result.run_dir).nothing_to_do
    finally:
        server.stop()


NO_MLFLOW_SCRIPT = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, {root!r})
    from gradloop import train
    result = train(json.loads(sys.argv[1]))
    watched = ("mlflow", "matplotlib", "sqlalchemy", "torchmetrics", "gradloop.tracking.plots")
    loaded = [m for m in watched if m in sys.modules]
    print("RESULT", result.status, result.mlflow_run_id, ",".join(loaded) or "-", flush=True)
""")


@pytest.mark.slow
def test_the_training_process_never_imports_mlflow(tmp_path: Path, sqlite_uri: str) -> None:
    """MLflow, its store and the plots (the confusion matrix too) live in the store's process;
    the run still gets its params, artifacts, plots and model."""
    cfg = small_config(tmp_path, sqlite_uri, epochs=1, log_model=True, flush_timeout_s=120)
    cfg["metrics"] = ["accuracy", "confusion_matrix"]
    proc = subprocess.run(
        [sys.executable, "-c", NO_MLFLOW_SCRIPT.format(root=str(ROOT)), json.dumps(cfg)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    status, run_id, loaded = proc.stdout.split("RESULT ")[1].split()
    all_logged(*(tmp_path / "runs").glob("e2e/*"))  # (the artifacts: in the background, after it exited)
    modules = set(loaded.split(","))
    assert status == "FINISHED" and not modules & {"mlflow", "sqlalchemy", "gradloop.tracking.plots"}, modules
    # The validation metrics import torchmetrics without its plot methods' matplotlib
    # (gradloop.torchmetrics_import); nothing else in the training process may import it either.
    assert "torchmetrics" in modules and "matplotlib" not in modules, modules
    client = MlflowClient(sqlite_uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["optimizer.options.lr"] == "0.1"
    assert {a.path for a in client.list_artifacts(run_id)} >= {"plots", "config"}
    drawn = {a.path for a in client.list_artifacts(run_id, "plots")}
    assert drawn >= {"plots/loss_curves.png", "plots/confusion_matrix.png"}, drawn
    models = client.search_logged_models(experiment_ids=[run.info.experiment_id])
    assert [m.source_run_id for m in models] == [run_id]
    state = json.loads(next((tmp_path / "runs").glob("e2e/*/tracking.json")).read_text())
    assert state["pending_ops"] == [] and state["experiment_id"] == run.info.experiment_id


def test_a_handed_over_second_is_sent_in_one_request_before_the_run_ends(tmp_path: Path) -> None:
    """The observer hands a second's records over at once and wakes the sender: they reach the
    store together, without waiting for the end of the run."""
    from gradloop.tracking.jsonl import read_sent
    from gradloop.tracking.sender import Sender

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = RemoteClient(uri)
    try:
        journal = Journal(tmp_path)
        sender = Sender(client, {"experiment": "batch", "run_name": "r"}, journal)
        records = [journal.append(step, 1000 + step, {"train/loss": 1.0 / step, "lr": 0.1}) for step in range(1, 61)]
        for record in records:
            sender.submit(record)
        sender.wake()
        deadline = time.monotonic() + 120  # (a store opened on a busy machine)
        while len(read_sent(journal.sent_path)) < len(records) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert read_sent(journal.sent_path) == {r.seq for r in records}
        assert journal.sent_path.read_text().splitlines() == [f"{records[0].seq} {records[-1].seq}"]  # one request
        report = sender.close(timeout=30)
        assert report.unsent_points == 0 and report.sent_points == 120
        history = MlflowClient(uri).get_metric_history(report.run_id, "train/loss")
        assert sorted(m.step for m in history) == list(range(1, 61))
    finally:
        client.close()


def test_the_end_of_a_run_does_not_wait_for_a_store_known_to_be_down(tmp_path: Path) -> None:
    from gradloop.tracking.sender import Sender

    client = RemoteClient(f"http://127.0.0.1:{free_port()}")  # nothing listens there
    try:
        journal = Journal(tmp_path)
        sender = Sender(client, {"experiment": "down", "run_name": "r"}, journal)
        sender.submit(journal.append(1, 1000, {"train/loss": 0.5}))
        deadline = time.monotonic() + 300
        while not sender.down and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sender.down
        report = sender.close(timeout=3600)  # waiting for the dead server would hang the test for an hour
        assert report.store_down and report.run_id is None and report.unsent_points == 1
    finally:
        client.close()


# Runs `gradloop run` and then says whether it left a child process unwaited for (its atexit
# check is registered first, so it runs last, after gradloop's own).
def test_gradloop_run_prints_the_charts_link_and_leaves_the_artifacts_to_its_store_process(tmp_path: Path) -> None:
    """The CLI exits once MLflow has the metrics and the final status; its store process logs
    the plots and the model after that, then empties tracking.json's owed ops and exits."""
    import yaml

    cfg = small_config(tmp_path, None, epochs=1)  # the default store: ./mlflow.db
    del cfg["tracking"]["uri"]
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.run(
        [sys.executable, "-m", "gradloop", "run", "run.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    run_id = next(line.split()[-1] for line in lines if line.strip().startswith("mlflow run"))
    store = f"sqlite:///{(tmp_path / 'mlflow.db').resolve()}"
    experiment = MlflowClient(store).get_run(run_id).info.experiment_id
    assert f"charts: http://127.0.0.1:5000/#/experiments/{experiment}/runs/{run_id}/model-metrics" in lines
    assert f"  (serve them first: mlflow ui --backend-store-uri {store})" in lines
    run_dir = Path(next(line.split(None, 2)[-1] for line in lines if line.strip().startswith("run dir")))
    assert MlflowClient(store).get_run(run_id).info.status == "FINISHED"  # when the CLI exits
    background = [line for line in lines if "in the background" in line]
    if background:  # (unless the store process was done before the summary was printed)
        assert f"gradloop sync {run_dir}" in background[0]
    all_logged(run_dir)
    assert {a.path for a in MlflowClient(store).list_artifacts(run_id)} >= {"plots", "config"}
    state = json.loads((run_dir / "tracking.json").read_text())
    assert state["pending_ops"] == [] and state["background_pid"] is None

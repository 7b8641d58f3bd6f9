"""The MLflow observer against a real sqlite store, driven by a tiny hand-written loop.

Everything is read back with MlflowClient: metric keys, points and steps, params, tags,
artifacts (PNGs opened as images), the logged model, the run's status, and resume.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from gradloop.tracking import make_observer
from gradloop.tracking.jsonl import read_records, read_sent
from gradloop.tracking.status import ERROR_MESSAGE_TAG, ERROR_TYPE_TAG
from tests.support import marks
from tests.support.mlflow_stores import hand_loop, tiny_config

ROOT = Path(__file__).resolve().parents[2]
PARAMS = ["0.weight", "0.bias", "2.weight", "2.bias"]


def _artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> list[str]:
    out = []
    for a in client.list_artifacts(run_id, path):
        out += _artifacts(client, run_id, a.path) if a.is_dir else [a.path]
    return out


def test_a_run_logs_metrics_params_tags_and_artifacts(
    tmp_path: Path, sqlite_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tiny_config(sqlite_uri)
    obs = make_observer(cfg, tmp_path / "run")
    hand_loop(obs, cfg, tmp_path / "run", steps=20)
    client = MlflowClient(sqlite_uri)
    run = client.get_run(obs.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name.startswith("tiny-")
    assert client.get_experiment(run.info.experiment_id).name == "gradloop"

    expected = {
        "train/loss",
        "train/lr/0",
        "epoch",
        "train/grad_norm",
        "train/grad_nonfinite",
        "val/loss",
        "val/accuracy",
    }
    expected |= {f"{kind}/{p}" for kind in ("grad_norm", "weight_norm", "update_ratio") for p in PARAMS}
    assert set(run.data.metrics) == expected
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [5, 10, 15, 20]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "grad_norm/0.weight")] == [5, 10, 15, 20]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/loss")] == [10, 20]
    assert run.data.metrics["train/grad_nonfinite"] == 0

    params = run.data.params
    assert params["optimizer.options.lr"] == "0.1" and params["tracking.log_every"] == "5"
    assert params["model.num_params"] == str(8 * 16 + 16 + 16 * 3 + 3)
    tags = run.data.tags
    for key in (
        "gradloop.version",
        "torch.version",
        "gradloop.device",
        "gradloop.device_name",
        "gradloop.precision",
        "gradloop.config_hash",
        "gradloop.host",
    ):
        assert tags.get(key), key
    assert tags["gradloop.config_hash"] == cfg.config_hash()

    arts = set(_artifacts(client, run.info.run_id))
    assert {
        "config/config.yaml",
        "plots/loss_curves.png",
        "plots/grad_norm_heatmap.png",
        "histograms/step_000010.json",
        "histograms/step_000020.json",
        "checkpoints/ckpt-20.pt",
    } <= arts
    for png in ("plots/loss_curves.png", "plots/grad_norm_heatmap.png"):
        local = client.download_artifacts(run.info.run_id, png, str(tmp_path / "dl"))
        with Image.open(local) as img:
            img.verify()
        with Image.open(local) as img:
            assert img.size[0] > 300 and len(np.unique(np.asarray(img.convert("L")))) > 20  # drawn, not blank

    models = client.search_logged_models(experiment_ids=[run.info.experiment_id])
    assert [m.source_run_id for m in models] == [run.info.run_id]
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", sqlite_uri)  # get_model_info reads the process-wide store
    info = mlflow.models.get_model_info(f"models:/{models[0].model_id}")
    assert info.signature is not None and info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, 8)

    # The journal has every point, and all of it was acknowledged.
    records = list(read_records(tmp_path / "run" / "metrics.jsonl"))
    assert sum(len(r.metrics) for r in records) == sum(
        len(client.get_metric_history(run.info.run_id, k)) for k in expected
    )
    assert read_sent(tmp_path / "run" / "metrics.sent") == {r.seq for r in records}
    assert json.loads((tmp_path / "run" / "tracking.json").read_text())["pending_ops"] == []


def test_per_module_stats_log_file_and_no_model(
    tmp_path: Path, sqlite_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "job.log").write_text("gradloop: job starting\n")
    monkeypatch.setenv("GRADLOOP_LOG_FILE", str(tmp_path / "job.log"))
    cfg = tiny_config(sqlite_uri, grad_stats="per_module", log_model=False, plots=False, histogram_every=0)
    obs = make_observer(cfg, tmp_path / "run")
    hand_loop(obs, cfg, tmp_path / "run", steps=10)
    client = MlflowClient(sqlite_uri)
    run = client.get_run(obs.mlflow_run_id)
    assert {k for k in run.data.metrics if k.startswith("grad_norm/")} == {"grad_norm/0", "grad_norm/2"}
    arts = set(_artifacts(client, run.info.run_id))
    assert not any(a.startswith(("plots/", "histograms/")) for a in arts)
    assert "logs/job.log" in arts
    assert client.search_logged_models(experiment_ids=[run.info.experiment_id]) == []


def test_a_failing_run_is_failed_with_the_error(tmp_path: Path, sqlite_uri: str) -> None:
    cfg = tiny_config(sqlite_uri, log_model=False)
    obs = make_observer(cfg, tmp_path / "run")
    with pytest.raises(RuntimeError, match="boom"):
        hand_loop(obs, cfg, tmp_path / "run", steps=20, fail_at=8)
    run = MlflowClient(sqlite_uri).get_run(obs.mlflow_run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags[ERROR_TYPE_TAG] == "RuntimeError"
    assert run.data.tags[ERROR_MESSAGE_TAG] == "boom at step 8"
    assert [m.step for m in MlflowClient(sqlite_uri).get_metric_history(obs.mlflow_run_id, "train/loss")] == [5]


def test_resume_continues_the_same_run_without_duplicate_points(tmp_path: Path, sqlite_uri: str) -> None:
    cfg = tiny_config(sqlite_uri, log_model=False, plots=False)
    first = make_observer(cfg, tmp_path / "run")
    model = hand_loop(first, cfg, tmp_path / "run", steps=20)
    run_id = first.mlflow_run_id
    # The earlier process logged up to step 20 but its checkpoint was at step 10: the resumed
    # process replays steps 11..20 and goes on to 30.
    second = make_observer(cfg, tmp_path / "run")
    hand_loop(second, cfg, tmp_path / "run", steps=30, start_step=10, run_id=run_id, model=model)
    assert second.mlflow_run_id == run_id
    client = MlflowClient(sqlite_uri)
    assert client.get_run(run_id).info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run_id, "train/loss")]
    assert steps == [5, 10, 15, 20, 25, 30]
    assert [m.step for m in client.get_metric_history(run_id, "val/loss")] == [10, 20, 30]
    assert client.get_run(run_id).data.tags["gradloop.resumed_from_step"] == "10"
    assert len(client.search_runs([client.get_run(run_id).info.experiment_id])) == 1


def test_a_resume_from_a_checkpoint_without_the_run_id_continues_the_directorys_run(
    tmp_path: Path, sqlite_uri: str
) -> None:
    # The checkpoint was written before the store had created the run (it names no MLflow run,
    # and it is at step 0: killed before the first step); tracking.json in the same directory
    # names the run by now, and the resume continues it instead of starting a second one.
    cfg = tiny_config(sqlite_uri, log_model=False, plots=False, histogram_every=0)
    first = make_observer(cfg, tmp_path / "run")
    model = hand_loop(first, cfg, tmp_path / "run", steps=10)
    second = make_observer(cfg, tmp_path / "run")
    hand_loop(second, cfg, tmp_path / "run", steps=20, start_step=0, run_id=None, model=model, resumed=True)
    assert second.mlflow_run_id == first.mlflow_run_id
    client = MlflowClient(sqlite_uri)
    run = client.get_run(first.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert len(client.search_runs([run.info.experiment_id])) == 1
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [5, 10, 15, 20]


def test_what_the_store_process_is_sent_unpickles_without_torch(tmp_path: Path, sqlite_uri: str) -> None:
    # torch.__version__ is a TorchVersion: pickled into the run's tags, it made the store's
    # process import torch before it could create the run (seconds, while the metrics waited).
    cfg = tiny_config(sqlite_uri, plots=False, histogram_every=0)
    obs = make_observer(cfg, tmp_path / "run")
    hand_loop(obs, cfg, tmp_path / "run", steps=10)
    assert obs._sender is not None
    tags = obs._sender._run_spec["tags"]
    assert tags["torch.version"] and all(type(v) is str for v in tags.values())  # plain str, not a subclass
    model_op = [op for op in obs._final_ops("FINISHED", None) if op.name == "log_model"]
    assert model_op and all(type(v) is str for v in model_op[0].args.values())


FOUR_RUNS = textwrap.dedent("""
    import sys, warnings
    from pathlib import Path
    sys.path.insert(0, {root!r})
    from tests.support.mlflow_stores import hand_loop, tiny_config
    from gradloop.tracking import make_observer
    uri, run_dir = sys.argv[1], Path(sys.argv[2])
    cfg = tiny_config(uri, log_model=False, histogram_every=0, log_every=1)
    obs = make_observer(cfg, run_dir)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hand_loop(obs, cfg, run_dir, steps=60)
    print(obs.mlflow_run_id, obs.unsent_points, len(caught))
""")


@pytest.mark.slow
@marks.heavy  # four processes, each importing torch and MLflow
def test_four_concurrent_runs_share_one_sqlite_store(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"  # a fresh file: the four also race to create it
    script = FOUR_RUNS.format(root=str(ROOT))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, uri, str(tmp_path / f"run{i}")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    outs = [p.communicate(timeout=240) for p in procs]
    for p, (_out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
        assert "database is locked" not in err
    client = MlflowClient(uri)
    for out, _ in outs:
        run_id, unsent, _warnings = out.split()
        assert unsent == "0"
        assert client.get_run(run_id).info.status == "FINISHED"
        assert [m.step for m in client.get_metric_history(run_id, "train/loss")] == list(range(1, 61))


def test_an_interrupt_in_the_middle_of_a_write_loses_no_window(
    tmp_path: Path, sqlite_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C can land while the held windows are being written: the windows not yet
    in the journal stay held, and the run's finish writes them (each once)."""
    from gradloop.tracking import tracking_observer as observer_module
    from gradloop.tracking.jsonl import Journal

    monkeypatch.setattr(observer_module, "WRITE_SECONDS", 1e9)  # the first window, then every 4
    monkeypatch.setattr(observer_module, "MAX_HELD_WINDOWS", 4)
    appended: list[int] = []
    original = Journal.append

    def interrupted_once(self, step, ts, metrics):
        appended.append(step)
        if len(appended) == 3:  # the second window of the first pass of four (steps 4-10)
            raise KeyboardInterrupt()
        return original(self, step, ts, metrics)

    monkeypatch.setattr(Journal, "append", interrupted_once)
    cfg = tiny_config(sqlite_uri, log_every=2, log_model=False, plots=False, histogram_every=0)
    obs = make_observer(cfg, tmp_path / "run")
    with pytest.raises(KeyboardInterrupt):
        hand_loop(obs, cfg, tmp_path / "run", steps=20)
    steps = [r.step for r in read_records(tmp_path / "run" / "metrics.jsonl")]
    assert steps == [2, 4, 6, 8, 10]  # the interrupt came in step 10's write pass
    assert MlflowClient(sqlite_uri).get_run(obs.mlflow_run_id).info.status == "KILLED"


def test_held_windows_are_written_at_the_cap_and_all_at_the_end(
    tmp_path: Path, sqlite_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Logging windows wait on the device until a second has passed or MAX_HELD_WINDOWS are
    held (the run's first window is written at once); finish writes whatever is still held,
    so nothing is lost either way."""
    from gradloop.tracking import tracking_observer as observer_module

    monkeypatch.setattr(observer_module, "WRITE_SECONDS", 1e9)  # only the cap and finish write
    monkeypatch.setattr(observer_module, "MAX_HELD_WINDOWS", 3)
    batches: list[int] = []
    original = observer_module.MlflowObserver._write_held

    def counting(self) -> None:
        batches.append(len(self._held))
        original(self)

    monkeypatch.setattr(observer_module.MlflowObserver, "_write_held", counting)
    cfg = tiny_config(sqlite_uri, log_every=2, log_model=False, plots=False, histogram_every=0)
    obs = make_observer(cfg, tmp_path / "run")
    hand_loop(obs, cfg, tmp_path / "run", steps=20)
    written = list(read_records(tmp_path / "run" / "metrics.jsonl"))
    # The first window goes at once; then the cap writes every three, during the run.
    assert batches[:2] == [1, 3] and max(batches) == 3 and len(batches) >= 4
    assert len(written) == sum(batches)
    assert [r.step for r in written if "train/loss" in r.metrics] == list(range(2, 21, 2))
    history = MlflowClient(sqlite_uri).get_metric_history(obs.mlflow_run_id, "train/loss")
    assert sorted(m.step for m in history) == list(range(2, 21, 2))

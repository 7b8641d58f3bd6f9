"""train(): from a dict and a YAML file to a RunResult; run directories; signals; validation before any trace."""

from __future__ import annotations

import os
import signal
import threading

import pytest
import torch
import yaml

import tests.support.trainer_helpers as h
from gradloop import RunResult, load_config, train
from gradloop.errors import ConfigError
from gradloop.lifecycle import stop_on_signals


@pytest.fixture(autouse=True)
def _clean_trace():
    h.reset()
    yield
    h.reset()


def _sane(result: RunResult, cfg: dict, steps: int) -> None:
    assert isinstance(result, RunResult)
    assert (result.status, result.steps, result.name) == ("FINISHED", steps, cfg["name"])
    assert result.duration_s > 0
    assert str(result.run_dir.parent) == os.path.join(cfg["output_dir"], cfg["name"])
    assert result.checkpoint_path is not None and result.checkpoint_path.is_file()
    assert result.checkpoint_path.parent == result.run_dir / "checkpoints"
    assert load_config(result.run_dir / "config.yaml").config_hash() == result.config_hash
    assert {"train/loss", "val/loss", "val/accuracy"} <= set(result.metrics)
    assert all(isinstance(v, float) for v in result.metrics.values())
    assert result.mlflow_run_id is None  # tracking is off in these tests


def test_train_from_a_dict(tmp_path):
    cfg = h.base_config(
        tmp_path, model={"name": "mlp", "options": {"in_features": 8, "hidden": [16], "out_features": 3}}
    )
    result = train(cfg)
    _sane(result, cfg, steps=20)
    assert result.epochs == 2
    assert result.config_hash == load_config(cfg).config_hash()


def test_train_from_a_yaml_path_with_overrides(tmp_path):
    cfg = h.base_config(
        tmp_path, model={"name": "mlp", "options": {"in_features": 8, "hidden": [16], "out_features": 3}}
    )
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    result = train(path, overrides=["trainer.epochs=3", "optimizer.options.lr=0.05"])
    _sane(result, cfg, steps=30)
    assert result.epochs == 3
    saved = load_config(result.run_dir / "config.yaml")
    assert saved.trainer.epochs == 3 and saved.optimizer.options["lr"] == 0.05


def test_training_learns(tmp_path):
    cfg = h.base_config(tmp_path, trainer__epochs=8, optimizer={"name": "sgd", "options": {"lr": 0.3, "momentum": 0.9}})
    result = train(cfg)
    assert result.metrics["val/accuracy"] >= 0.8  # 3 well-separated Gaussian clouds


def test_a_bad_config_fails_before_anything_is_written(tmp_path):
    cfg = h.base_config(tmp_path, model={"name": "trace_mlp", "options": {"in_features": 5, "out_features": 3}})
    with pytest.raises(ConfigError, match="in_features"):
        train(cfg)
    assert not (tmp_path / "runs").exists()
    assert not any(isinstance(e, tuple) and e[1] for e in h.TRACE)  # no training forward ran


def test_each_run_gets_its_own_directory_and_latest_is_the_newest(tmp_path):
    cfg = h.base_config(tmp_path, trainer__epochs=1)
    first = train(cfg)
    second = train(cfg)
    assert first.run_dir != second.run_dir and first.run_dir.parent == second.run_dir.parent
    watcher = h.Recorder()
    resumed = train({**cfg, "trainer": {**cfg["trainer"], "epochs": 2}}, resume="latest", observers=[watcher])
    assert resumed.run_dir == second.run_dir and watcher.calls[0] == ("start", 10)
    assert resumed.steps == 20


def test_sigterm_under_stop_on_signals_stops_at_a_step_boundary_and_restores_the_handlers(tmp_path):
    class SignalAt(h.NullObserver):
        def wants_step_stats(self, step: int) -> bool:
            return step == 3

        def after_optimizer_step(self, step, snapshot, metrics) -> None:
            if step == 3:
                os.kill(os.getpid(), signal.SIGTERM)  # a real signal, delivered to this process

    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with stop_on_signals() as stop:
        result = train(h.base_config(tmp_path), observers=[SignalAt()], stop_event=stop)
    assert (result.status, result.steps, result.stopped) == ("KILLED", 3, True)
    assert result.checkpoint_path.name == "step-000003.pt"
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_train_installs_no_signal_handler(tmp_path):
    seen: list = []

    class Look(h.NullObserver):
        def wants_step_stats(self, step: int) -> bool:
            return step == 1

        def after_optimizer_step(self, step, snapshot, metrics) -> None:
            if step == 1:
                seen.append((signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)))

    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    train(h.base_config(tmp_path, trainer__epochs=1), observers=[Look()])
    assert seen == [before]  # library code: the caller (an entry point) decides what signals mean


def test_stop_event_from_another_thread(tmp_path):
    # train() off the main thread (as a job worker's thread would run it): no signal handlers,
    # the caller's stop_event is the way to stop it.
    event = threading.Event()
    result: dict = {}

    class StopFromOutside(h.NullObserver):
        def wants_step_stats(self, step: int) -> bool:
            return step == 2

        def after_optimizer_step(self, step, snapshot, metrics) -> None:
            if step == 2:
                threading.Thread(target=event.set).start()

    def run() -> None:
        result["r"] = train(
            h.base_config(tmp_path, trainer__epochs=50), stop_event=event, observers=[StopFromOutside()]
        )

    t = threading.Thread(target=run)
    t.start()
    t.join(timeout=120)
    assert not t.is_alive()
    assert result["r"].status == "KILLED" and 2 <= result["r"].steps < 1000


def test_mlflow_run_id_reaches_the_result_and_a_resume_from_the_checkpoint(tmp_path):
    cfg = h.base_config(
        tmp_path,
        trainer__epochs=1,
        tracking={
            "enabled": True,
            "uri": f"sqlite:///{tmp_path}/mlflow.db",
            "experiment": "runner-test",
            "system_metrics": False,
            "plots": False,
            "log_model": False,
            "log_checkpoint": False,
        },
    )
    result = train(cfg)
    assert result.mlflow_run_id
    # The store's process creates the run while training goes on (docs/tracking.md), so a
    # checkpoint written before that names no run; tracking.json in its directory does, and a
    # resume from the checkpoint continues that run either way.
    state = torch.load(result.checkpoint_path, weights_only=True)
    assert state["mlflow_run_id"] in (None, result.mlflow_run_id)
    longer = {**cfg, "trainer": {**cfg["trainer"], "epochs": 2}}
    again = train(longer, resume=str(result.checkpoint_path))
    assert again.mlflow_run_id == result.mlflow_run_id and again.steps == 2 * result.steps


def test_resuming_with_another_length_warns_about_the_saved_schedule(tmp_path):
    cfg = h.base_config(tmp_path, trainer__epochs=1, scheduler={"name": "cosine", "options": {"warmup_steps": 0}})
    train(cfg)
    longer = {**cfg, "trainer": {**cfg["trainer"], "epochs": 2}}
    with pytest.warns(RuntimeWarning, match="scheduler continues the schedule saved in the checkpoint"):
        train(longer, resume="latest")


def test_sigterm_to_a_training_process_ends_it_killed_with_a_checkpoint(tmp_path):
    import json
    import subprocess
    import sys

    cfg = h.base_config(
        tmp_path,
        model={"name": "mlp", "options": {"in_features": 8, "hidden": [16], "out_features": 3}},
        trainer__epochs=100_000,
        trainer__progress="lines",
    )
    code = (
        "import json, sys\nfrom gradloop import train\nfrom gradloop.lifecycle import stop_on_signals\n"
        "with stop_on_signals() as stop:\n"
        "    r = train(json.loads(sys.argv[1]), stop_event=stop)\n"
        "print('RESULT', r.status, r.steps, r.checkpoint_path, flush=True)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, json.dumps(cfg)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        first = proc.stderr.readline()  # the progress observer's first line: training has started
        assert first.startswith("training t:"), first
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-2000:]
    status, steps, path = out.split("RESULT ", 1)[1].split()
    assert status == "KILLED" and int(steps) < 100_000 * 10
    state = torch.load(path, weights_only=True)
    assert state["progress"]["step"] == int(steps)

"""Two-rank DDP runs on CPU (gloo), launched the ways a user launches them, against one process.

Each launch costs a few seconds (two spawned interpreters import torch), so each run checks
several things: parity with one process at the global batch, metrics, checkpoints, resume.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import psutil
import pytest
import torch

from gradloop import train
from tests.support import marks
from tests.support.empty_store import put_empty_store
from tests.support.ports import free_port
from tests.support.trainer_helpers import assert_bitwise_equal, model_state

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300), marks.heavy]  # every test starts several processes


def _config(tmp_path: Path, *, ranks: int = 2, batch: int = 8, **changes: Any) -> dict[str, Any]:
    """75 train / 25 validation samples: neither splits evenly into global batches of 16."""
    cfg: dict[str, Any] = {
        "name": "ddp",
        "seed": 3,
        "device": "cpu",
        "output_dir": str(tmp_path / "runs"),
        "model": {"name": "tests.support.dist_models:faulty_mlp", "options": {"in_features": 8, "out_features": 3}},
        "data": {
            "name": "synthetic_classification",
            "options": {"n_samples": 100, "n_features": 8, "n_classes": 3, "seed": 1},
            "batch_size": batch,
            "val_fraction": 0.25,
        },
        "loss": {"name": "cross_entropy"},
        "optimizer": {"name": "sgd", "options": {"lr": 0.2, "momentum": 0.9}},
        "trainer": {"epochs": 2, "progress": "none", "grad_accum_steps": 2, "grad_clip_norm": 0.5},
        "tracking": {"enabled": False},
        "distributed": {"strategy": "ddp" if ranks > 1 else "none", "nproc_per_node": max(ranks, 1)},
    }
    for dotted, value in changes.items():
        node = cfg
        *parents, last = dotted.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return cfg


def _assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=name)


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), **extra}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def _leftovers(marker: str) -> list[int]:
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.environ().get("GRADLOOP_TEST_MARK") == marker:
                found.append(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def test_sgd_accumulation_clipping_parity_metrics_and_checkpoint_with_one_process(tmp_path):
    """SGD with momentum, windows of 2 with a short last one, clipping on the global norm, uneven
    data: 2 ranks x 8 train to the weights of 1 process x 16; val/accuracy is equal exactly."""
    one = train(_config(tmp_path / "one", ranks=1, batch=16))
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    two = train(_config(tmp_path / "two"))
    # torch's launcher installs its own handlers; the caller of train() gets its own back.
    assert {sig: signal.getsignal(sig) for sig in handlers} == handlers
    assert (two.status, two.steps, two.world_size, two.global_batch_size) == ("FINISHED", one.steps, 2, 32)
    _assert_close(model_state(two.checkpoint_path), model_state(one.checkpoint_path))
    assert two.metrics["val/accuracy"] == one.metrics["val/accuracy"]
    assert two.metrics["val/loss"] == pytest.approx(one.metrics["val/loss"], rel=1e-5)
    assert two.metrics["train/loss"] == pytest.approx(one.metrics["train/loss"], rel=1e-5)
    # Rank 0 alone wrote checkpoints; every rank wrote its own log.
    assert sorted(p.name for p in (two.run_dir / "checkpoints").iterdir()) == ["last.pt", "step-000006.pt"]
    logs = sorted(p.parent.name for p in (two.run_dir / "logs").rglob("stderr.log"))
    assert logs == ["0", "1"]


def test_adamw_under_a_users_torchrun_is_not_launched_twice(tmp_path):
    changes = dict(optimizer={"name": "adamw", "options": {"lr": 0.01}}, trainer__grad_clip_norm=None)
    one = train(_config(tmp_path / "one", ranks=1, batch=16, **changes))
    cfg_file = tmp_path / "two.json"
    cfg_file.write_text(__import__("json").dumps(_config(tmp_path / "two", **changes)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    done = subprocess.run(
        [*cmd, "-m", "gradloop", "run", str(cfg_file)], env=_env(), cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (last,) = (tmp_path / "two" / "runs" / "ddp").glob("*/checkpoints/last.pt")
    _assert_close(model_state(last), model_state(one.checkpoint_path))
    assert not (last.parent.parent / "logs").exists(), "torchrun's ranks must not start a launcher of their own"


def test_two_nodes_then_stop_and_resume_are_bitwise_identical(tmp_path):
    """Two machines of one rank each (rendezvous on 127.0.0.1), uninterrupted, against a 2-rank run
    stopped mid-epoch and resumed -- with dropout, whose generators differ by rank."""
    changes = dict(model__options={"in_features": 8, "out_features": 3, "dropout": 0.3})
    cfg_file = tmp_path / "nodes.json"
    cfg_file.write_text(__import__("json").dumps(_config(tmp_path / "nodes", **changes)))
    port = free_port()
    nodes = [
        subprocess.Popen(
            [sys.executable, "-m", "gradloop", "run", str(cfg_file), "--nnodes", "2", "--node-rank", str(rank)]
            + ["--nproc-per-node", "1", "--rdzv-endpoint", f"127.0.0.1:{port}"],
            env=_env(),
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = [p.communicate(timeout=240) for p in nodes]
    assert [p.returncode for p in nodes] == [0, 0], [err[-2000:] for _, err in outputs]
    (uninterrupted,) = (tmp_path / "nodes" / "runs" / "ddp").glob("*/checkpoints/last.pt")

    cfg = _config(tmp_path / "cut", **changes)
    cut = train({**cfg, "trainer": {**cfg["trainer"], "max_steps": 4}})  # mid-epoch 2 (3 steps an epoch)
    assert (cut.steps, cut.status) == (4, "FINISHED")
    state = torch.load(cut.checkpoint_path, weights_only=True)
    assert state["world_size"] == 2 and len(state["rng_ranks"]) == 2
    resumed = train(cfg, resume=str(cut.checkpoint_path))
    assert (resumed.steps, resumed.run_dir) == (6, cut.run_dir)
    assert_bitwise_equal(model_state(resumed.checkpoint_path), model_state(uninterrupted))

    # The 2-rank checkpoint resumes in one process at the same global batch, and that process's
    # checkpoint in 2 ranks: the same weights loaded. (Each resume at step 4 rewrites the step-4
    # file it loaded, so the weights are read before.)
    at_4 = model_state(cut.checkpoint_path)
    single = _config(tmp_path / "cut", ranks=1, batch=16, **changes)
    single["trainer"]["max_steps"] = 4
    same = train(single, resume=str(cut.checkpoint_path))
    assert same.steps == 4 and "world_size" not in torch.load(same.checkpoint_path, weights_only=True)
    assert_bitwise_equal(model_state(same.checkpoint_path), at_4)
    back = train({**cfg, "trainer": {**cfg["trainer"], "max_steps": 4}}, resume=str(same.checkpoint_path))
    assert (back.steps, back.world_size) == (4, 2)
    assert torch.load(back.checkpoint_path, weights_only=True)["world_size"] == 2
    assert_bitwise_equal(model_state(back.checkpoint_path), at_4)


def test_two_nodes_log_each_machines_system_metrics_into_the_one_run_under_its_node_id(tmp_path):
    """Rank 0 holds its first forward until the store has system metrics of both machines (or
    gives up after minutes), so the run lasts until node1's monitor, started once the run id
    reached it, has logged."""
    import mlflow

    db = put_empty_store(tmp_path / "mlflow.db")
    uri = f"sqlite:///{db}"
    cfg = _config(tmp_path / "nodes", tracking={"enabled": True, "uri": uri, "experiment": "nodes", "plots": False})
    cfg["model"]["options"].update(hold_db=str(db), hold_prefixes=["system/node0/", "system/node1/"])
    cfg["tracking"].update(log_model=False, histogram_every=0)
    cfg_file = tmp_path / "nodes.json"
    cfg_file.write_text(__import__("json").dumps(cfg))
    port = free_port()
    env = _env(MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL="0.5", MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING="1")
    nodes = [
        subprocess.Popen(
            [sys.executable, "-m", "gradloop", "run", str(cfg_file), "--nnodes", "2", "--node-rank", str(rank)]
            + ["--nproc-per-node", "1", "--rdzv-endpoint", f"127.0.0.1:{port}"],
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = [p.communicate(timeout=280) for p in nodes]
    assert [p.returncode for p in nodes] == [0, 0], [err[-2000:] for _, err in outputs]
    client = mlflow.MlflowClient(uri)
    (experiment,) = [e for e in client.search_experiments() if e.name == "nodes"]
    (run,) = client.search_runs([experiment.experiment_id])
    system = {k for k in run.data.metrics if k.startswith("system/")}
    for node in ("node0", "node1"):
        assert f"system/{node}/cpu_utilization_percentage" in system, sorted(system)
    assert all(k.split("/")[1] in ("node0", "node1") for k in system), sorted(system)  # no untagged keys
    assert "train/loss" in run.data.metrics


def test_a_rank_that_raises_fails_the_run_at_once_with_exit_1_and_no_orphans(tmp_path):
    cfg = _config(tmp_path, distributed={"strategy": "ddp", "nproc_per_node": 2, "timeout_s": 600})
    cfg["model"]["options"].update(fail_rank=1, at_forward=3, how="raise")
    cfg_file = tmp_path / "fail.json"
    cfg_file.write_text(__import__("json").dumps(cfg))
    marker = uuid.uuid4().hex
    # The collective timeout is 600 s and this test's timeout 300 s: passing means the
    # failure ended the run, not the timeout.
    done = subprocess.run(
        [sys.executable, "-m", "gradloop", "run", str(cfg_file)],
        env=_env(GRADLOOP_TEST_MARK=marker),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 1, done.stderr[-3000:]
    assert "rank 1 failed" in done.stderr and "injected failure at forward 3" in done.stderr
    assert _leftovers(marker) == []


@pytest.mark.timeout(600)
def test_max_restarts_resumes_from_the_last_checkpoint_in_the_same_mlflow_run(tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = _config(
        tmp_path,
        distributed={"strategy": "ddp", "nproc_per_node": 2, "max_restarts": 1},
        trainer__checkpoint_every_steps=1,
        tracking={
            "enabled": True,
            "uri": uri,
            "experiment": "ddp",
            "log_every": 1,
            "system_metrics": False,
            "flush_timeout_s": 300,  # a loaded machine must not leave points for `gradloop sync`
        },
    )
    cfg["model"]["options"].update(fail_rank=1, at_forward=7, how="die_once")
    result = train(cfg)
    assert (result.status, result.steps) == ("FINISHED", 6)
    client = mlflow.MlflowClient(uri)
    (experiment,) = [e for e in client.search_experiments() if e.name == "ddp"]
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.run_id for r in runs] == [result.mlflow_run_id]
    assert runs[0].info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(result.mlflow_run_id, "train/loss")]
    assert sorted(set(steps)) == list(range(1, 7)) and len(steps) == 6, steps  # every step once

"""MLflow fixtures for the tracking tests: a sqlite store in tmp_path and a real `mlflow server`.

tests/conftest.py registers the fixtures (`pytest_plugins`); test modules take them by name.
The server is a real subprocess on a free localhost port with its own sqlite backend and
artifact folder; `stop()` and `start()` let a test take it down mid-run and bring it back
on the same port and store.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from torch import nn

from gradloop.config import RunConfig
from gradloop.observer import RunContext
from tests.support import marks, servers
from tests.support.empty_store import put_empty_store
from tests.support.ports import free_port

# `python -m mlflow` rather than the console script: the same interpreter and packages as the
# tests, also where mlflow was installed with --target and has no script on PATH.
MLFLOW_CLI = [sys.executable, "-m", "mlflow"]


class MlflowServer:
    """A `mlflow server` subprocess; `uri` stays the same across stop()/start()."""

    def __init__(self, root: Path):
        self.root = root
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        servers.track(self)

    def __repr__(self) -> str:
        return f"mlflow server on port {self.port}"

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 60.0) -> None:
        marks.require("server", "starts `mlflow server`")
        log = open(self.root / "server.log", "ab")
        self.proc = subprocess.Popen(
            [
                *MLFLOW_CLI,
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "1",
                "--backend-store-uri",
                f"sqlite:///{self.root}/server.db",
                "--artifacts-destination",
                (self.root / "artifacts").as_uri(),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "MLFLOW_TRACKING_URI": ""},
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {(self.root / 'server.log').read_text()[-2000:]}")
            try:
                if httpx.get(self.uri + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError("mlflow server did not answer /health in time")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # its own session: the uvicorn workers go too
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.proc = None


@pytest.fixture
def sqlite_uri(tmp_path: Path) -> str:
    """A sqlite store of the test's own in tmp_path, empty, its tables already made."""
    return f"sqlite:///{put_empty_store(tmp_path / 'mlflow.db')}"


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    server.start()
    yield server
    server.stop()


# -- a tiny hand-driven training loop, for testing the observer without the trainer ------------


def tiny_config(uri: str, **tracking: object) -> RunConfig:
    return RunConfig.model_validate(
        {
            "name": "tiny",
            "model": {"name": "mlp"},
            "data": {"name": "synthetic"},
            "loss": {"name": "cross_entropy"},
            "optimizer": {"name": "sgd", "options": {"lr": 0.1}},
            "tracking": {
                "uri": uri,
                "log_every": 5,
                "histogram_every": 10,
                "system_metrics": False,
                "flush_timeout_s": 60,
                **tracking,
            },
        }
    )


def hand_loop(
    observer,
    config: RunConfig,
    run_dir: Path,
    steps: int = 20,
    *,
    start_step: int = 0,
    run_id: str | None = None,
    model: nn.Module | None = None,
    fail_at: int | None = None,
    resumed: bool = False,
    wait: bool = True,
) -> nn.Module:
    """A real model and optimizer driven exactly as the observer contract says; with `wait`,
    then waits for the end-of-run artifacts (logged in the background), as a reader of MLflow must."""
    torch.manual_seed(0)
    model = model or nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    names = [n for n, _ in model.named_parameters()]
    x = torch.randn(64, 8)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    ctx = RunContext(
        config=config,
        run_dir=run_dir,
        model=model,
        optimizer=opt,
        device=torch.device("cpu"),
        param_names=names,
        total_steps=steps,
        start_step=start_step,
        resumed=resumed or bool(start_step),
        mlflow_run_id=run_id,
        example_input=x[:4],
    )
    observer.start(ctx)
    log_every = config.tracking.log_every
    loss_sum = torch.zeros(())
    try:
        for step in range(start_step + 1, steps + 1):
            if fail_at == step:
                raise RuntimeError(f"boom at step {step}")
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            loss_sum += loss.detach()
            snap = observer.before_optimizer_step(step, model) if observer.wants_step_stats(step) else None
            opt.step()
            metrics = {}
            if step % log_every == 0 or step == steps:
                metrics = {"train/loss": loss_sum / log_every, "train/lr/0": 0.1, "epoch": 0.0}
                loss_sum = torch.zeros(())
            if metrics or snap is not None:
                observer.after_optimizer_step(step, snap, metrics)
            opt.zero_grad()
            if step % 10 == 0:
                with torch.no_grad():
                    val = nn.functional.cross_entropy(model(x), y)
                observer.log_metrics({"val/loss": val, "val/accuracy": 0.5}, step)
                ckpt = run_dir / f"ckpt-{step}.pt"
                torch.save(model.state_dict(), ckpt)
                observer.log_checkpoint(ckpt, step)
    except BaseException as exc:
        from gradloop.tracking.status import status_for

        observer.finish(status_for(exc), exc)
        raise
    observer.finish("FINISHED", None)
    if wait:
        all_logged()
    return model


def all_logged(*run_dirs: Path, timeout: float = 120.0) -> None:
    """Wait until MLflow has the end-of-run artifacts (plots, histograms, the model) of this
    process's runs, and of the runs in `run_dirs` that other processes (the CLI, a job) made."""
    import gradloop.tracking

    assert gradloop.tracking.wait(timeout), "the store process did not finish the end-of-run ops"
    deadline = time.monotonic() + timeout
    for run_dir in run_dirs:
        while gradloop.tracking.background_logger(run_dir) is not None:
            assert time.monotonic() < deadline, f"{run_dir}'s end-of-run ops were not logged in {timeout} s"
            time.sleep(0.05)

"""A real `gradloop serve` process on a free port, for the API tests, plus small helpers.

The service runs with its own state dir, data root and sqlite MLflow store under a temp dir,
and with tests/jobs_plugins on its PYTHONPATH so that the test-only crash plugins (entry points
in a dist-info folder) are registered in the service and its workers.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpx

from tests.support import marks, servers
from tests.support.empty_store import put_empty_store
from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
TEST_PLUGINS = Path(__file__).resolve().parents[1] / "jobs_plugins"
TERMINAL = {"succeeded", "failed", "cancelled"}


class Service:
    """`python -m gradloop.cli.main serve ...` as a child process; stop() sends SIGTERM like an operator."""

    def __init__(self, base: Path, *, token: str | None = None, extra_args: Iterable[str] = ()):
        marks.require("server", "starts `gradloop serve`")
        self.base = base
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.state_dir = base / "state"
        self.data_root = base / "data"
        self.data_root.mkdir(parents=True, exist_ok=True)
        self.tracking_uri = f"sqlite:///{base / 'mlflow.db'}"
        if not (base / "mlflow.db").exists():
            put_empty_store(base / "mlflow.db")  # the fork server's start then skips the migrations
        self.log_file = base / "serve.log"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(TEST_PLUGINS), str(ROOT), env.get("PYTHONPATH", "")])
        env.pop("GRADLOOP_API_TOKEN", None)
        if token:
            env["GRADLOOP_API_TOKEN"] = token
        args = [
            sys.executable,
            "-m",
            "gradloop.cli.main",
            "serve",
            "--port",
            str(self.port),
            "--state-dir",
            str(self.state_dir),
            "--data-root",
            str(self.data_root),
            "--tracking-uri",
            self.tracking_uri,
            "--log-level",
            "warning",
            *extra_args,
        ]
        self._log = open(self.log_file, "wb")
        self.proc = subprocess.Popen(args, cwd=base, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        headers = {"Authorization": f"Bearer {token.split(',')[0]}"} if token else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=30)
        servers.track(self)

    def __repr__(self) -> str:
        return f"gradloop serve on port {self.port} (pid {self.proc.pid})"

    def running(self) -> bool:
        return self.proc.poll() is None

    def wait_ready(self, timeout: float = 90) -> Service:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(
                    f"gradloop serve exited with {self.proc.returncode}:\n{self.log_file.read_text()[-3000:]}"
                )
            try:
                if self.http.get("/readyz", timeout=2).status_code == 200:  # with the token, if any
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()  # the fixture that made it gets no Service to stop
        raise RuntimeError(f"gradloop serve was not ready in {timeout} s:\n{self.log_file.read_text()[-3000:]}")

    def stop(self) -> None:
        self.http.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    # -- helpers ------------------------------------------------------------------------
    def submit(self, config: dict[str, Any] | str, **kwargs: Any) -> httpx.Response:
        if isinstance(config, str):
            headers = {"Content-Type": "application/yaml", **kwargs.pop("headers", {})}
            return self.http.post("/v1/jobs", content=config.encode(), headers=headers, **kwargs)
        return self.http.post("/v1/jobs", json=config, **kwargs)

    def job(self, job_id: str) -> dict[str, Any]:
        response = self.http.get(f"/v1/jobs/{job_id}")
        response.raise_for_status()
        return response.json()

    def wait_for(
        self, job_id: str, states: set[str] = TERMINAL, timeout: float = 120, step_at_least: int | None = None
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        job: dict[str, Any] = {}
        while time.monotonic() < deadline:
            job = self.job(job_id)
            step = (job.get("progress") or {}).get("step") or 0
            if job["status"] in states and (step_at_least is None or step >= step_at_least):
                return job
            if job["status"] in TERMINAL and job["status"] not in states:
                break
            time.sleep(0.1)
        raise AssertionError(
            f"job {job_id} did not reach {states} (now {job.get('status')}): {job}\n{self.log(job_id)}"
        )

    def log(self, job_id: str) -> str:
        return self.http.get(f"/v1/jobs/{job_id}/logs").text


def problem(response: httpx.Response, status: int) -> dict:
    """The RFC 9457 body of an error answer, after checking its status and media type."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status and body["title"] and body["detail"]
    return body


def iris_config(
    name: str = "iris", *, epochs: int = 2, loss: dict[str, Any] | None = None, tracking: bool = True, **trainer: Any
) -> dict[str, Any]:
    """A run that takes well under a second: iris, a tiny MLP, a few steps."""
    return {
        "name": name,
        "device": "cpu",
        "model": {"name": "mlp", "options": {"in_features": 4, "hidden": [8], "out_features": 3}},
        "data": {"name": "sklearn", "options": {"dataset": "iris"}, "batch_size": 16},
        "loss": loss or {"name": "cross_entropy"},
        "optimizer": {"name": "sgd", "options": {"lr": 0.1}},
        "trainer": {"epochs": epochs, **trainer},
        "tracking": {
            "enabled": tracking,
            "experiment": "api-tests",
            "log_every": 2,
            "log_model": False,
            "system_metrics": False,
            "plots": False,
        },
    }


IRIS_YAML = """\
name: iris-yaml
device: cpu
model: {name: mlp, options: {in_features: 4, hidden: [8], out_features: 3}}
data:
  name: sklearn
  options: {dataset: iris}
  batch_size: 16
loss: {name: cross_entropy}
optimizer: {name: sgd, options: {lr: 0.1}}
trainer: {epochs: 2}
tracking: {experiment: api-tests, log_every: 2, log_model: false, system_metrics: false, plots: false}
"""

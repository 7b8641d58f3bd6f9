"""End-to-end jobs against a real `gradloop serve` process with one worker: submit (JSON and
YAML) and follow to succeeded, SSE with Last-Event-ID, cancel queued and running jobs, crashes."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import time
from collections.abc import Iterator
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from tests.support.api_service import IRIS_YAML, Service, iris_config

pytestmark = [pytest.mark.server, pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    svc = Service(
        tmp_path_factory.mktemp("svc"),
        extra_args=["--max-concurrent", "1", "--cancel-grace", "15", "--mlflow-ui", "http://mlflow.example:5000"],
    )
    try:
        yield svc.wait_ready()
    finally:
        svc.stop()


def _sse(service: Service, job_id: str, last_event_id: str | None = None) -> list[dict[str, Any]]:
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    events, current = [], {}
    with service.http.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers, timeout=120) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if not line:
                if "data" in current:
                    events.append(current)
                current = {}
                continue
            field, _, value = line.partition(":")
            current[field] = value.strip()
    for e in events:
        e["data"] = json.loads(e["data"])
    return events


def test_json_job_runs_to_succeeded_with_mlflow_run_and_link(service: Service) -> None:
    response = service.submit(iris_config("json-job"))
    assert response.status_code == 202
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}" and job["status"] == "queued"
    done = service.wait_for(job["id"])
    assert done["status"] == "succeeded", service.log(job["id"])
    assert done["attempt"] == 1 and done["finished_at"] >= done["started_at"]
    assert done["progress"]["step"] == done["progress"]["total_steps"] == 16  # 120 train samples / 16, two epochs
    assert "val/loss" in done["metrics"] and done["checkpoint_path"].endswith(".pt")
    run_id, exp_id = done["mlflow"]["run_id"], done["mlflow"]["experiment_id"]
    assert done["mlflow"]["url"] == f"http://mlflow.example:5000/#/experiments/{exp_id}/runs/{run_id}/model-metrics"
    run = MlflowClient(tracking_uri=service.tracking_uri).get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["gradloop.job_id"] == job["id"]
    # the run's files live under the job's own directory in the state dir
    assert done["run_dir"].startswith(str(service.state_dir / "jobs" / job["id"]))


def test_yaml_job_streams_progress_and_resumes_from_last_event_id(service: Service) -> None:
    response = service.submit(IRIS_YAML)
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    events = _sse(service, job_id)
    ids = [int(e["id"]) for e in events]
    assert ids == list(range(1, len(ids) + 1))  # numbered without gaps
    kinds = [e["event"] for e in events]
    assert "progress" in kinds and events[-1]["event"] == "state" and events[-1]["data"]["status"] == "succeeded"
    assert any(e["data"].get("step") == 16 for e in events if e["event"] == "progress")
    resumed = _sse(service, job_id, last_event_id=str(ids[2]))
    assert [int(e["id"]) for e in resumed] == ids[3:]
    assert _sse(service, job_id, last_event_id=str(ids[-1])) == []  # after the final event: ends at once
    assert service.job(job_id)["name"] == "iris-yaml"


def _job_pid(service: Service, job_id: str) -> int:
    with sqlite3.connect(service.state_dir / "jobs.db") as db:
        (pid,) = db.execute("SELECT pid FROM gradloop_jobs WHERE id = ?", (job_id,)).fetchone()
    return pid


def _gone(pid: int, within_s: float = 15.0) -> bool:
    """The outcome is committed just before the child exits; give it a moment to be reaped."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def test_cancel_queued_then_running_job_stops_child_and_kills_mlflow_run(service: Service) -> None:
    long = service.submit(iris_config("long", epochs=10000)).json()  # 80k steps: minutes, within the epoch limit
    running = service.wait_for(long["id"], {"running"}, step_at_least=2)
    pid = _job_pid(service, long["id"])
    os.kill(pid, 0)  # alive while it trains

    queued = service.submit(iris_config("waits")).json()
    assert service.job(queued["id"])["status"] == "queued"  # the only slot is taken
    cancelled = service.http.post(f"/v1/jobs/{queued['id']}/cancel")
    assert cancelled.status_code == 202 and cancelled.json()["status"] == "cancelled"

    answer = service.http.post(f"/v1/jobs/{long['id']}/cancel")
    assert answer.status_code == 202 and answer.json()["status"] in ("cancelling", "cancelled")
    final = service.wait_for(long["id"], timeout=60)
    assert final["status"] == "cancelled", final
    assert final["progress"]["step"] < final["progress"]["total_steps"]
    assert final["checkpoint_path"] and os.path.exists(
        final["checkpoint_path"]
    )  # stopped at a step boundary with a checkpoint
    assert _gone(pid)  # the child is gone (and reaped): its memory is freed
    run = MlflowClient(tracking_uri=service.tracking_uri).get_run(final["mlflow"]["run_id"])
    assert run.info.status == "KILLED"
    assert running["attempt"] == 1

    again = service.http.post(f"/v1/jobs/{long['id']}/cancel")
    assert again.status_code == 409 and again.headers["content-type"].startswith("application/problem+json")
    assert "already cancelled" in again.json()["detail"]


@pytest.mark.parametrize(
    ("loss", "expect"),
    [
        ({"name": "exit_loss", "options": {"at_call": 3, "exit_code": 7}}, "exited with code 7"),
        ({"name": "raise_loss", "options": {"at_call": 3}}, "test plugin raised on call 3"),
    ],
)
def test_crashing_job_fails_with_reason_and_service_keeps_serving(service: Service, loss: dict, expect: str) -> None:
    job = service.submit(iris_config("crash", loss=loss, tracking=False)).json()
    failed = service.wait_for(job["id"])
    assert failed["status"] == "failed"
    assert expect in failed["error"]["message"]
    if loss["name"] == "exit_loss":
        assert failed["error"]["exit_code"] == 7 and any(
            "starting in process" in line for line in failed["error"]["log_tail"]
        )
    else:
        assert failed["error"]["type"] == "RuntimeError"
    assert service.http.get("/healthz").json() == {"status": "ok"}
    assert service.http.get("/readyz").status_code == 200
    after = service.submit(iris_config("after-crash", tracking=False)).json()
    assert service.wait_for(after["id"])["status"] == "succeeded"


def test_list_filters_pages_and_metrics(service: Service) -> None:
    page = service.http.get("/v1/jobs", params={"limit": 2}).json()
    assert len(page["jobs"]) == 2 and page["next_cursor"]
    rest = service.http.get("/v1/jobs", params={"limit": 200, "cursor": page["next_cursor"]}).json()
    seen = [j["id"] for j in page["jobs"] + rest["jobs"]]
    assert len(seen) == len(set(seen)) >= 3
    created = [j["created_at"] for j in page["jobs"] + rest["jobs"]]
    assert created == sorted(created, reverse=True)
    only = service.http.get("/v1/jobs", params={"status": "succeeded"}).json()["jobs"]
    assert only and {j["status"] for j in only} == {"succeeded"}
    metrics = service.http.get("/metrics").text
    assert 'gradloop_jobs{state="succeeded"}' in metrics and "gradloop_queue_depth" in metrics
    assert 'gradloop_http_requests_total{method="POST",route="/v1/jobs",status="202"}' in metrics
    assert "gradloop_job_duration_seconds_count" in metrics


def test_cli_submit_wait_status_jobs_logs(service: Service, tmp_path) -> None:
    import subprocess
    import sys

    config = tmp_path / "iris.yaml"
    config.write_text(IRIS_YAML)
    env = {**os.environ, "GRADLOOP_SERVER": service.url}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gradloop", *args], env=env, capture_output=True, text=True, timeout=120
        )

    submitted = cli("submit", str(config), "--wait")
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.split()[0]
    assert service.job(job_id)["status"] == "succeeded"
    assert "succeeded" in cli("status", job_id).stdout
    assert job_id in cli("jobs", "--status", "succeeded", "--json").stdout
    assert "starting in process" in cli("logs", job_id).stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(IRIS_YAML.replace("epochs: 2", "epochs: 0"))
    refused = cli("submit", str(bad))
    assert refused.returncode == 2 and "trainer.epochs" in refused.stderr


def test_submit_refuses_a_model_that_does_not_fit_the_data_up_front(service: Service) -> None:
    """The model/data fit is checked before the job is queued: a 422 now, not a FAILED job later,
    together with the config's other errors."""
    from tests.support.api_service import problem

    cfg = iris_config("misfit", tracking=False)
    cfg["model"]["options"]["in_features"] = 32
    body = problem(service.submit(cfg), 422)
    assert [e["path"] for e in body["errors"]] == ["model.options.in_features"]
    assert "4 features" in body["errors"][0]["message"]
    before = service.http.get("/v1/jobs", params={"limit": 200}).json()["jobs"]
    assert "misfit" not in {j["name"] for j in before}


def test_ids_by_unique_prefix_and_json_output(service: Service, tmp_path) -> None:
    import subprocess
    import sys

    cfg = iris_config("prefixed", tracking=False)
    cfg["optimizer"]["param_groups"] = [{"match": "layers.0.*", "lr": 0.05}]
    job = service.submit(cfg).json()
    done = service.wait_for(job["id"])
    assert service.http.get(f"/v1/jobs/{job['id'][:8]}").json()["id"] == job["id"]
    # A glob group's learning rate has the name MLflow gives it, here as there (issue 18, item 11).
    assert done["metrics"]["train/lr/layers.0._"] == 0.05 and "train/lr/layers.0.*" not in done["metrics"]
    env = {**os.environ, "GRADLOOP_SERVER": service.url}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gradloop", *args], env=env, capture_output=True, text=True, timeout=120
        )

    shown = cli("status", job["id"][:8], "--output", "json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["id"] == job["id"]
    listed = cli("jobs", "-o", "json")
    assert job["id"] in {j["id"] for j in json.loads(listed.stdout)["jobs"]}
    table = cli("jobs")
    assert job["id"][:8] in table.stdout and job["id"] not in table.stdout  # short ids, copyable
    too_short = cli("status", job["id"][:3])
    assert too_short.returncode == 1 and "give at least 4 characters of its id" in too_short.stderr


def test_the_jobs_table_cuts_no_cell_at_80_columns(service: Service) -> None:
    import sys

    from tests.support.terminal import Terminal

    done = service.wait_for(service.submit(iris_config("tracked-job", epochs=1)).json()["id"])
    run_id = done["mlflow"]["run_id"]
    assert run_id, done
    env = {"GRADLOOP_SERVER": service.url}
    narrow = Terminal([sys.executable, "-m", "gradloop", "jobs"], columns=80, env=env)
    assert narrow.finish() == 0
    # At 80 columns no cell is cut (rich marks a cut with "…"): the MLflow run id, which only
    # works whole, leaves the table instead, and the table says where to find it.
    assert "…" not in narrow.screen and done["id"][:8] in narrow.screen, narrow.screen
    assert "MLflow run ids: gradloop status ID, or --output json" in narrow.screen
    assert all(len(line) <= 80 for line in narrow.lines())
    wide = Terminal([sys.executable, "-m", "gradloop", "jobs"], columns=200, env=env)
    assert wide.finish() == 0 and run_id in wide.screen and "…" not in wide.screen, wide.screen


def test_a_metric_that_is_not_finite_is_null_never_an_older_number(service: Service, tmp_path) -> None:
    """lr 1e30 with skip_step: every window after the first has no finite loss. The job's
    train/loss is null (JSON has no NaN), not the first window's number; status says so."""
    import subprocess
    import sys

    cfg = iris_config("blows-up", epochs=1, tracking=False, on_nonfinite="skip_step", max_skipped_fraction=1.0)
    cfg["optimizer"]["options"]["lr"] = 1.0e30
    done = service.wait_for(service.submit(cfg).json()["id"])
    assert done["status"] == "succeeded" and done["metrics"]["train/skipped_steps"] > 0
    assert "train/loss" in done["metrics"] and done["metrics"]["train/loss"] is None, done["metrics"]
    shown = subprocess.run(
        [sys.executable, "-m", "gradloop", "status", done["id"]],
        env={**os.environ, "GRADLOOP_SERVER": service.url},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shown.returncode == 0 and re.search(r"train/loss\s+not finite", shown.stdout), shown.stdout


def test_submit_wait_at_80_columns_then_ctrl_c_detaches(service: Service, tmp_path) -> None:
    """On a terminal of 80 columns the job's bar shows its state, then n/N steps (never 0/None);
    Ctrl-C detaches, says how to cancel, exits 0, and the job goes on."""
    import re
    import sys

    import yaml

    from tests.support.terminal import Terminal

    config = tmp_path / "long.yaml"
    config.write_text(yaml.safe_dump(iris_config("detach-me", epochs=2000, tracking=False)))
    term = Terminal(
        [sys.executable, "-m", "gradloop", "submit", str(config), "--wait"],
        columns=80,
        env={"GRADLOOP_SERVER": service.url},
    )
    assert term.read_until(lambda s: re.search(r"\d+/16000 steps", s) is not None, timeout=120), term.screen[-2000:]
    term.interrupt()
    code = term.finish()
    screen = term.screen
    job_id = re.search(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", screen).group(0)  # type: ignore[union-attr]
    assert code == 0, screen[-2000:]
    assert f"detached; the job goes on: gradloop cancel {job_id} to stop it" in screen
    assert "None" not in screen
    assert all(len(line) <= 80 for line in term.lines() if "━" in line)
    assert service.job(job_id)["status"] == "running"
    service.http.post(f"/v1/jobs/{job_id}/cancel")
    assert service.wait_for(job_id)["status"] == "cancelled"


def test_serve_prints_where_it_keeps_things_and_what_it_waits_for(service: Service) -> None:
    text = service.log_file.read_text()
    assert f"http://127.0.0.1:{service.port}" in text and str(service.state_dir.resolve()) in text
    assert service.tracking_uri in text and "MLFLOW_TRACKING_URI is not used" in text
    assert "loading the plugins" in text and "GET /readyz answers 200" in text

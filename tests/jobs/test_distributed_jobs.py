"""Distributed jobs through a real `gradloop serve`: every rank of a job runs in the job's process
group on the host that claimed it (gloo, 2 ranks on CPU), within the host's --slots, and every way
a job is stopped -- cancel, SIGTERM drain, kill -9 of the service, a lost lease, a failed rank --
leaves no process behind.

Processes are found by the test's own state directory, which every process of its service
carries in its environment (GRADLOOP_TEST_STATE_DIR): tests running side by side do not see each
other's. A job's processes are those in its process group (the group of the pid it recorded).
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.support.api_service import Service, iris_config, problem
from tests.support.durability import crash_service_only, mlflow_runs, sqlite_job_row, wait_until

pytestmark = [pytest.mark.server, pytest.mark.slow, pytest.mark.timeout(600)]

MARK = "GRADLOOP_TEST_STATE_DIR"
GRACE_S = 60  # the ranks stop by themselves well before; SIGKILL is only the backstop


def ddp_config(name: str, *, steps: int | None = None, sleep_s: float = 0.0, ranks: int = 2) -> dict[str, Any]:
    """Iris on `ranks` ranks (batch 8 each). With `steps`, a checkpoint every 20 steps, no
    validation, and a loss that sleeps `sleep_s` per call, so the job is still running when a
    test stops it."""
    config = iris_config(name, epochs=2)
    config["data"]["batch_size"] = 8
    config["tracking"]["experiment"] = "durability"
    config["distributed"] = {"strategy": "ddp", "nproc_per_node": ranks}
    if steps is not None:
        # No validation split: the ranks then never import torchmetrics, the slowest part of a
        # rank's start (each rank is a fresh interpreter).
        config["data"]["val_fraction"] = 0.0
        config["trainer"].update(epochs=-(-steps // 8), max_steps=steps, checkpoint_every_steps=20, keep_checkpoints=3)
    if sleep_s:
        config["loss"] = {"name": "slow_loss", "options": {"sleep_s": sleep_s}}
    return config


# -- processes ----------------------------------------------------------------------------


def test_processes(state_dir: Path) -> list[psutil.Process]:
    """Every live process of this test's services: its state dir in the environment or command line."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        if proc.pid == os.getpid() or proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        try:
            if proc.environ().get(MARK) == str(state_dir) or str(state_dir) in " ".join(proc.info["cmdline"] or ()):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


test_processes.__test__ = False  # type: ignore[attr-defined]  (a helper, not a test)


def job_processes(state_dir: Path, job_id: str) -> list[int]:
    """The live processes of the job's current attempt: its process group (the agent and its ranks)."""
    pgid = sqlite_job_row(state_dir, job_id)["pid"]
    found = []
    for proc in test_processes(state_dir):
        try:
            if pgid and os.getpgid(proc.pid) == pgid:
                found.append(proc.pid)
        except ProcessLookupError:
            continue
    return found


def wait_gone(pids: list[int], what: str, timeout: float = GRACE_S + 15) -> None:
    wait_until(lambda: not [p for p in pids if psutil.pid_exists(p) and _not_zombie(p)], timeout, what)


def _not_zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Service]]:
    """Starts services on the test's state directory; at the end they are stopped and no process
    of the test may be left."""
    monkeypatch.setenv(MARK, str(tmp_path / "state"))
    started: list[Service] = []

    def start_one(*args: str) -> Service:
        service = Service(tmp_path, extra_args=["--cancel-grace", str(GRACE_S), *args])
        started.append(service)
        return service.wait_ready(timeout=240)  # (start-up imports torch: slow on a busy machine)

    yield start_one
    for service in started:
        if service.proc.poll() is None:
            service.stop()
    state_dir = tmp_path / "state"
    wait_until(lambda: not test_processes(state_dir), 90, "every process of the test to end")


def _running_past(service: Service, job_id: str, step: int) -> tuple[dict[str, Any], list[int]]:
    """The job trains past `step` with its two ranks (and the agent that launched them) alive."""
    # (two spawned interpreters import torch first: on a busy machine that alone takes a minute)
    job = service.wait_for(job_id, {"running"}, timeout=300, step_at_least=step)
    pids = job_processes(service.state_dir, job_id)
    assert len(pids) >= 3, f"the agent and two ranks, in the job's process group: {pids}"
    return job, pids


# -- the HTTP policy ----------------------------------------------------------------------


def test_distributed_configs_over_http(start: Callable[..., Service]) -> None:
    service = start("--max-concurrent", "0", "--slots", "4", "--max-procs-per-job", "2")

    too_many = ddp_config("too-many", ranks=3)
    body = problem(service.submit(too_many), 422)
    [error] = body["errors"]
    assert error["path"] == "distributed.nproc_per_node"
    assert "3 processes" in error["message"] and "limit of 2" in error["message"]

    several_nodes = ddp_config("nodes")
    several_nodes["distributed"].update(nnodes=2, rdzv_endpoint="127.0.0.1:29500")
    paths = {e["path"]: e["message"] for e in problem(service.submit(several_nodes), 422)["errors"]}
    assert set(paths) == {"distributed.nnodes", "distributed.rdzv_endpoint"}
    assert "multi-node jobs over HTTP are not supported" in paths["distributed.nnodes"]

    swept = ddp_config("swept")
    swept["sweep"] = {"optimizer.options.lr": [0.1, 0.2]}
    errors = problem(service.submit(swept), 422)["errors"]
    assert [e["path"] for e in errors] == ["distributed.strategy"] and "sweep" in errors[0]["message"]

    accepted = service.submit(ddp_config("fits"))
    assert accepted.status_code == 202, accepted.text
    assert sqlite_job_row(service.state_dir, accepted.json()["id"])["procs"] == 2
    one = service.submit(iris_config("one"))
    assert sqlite_job_row(service.state_dir, one.json()["id"])["procs"] == 1


def test_max_procs_per_job_defaults_to_the_slots(start: Callable[..., Service]) -> None:
    service = start("--max-concurrent", "0", "--slots", "1")
    [error] = problem(service.submit(ddp_config("two")), 422)["errors"]
    assert error["path"] == "distributed.nproc_per_node" and "limit of 1" in error["message"]


# -- running --------------------------------------------------------------------------------


def test_two_rank_jobs_take_the_slots_in_turn(start: Callable[..., Service]) -> None:
    """On a 2-slot host two 2-rank jobs run one after the other, then two 1-process jobs together."""
    service = start("--slots", "2", "--max-concurrent", "3")
    ids = [service.submit(config).json()["id"] for config in (ddp_config("ddp-a"), ddp_config("ddp-b"))]
    ids += [service.submit(iris_config(name)).json()["id"] for name in ("one-c", "one-d")]
    a, b, c, d = (service.wait_for(job_id, timeout=240) for job_id in ids)
    assert [j["status"] for j in (a, b, c, d)] == ["succeeded"] * 4, [j["error"] for j in (a, b, c, d)]

    rows = [sqlite_job_row(service.state_dir, job_id) for job_id in ids]
    ra, rb, rc, rd = rows
    assert ra["finished_at"] <= rb["started_at"]  # b needed both slots: it waited for a to end
    assert rb["finished_at"] <= min(rc["started_at"], rd["started_at"])  # b came first in the queue
    assert rc["started_at"] < rd["finished_at"] and rd["started_at"] < rc["finished_at"]  # 1 slot each

    # Rank 0 reported like a one-process job: progress to the last step, metrics, the MLflow run.
    assert a["progress"]["step"] == a["progress"]["total_steps"] > 0
    assert {"train/loss", "val/loss"} <= set(a["metrics"])
    [run] = mlflow_runs(service.tracking_uri, ids[0])
    assert run.info.run_id == a["mlflow"]["run_id"] and run.info.status == "FINISHED"
    assert run.data.tags.get("gradloop.global_batch_size") == "16"  # 2 ranks x batch 8
    history = service_history(service, run.info.run_id, "train/loss")
    assert len(history) == len({m.step for m in history}) > 0  # one rank logged: no step twice
    # Every rank wrote its own log; the job's log has rank 0's output.
    run_dir = Path(a["run_dir"])
    rank_logs = sorted(p.parent.name for p in (run_dir / "logs").rglob("stdout.log"))
    assert rank_logs == ["0", "1"]
    assert f"gradloop: job {ids[0]} succeeded" in service.log(ids[0])


def service_history(service: Service, run_id: str, key: str) -> list[Any]:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=service.tracking_uri).get_metric_history(run_id, key)


def test_a_failing_rank_fails_the_job(start: Callable[..., Service]) -> None:
    service = start("--slots", "2")
    config = ddp_config("fails")
    config["loss"] = {"name": "raise_loss", "options": {"at_call": 3}}
    job_id = service.submit(config).json()["id"]
    job = service.wait_for(job_id, timeout=120)
    assert job["status"] == "failed"
    assert "rank" in job["error"]["message"] and "test plugin raised on call 3" in job["error"]["message"]
    wait_gone(job_processes(service.state_dir, job_id), "the failed job's processes to end")


# -- stopping -------------------------------------------------------------------------------


def test_cancel_stops_every_rank_with_a_checkpoint(start: Callable[..., Service]) -> None:
    service = start("--slots", "2")
    job_id = service.submit(ddp_config("cancel", steps=2000, sleep_s=0.02)).json()["id"]
    _, pids = _running_past(service, job_id, 30)
    # The job's process is the one fork of the fork server in its group: rank 0 logs to MLflow
    # through a store process of its own, so the job forks none early for itself.
    forks = [p for p in pids if "gradloop.jobs.forkserver" in " ".join(psutil.Process(p).cmdline())]
    assert forks == [sqlite_job_row(service.state_dir, job_id)["pid"]], forks
    assert service.http.post(f"/v1/jobs/{job_id}/cancel").status_code == 202
    job = service.wait_for(job_id, {"cancelled"}, timeout=GRACE_S + 30)
    wait_gone(pids, "the cancelled job's agent and ranks to end")

    # The ranks agreed to stop at one step and rank 0 wrote its checkpoint (not SIGKILL's doing).
    assert job["error"]["type"] == "Cancelled" and job["error"]["message"] == "cancelled on request"
    stopped_at = job["error"]["step"]
    assert 30 <= stopped_at < 2000
    assert Path(job["checkpoint_path"]).name == f"step-{stopped_at:06d}.pt" and Path(job["checkpoint_path"]).is_file()
    [run] = mlflow_runs(service.tracking_uri, job_id)
    assert run.info.status == "KILLED"


def test_drain_and_kill_9_resume_the_ranks_from_their_checkpoints(start: Callable[..., Service]) -> None:
    steps = 400
    first = start("--slots", "2")
    job_id = first.submit(ddp_config("resume", steps=steps, sleep_s=0.02)).json()["id"]
    _, pids = _running_past(first, job_id, 30)

    first.stop()  # SIGTERM: the service drains, every rank stops at one step with a checkpoint
    wait_gone(pids, "the drained job's agent and ranks to end", timeout=5)
    row = sqlite_job_row(first.state_dir, job_id)
    assert row["status"] == "queued" and row["lost_attempts"] == 0
    drained_at = Path(row["checkpoint_path"])
    assert drained_at.is_file() and int(drained_at.stem.split("-")[1]) >= 30

    second = start("--slots", "2")
    job, pids = _running_past(second, job_id, int(drained_at.stem.split("-")[1]) + 30)
    assert job["attempt"] == 2
    crash_service_only(second)  # kill -9: the fork server loses its service and stops its jobs
    wait_gone(pids, "the orphaned job's agent and ranks to end")
    row = sqlite_job_row(second.state_dir, job_id)
    assert row["status"] == "queued" and Path(row["checkpoint_path"]) != drained_at

    third = start("--slots", "2")
    job = third.wait_for(job_id, timeout=240)
    assert job["status"] == "succeeded" and job["progress"]["step"] == steps and job["attempt"] == 3
    log = third.log(job_id)
    assert log.count(f"gradloop: job {job_id} resumes from") == 2
    [run] = mlflow_runs(third.tracking_uri, job_id)  # every attempt continued the same run
    assert run.info.status == "FINISHED"


def test_a_lost_lease_stops_every_rank(start: Callable[..., Service]) -> None:
    """Another service taking the job over (its worker id in the record, as a takeover writes it)
    ends this attempt's agent and ranks at once; the job later comes back to this service."""
    service = start("--slots", "2", "--lease", "3")
    job_id = service.submit(ddp_config("lease", steps=300, sleep_s=0.02)).json()["id"]
    _, pids = _running_past(service, job_id, 30)
    with sqlite3.connect(service.state_dir / "jobs.db", timeout=30) as db:
        db.execute("UPDATE gradloop_jobs SET worker_id = 'another-service' WHERE id = ?", (job_id,))
    taken_over = time.monotonic()
    wait_gone(pids, "the fenced-off attempt's agent and ranks to end", timeout=15)
    assert time.monotonic() - taken_over < 15
    # The other service never heartbeats: its lease runs out, and the job resumes here.
    job = service.wait_for(job_id, timeout=240)
    assert job["status"] == "succeeded" and job["attempt"] == 2 and job["progress"]["step"] == 300

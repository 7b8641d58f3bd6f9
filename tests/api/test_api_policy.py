"""The HTTP policy through a real `gradloop serve` (issue 17): every config the service accepts,
sweep children included, keeps to registered plugins, paths under --data-root, the service's
MLflow store (or one the operator allows), the service's output dir and every --max-* limit.

Each reproduction from the issue is a test that asserts the refusal and that nothing was
queued, run or written. The service has a worker, so a config that slipped through would run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gradloop.jobs.store import JobStore
from tests.support.api_service import Service, iris_config, problem

pytestmark = [pytest.mark.server, pytest.mark.timeout(300)]

ALLOWED_TRACKING = "http://127.0.0.1:9/allowed-mlflow"
MAX_DATASET_BYTES = 64
MAX_JOB_DISK = 200_000_000


@pytest.fixture(scope="module")
def outside(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder beside the data root, holding a secret a job must never read or learn about."""
    path = tmp_path_factory.mktemp("outside")
    (path / "secret.csv").write_text("a,b,target\n" + "1,2,0\n" * 100)
    return path


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, outside: Path) -> Iterator[Service]:
    svc = Service(
        tmp_path_factory.mktemp("svc-policy"),
        extra_args=[
            "--max-concurrent",
            "1",
            "--max-dataset-samples",
            "100000",
            "--max-dataset-bytes",
            str(MAX_DATASET_BYTES),
            "--max-job-disk",
            str(MAX_JOB_DISK),
            "--allow-tracking-uri",
            ALLOWED_TRACKING,
        ],
    )
    (svc.data_root / "link.csv").symlink_to(outside / "secret.csv")
    (svc.data_root / "inside.csv").write_text("a,b,target\n1,2,0\n3,4,1\n")
    try:
        yield svc.wait_ready()
    finally:
        svc.stop()


def digits_config(name: str = "x") -> dict[str, Any]:
    """The issue's base config."""
    return {
        "name": name,
        "model": {"name": "mlp", "options": {"in_features": 64, "hidden": [8], "out_features": 10}},
        "data": {"name": "sklearn", "options": {"dataset": "digits"}},
        "loss": {"name": "cross_entropy"},
        "optimizer": {"name": "sgd", "options": {"lr": 0.05}},
    }


def job_count(service: Service) -> int:
    return len(service.http.get("/v1/jobs", params={"limit": 200}).json()["jobs"])


def refused(service: Service, config: dict[str, Any] | str) -> dict[str, str]:
    """Submit; assert a 422 that queued nothing; return {path: message} of its errors."""
    before = job_count(service)
    body = problem(service.submit(config), 422)
    assert job_count(service) == before
    return {e["path"]: e["message"] for e in body["errors"]}


def test_a_sweep_over_an_import_path_is_422_and_runs_nothing(service: Service, tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    config = digits_config()
    config["sweep"] = {"model.name": ["subprocess:run"], "model.options": [{"args": ["touch", str(marker)]}]}
    errors = refused(service, config)
    assert "import path 'subprocess:run' is refused" in errors["model.name"]
    assert "sweep child model.name=subprocess:run" in errors["model.name"]
    assert not marker.exists()


def test_a_sweep_cannot_move_data_outputs_or_tracking_outside(service: Service, outside: Path) -> None:
    before = sorted(p.name for p in outside.iterdir())
    config = digits_config()
    config["data"] = {"name": "csv", "options": {"path": "inside.csv", "target": "target"}}
    config["model"]["options"]["in_features"] = 2
    config["sweep"] = {
        "data.root": [str(outside)],
        "data.options.path": ["secret.csv"],
        "output_dir": [str(outside / "x")],
        "tracking.uri": [f"sqlite:///{outside / 'evil.db'}"],
    }
    errors = refused(service, config)
    assert "outside the service's data root" in errors["data.root"]
    assert "leave output_dir out" in errors["output_dir"]
    assert "local MLflow store" in errors["tracking.uri"]
    assert all("sweep child data.root=" in message for message in errors.values()), errors
    assert sorted(p.name for p in outside.iterdir()) == before  # no checkpoints, no MLflow database


@pytest.mark.parametrize(
    ("key", "value", "field", "limit"),
    [
        ("trainer.epochs", 100000, "trainer.epochs", "limit of 10000"),
        ("model.options.hidden", [1000000, 1000000], "model.options", "limit of 1000000000"),
        ("data.options.n_samples", 10000000, "data.options.n_samples", "limit of 100000"),
    ],
)
def test_sweep_values_over_the_limits_are_422_naming_the_limit(
    service: Service, key: str, value: Any, field: str, limit: str
) -> None:
    config = digits_config()
    if key.startswith("data."):
        config["data"] = {"name": "synthetic_classification", "options": {"n_samples": 200, "n_features": 64}}
    config["sweep"] = {key: [value]}
    errors = refused(service, config)
    assert limit in errors[field] and f"sweep child {key}=" in errors[field]


def test_a_grid_of_aliases_over_the_cap_is_422_with_a_short_answer(service: Service) -> None:
    values = ", ".join(str(i) for i in range(1, 41))
    yaml = (
        "name: grid\n"
        "model: {name: mlp, options: {in_features: 64, hidden: [8], out_features: 10}}\n"
        "data: {name: sklearn, options: {dataset: digits}}\n"
        "loss: {name: cross_entropy}\n"
        "optimizer: {name: sgd, options: {lr: 0.05}}\n"
        "sweep:\n"
        f"  seed: &v [{values}]\n"
        "  trainer.epochs: *v\n"
        "  trainer.grad_accum_steps: *v\n"
    )
    response = service.submit(yaml)
    errors = refused(service, yaml)
    assert "64000 combinations" in errors["sweep"] and "limit of 256" in errors["sweep"]
    assert len(response.content) < 2048


def test_a_grid_of_ten_to_the_eight_is_422_with_a_short_answer(service: Service) -> None:
    config = digits_config()
    config["sweep"] = {f"optimizer.options.{k}": [i / 100 for i in range(1, 11)] for k in ("lr", "momentum")}
    config["sweep"].update({k: list(range(10)) for k in ("seed", "trainer.epochs", "data.batch_size")})
    config["sweep"].update({f"trainer.{k}": list(range(1, 11)) for k in ("grad_accum_steps", "val_every_epochs")})
    config["sweep"]["tracking.log_every"] = list(range(1, 11))
    response = service.submit(config)
    errors = refused(service, config)
    assert "100000000 combinations" in errors["sweep"]
    assert len(response.content) < 2048


@pytest.mark.parametrize(
    "path", ["/etc/passwd", "../outside/secret.csv", "link.csv", "../nowhere/missing.csv", "a\x00b.csv"]
)
def test_data_paths_outside_the_root_are_422_without_telling_what_is_there(
    service: Service, outside: Path, path: str
) -> None:
    config = digits_config()
    config["data"] = {"name": "csv", "options": {"path": path, "target": "target"}}
    if path.startswith("../outside"):
        path = os.path.relpath(outside / "secret.csv", service.data_root)
        config["data"]["options"]["path"] = path
    errors = refused(service, config)
    assert errors == {"data.options.path": f"{path!r} is outside the service's data root; give a path under it"}


def test_the_same_paths_in_a_sweep_are_422_too(service: Service, outside: Path) -> None:
    config = digits_config()
    config["data"] = {"name": "csv", "options": {"path": "inside.csv", "target": "target"}}
    config["sweep"] = {"data.options.path": ["/etc/passwd", "link.csv"]}
    errors = refused(service, config)
    assert "outside the service's data root" in errors["data.options.path"]
    assert "bytes" not in json.dumps(errors)


@pytest.mark.parametrize("output_dir", ["/etc", "../..", "runs"])
def test_output_dir_is_the_services_to_pick(service: Service, output_dir: str) -> None:
    config = digits_config()
    config["output_dir"] = output_dir
    assert "the service picks each job's output directory" in refused(service, config)["output_dir"]


@pytest.mark.parametrize("uri", ["http://169.254.169.254", "https://mlflow.internal:5000", "databricks://../../x"])
def test_tracking_servers_not_allowed_by_the_operator_are_422(service: Service, uri: str) -> None:
    config = digits_config()
    config["tracking"] = {"uri": uri}
    assert "--allow-tracking-uri" in refused(service, config)["tracking.uri"]


def test_a_tracking_server_the_operator_allows_is_accepted(service: Service) -> None:
    config = iris_config("allowed-tracking", tracking=False, epochs=1)
    config["tracking"]["uri"] = ALLOWED_TRACKING
    response = service.submit(config)
    assert response.status_code == 202, response.text
    assert service.wait_for(response.json()["id"])["status"] == "succeeded"


@pytest.mark.parametrize(
    ("section", "values", "field"),
    [
        ("data", {"num_workers": 64}, "data.num_workers"),
        ("trainer", {"checkpoint_every_steps": 1, "keep_checkpoints": 1000000000}, "trainer.keep_checkpoints"),
        ("tracking", {"histogram_every": 1}, "tracking.histogram_every"),
    ],
)
def test_resource_limits_with_defaults(service: Service, section: str, values: dict[str, Any], field: str) -> None:
    config = digits_config()
    config.setdefault(section, {}).update(values)
    assert "this service" in refused(service, config)[field]


def test_a_job_whose_checkpoints_would_fill_the_disk_is_422(service: Service) -> None:
    config = digits_config()
    config["model"]["options"]["hidden"] = [4000, 4000]  # 16 M parameters: 192 MB a checkpoint
    message = refused(service, config)["trainer.keep_checkpoints"]
    assert "would write up to" in message and "limit of 190.7 MiB" in message


def test_a_sweep_is_counted_as_one_job_on_disk(service: Service) -> None:
    config = digits_config()
    config["model"]["options"]["hidden"] = [1000, 1000]  # about 1 M parameters: 13 MB a checkpoint
    config["sweep"] = {"seed": list(range(10))}
    message = refused(service, config)["sweep"]
    assert "the sweep's 10 children would write up to" in message


def test_a_sweep_within_the_rules_trains_every_child(service: Service) -> None:
    config = iris_config("good-sweep", epochs=1)
    config["sweep"] = {"optimizer.options.lr": [0.1, 0.05]}
    response = service.submit(config)
    assert response.status_code == 202, response.text
    job = service.wait_for(response.json()["id"])
    assert job["status"] == "succeeded", service.log(job["id"])
    log = service.log(job["id"])
    assert "training good-sweep-00:" in log and "training good-sweep-01:" in log


def test_a_stored_config_goes_through_the_policy_again_before_it_runs(service: Service, tmp_path: Path) -> None:
    """A job written by an older service or edited in the database gets no further than a new
    submission: the worker refuses it with the same message, before anything runs."""
    marker = tmp_path / "PWNED-STORED"
    config = digits_config("stored")
    config["sweep"] = {"model.name": ["subprocess:run"], "model.options": [{"args": ["touch", str(marker)]}]}
    config["tracking"] = {"uri": "http://169.254.169.254"}
    store = JobStore(f"sqlite:///{service.state_dir / 'jobs.db'}")
    try:
        job, _ = store.submit(config, request_hash="edited-in-the-database", name="stored", device="cpu")
    finally:
        store.close()
    done = service.wait_for(job.id)
    assert done["status"] == "failed"
    assert (
        "tracking.uri" in done["error"]["message"]
        and "sweep child model.name=subprocess:run" in (done["error"]["message"])
    )
    assert not marker.exists()

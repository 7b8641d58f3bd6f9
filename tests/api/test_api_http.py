"""The HTTP surface against a real `gradloop serve` process without workers (--max-concurrent 0):
auth, body limit, problem+json errors with field paths, refused import paths and data paths,
idempotency, plugins, OpenAPI. Nothing here trains, so the server stays cheap."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.support.api_service import Service, iris_config, problem

pytestmark = [pytest.mark.server, pytest.mark.timeout(180)]
TOKENS = "alpha-token,beta-token"


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    svc = Service(tmp_path_factory.mktemp("svc-http"), token=TOKENS, extra_args=["--max-concurrent", "0"])
    try:
        yield svc.wait_ready()
    finally:
        svc.stop()


def test_auth_is_required_on_v1_and_checked_before_any_lookup(service: Service) -> None:
    anon = httpx.Client(base_url=service.url)
    missing_job = f"/v1/jobs/{uuid.uuid4()}"
    for method, path in [
        ("GET", "/v1/jobs"),
        ("GET", missing_job),
        ("POST", f"{missing_job}/cancel"),
        ("GET", "/v1/plugins"),
    ]:
        body = problem(anon.request(method, path), 401)
        assert "bearer token" in body["detail"]
    assert problem(anon.get(missing_job, headers={"Authorization": "Bearer wrong"}), 401)
    assert anon.get("/healthz").status_code == 200  # stays open
    for token in TOKENS.split(","):
        assert anon.get("/v1/jobs", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    # with a valid token the same lookup is an honest 404
    assert "no job has id" in problem(service.http.get(missing_job), 404)["detail"]


def test_body_over_limit_is_413(service: Service) -> None:
    big = b'{"name": "' + b"x" * (1024 * 1024 + 10) + b'"}'
    problem(service.http.post("/v1/jobs", content=big, headers={"Content-Type": "application/json"}), 413)

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit must count the stream
        for _ in range(20):
            yield b" " * 65536

    problem(service.http.post("/v1/jobs", content=chunks(), headers={"Content-Type": "application/json"}), 413)


def test_config_errors_are_422_with_every_field_path(service: Service) -> None:
    bad = iris_config()
    bad["optimizer"]["options"]["lr"] = -1
    bad["trainer"]["epochs"] = 0
    bad["model"]["options"]["hiddn"] = [3]
    body = problem(service.submit(bad), 422)
    paths = {e["path"]: e["message"] for e in body["errors"]}
    assert {"trainer.epochs", "optimizer.options.lr", "model.options.hiddn"} <= set(paths)
    assert "did you mean 'hidden'" in paths["model.options.hiddn"]
    yaml_body = (
        "name: y\nmodel: {name: mlp, options: {in_features: 4, out_features: 3}}\n"
        "data: {name: sklearn, options: {dataset: iris}}\nloss: {name: cross_entropy}\n"
        "optimizer: {name: sgd, options: {lr: oops}}\n"
    )
    errors = problem(service.submit(yaml_body), 422)["errors"]
    assert errors[0]["path"] == "optimizer.options.lr" and errors[0]["line"] == 5


def test_import_paths_data_outside_root_and_local_tracking_are_refused(service: Service) -> None:
    cfg = iris_config()
    cfg["model"]["name"] = "os:system"
    cfg["data"]["root"] = "../../etc"
    cfg["tracking"]["uri"] = "sqlite:////tmp/elsewhere.db"
    paths = {e["path"]: e["message"] for e in problem(service.submit(cfg), 422)["errors"]}
    assert "import path 'os:system' is refused" in paths["model.name"]
    assert "outside the service's data root" in paths["data.root"]
    assert "local MLflow store" in paths["tracking.uri"]


def test_malformed_bodies_are_4xx_problems(service: Service) -> None:
    problem(service.http.post("/v1/jobs", content=b"{not json", headers={"Content-Type": "application/json"}), 422)
    problem(service.http.post("/v1/jobs", content=b'{"a": NaN}', headers={"Content-Type": "application/json"}), 422)
    problem(service.http.post("/v1/jobs", content=b"[1, 2]", headers={"Content-Type": "application/json"}), 422)
    problem(service.http.post("/v1/jobs", content=b"name: x", headers={"Content-Type": "text/csv"}), 415)
    tagged = "name: !!python/object/apply:os.system ['true']\n"
    assert "not allowed" in problem(service.submit(tagged), 422)["errors"][0]["message"]
    problem(service.http.get("/v1/jobs", params={"status": "exploded"}), 422)
    problem(service.http.get("/v1/jobs", params={"cursor": "garbage"}), 400)
    problem(service.http.get("/v1/jobs/not-a-uuid"), 404)


def test_idempotency_key_one_job_per_key(service: Service) -> None:
    key = f"key-{uuid.uuid4()}"
    results: list[httpx.Response] = []

    def send() -> None:
        with httpx.Client(base_url=service.url, headers=dict(service.http.headers), timeout=30) as c:
            results.append(c.post("/v1/jobs", json=iris_config("idem"), headers={"Idempotency-Key": key}))

    threads = [threading.Thread(target=send) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {r.status_code for r in results} == {202}
    assert len({r.json()["id"] for r in results}) == 1
    assert sum(r.headers.get("idempotent-replayed") == "true" for r in results) == 5
    changed = service.submit(iris_config("idem-other"), headers={"Idempotency-Key": key})
    assert "different body" in problem(changed, 422)["detail"]


def test_queued_job_cancel_and_409(service: Service) -> None:
    job = service.submit(iris_config("to-cancel"), params={"priority": 5}).json()
    assert job["priority"] == 5 and job["status"] == "queued"  # no workers here: it waits
    got = service.job(job["id"])
    assert got["config"]["data"]["root"] == str(service.data_root.resolve())
    assert service.http.post(f"/v1/jobs/{job['id']}/cancel").json()["status"] == "cancelled"
    problem(service.http.post(f"/v1/jobs/{job['id']}/cancel"), 409)
    log = service.http.get(f"/v1/jobs/{job['id']}/logs")
    assert log.status_code == 200 and log.text == "" and log.headers["x-next-offset"] == "0"


def test_plugins_health_and_openapi(service: Service) -> None:
    every = service.http.get("/v1/plugins").json()
    assert set(every) == {"optimizers", "schedulers", "models", "datasets", "losses", "metrics"}
    # Capabilities are data for a client; a plugin's hooks (image_folder's `files`) stay out.
    folder = next(p for p in every["datasets"] if p["name"] == "image_folder")
    assert folder["capabilities"]["path_options"] == ["path", "val_path"] and "files" not in folder["capabilities"]
    sgd = service.http.get("/v1/plugins/optimizers/sgd").json()
    lr = next(o for o in sgd["options"] if o["name"] == "lr")
    assert sgd["schema"]["type"] == "object" and lr["type"] in ("number", "float")
    assert "lion" in {p["name"] for p in service.http.get("/v1/plugins/optimizers").json()}  # entry-point plugin
    assert "Registered optimizers" in problem(service.http.get("/v1/plugins/optimizers/sgdd"), 404)["detail"]
    problem(service.http.get("/v1/plugins/nothing"), 404)
    ready = service.http.get("/readyz").json()
    assert ready["database"] == "ok" and ready["workers"] == "disabled"
    schema = service.http.get("/openapi.json").json()
    for path in [
        "/v1/jobs",
        "/v1/jobs/{job_id}",
        "/v1/jobs/{job_id}/cancel",
        "/v1/jobs/{job_id}/events",
        "/v1/jobs/{job_id}/logs",
        "/v1/plugins/{kind}/{name}",
        "/healthz",
        "/readyz",
        "/metrics",
    ]:
        assert path in schema["paths"], path
    assert "application/yaml" in schema["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]
    assert service.http.get("/docs").status_code == 200

"""Hostile and broken input against a real `gradloop serve` (auth on, no workers, tight limits):
each is a 4xx with a clear problem+json body, and the service goes on serving a normal request
right after. Also: 401 before any job lookup, UUID job ids, and log and artifact reads that
cannot leave the job's own directory (../, absolute paths, symlinks)."""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.api_service import Service, iris_config, problem

pytestmark = [pytest.mark.server, pytest.mark.timeout(180)]
TOKEN = "hostile-token"
LIMITS = [
    "--max-epochs",
    "50",
    "--max-steps",
    "5000",
    "--max-dataset-samples",
    "20000",
    "--max-model-params",
    "100000",
    "--max-body",
    "65536",
]


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    svc = Service(tmp_path_factory.mktemp("svc-hostile"), token=TOKEN, extra_args=["--max-concurrent", "0", *LIMITS])
    try:
        yield svc.wait_ready()
    finally:
        svc.stop()


def _still_serving(service: Service) -> None:
    response = service.submit(iris_config("after-hostile"))
    assert response.status_code == 202, response.text


def _yaml(service: Service, text: str | bytes) -> httpx.Response:
    data = text.encode() if isinstance(text, str) else text
    return service.http.post("/v1/jobs", content=data, headers={"Content-Type": "application/yaml"})


def _json(service: Service, data: bytes) -> httpx.Response:
    return service.http.post("/v1/jobs", content=data, headers={"Content-Type": "application/json"})


LAUGHS = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi")
)


@pytest.mark.parametrize(
    "name, send, status, words",
    [
        ("oversized body", lambda s: _json(s, b'{"name": "' + b"x" * 70_000 + b'"}'), 413, "over the limit"),
        ("deep YAML flow", lambda s: _yaml(s, "name: " + "[" * 5000 + "]" * 5000), 422, "nests deeper"),
        ("deep YAML block", lambda s: _yaml(s, "".join("  " * i + "k:\n" for i in range(200))), 422, "nests deeper"),
        ("deep JSON", lambda s: _json(s, b'{"name": ' + b"[" * 3000 + b"]" * 3000 + b"}"), 422, "nests"),
        ("JSON just too deep", lambda s: _json(s, b'{"name": ' + b"[" * 200 + b"]" * 200 + b"}"), 422, "nests deeper"),
        (
            "python object tag",
            lambda s: _yaml(s, "name: !!python/object/apply:os.system ['touch /tmp/pwned']\n"),
            422,
            "not allowed",
        ),
        ("python name tag", lambda s: _yaml(s, "model: !!python/name:os.system\n"), 422, "not allowed"),
        ("billion laughs", lambda s: _yaml(s, LAUGHS), 422, "more than"),
        ("non-UTF-8 YAML", lambda s: _yaml(s, b"name: caf\xe9\n"), 422, "UTF-8"),
        ("non-UTF-8 JSON", lambda s: _json(s, b'{"name": "caf\xe9"}'), 422, "UTF-8"),
        ("huge integer JSON", lambda s: _json(s, b'{"seed": ' + b"9" * 5000 + b"}"), 422, "cannot be read"),
        ("huge integer YAML", lambda s: _yaml(s, "seed: " + "9" * 5000 + "\n"), 422, "cannot read"),
        (
            "NaN JSON",
            lambda s: _json(s, json.dumps(iris_config()).replace('"lr": 0.1', '"lr": NaN').encode()),
            422,
            "finite",
        ),
        (
            "Infinity JSON",
            lambda s: _json(s, json.dumps(iris_config()).replace('"lr": 0.1', '"lr": -Infinity').encode()),
            422,
            "finite",
        ),
        (
            "1e400 JSON",
            lambda s: _json(s, json.dumps(iris_config()).replace('"lr": 0.1', '"lr": 1e400').encode()),
            422,
            "finite",
        ),
        ("NaN YAML", lambda s: _yaml(s, "optimizer: {name: sgd, options: {lr: .nan}}\n"), 422, "finite"),
        ("Infinity YAML", lambda s: _yaml(s, "optimizer: {name: sgd, options: {lr: .inf}}\n"), 422, "finite"),
        ("not a mapping", lambda s: _yaml(s, "- a\n- b\n"), 422, "top level"),
        ("empty body", lambda s: _json(s, b""), 422, "invalid JSON"),
    ],
)
def test_hostile_body_is_a_4xx_problem_and_service_keeps_serving(
    service: Service, name: str, send, status: int, words: str
) -> None:
    body = problem(send(service), status)
    text = body["detail"] + " ".join(e["message"] for e in body.get("errors") or [])
    assert words in text, (name, body)
    _still_serving(service)


def _limited(**changes: object) -> dict:
    cfg = iris_config("limits")
    for dotted, value in changes.items():
        node = cfg
        *parents, last = dotted.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return cfg


@pytest.mark.parametrize(
    "changes, path, words",
    [
        ({"trainer__epochs": 10**9}, "trainer.epochs", "less than or equal"),  # the config's own bound
        ({"trainer__epochs": 51}, "trainer.epochs", "limit of 50"),
        ({"trainer__max_steps": 5001}, "trainer.max_steps", "limit of 5000"),
        (
            {
                "data": {
                    "name": "synthetic_classification",
                    "options": {"n_samples": 1000, "n_features": 4, "n_classes": 3},
                    "batch_size": 1,
                },
                "trainer__epochs": 50,
            },
            "trainer.epochs",
            "about 40000 steps, over this service's limit of 5000",
        ),
        (
            {
                "data": {
                    "name": "synthetic_classification",
                    "options": {"n_samples": 10**6, "n_features": 4, "n_classes": 3},
                }
            },
            "data.options.n_samples",
            "limit of 20000",
        ),
        (
            {"model__options": {"in_features": 4, "hidden": [1000, 1000], "out_features": 3}},
            "model.options",
            "over this service's limit of 100000",
        ),
        (
            {"model__options": {"in_features": 4, "hidden": [1_000_000] * 64, "out_features": 3}},
            "model.options",
            "parameters",
        ),
    ],
)
def test_configs_over_the_configured_limits_are_refused(service: Service, changes: dict, path: str, words: str) -> None:
    errors = {e["path"]: e["message"] for e in problem(service.submit(_limited(**changes)), 422)["errors"]}
    assert path in errors and words in errors[path], errors
    _still_serving(service)


def test_a_config_within_the_limits_passes(service: Service) -> None:
    cfg = _limited(trainer__epochs=50, data__batch_size=16)  # iris: 120 train samples -> 8 steps/epoch
    assert service.submit(cfg).status_code == 202


def test_yaml_limit_errors_carry_lines(service: Service) -> None:
    text = (
        "name: y\nmodel: {name: mlp, options: {in_features: 4, out_features: 3}}\n"
        "data: {name: sklearn, options: {dataset: iris}}\nloss: {name: cross_entropy}\n"
        "optimizer: {name: sgd, options: {lr: 0.1}}\ntrainer:\n  epochs: 60\n"
    )
    errors = problem(_yaml(service, text), 422)["errors"]
    assert errors[0]["path"] == "trainer.epochs" and errors[0]["line"] == 7


def test_unauthenticated_requests_learn_nothing_about_jobs(service: Service) -> None:
    real = service.submit(iris_config("secret")).json()["id"]
    anon = httpx.Client(base_url=service.url)
    for path in ("", "/logs", "/events", "/artifacts", "/artifacts/job.log", "/cancel"):
        method = "POST" if path == "/cancel" else "GET"
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
            answers = []
            for job_id in (real, str(uuid.uuid4()), "not-a-uuid"):
                body = problem(anon.request(method, f"/v1/jobs/{job_id}{path}", headers=headers), 401)
                assert body["detail"].startswith("a valid bearer token")
                answers.append({k: v for k, v in body.items() if k != "instance"})  # instance echoes the path sent
            assert answers[0] == answers[1] == answers[2], answers  # a real job answers like no job
    assert service.job(real)["status"] == "queued"  # the anonymous cancel did nothing


def test_job_ids_are_random_uuids(service: Service) -> None:
    ids = [service.submit(iris_config("ids")).json()["id"] for _ in range(5)]
    assert len(set(ids)) == 5
    assert all(uuid.UUID(i).version == 4 for i in ids)


def _raw_get(service: Service, target: str) -> tuple[int, str]:
    """A request line sent as written: clients normalise ../ away, an attacker does not."""
    with socket.create_connection(("127.0.0.1", service.port), timeout=10) as sock:
        sock.sendall(
            f"GET {target} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n".encode()
        )
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode(errors="replace")


def test_file_reads_cannot_leave_the_job_directory(service: Service, tmp_path: Path) -> None:
    job_id = service.submit(iris_config("files")).json()["id"]
    folder = service.state_dir / "jobs" / job_id
    (folder / "runs").mkdir(parents=True)
    (folder / "runs" / "metrics.jsonl").write_text('{"step": 1}\n')
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET")
    (folder / "runs" / "escape").symlink_to(secret)
    (folder / "runs" / "escape-dir").symlink_to(tmp_path, target_is_directory=True)
    (folder / "job.log").symlink_to(secret)  # a planted log link must not be read either

    listing = service.http.get(f"/v1/jobs/{job_id}/artifacts").json()
    assert [f["path"] for f in listing["files"]] == ["runs/metrics.jsonl"]
    assert service.http.get(f"/v1/jobs/{job_id}/artifacts/runs/metrics.jsonl").text == '{"step": 1}\n'

    base = f"/v1/jobs/{job_id}"
    for path in ("runs/escape", "runs/escape-dir/secret.txt", "runs/nothing"):
        assert "TOP-SECRET" not in problem(service.http.get(f"{base}/artifacts/{path}"), 404)["detail"]
    for target in (
        f"{base}/artifacts/../../../../etc/passwd",
        f"{base}/artifacts/runs/../../{job_id}/job.log",
        f"{base}/artifacts/%2E%2E/%2E%2E/%2E%2E/etc/passwd",
        f"{base}/artifacts/..%2F..%2F..%2Fetc%2Fpasswd",
        f"{base}/artifacts//etc/passwd",
        f"{base}/artifacts/%2Fetc%2Fpasswd",
        f"{base}/artifacts/{secret}",
        "/v1/jobs/..%2F..%2F..%2Fetc/logs",
        "/v1/jobs/%2E%2E/logs",
    ):
        status, body = _raw_get(service, target)
        assert 400 <= status < 500, (target, status, body)
        assert "root:" not in body and "TOP-SECRET" not in body, target
    log = service.http.get(f"{base}/logs")
    assert log.status_code == 404 and "TOP-SECRET" not in log.text
    os.unlink(folder / "job.log")
    (folder / "job.log").write_text("hello from the job\n")
    assert service.http.get(f"{base}/logs").text == "hello from the job\n"
    _still_serving(service)

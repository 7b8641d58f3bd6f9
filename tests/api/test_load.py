"""200 concurrent submissions from 20 clients against a real `gradloop serve` (no workers, so
this measures the API and the store), on SQLite and on PostgreSQL: every job is recorded, none
is lost, and clients that drop the connection and retry with the same Idempotency-Key get the
same job, never a second one.

A dropped connection is made two ways: the request is written to a raw socket that is closed
(with a reset) before the answer is read, so the server may or may not have committed the job;
and an httpx client whose read timeout is shorter than the server's answer. The retry follows at
once, so it often races the first request for the same key inside the server.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.support.api_service import Service, iris_config
from tests.support.postgres import drop_pg_schema, fresh_pg_schema

pytestmark = [pytest.mark.server, pytest.mark.timeout(240)]
CLIENTS, PER_CLIENT = 20, 10


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)], scope="module")
def service(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    extra = ["--max-concurrent", "0"]
    schema = None
    if request.param == "postgresql":
        url, schema = fresh_pg_schema("the load test on PostgreSQL")
        extra += ["--db", url]
    svc = Service(tmp_path_factory.mktemp(f"svc-load-{request.param}"), token="load-token", extra_args=extra)
    try:
        yield svc.wait_ready()
    finally:
        svc.stop()
        if schema:
            drop_pg_schema(schema)


def _drop_after_sending(svc: Service, body: bytes, key: str) -> None:
    """Send a whole POST, then close the socket with a reset before reading any answer."""
    head = (
        f"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer load-token\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nIdempotency-Key: {key}\r\n\r\n"
    )
    sock = socket.create_connection(("127.0.0.1", svc.port), timeout=10)
    sock.sendall(head.encode() + body)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _all_jobs(svc: Service) -> list[dict]:
    jobs, cursor = [], None
    while True:
        params = {"limit": 200, **({"cursor": cursor} if cursor else {})}
        page = svc.http.get("/v1/jobs", params=params).json()
        jobs += page["jobs"]
        cursor = page["next_cursor"]
        if not cursor:
            return jobs


def test_200_concurrent_submissions_with_dropped_connections_and_retries(service: Service) -> None:
    before = {j["id"] for j in _all_jobs(service)}
    barrier = threading.Barrier(CLIENTS)
    answers: dict[str, list[str]] = {}  # idempotency key -> job ids answered for it
    replayed: list[str] = []
    errors: list[str] = []
    lock = threading.Lock()

    def client(n: int) -> None:
        headers = {"Authorization": "Bearer load-token"}
        with (
            httpx.Client(base_url=service.url, headers=headers, timeout=60) as http,
            httpx.Client(base_url=service.url, headers=headers, timeout=httpx.Timeout(60, read=0.001)) as impatient,
        ):
            barrier.wait()
            for i in range(PER_CLIENT):
                key = f"load-{n}-{i}-{uuid.uuid4().hex[:8]}"
                cfg = iris_config(f"load-{n}-{i}")
                if i % 3 == 1:  # the connection dies after the request was sent
                    _drop_after_sending(service, json.dumps(cfg).encode(), key)
                elif i % 3 == 2:  # the client gives up waiting for the answer
                    try:
                        impatient.post("/v1/jobs", json=cfg, headers={"Idempotency-Key": key})
                    except httpx.TimeoutException:
                        pass
                try:
                    first = http.post("/v1/jobs", json=cfg, headers={"Idempotency-Key": key})
                    again = http.post("/v1/jobs", json=cfg, headers={"Idempotency-Key": key})
                except httpx.HTTPError as exc:
                    with lock:
                        errors.append(f"{key}: {exc!r}")
                    continue
                with lock:
                    for r in (first, again):
                        if r.status_code != 202:
                            errors.append(f"{key}: {r.status_code} {r.text[:200]}")
                        else:
                            answers.setdefault(key, []).append(r.json()["id"])
                            if r.headers.get("idempotent-replayed") == "true":
                                replayed.append(key)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert not errors, errors[:5]
    assert len(answers) == CLIENTS * PER_CLIENT
    for key, ids in answers.items():
        assert len(set(ids)) == 1, (key, ids)  # every answer for one key names one job
    # Every second answer for a key is a replay, and so is the first one after a dropped attempt
    # that the server had committed: at least one replay per key.
    assert all(replayed.count(k) >= 1 for k in answers)

    recorded = [j for j in _all_jobs(service) if j["id"] not in before]
    submitted = {ids[0] for ids in answers.values()}
    assert len(recorded) == CLIENTS * PER_CLIENT, f"{len(recorded)} jobs recorded for {len(answers)} keys"
    assert {j["id"] for j in recorded} == submitted  # none lost, none duplicated
    assert all(j["status"] == "queued" and uuid.UUID(j["id"]).version == 4 for j in recorded)
    assert service.http.get("/healthz").status_code == 200

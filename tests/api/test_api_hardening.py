"""The HTTP surface against a hostile client, through a real `gradloop serve` (auth on, no workers,
short read deadlines): large and alias-heavy YAML refused while it is parsed, with a short 422
and the service answering meanwhile; merge keys, duplicate JSON keys and a blank Idempotency-Key
refused by name; slow and vanishing clients cut off, logged in one line and counted; the
operator's routes behind the token unless --public-metrics."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.support.api_service import Service, iris_config, problem

pytestmark = [pytest.mark.server, pytest.mark.timeout(180)]
TOKEN = "hardening-token"
DEADLINE_S = 2
OPERATOR_ROUTES = ("/metrics", "/readyz", "/openapi.json", "/docs", "/redoc")
# About 1 MB: 100k keys, over the 100k-value limit once their values count too.
BIG_YAML = "".join(f"k{i}: 1\n" for i in range(100_000)).encode()
# 9 ** 12 values once expanded, in a few hundred bytes.
ALIAS_BOMB = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefghijk", "bcdefghijkl")
)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    deadlines = ["--header-timeout", str(DEADLINE_S), "--body-timeout", str(DEADLINE_S)]
    svc = Service(
        tmp_path_factory.mktemp("svc-hardening"), token=TOKEN, extra_args=["--max-concurrent", "0", *deadlines]
    )
    try:
        yield svc.wait_ready()
    finally:
        svc.stop()


def _yaml(service: Service, text: str | bytes, **kwargs: object) -> httpx.Response:
    data = text.encode() if isinstance(text, str) else text
    return service.http.post("/v1/jobs", content=data, headers={"Content-Type": "application/yaml"}, **kwargs)


def _json(service: Service, data: bytes) -> httpx.Response:
    return service.http.post("/v1/jobs", content=data, headers={"Content-Type": "application/json"})


def _still_serving(service: Service) -> None:
    assert service.submit(iris_config("after-hardening")).status_code == 202


def _metric(service: Service, name: str, **labels: str) -> float:
    text = service.http.get("/metrics").text
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        m = re.match(r"^(\w+)\{(.*)\} (\S+)$", line)
        if m and m.group(1) == name and ",".join(sorted(m.group(2).split(","))) == wanted:
            return float(m.group(3))
    return 0.0


class _LogTail:
    """The lines the service logs from now on."""

    def __init__(self, path: Path):
        self.path, self.start = path, path.stat().st_size

    def text(self) -> str:
        with open(self.path, "rb") as fh:
            fh.seek(self.start)
            return fh.read().decode(errors="replace")

    def wait_for(self, words: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if words in (text := self.text()):
                return text
            time.sleep(0.1)
        raise AssertionError(f"the service did not log {words!r}:\n{self.text()}")


def _raw(service: Service) -> socket.socket:
    return socket.create_connection(("127.0.0.1", service.port), timeout=30)


def _closed_by_server(sock: socket.socket) -> bool:
    """True once the server closed the connection (EOF or reset); False if it sent something."""
    try:
        return sock.recv(4096) == b""
    except ConnectionResetError:
        return True


# -- YAML parsing -------------------------------------------------------------------------


def test_a_100k_key_yaml_is_refused_with_a_short_answer(service: Service) -> None:
    response = _yaml(service, BIG_YAML)
    body = problem(response, 422)
    assert len(response.content) < 2048, len(response.content)
    assert "more than 100000 values" in body["errors"][0]["message"]
    _still_serving(service)


def test_an_alias_bomb_is_refused_without_expanding_it(service: Service) -> None:
    server = psutil.Process(service.proc.pid)
    _yaml(service, "name: warm-up\n")  # first-request allocations are not the bomb's
    before = server.memory_info().rss
    body = problem(_yaml(service, ALIAS_BOMB), 422)
    assert "aliases count each time" in body["errors"][0]["message"]
    grown = server.memory_info().rss - before
    assert grown < 64 * 1024**2, f"the service grew by {grown / 1024**2:.0f} MiB on an alias bomb"
    _still_serving(service)


def test_health_answers_while_large_yaml_is_being_refused(service: Service) -> None:
    answers: list[httpx.Response] = []

    def send() -> None:
        with httpx.Client(base_url=service.url, headers=dict(service.http.headers), timeout=60) as client:
            answers.append(client.post("/v1/jobs", content=BIG_YAML, headers={"Content-Type": "application/yaml"}))

    senders = [threading.Thread(target=send) for _ in range(3)]
    for t in senders:
        t.start()
    try:
        health = [httpx.get(f"{service.url}/healthz", timeout=60) for _ in range(5)]
    finally:
        for t in senders:
            t.join()
    assert [h.status_code for h in health] == [200] * 5
    assert [a.status_code for a in answers] == [422] * 3


def test_a_merge_key_of_a_scalar_is_a_422_naming_the_key(service: Service) -> None:
    body = problem(_yaml(service, "name: x\na:\n  <<: 5\n"), 422)
    assert body["errors"][0]["path"] == "a.<<" and body["errors"][0]["line"] == 3
    assert "merge key" in body["errors"][0]["message"]


def test_a_config_with_thousands_of_errors_gets_a_bounded_answer(service: Service) -> None:
    response = _yaml(service, "".join(f"unknown_{i}: {'x' * 50}\n" for i in range(6000)))
    body = problem(response, 422)
    assert len(body["errors"]) == 50 and "the first 50 of" in body["detail"]
    assert len(response.content) < 16 * 1024, len(response.content)


# -- JSON and headers ---------------------------------------------------------------------


def test_a_key_given_twice_in_json_is_a_422_naming_it(service: Service) -> None:
    text = json.dumps(iris_config("dup"))
    text = text.replace('"lr": 0.1', '"lr": 0.1, "lr": 0.5').replace('"name": "dup"', '"name": "dup", "name": "x"')
    errors = {e["path"]: e["message"] for e in problem(_json(service, text.encode()), 422)["errors"]}
    assert set(errors) == {"name", "optimizer.options.lr"}, errors
    assert all("appears twice" in m for m in errors.values())


@pytest.mark.parametrize("key", ["", "   ", "\t"])
def test_a_blank_idempotency_key_is_a_422_naming_the_header(service: Service, key: str) -> None:
    body = json.dumps(iris_config("blank-key")).encode()
    with _raw(service) as sock:  # clients refuse to send a whitespace-only header value
        sock.sendall(
            b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {TOKEN}\r\nIdempotency-Key: {key}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.split()[1] == b"422", answer
    assert "Idempotency-Key" in json.loads(payload)["detail"]


# -- slow and vanishing clients ------------------------------------------------------------


def test_a_client_trickling_its_headers_is_cut_off(service: Service) -> None:
    log = _LogTail(service.log_file)
    timeouts = _metric(service, "gradloop_http_client_disconnects_total", reason="header_timeout")
    request = b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 10_000
    with _raw(service) as sock:
        closed = False
        for i in range(len(request)):  # a byte at a time: each one arrives well within any idle bound
            try:
                sock.sendall(request[i : i + 1])
            except OSError:  # the server closed the connection
                closed = True
                break
            time.sleep(0.05)
        assert closed or _closed_by_server(sock)
    assert "--header-timeout" in log.wait_for("headers did not arrive")
    assert _metric(service, "gradloop_http_client_disconnects_total", reason="header_timeout") == timeouts + 1


def test_a_client_that_sends_nothing_is_cut_off(service: Service) -> None:
    with _raw(service) as sock:
        assert _closed_by_server(sock)


def test_a_client_trickling_its_body_is_cut_off_and_counted(service: Service) -> None:
    log = _LogTail(service.log_file)
    timeouts = _metric(service, "gradloop_http_client_disconnects_total", reason="body_timeout")
    with _raw(service) as sock:
        sock.sendall(
            b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {TOKEN}\r\nContent-Length: 100000\r\n\r\n".encode()
        )
        closed = False
        for _ in range(100_000):
            try:
                sock.sendall(b" ")
            except OSError:
                closed = True
                break
            time.sleep(0.05)
        assert closed or _closed_by_server(sock)
    text = log.wait_for("body did not arrive")
    assert "--body-timeout" in text and "Traceback" not in text
    assert "disconnected before" not in text  # one line per cut-off request
    assert _metric(service, "gradloop_http_client_disconnects_total", reason="body_timeout") == timeouts + 1


def test_a_client_leaving_mid_body_is_one_log_line_and_a_disconnect_not_a_500(service: Service) -> None:
    log = _LogTail(service.log_file)
    left = _metric(service, "gradloop_http_client_disconnects_total", reason="disconnect")
    errors = _metric(service, "gradloop_http_requests_total", method="POST", route="/v1/jobs", status="500")
    with _raw(service) as sock:
        sock.sendall(
            b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {TOKEN}\r\nContent-Length: 100000\r\n\r\n".encode()
            + b'{"name": "half'
        )
        time.sleep(0.2)  # the server has the headers and is waiting for the rest of the body
    text = log.wait_for("disconnected before sending the whole body")
    assert text.count("disconnected before sending the whole body") == 1 and "Traceback" not in text
    assert _metric(service, "gradloop_http_client_disconnects_total", reason="disconnect") == left + 1
    assert _metric(service, "gradloop_http_requests_total", method="POST", route="/v1/jobs", status="500") == errors
    _still_serving(service)


# -- the operator's routes -----------------------------------------------------------------


def test_operator_routes_need_the_token_and_health_does_not(service: Service) -> None:
    for path in OPERATOR_ROUTES:
        body = problem(httpx.get(f"{service.url}{path}"), 401)
        assert body["detail"].startswith("a valid bearer token")
        assert service.http.get(path).status_code == 200, path
    assert httpx.get(f"{service.url}/healthz").json() == {"status": "ok"}


def test_public_metrics_opens_the_operator_routes_only(tmp_path: Path) -> None:
    svc = Service(tmp_path, token=TOKEN, extra_args=["--max-concurrent", "0", "--public-metrics"])
    try:
        svc.wait_ready()
        for path in OPERATOR_ROUTES:
            assert httpx.get(f"{svc.url}{path}").status_code == 200, path
        assert "gradloop_http_requests_total" in httpx.get(f"{svc.url}/metrics").text
        problem(httpx.get(f"{svc.url}/v1/jobs"), 401)
        problem(httpx.post(f"{svc.url}/v1/jobs", json=iris_config()), 401)
    finally:
        svc.stop()

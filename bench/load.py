"""Job-service load: submit and status-poll throughput and latency (p50/p99) with many clients,
against SQLite and PostgreSQL.

Each backend gets its own `gradloop serve` process (--max-concurrent 0: no training competes for
the CPU, so this measures the API and the store). The clients are asyncio tasks on one httpx
AsyncClient in this process, a separate process from the server; on this 2-core machine they
still share the cores with it, which the numbers include.

Three phases per backend:
  closed  N clients, each submitting back to back (each waits for its answer): the throughput
          ceiling; latency here is mostly time spent queued behind the other clients' requests
          (Little's law: latency ~ clients / throughput).
  open    submissions arriving at a fixed rate (--rate per second) from as many clients as it
          takes: latency at a given load, not at saturation.
  poll    N clients reading GET /v1/jobs/{id} of the submitted jobs back to back.
  wrk     the closed loop again, driven by wrk (Debian package `wrk`) when it is installed: httpx
          costs its clients 3-7 ms of CPU a request here, more than the server's own work, so on
          2 cores the Python clients measure mostly themselves; wrk's C event loop does not.
Usage: python bench/load.py [--backends sqlite,postgresql] [--clients 20] [--per-client 10] [--rate 50] [--workers 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from api_fixtures import Service, iris_config  # noqa: E402

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def server_cpu_s(pid: int) -> float:
    """User + system CPU seconds of the server so far, its worker processes included
    (serve --workers): per-request CPU is steadier than latency on a machine shared with other work."""
    root = psutil.Process(pid)
    total = 0.0
    for proc in [root, *root.children(recursive=True)]:
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def line(label: str, ms: list[float], wall: float, cpu_s: float) -> str:
    return (
        f"  {label:<38} n={len(ms):<5} p50 {pct(ms, 50):6.1f} ms  p99 {pct(ms, 99):6.1f} ms  "
        f"max {max(ms):6.1f} ms  {len(ms) / wall:5.0f} req/s  server CPU {cpu_s * 1000 / len(ms):4.1f} ms/req"
    )


async def timed(call: Callable[[], Awaitable[httpx.Response]], out: list[float], expect: int) -> httpx.Response:
    t0 = time.perf_counter()
    response = await call()
    out.append((time.perf_counter() - t0) * 1000)
    if response.status_code != expect:
        raise RuntimeError(f"{response.status_code}: {response.text[:300]}")
    return response


async def closed_submits(
    http: httpx.AsyncClient, clients: int, per_client: int, ids: list[str]
) -> tuple[list[float], float]:
    ms: list[float] = []
    body = iris_config("load")

    async def client(n: int) -> None:
        for i in range(per_client):
            r = await timed(
                lambda i=i: http.post(
                    "/v1/jobs", json=body, headers={"Idempotency-Key": f"{n}-{i}-{uuid.uuid4().hex}"}
                ),
                ms,
                202,
            )
            ids.append(r.json()["id"])

    t0 = time.perf_counter()
    await asyncio.gather(*(client(n) for n in range(clients)))
    return ms, time.perf_counter() - t0


async def open_submits(http: httpx.AsyncClient, rate: float, total: int, ids: list[str]) -> tuple[list[float], float]:
    ms: list[float] = []
    body = iris_config("load-open")
    tasks = []
    t0 = time.perf_counter()
    for i in range(total):
        # Arrivals on a fixed schedule, whether or not earlier answers have come back.
        delay = t0 + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(timed(lambda: http.post("/v1/jobs", json=body), ms, 202)))
    for r in await asyncio.gather(*tasks):
        ids.append(r.json()["id"])
    return ms, time.perf_counter() - t0


async def polls(http: httpx.AsyncClient, clients: int, per_client: int, ids: list[str]) -> tuple[list[float], float]:
    ms: list[float] = []
    rng = random.Random(0)

    async def client() -> None:
        for _ in range(per_client):
            job_id = rng.choice(ids)
            await timed(lambda job_id=job_id: http.get(f"/v1/jobs/{job_id}"), ms, 200)

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return ms, time.perf_counter() - t0


async def run_phases(url: str, pid: int, args: argparse.Namespace) -> None:
    limits = httpx.Limits(max_connections=args.clients * 4, max_keepalive_connections=args.clients * 4)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
        ids: list[str] = []
        await closed_submits(http, args.clients, 3, ids)  # warm: connections, caches, first-use imports
        phases = [
            (
                f"submit, closed loop, {args.clients} clients",
                lambda: closed_submits(http, args.clients, args.per_client, ids),
            ),
            (
                f"submit, open loop, {args.rate:.0f}/s arrivals",
                lambda: open_submits(http, args.rate, args.clients * args.per_client, ids),
            ),
            (
                f"status poll, closed loop, {args.clients} clients",
                lambda: polls(http, args.clients, args.per_client * 5, ids),
            ),
        ]
        for label, phase in phases:
            cpu0 = server_cpu_s(pid)
            ms, wall = await phase()
            print(line(label, ms, wall, server_cpu_s(pid) - cpu0))
    measured = wrk_submits(url, pid, args.clients, args.wrk_seconds)
    print(measured or "  (wrk is not installed: apt-get install wrk for the closed loop without Python clients)")


# wrk script: each request a fresh Idempotency-Key (prefix per run, counter per connection thread).
WRK_SCRIPT = """
local counter = 0
local thread_id = 0
setup = function(thread) thread:set("tid", thread_id); thread_id = thread_id + 1 end
init = function(args)
  local f = io.open(args[1], "r"); body = f:read("*a"); f:close()
  prefix = args[2]
end
request = function()
  counter = counter + 1
  return wrk.format("POST", "/v1/jobs", {["Content-Type"] = "application/json",
    ["Idempotency-Key"] = string.format("%s-%d-%d", prefix, tid, counter)}, body)
end
done = function(summary, latency, requests)
  io.write(string.format("RESULT %f %f %f %d %d\\n", latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    latency.max / 1000, summary.requests, summary.errors.status + summary.errors.connect + summary.errors.read
    + summary.errors.write + summary.errors.timeout))
end
"""


def wrk_submits(url: str, pid: int, clients: int, seconds: int) -> str | None:
    """Closed-loop submits from `clients` wrk connections for `seconds`; None without wrk."""
    wrk = shutil.which("wrk")
    if wrk is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        script, body = Path(tmp) / "submit.lua", Path(tmp) / "body.json"
        script.write_text(WRK_SCRIPT)
        body.write_text(json.dumps(iris_config("load-wrk")))
        cpu0 = server_cpu_s(pid)
        out = subprocess.run(
            [
                wrk,
                "-t1",
                f"-c{clients}",
                f"-d{seconds}s",
                "-s",
                str(script),
                url,
                "--",
                str(body),
                uuid.uuid4().hex[:8],
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        cpu = server_cpu_s(pid) - cpu0
    found = [ln.split()[1:] for ln in out.splitlines() if ln.startswith("RESULT ")]
    if not found:
        raise RuntimeError(f"wrk printed no result:\n{out}")
    p50, p99, worst, n, errors = (
        float(found[0][0]),
        float(found[0][1]),
        float(found[0][2]),
        int(found[0][3]),
        int(found[0][4]),
    )
    if errors:
        raise RuntimeError(f"{errors} of {n} wrk requests failed")
    label = f"submit, closed loop, {clients} wrk connections"
    return (
        f"  {label:<38} n={n:<5} p50 {p50:6.1f} ms  p99 {p99:6.1f} ms  max {worst:6.1f} ms  {n / seconds:5.0f} req/s  "
        f"server CPU {cpu * 1000 / n:4.1f} ms/req"
    )


def pg_schema() -> tuple[str, Callable[[], None]] | None:
    try:
        from sqlalchemy import create_engine, text

        schema = f"gl_bench_{uuid.uuid4().hex[:12]}"
        engine = create_engine(PG_URL, connect_args={"connect_timeout": 3})
        with engine.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    except Exception as exc:
        print(f"postgresql: skipped, no server at 127.0.0.1:5432 ({type(exc).__name__})")
        return None

    def drop() -> None:
        with engine.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()

    return f"{PG_URL}?options=-csearch_path%3D{schema}", drop


def _nothing() -> None:
    pass


def bench_backend(backend: str, args: argparse.Namespace) -> None:
    extra = ["--max-concurrent", "0", "--workers", str(args.workers)]
    cleanup: Callable[[], None] = _nothing
    if backend == "postgresql":
        found = pg_schema()
        if found is None:
            return
        url, cleanup = found
        extra += ["--db", url]
    with tempfile.TemporaryDirectory() as tmp:
        svc = Service(Path(tmp), extra_args=extra).wait_ready()
        try:
            print(f"{backend}:")
            asyncio.run(run_phases(svc.url, svc.proc.pid, args))
        finally:
            svc.stop()
            cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--per-client", type=int, default=10)
    parser.add_argument("--rate", type=float, default=50.0, help="open-loop submissions per second")
    parser.add_argument("--workers", type=int, default=1, help="serve --workers: API processes")
    parser.add_argument("--wrk-seconds", type=int, default=10, help="length of the wrk closed-loop phase")
    args = parser.parse_args()
    for backend in args.backends.split(","):
        bench_backend(backend.strip(), args)


if __name__ == "__main__":
    main()

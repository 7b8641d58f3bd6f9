"""Job-service numbers: submit latency with 20 concurrent clients, and submission to first
training step on an idle service.

Each part starts its own `gradloop serve` (SQLite store in a temp dir) as a real process:
  1. submit latency: --max-concurrent 0 (no training competes for the CPU), 20 client threads
     each POSTing jobs back to back; p50/p99 of the request round trip.
  2. first step: one worker, an idle service; one job at a time, submit -> the job's first
     optimizer step (the timestamp of its step-1 progress event), with MLflow tracking on and off.
Usage: python bench/api.py [--clients 20] [--per-client 10] [--jobs 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from api_fixtures import Service, iris_config  # noqa: E402


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def submit_latency(clients: int, per_client: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        svc = Service(Path(tmp), extra_args=["--max-concurrent", "0"]).wait_ready()
        try:
            body = iris_config("bench")
            with httpx.Client(base_url=svc.url) as warm:  # first request pays for imports/plugins
                for _ in range(3):
                    warm.post("/v1/jobs", json=body).raise_for_status()
            latencies: list[float] = []
            lock = threading.Lock()
            barrier = threading.Barrier(clients)

            def client() -> None:
                mine = []
                with httpx.Client(base_url=svc.url, timeout=30) as c:
                    barrier.wait()
                    for _ in range(per_client):
                        t0 = time.perf_counter()
                        c.post("/v1/jobs", json=body).raise_for_status()
                        mine.append(time.perf_counter() - t0)
                with lock:
                    latencies.extend(mine)

            threads = [threading.Thread(target=client) for _ in range(clients)]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - t0
            ms = [x * 1000 for x in latencies]
            print(
                f"submit latency, {clients} concurrent clients, {len(ms)} jobs (SQLite, no workers): "
                f"p50 {pct(ms, 50):.1f} ms, p99 {pct(ms, 99):.1f} ms, max {max(ms):.1f} ms, {len(ms) / wall:.0f} "
                "submits/s"
            )
        finally:
            svc.stop()


def first_step(jobs: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        svc = Service(Path(tmp), extra_args=["--max-concurrent", "1"]).wait_ready()
        try:
            for tracking in (True, False):
                delays = []
                for i in range(jobs + 1):
                    job = svc.submit(iris_config(f"first-step-{i}", tracking=tracking)).json()
                    svc.wait_for(job["id"], timeout=120)
                    created = svc.job(job["id"])["created_at"]
                    events = svc.http.get(f"/v1/jobs/{job['id']}/events").text
                    first = _first_step_ts(events)
                    from datetime import datetime

                    if i == 0:
                        continue  # the first job after start-up also warms MLflow's experiment
                    delays.append(first - datetime.fromisoformat(created).timestamp())
                label = "on " if tracking else "off"
                print(
                    f"submission -> first training step, idle service, MLflow tracking {label}: "
                    f"median {statistics.median(delays) * 1000:.0f} ms, max {max(delays) * 1000:.0f} ms over "
                    f"{len(delays)} jobs"
                )
        finally:
            svc.stop()


def _first_step_ts(stream: str) -> float:
    import json

    for block in stream.replace("\r\n", "\n").split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if fields.get("event") == "progress":
            data = json.loads(fields["data"])
            if data.get("step") == 1:
                return float(data["ts"])
    raise RuntimeError("no step-1 progress event in the job's stream")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--per-client", type=int, default=10)
    parser.add_argument("--jobs", type=int, default=5)
    args = parser.parse_args()
    submit_latency(args.clients, args.per_client)
    first_step(args.jobs)


if __name__ == "__main__":
    main()

"""Job-service numbers: submit latency with 20 concurrent clients, and submission to first
training step on an idle service.

Each part starts its own `gradloop serve` (SQLite store in a temp dir) as a real process:
  1. submit latency: --max-concurrent 0 (no training competes for the CPU), 20 client threads
     each POSTing jobs back to back; p50/p99 of the request round trip.
  2. first step and end of job: one worker, an idle service; one job at a time, tracking on and
     off alternated: submit -> the job's first optimizer step (the timestamp of its step-1
     progress event), and its last step's progress event -> the job `succeeded` (finished_at).
Usage: python bench/api.py [--clients 20] [--per-client 10] [--jobs 5] [--only latency,first-step]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support.api_service import Service, iris_config  # noqa: E402


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
                f"p50 {pct(ms, 50):.1f} ms, p99 {pct(ms, 99):.1f} ms, max {max(ms):.1f} ms,"
                f" {len(ms) / wall:.0f} submits/s"
            )
        finally:
            svc.stop()


def first_step(jobs: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        svc = Service(Path(tmp), extra_args=["--max-concurrent", "1"]).wait_ready()
        try:
            got: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
            for i in range(jobs + 1):
                for tracking in (True, False) if i % 2 == 0 else (False, True):
                    job = svc.submit(iris_config(f"first-step-{i}", tracking=tracking)).json()
                    done = svc.wait_for(job["id"], timeout=300)
                    if done["status"] != "succeeded":
                        raise RuntimeError(f"job {job['id']} ended {done['status']}: {svc.log(job['id'])[-2000:]}")
                    first, last = _step_ts(svc.http.get(f"/v1/jobs/{job['id']}/events").text)
                    if i == 0:
                        continue  # the first jobs after start-up also warm MLflow's experiment
                    created = datetime.fromisoformat(done["created_at"]).timestamp()
                    finished = datetime.fromisoformat(done["finished_at"]).timestamp()
                    got[tracking].append((first - created, finished - last))
            print(f"one job at a time, idle service, {jobs} jobs each way (load {os.getloadavg()[0]:.1f}):")
            for tracking in (True, False):
                starts, ends = [s * 1000 for s, _ in got[tracking]], [e * 1000 for _, e in got[tracking]]
                print(
                    f"  MLflow tracking {'on ' if tracking else 'off'}: submission -> first step median"
                    f" {statistics.median(starts):.0f} ms [{min(starts):.0f}-{max(starts):.0f}];"
                    f" last step -> succeeded median {statistics.median(ends):.0f} ms [{min(ends):.0f}-{max(ends):.0f}]"
                )
        finally:
            svc.stop()


def _step_ts(stream: str) -> tuple[float, float]:
    """The timestamps of the step-1 progress event and of the last step's."""
    steps: dict[int, float] = {}
    for block in stream.replace("\r\n", "\n").split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if fields.get("event") == "progress":
            data = json.loads(fields["data"])
            if data.get("step"):
                steps.setdefault(int(data["step"]), float(data["ts"]))
    if 1 not in steps:
        raise RuntimeError("no step-1 progress event in the job's stream")
    return steps[1], steps[max(steps)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--per-client", type=int, default=10)
    parser.add_argument("--jobs", type=int, default=5)
    parser.add_argument("--only", default="latency,first-step")
    args = parser.parse_args()
    only = set(args.only.split(","))
    if "latency" in only:
        submit_latency(args.clients, args.per_client)
    if "first-step" in only:
        first_step(args.jobs)


if __name__ == "__main__":
    main()

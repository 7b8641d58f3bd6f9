"""What MLflow tracking costs a training loop: tracking off vs the sqlite store vs a real server.

The digits MLP (64-128-10, batch 32, SGD) with tracking.grad_stats=per_layer, log_every=10 and
histogram_every=100, trained in one process against: tracking disabled, the default sqlite
store (in a temp dir), and a real `mlflow server` subprocess on localhost. Steps/s is measured
between the first and the last logging step by a timing observer, so the run's set-up (creating
the MLflow run) and its end (plots, model, flush) are not counted: they happen once per run,
not per step. The three are run REPEATS times in alternation and the best is kept (other load
on a shared machine only ever slows a run down), and so is the median of each round's ratio to
the 'off' run beside it. Because wall time on a busy machine is noisy,
the training thread's own CPU time per step (time.thread_time, which other processes do not
inflate) is reported too, and the time spent inside the tracking observer's calls on the
training thread, per step, which is what tracking itself adds to the loop (the store is
written by a child process). Target: <= 3% fewer steps/s.

    python bench/tracking.py [--repeats 5] [--epochs 100]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from service.observer import NullObserver  # noqa: E402  (after the path set-up above)


class StepClock(NullObserver):
    """Times the steps between the first and the last logging call (an observer that only reads)."""

    def __init__(self) -> None:
        self.first: tuple[int, float, float] | None = None
        self.last: tuple[int, float, float] | None = None

    def after_optimizer_step(self, step: int, snapshot: Any, metrics: Mapping[str, Any]) -> None:
        now = (step, time.perf_counter(), time.thread_time())
        if self.first is None:
            self.first = now
        self.last = now

    @property
    def steps_per_s(self) -> float:
        assert self.first and self.last and self.last[0] > self.first[0]
        return (self.last[0] - self.first[0]) / (self.last[1] - self.first[1])

    @property
    def cpu_us_per_step(self) -> float:
        assert self.first and self.last and self.last[0] > self.first[0]
        return (self.last[2] - self.first[2]) / (self.last[0] - self.first[0]) * 1e6


def config(epochs: int, out: str, uri: str | None, device: str = "cpu") -> dict:
    return {
        "name": "bench-tracking",
        "seed": 0,
        "device": device,
        "output_dir": out,
        "model": {"name": "mlp", "options": {"in_features": 64, "hidden": [128], "out_features": 10}},
        "data": {"name": "sklearn", "options": {"dataset": "digits"}, "batch_size": 32, "val_fraction": 0.2},
        "loss": {"name": "cross_entropy"},
        "optimizer": {"name": "sgd", "options": {"lr": 0.05, "momentum": 0.9}},
        "trainer": {"epochs": epochs, "val_every_epochs": 5, "checkpoint_at_end": False, "progress": "none"},
        "tracking": {"enabled": uri is not None, "uri": uri, "experiment": "bench", "log_every": 10,
                     "histogram_every": 100, "grad_stats": "per_layer", "system_metrics": False,
                     "log_model": False, "log_checkpoint": False},
    }


class Timed:
    """Wraps the MLflow observer and adds up the time its calls take on the training thread."""

    def __init__(self, inner: Any):
        self.inner, self.seconds = inner, 0.0

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if name not in ("wants_step_stats", "before_optimizer_step", "after_optimizer_step", "log_metrics"):
            return attr

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return attr(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t0

        return timed


_timed: list[Timed] = []


def _install_timing() -> None:
    import service.tracking as tracking

    make = tracking.make_observer

    def make_timed(*args: Any, **kwargs: Any) -> Any:
        _timed.append(Timed(make(*args, **kwargs)))
        return _timed[-1]

    tracking.make_observer = make_timed  # the runner looks it up at each train()


def one_run(epochs: int, out: str, uri: str | None, device: str = "cpu") -> tuple[float, float, float, int, int]:
    from service import train

    clock = StepClock()
    _timed.clear()
    result = train(config(epochs, out, uri, device), observers=[clock])
    in_observer = _timed[0].seconds / result.steps * 1e6 if _timed else 0.0
    unsent = 0
    if uri is not None:
        from service.tracking.jsonl import unsent_records

        unsent = sum(len(r.metrics) for r in unsent_records(result.run_dir))
    return clock.steps_per_s, clock.cpu_us_per_step, in_observer, result.steps, unsent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--device", default="cpu", help="cpu (the issue's setting) or cuda")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    import logging

    logging.getLogger("mlflow").setLevel(logging.WARNING)

    from tests.mlflow_fixtures import MlflowServer

    tmp = Path(tempfile.mkdtemp(prefix="gradloop-bench-tracking-"))
    server = MlflowServer(tmp)
    server.start()
    variants = {"off": None, "sqlite": f"sqlite:///{tmp}/mlflow.db", "server": server.uri}
    rates: dict[str, list[float]] = {k: [] for k in variants}
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    obs: dict[str, list[float]] = {k: [] for k in variants}
    _install_timing()
    try:
        for uri in variants.values():  # warm-up: imports, tables, the store-writing child process
            one_run(2, str(tmp / "runs"), uri, args.device)
        for r in range(args.repeats):
            for name, uri in variants.items():
                sps, us, in_obs, steps, unsent = one_run(args.epochs, str(tmp / "runs"), uri, args.device)
                rates[name].append(sps)
                cpu[name].append(us)
                obs[name].append(in_obs)
                print(f"  round {r + 1} {name:7s} {sps:8.1f} steps/s {us:7.1f} us CPU/step {in_obs:6.1f} us/step in tracking"
                      f"  ({steps} steps, {unsent} points unsent)", flush=True)
    finally:
        server.stop()
    base, base_cpu = max(rates["off"]), statistics.median(cpu["off"])
    print(f"\ndigits MLP on {args.device}, grad_stats=per_layer, log_every=10, {args.epochs} epochs, {args.repeats} rounds")
    step_us = 1e6 / base
    # Paired: each round's run against the 'off' run just before it. The machine's speed drifts
    # between rounds (other tenants), so a best-of-rounds ratio can compare a fast minute with a
    # slow one; the median of paired ratios does not.
    print(f"{'tracking':10s} {'best steps/s':>12s} {'vs off':>8s} {'paired vs off':>14s} {'thread CPU us/step':>19s} {'vs off':>7s} {'us/step in tracking calls':>26s} {'= share of a step':>18s}")
    for name in variants:
        best, us, inside = max(rates[name]), statistics.median(cpu[name]), statistics.median(obs[name])
        paired = statistics.median(r / o for r, o in zip(rates[name], rates["off"]))
        print(f"{name:10s} {best:12.1f} {best / base:8.3f} {paired:14.3f} {us:19.1f} {us / base_cpu:7.3f} {inside:26.1f} {inside / step_us * 100:17.1f}%")


if __name__ == "__main__":
    main()

"""What tracking's work on the training thread costs: one run, its observer switched on and off.

What it tells that bench/tracking.py's whole runs cannot: the training thread's own share, on
a scale the whole runs cannot resolve on a shared machine. One tracked run of the same digits
MLP (sqlite store, grad_stats=per_layer, log_every=10, histogram_every=100; no validation)
trains in chunks of CHUNK_STEPS optimizer steps, and in every other chunk the MLflow observer's
calls are skipped (the trainer is told no statistics are wanted and no window is handed over).
The time of each chunk with them against the chunk before without them gives one ratio; the
median over the run is printed, with the time spent inside the calls. Neighbouring chunks see
the same machine speed, so this is much steadier than whole runs, but it is blind to whatever
runs in both kinds of chunk (the sender thread, the store's child process, garbage collection
of what the windows left behind) and to the run's start and end. Use it to judge a change to
the training thread's part; use bench/tracking.py for what the user waits for.

    python bench/tracking_switch.py [--epochs 500] [--repeats 3] [--spin-us N] [key=value ...]

key=value pairs override the tracking config (e.g. histogram_every=0 grad_stats=total).
--spin-us N replaces the observer's work by a busy wait of N us per logging window (0 gives
the bench's own noise): what that much work per window costs, whatever it is.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from tracking import config  # noqa: E402  (bench/tracking.py: the same model and settings)

from gradloop.observer import NullObserver  # noqa: E402

CHUNK_STEPS = 200
WARM_STEPS = 1000  # chunks before this step are not counted (imports, first writes)


class Switch:
    """Wraps the MLflow observer; its calls pass through only while `on`, and their time is summed."""

    def __init__(self, inner: Any):
        self.inner, self.on, self.seconds = inner, False, 0.0

    def wants_step_stats(self, step: int) -> bool:
        return self.on and self.inner.wants_step_stats(step)

    def before_optimizer_step(self, step: int, model: torch.nn.Module) -> Any:
        t0 = time.perf_counter()
        snapshot = self.inner.before_optimizer_step(step, model)
        self.seconds += time.perf_counter() - t0
        return snapshot

    def after_optimizer_step(self, step: int, snapshot: Any, metrics: Mapping[str, Any]) -> None:
        if self.on:
            t0 = time.perf_counter()
            self.inner.after_optimizer_step(step, snapshot, metrics)
            self.seconds += time.perf_counter() - t0

    def __getattr__(self, name: str) -> Any:  # start, finish, log_metrics...: straight through
        return getattr(self.inner, name)


class Spin:
    """A stand-in for the observer's work (--spin-us): no statistics, and at each logging window a
    busy wait of `seconds` touching no memory. It calibrates the bench: what N microseconds of
    any work per window cost this model's steps/s."""

    def __init__(self, inner: Any, seconds: float):
        self.inner, self.seconds = inner, seconds

    def wants_step_stats(self, step: int) -> bool:
        return False

    def before_optimizer_step(self, step: int, model: torch.nn.Module) -> Any:
        return None

    def after_optimizer_step(self, step: int, snapshot: Any, metrics: Mapping[str, Any]) -> None:
        if metrics:
            until = time.perf_counter() + self.seconds
            while time.perf_counter() < until:
                pass

    def __getattr__(self, name: str) -> Any:  # start, finish, log_metrics...: the real run's
        return getattr(self.inner, name)


class Chunks(NullObserver):
    """Times each chunk of CHUNK_STEPS steps and flips the switch between chunks."""

    def __init__(self, switch: list[Switch]):
        self.switch, self.on, self.off = switch, [], []
        self.steps_on = 0  # every step taken with the calls on, warm-up included (as their time is)
        self._since: float | None = None

    def after_optimizer_step(self, step: int, snapshot: Any, metrics: Mapping[str, Any]) -> None:
        if step % CHUNK_STEPS or not self.switch:
            return
        now = time.perf_counter()
        if self._since is not None and step > WARM_STEPS:
            (self.on if self.switch[0].on else self.off).append(now - self._since)
        if self.switch[0].on:
            self.steps_on += CHUNK_STEPS
        self.switch[0].on = (step // CHUNK_STEPS) % 2 == 1
        self._since = time.perf_counter()


def one_run(epochs: int, overrides: dict[str, Any], spin_us: float | None = None) -> tuple[float, float]:
    """The median on/off ratio of steps/s over one run, and microseconds per step in the calls."""
    import gradloop.runner as tracking  # (the runner's own name for make_observer is the one to switch)
    from gradloop import train

    switch: list[Switch] = []
    make = tracking.make_observer

    def make_switched(*args: Any, **kwargs: Any) -> Switch:
        observer = make(*args, **kwargs)
        switch.append(Switch(observer if spin_us is None else Spin(observer, spin_us * 1e-6)))
        return switch[-1]

    tmp = tempfile.mkdtemp(prefix="gradloop-bench-switch-")
    cfg = config(epochs, f"{tmp}/runs", f"sqlite:///{tmp}/mlflow.db")
    cfg["trainer"]["val_every_epochs"] = 10**6  # validation would land in one kind of chunk only
    cfg["tracking"].update(overrides)
    chunks = Chunks(switch)
    tracking.make_observer = make_switched
    try:
        train(cfg, observers=[chunks])
    finally:
        tracking.make_observer = make
    ratios = [off / on for off, on in zip(chunks.off, chunks.on)]
    return statistics.median(ratios), switch[0].seconds / max(chunks.steps_on, 1) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=500, help="45 steps each")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--spin-us",
        type=float,
        default=None,
        help="calibration: replace the observer's work by a busy wait of this many us per logging window",
    )
    parser.add_argument("overrides", nargs="*", help="tracking.KEY=VALUE")
    args = parser.parse_args()
    overrides: dict[str, Any] = {}
    for item in args.overrides:
        key, _, value = item.partition("=")
        overrides[key] = int(value) if value.isdigit() else value
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    results = []
    for r in range(args.repeats):
        ratio, in_calls = one_run(args.epochs, overrides, args.spin_us)
        results.append(ratio)
        print(
            f"  run {r + 1}: steps/s with the observer's calls / without = {ratio:.4f}, {in_calls:.2f} us/step in them",
            flush=True,
        )
    what = f"{overrides or 'the bench config'}" + (
        f", a {args.spin_us:g} us busy wait per window instead of the observer's work"
        if args.spin_us is not None
        else ""
    )
    print(
        f"\ndigits MLP, chunks of {CHUNK_STEPS} steps, {args.epochs} epochs, {what}: "
        f"median {statistics.median(results):.4f} ({' '.join(f'{x:.4f}' for x in results)})"
    )


if __name__ == "__main__":
    main()

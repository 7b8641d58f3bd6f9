"""What MLflow tracking costs a training loop: tracking off vs the sqlite store vs a real server.

The digits MLP (64-128-10, batch 32, SGD) with tracking.grad_stats=per_layer, log_every=10 and
histogram_every=100, trained with tracking disabled and, side by side in the same process, with
the default sqlite store (in a temp dir) or a real `mlflow server` subprocess on localhost.
Target: <= 3% fewer steps/s.

Side by side means in lockstep: the two runs train in two threads that pass a baton every
TURN_STEPS optimizer steps, so exactly one of them trains at any moment and each adds up only
the time it held the baton. This machine's speed drifts by 10-30% from one second to the next
(other tenants of the host), which made run-after-run comparisons of a 3% effect hopeless: two
identical runs differed by up to 20%. Turns of about 50 ms see the same drift on both sides.
Everything else of the tracked run goes on as in any run: its sender thread and histogram
writer share the process, and the store is written (and a CPU run's histograms counted) by its
own child process, or by the server. Such threads also take the GIL during the untracked run's
turns, so lockstep shows only part of what they cost; work moved from them to the training
thread shows in full.
A pair of two tracking-off runs shows the method's own noise (such pairs came out about 1% in
favour of the second thread, so the tracked run takes the first thread in every other round).
The time spent inside the tracking observer's calls on the training thread is reported too.

    python bench/tracking.py [--repeats 4] [--epochs 100] [--device cuda]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gradloop.observer import NullObserver  # noqa: E402  (after the path set-up above)

TURN_STEPS = 50


class Baton:
    """Lets two runs train in turns; each turn is TURN_STEPS optimizer steps of one run."""

    def __init__(self, names: tuple[str, str]) -> None:
        self.names = names
        self.holder: str | None = None
        self.arrived: set[str] = set()
        self.done: set[str] = set()
        self.cond = threading.Condition()

    def wait_turn(self, name: str) -> None:
        with self.cond:
            self.arrived.add(name)
            if self.holder is None and self.arrived == set(self.names):
                self.holder = self.names[0]  # both are set up: the first turn begins
                self.cond.notify_all()
            self.cond.wait_for(lambda: self.holder == name or self._other(name) in self.done)

    def pass_on(self, name: str, finished: bool = False) -> None:
        with self.cond:
            if finished:
                self.done.add(name)
            if self.holder == name:
                self.holder = self._other(name)
            self.cond.notify_all()

    def both_running(self) -> bool:
        return not self.done

    def _other(self, name: str) -> str:
        return self.names[1] if name == self.names[0] else self.names[0]


class Turns(NullObserver):
    """Takes turns on the baton at logging steps and adds up the steps and time of its turns."""

    def __init__(self, name: str, baton: Baton) -> None:
        self.name, self.baton = name, baton
        self.steps = 0
        self.seconds = 0.0
        self._since: tuple[int, float] | None = None

    def after_optimizer_step(self, step: int, snapshot: Any, metrics: Mapping[str, Any]) -> None:
        if self._since is None:
            self.baton.wait_turn(self.name)
            self._since = (step, time.perf_counter())
        elif step - self._since[0] >= TURN_STEPS:
            if self.baton.both_running():  # only turns taken while the other run still trains count
                self.steps += step - self._since[0]
                self.seconds += time.perf_counter() - self._since[1]
            self.baton.pass_on(self.name)
            self.baton.wait_turn(self.name)
            self._since = (step, time.perf_counter())

    def finish(self, status: Any, error: BaseException | None = None) -> None:
        self.baton.pass_on(self.name, finished=True)

    @property
    def steps_per_s(self) -> float:
        return self.steps / self.seconds


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
        "tracking": {
            "enabled": uri is not None,
            "uri": uri,
            "experiment": "bench",
            "log_every": 10,
            "histogram_every": 100,
            "grad_stats": "per_layer",
            "system_metrics": False,
            "log_model": False,
            "log_checkpoint": False,
        },
    }


class Timed:
    """Wraps the MLflow observer and adds up the time its calls take on the training thread.

    The timed methods are bound once, here: a wrapper looked up per call (__getattr__) would
    itself cost the tracked run a microsecond or two per step."""

    # wants_step_stats (asked every step, an integer test) is left unwrapped: a timer around
    # it would cost the tracked run more than the call itself. Its cost still shows in steps/s.
    TIMED = ("before_optimizer_step", "after_optimizer_step", "log_metrics")

    def __init__(self, inner: Any):
        self.inner, self.seconds = inner, 0.0
        for name in self.TIMED:
            setattr(self, name, self._timed(getattr(inner, name)))

    def _timed(self, method: Any) -> Any:
        clock = time.perf_counter

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = clock()
            try:
                return method(*args, **kwargs)
            finally:
                self.seconds += clock() - t0

        return timed

    def __getattr__(self, name: str) -> Any:  # everything else goes straight to the observer
        return getattr(self.inner, name)


_timed: list[Timed] = []


def _install_timing() -> None:
    import gradloop.tracking as tracking

    make = tracking.make_observer

    def make_timed(*args: Any, **kwargs: Any) -> Any:
        _timed.append(Timed(make(*args, **kwargs)))
        return _timed[-1]

    tracking.make_observer = make_timed  # the runner looks it up at each train()


def lockstep(
    epochs: int, out: str, uris: tuple[str | None, str | None], device: str
) -> tuple[Turns, Turns, float, int]:
    """Train two configs in lockstep; returns both runs' turn totals, the tracked run's
    microseconds per step inside the observer's calls, and its points left unsent."""
    from gradloop import train

    baton = Baton(("a", "b"))
    turns = (Turns("a", baton), Turns("b", baton))
    results: list[Any] = [None, None]
    errors: list[BaseException] = []
    _timed.clear()

    def go(i: int) -> None:
        try:
            results[i] = train(config(epochs, f"{out}/{i}", uris[i], device), observers=[turns[i]])
        except BaseException as exc:  # surfaced below; the other run must not wait for a dead one
            errors.append(exc)
            baton.pass_on(turns[i].name, finished=True)

    threads = [threading.Thread(target=go, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    tracked = next((i for i in (1, 0) if uris[i] is not None), None)
    in_observer = _timed[0].seconds / results[tracked].steps * 1e6 if _timed and tracked is not None else 0.0
    unsent = 0
    if tracked is not None:
        from gradloop.tracking.jsonl import unsent_records

        unsent = sum(len(r.metrics) for r in unsent_records(results[tracked].run_dir))
    return turns[0], turns[1], in_observer, unsent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repeats", type=int, default=4, help="pairs per variant (even: as many with the tracked run in each thread)"
    )
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
    ratios: dict[str, list[float]] = {k: [] for k in variants}
    rates: dict[str, list[float]] = {k: [] for k in variants}
    obs: dict[str, list[float]] = {k: [] for k in variants}
    _install_timing()
    try:
        for uri in variants.values():  # warm-up: imports, tables, the store-writing child process
            lockstep(2, str(tmp / "runs"), (None, uri), args.device)
        for r in range(args.repeats):
            for name, uri in variants.items():
                # The measured run trains in the second thread in even rounds and in the first in
                # odd ones: off-vs-off pairs came out about 1% in favour of the second thread.
                second = r % 2 == 0
                a, b, in_obs, unsent = lockstep(
                    args.epochs, str(tmp / "runs"), (None, uri) if second else (uri, None), args.device
                )
                off, other = (a, b) if second else (b, a)
                ratios[name].append(other.steps_per_s / off.steps_per_s)
                rates[name].append(other.steps_per_s)
                obs[name].append(in_obs)
                print(
                    f"  round {r + 1} off {off.steps_per_s:7.1f} steps/s beside {name:6s} {other.steps_per_s:7.1f} steps/s"
                    f" = {ratios[name][-1]:.3f}  ({other.steps} steps in turns, {in_obs:5.1f} us/step in tracking calls,"
                    f" {unsent} points unsent)",
                    flush=True,
                )
    finally:
        server.stop()
    print(
        f"\ndigits MLP on {args.device}, grad_stats=per_layer, log_every=10, histogram_every=100, {args.epochs} epochs,"
        f" {args.repeats} lockstep pairs per variant, turns of {TURN_STEPS} steps"
    )
    print(
        f"{'beside off':12s} {'steps/s':>9s} {'vs off (median)':>16s} {'vs off (each pair)':>28s} {'us/step in tracking calls':>26s}"
    )
    for name in variants:
        label = "off (control)" if name == "off" else name
        each = " ".join(f"{x:.3f}" for x in ratios[name])
        print(
            f"{label:13s} {statistics.median(rates[name]):8.1f} {statistics.median(ratios[name]):16.3f} {each:>28s}"
            f" {statistics.median(obs[name]):26.1f}"
        )


if __name__ == "__main__":
    main()

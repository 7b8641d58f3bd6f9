"""What MLflow tracking costs the user, end to end: whole runs, tracked and untracked, alternated.

Scenarios (--only, comma-separated; all but `ab` by default):
  cli     `gradloop run configs/quickstart.yaml` as a fresh process, tracked vs
          `--set tracking.enabled=false`, in one temp working directory whose mlflow.db a first
          tracked run created (its time is reported apart: the first-run figure).
  mlp     `train()` in this process (imports warm) of the digits MLP for 150 epochs (6750 steps),
          tracking with grad_stats=per_layer (everything else at its default: histograms every
          100 steps, plots, the model, system metrics) vs tracking off.
  cnn     the same for configs/digits_cnn.yaml (a slower step), 15 epochs.
  close   tracked runs of the mlp scenario's model for 150 and 600 epochs (6750 and 27000
          steps), per-layer statistics every 10 steps and no end-of-run artifacts: how long the end
          of a run waits for the metrics' backlog (`Sender.close`).
  ingest  the store's ingest rate: journal lines of 20-key records, 5000 points a request,
          through the store's process, into a sqlite file and into a real `mlflow server`.
  ab      tracked runs of the mlp scenario with and without one optimisation (--ab NAME), to
          decide whether the code it costs pays for itself: see AB_VARIANTS.
Pairs run one after the other, the order swapped every pair, so that a drift of the machine's
speed hits both alike. Each run reports its wall time (what the user waits for: until the
command is done, or `train()` returns), the CPU time of the training process and of its child
processes (the store's process included: the CLI's wrapper reaps it, and the in-process runs
count it live), how long the store's process then went on logging the end-of-run artifacts in
the background (the next run starts after it), and for the in-process runs the loop's own time
(RunResult.duration_s), the time outside it (start and end of the run) and how long
`Sender.close` took. Ratios are untracked/tracked wall time of the same pair (1.0
means free); compare ratios of one invocation only, never against another day's.

Torch runs on one thread (--threads 1) in every process: on a shared 2-core machine torch's
default of one thread per core spins for the other core and a run becomes many times slower
whenever anything else runs (--threads 0 keeps torch's default).

    python bench/tracking.py [--pairs 5] [--only cli,mlp,cnn,close,ingest] [--uri URI] [--ab NAME]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MLP_EPOCHS = 150  # 45 steps an epoch: 6750 steps
LONG_EPOCHS = 600  # 27000 steps
CNN_EPOCHS = 15

# Runs the CLI in a wrapper that reports its own CPU time and its reaped children's (the
# store's process, which the CLI waits for at exit) as JSON on the last line of stderr.
# Runs the CLI in a wrapper that says when the command was done for its user (after its atexit
# hooks: the moment `gradloop run` would give the prompt back), then waits for the store's
# process, which finishes the end-of-run artifacts on its own, and reports the CPU time of the
# command and of its reaped children (the store's process) as JSON on the last line of stderr.
CLI_WRAPPER = """
import json, os, resource, sys, time
from gradloop.cli.main import main
code = 0
try:
    main()
except SystemExit as exc:
    code = exc.code if isinstance(exc.code, int) else 0
finally:
    import atexit
    atexit._run_exitfuncs()
    done = time.time()
    while True:
        try:
            os.wait()
        except ChildProcessError:
            break
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    idle = time.time()
    cpu = {"self": s.ru_utime + s.ru_stime, "children": c.ru_utime + c.ru_stime, "done": done, "idle": idle}
    sys.stderr.write("\\n" + json.dumps(cpu) + "\\n")
sys.exit(code)
"""


@dataclass
class Sample:
    wall: float
    cpu_self: float
    cpu_children: float
    loop: float | None = None  # RunResult.duration_s (in-process runs)
    close: float | None = None  # Sender.close (in-process tracked runs)
    # After the run was done for its user, until the store's process had logged the end-of-run
    # artifacts in the background (tracked runs): the next run starts only after it.
    background: float | None = None


def config(epochs: int, out: str, uri: str | None, device: str = "cpu") -> dict:
    """The digits MLP (64-128-10, batch 32, SGD) with per-layer statistics; tracking off when uri is None."""
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


def mlp_config(out: str, uri: str | None, epochs: int = MLP_EPOCHS) -> dict:
    """The issue's 6750-step run: the digits MLP with grad_stats=per_layer and the other defaults."""
    cfg = config(epochs, out, uri)
    cfg["trainer"] = {"epochs": epochs, "val_every_epochs": 5, "progress": "none"}
    cfg["tracking"] = {"enabled": uri is not None, "uri": uri, "experiment": "bench", "grad_stats": "per_layer"}
    return cfg


def backlog_config(out: str, uri: str, epochs: int) -> dict:
    """The mlp scenario's run with per-layer statistics every 10 steps and no end-of-run artifacts
    (plots, histograms, model, system metrics off): what its end waits for is the metrics' backlog."""
    cfg = mlp_config(out, uri, epochs)
    cfg["tracking"].update({"histogram_every": 0, "plots": False, "log_model": False, "system_metrics": False})
    return cfg


def cnn_config(out: str, uri: str | None) -> dict:
    from gradloop.config.loading import load_config

    cfg = load_config(ROOT / "configs" / "digits_cnn.yaml").to_dict()
    cfg["output_dir"] = out
    cfg["trainer"].update({"epochs": CNN_EPOCHS, "progress": "none"})
    cfg["tracking"].update({"enabled": uri is not None, "uri": uri, "experiment": "bench"})
    return cfg


# -- timing ---------------------------------------------------------------------------------

_close_times: list[float] = []


def time_sender_close() -> None:
    """Record how long each Sender.close takes (the end of a tracked run waiting for the store)."""
    from gradloop.tracking import sender

    original = sender.Sender.close

    def timed(self: Any, timeout: float) -> Any:
        t0 = time.perf_counter()
        try:
            return original(self, timeout)
        finally:
            _close_times.append(time.perf_counter() - t0)

    sender.Sender.close = timed  # type: ignore[method-assign]


def _children_cpu() -> float:
    """CPU seconds of this process's live descendants (the store's process lives across runs)."""
    import psutil

    total = 0.0
    for child in psutil.Process().children(recursive=True):
        try:
            t = child.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def _cpu() -> tuple[float, float]:
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime, c.ru_utime + c.ru_stime + _children_cpu()


def run_in_process(cfg: dict) -> Sample:
    import gradloop.tracking
    from gradloop import train

    closes = len(_close_times)
    s0, c0 = _cpu()
    t0 = time.perf_counter()
    result = train(cfg)
    wall = time.perf_counter() - t0
    background = None
    if result.mlflow_run_id is not None:
        gradloop.tracking.wait()  # (its CPU time is the children's of this run, not of the next one)
        background = time.perf_counter() - t0 - wall
    s1, c1 = _cpu()
    close = _close_times[-1] if len(_close_times) > closes else None
    return Sample(wall, s1 - s0, c1 - c0, result.duration_s, close, background)


def run_cli(cwd: Path, tracked: bool) -> Sample:
    args = [sys.executable, "-c", CLI_WRAPPER, "run", str(ROOT / "configs" / "quickstart.yaml")]
    if not tracked:
        args += ["--set", "tracking.enabled=false"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("MLFLOW_TRACKING_URI", None)
    t0 = time.time()
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"gradloop run failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    cpu = json.loads(proc.stderr.strip().splitlines()[-1])
    background = cpu["idle"] - cpu["done"] if tracked else None
    return Sample(cpu["done"] - t0, cpu["self"], cpu["children"], background=background)


# -- pairs and their report ----------------------------------------------------------------


def pairs(name: str, n: int, a: Callable[[], Sample], b: Callable[[], Sample], labels: tuple[str, str]) -> list:
    """n pairs (a, b), the order swapped every pair."""
    out = []
    for i in range(n):
        got: dict[bool, Sample] = {}
        for first in (True, False) if i % 2 == 0 else (False, True):
            got[first] = a() if first else b()
        t, u = got[True], got[False]
        out.append((t, u))
        extra = f"  loop {t.loop:.2f} / {u.loop:.2f} s" if t.loop is not None and u.loop is not None else ""
        extra += f"  close {t.close:.3f} s" if t.close is not None else ""
        print(
            f"  {name} pair {i + 1} (load {os.getloadavg()[0]:.1f}): {labels[0]} {t.wall:6.2f} s"
            f" (cpu {t.cpu_self:5.2f} + {t.cpu_children:5.2f})  {labels[1]} {u.wall:6.2f} s"
            f" (cpu {u.cpu_self:5.2f} + {u.cpu_children:5.2f})  {labels[1]}/{labels[0]} {u.wall / t.wall:.3f}" + extra,
            flush=True,
        )
    return out


def _spread(values: list[float], digits: int = 2) -> str:
    return f"{statistics.median(values):.{digits}f} [{min(values):.{digits}f}-{max(values):.{digits}f}]"


def report(name: str, got: list[tuple[Sample, Sample]], labels: tuple[str, str] = ("tracked", "off")) -> None:
    first, second = [t for t, _ in got], [u for _, u in got]
    ratios = [u.wall / t.wall for t, u in got]
    cpu_ratios = [(u.cpu_self + u.cpu_children) / (t.cpu_self + t.cpu_children) for t, u in got]
    print(f"\n{name}: {len(got)} alternating pairs; median [min-max]")
    for label, runs in zip(labels, (first, second)):
        line = (
            f"  {label:8s} wall {_spread([r.wall for r in runs])} s  cpu self {_spread([r.cpu_self for r in runs])} s"
            f"  cpu children {_spread([r.cpu_children for r in runs])} s"
        )
        if runs[0].loop is not None:
            outside = [r.wall - r.loop for r in runs if r.loop is not None]
            line += f"  loop {_spread([r.loop for r in runs if r.loop is not None])} s  outside it {_spread(outside)} s"
        closes = [r.close for r in runs if r.close is not None]
        if closes:
            line += f"  Sender.close {_spread(closes, 3)} s"
        later = [r.background for r in runs if r.background is not None]
        if later:
            line += f"  then in the background {_spread(later)} s"
        print(line)
    a, b = labels
    print(f"  {b}/{a} wall, per pair: {' '.join(f'{r:.3f}' for r in ratios)}; median {statistics.median(ratios):.3f}")
    print(f"  {a}/{b} wall: median {statistics.median([1 / r for r in ratios]):.3f}")
    print(f"  {b}/{a} cpu (self + children), per pair: median {_spread(cpu_ratios, 3)}", flush=True)


# -- the store's ingest rate ---------------------------------------------------------------


def ingest(uri: str, label: str, requests: int = 40, keys: int = 20, per_request: int = 5000) -> None:
    """Points per second through the store's process (RemoteClient.log_lines) into `uri`."""
    import psutil

    from gradloop.tracking.jsonl import encode_line
    from gradloop.tracking.remote import RemoteClient

    client = RemoteClient(uri)
    try:
        client.ping()  # MLflow imported, the store opened
        run_id = client.start_run({"experiment": "ingest", "run_name": f"ingest-{label}", "tags": {}, "params": {}})[
            "run_id"
        ]
        names = [f"grad_norm/layers.{k}.weight" for k in range(keys)]
        per_record = per_request // keys
        bodies = []
        for i in range(requests):
            lines = [
                encode_line(seq, seq * 10, 1_700_000_000_000 + seq, {k: 0.001 * seq + j for j, k in enumerate(names)})
                for seq in range(i * per_record, (i + 1) * per_record)
            ]
            bodies.append(b"\n".join(lines))
        child = psutil.Process(client._proc.pid)  # type: ignore[union-attr]
        c0 = child.cpu_times()
        t0 = time.perf_counter()
        points = sum(client.log_lines(run_id, body) for body in bodies)
        wall = time.perf_counter() - t0
        c1 = child.cpu_times()
        cpu = (c1.user + c1.system) - (c0.user + c0.system)
        print(
            f"ingest, {label}: {points} points in {requests} requests of {per_request}: {wall:.2f} s wall,"
            f" {points / wall:,.0f} points/s; the store's process {cpu:.2f} s CPU"
            f" ({points / max(cpu, 1e-9):,.0f} points per CPU-second there); load {os.getloadavg()[0]:.1f}",
            flush=True,
        )
        client.op(run_id, "set_terminated", {"status": "FINISHED"})
    finally:
        client.close()


def ingest_server(tmp: Path) -> None:
    import psutil

    from tests.support.mlflow_stores import MlflowServer

    root = tmp / "server"
    root.mkdir()
    server = MlflowServer(root)
    server.start(timeout=600)  # (importing MLflow and creating its tables take minutes on a loaded machine)
    try:
        procs = [psutil.Process(server.proc.pid), *psutil.Process(server.proc.pid).children(recursive=True)]  # type: ignore[union-attr]
        before = sum(p.cpu_times().user + p.cpu_times().system for p in procs)
        ingest(server.uri, "a real `mlflow server` (sqlite backend, 1 worker)")
        after = sum(p.cpu_times().user + p.cpu_times().system for p in procs)
        print(f"  the server's processes: {after - before:.2f} s CPU", flush=True)
    finally:
        server.stop()


# -- optimisations switched off, to see what each saves --------------------------------------


@contextlib.contextmanager
def _no_hold() -> Iterator[None]:
    from gradloop.tracking import tracking_observer

    seconds = tracking_observer.WRITE_SECONDS
    tracking_observer.WRITE_SECONDS = 0.0  # every window written (journal, sender) at once
    try:
        yield
    finally:
        tracking_observer.WRITE_SECONDS = seconds


AB_VARIANTS: dict[str, tuple[str, Callable[[], contextlib.AbstractContextManager]]] = {
    "hold": ("windows held and written once a second (off: each written at once)", _no_hold),
}


def ab(name: str, n: int, out: str, uri: str) -> None:
    """Tracked mlp runs with the optimisation (as shipped) and without it, alternated."""
    what, switched_off = AB_VARIANTS[name]

    def without() -> Sample:
        with switched_off():
            return run_in_process(mlp_config(out, uri))

    print(f"\nab {name}: {what}", flush=True)
    report(
        f"ab {name} (tracked mlp, {MLP_EPOCHS * 45} steps)",
        pairs(name, n, lambda: run_in_process(mlp_config(out, uri)), without, ("with", "without")),
        ("with", "without"),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--only", default="cli,mlp,cnn,close,ingest")
    parser.add_argument("--uri", default=None, help="store for the in-process runs (default: a temp sqlite file)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (0: torch's default)")
    parser.add_argument("--long-runs", type=int, default=3, help="runs of each length in the close scenario")
    parser.add_argument("--ab", default="", help=f"optimisations to compare ({', '.join(AB_VARIANTS)})")
    args = parser.parse_args()
    only = set(args.only.split(",")) | ({"ab"} if args.ab else set())
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # this process (torch not imported yet) and the CLI's
    warnings.simplefilter("ignore")
    time_sender_close()
    print(
        f"bench/tracking.py: {time.strftime('%Y-%m-%d %H:%M')}, load average {os.getloadavg()[0]:.1f},"
        f" torch threads {args.threads or 'default'}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="gradloop-bench-tracking-") as tmp_name:
        tmp = Path(tmp_name)
        if "cli" in only:
            cwd = tmp / "cli"
            cwd.mkdir()
            first = run_cli(cwd, True)  # creates mlflow.db: the first-run figure
            print(
                f"cli first run (creates mlflow.db): {first.wall:.2f} s"
                f" (cpu {first.cpu_self:.2f} + {first.cpu_children:.2f})",
                flush=True,
            )
            got = pairs("cli", args.pairs, lambda: run_cli(cwd, True), lambda: run_cli(cwd, False), ("tracked", "off"))
            report("cli quickstart", got)
        uri = args.uri or f"sqlite:///{tmp}/mlflow.db"
        out = str(tmp / "runs")
        if only & {"mlp", "close", "ab"}:
            run_in_process(config(2, out, uri))  # warm-up: imports, the store's tables, its process
            run_in_process(config(2, out, None))
        if "mlp" in only:
            report(
                f"mlp in-process ({MLP_EPOCHS * 45} steps)",
                pairs(
                    "mlp",
                    args.pairs,
                    lambda: run_in_process(mlp_config(out, uri)),
                    lambda: run_in_process(mlp_config(out, None)),
                    ("tracked", "off"),
                ),
            )
        for name in filter(None, args.ab.split(",")):
            ab(name, args.pairs, out, uri)
        if "close" in only:
            for epochs in (MLP_EPOCHS, LONG_EPOCHS):
                closes = []
                for i in range(args.long_runs):
                    got = run_in_process(backlog_config(out, uri, epochs))
                    assert got.loop is not None and got.close is not None
                    closes.append(got.close)
                    print(
                        f"  close run {i + 1} ({epochs * 45} steps, load {os.getloadavg()[0]:.1f}):"
                        f" wall {got.wall:.2f} s, loop {got.loop:.2f} s, outside it {got.wall - got.loop:.2f} s,"
                        f" Sender.close {got.close:.3f} s",
                        flush=True,
                    )
                print(f"\nSender.close at the end of {epochs * 45} steps: {_spread(closes, 3)} s\n", flush=True)
        if "cnn" in only:
            run_in_process(cnn_config(out, uri) | {"trainer": {"epochs": 1, "progress": "none"}})
            report(
                f"digits cnn in-process ({CNN_EPOCHS} epochs)",
                pairs(
                    "cnn",
                    args.pairs,
                    lambda: run_in_process(cnn_config(out, uri)),
                    lambda: run_in_process(cnn_config(out, None)),
                    ("tracked", "off"),
                ),
            )
        if "ingest" in only:
            ingest(f"sqlite:///{tmp}/ingest.db", "sqlite (one bulk INSERT a request)")
            ingest_server(tmp)


if __name__ == "__main__":
    main()

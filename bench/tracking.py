"""What MLflow tracking costs the user, end to end: whole runs, tracked and untracked, alternated.

Three scenarios, each as pairs of runs one after the other (tracked, then untracked, then the
next pair with the order swapped, so that a drift of the machine's speed hits both alike):
  cli    `gradloop run configs/quickstart.yaml` as a fresh process, tracked vs
         `--set tracking.enabled=false`, in one temp working directory whose mlflow.db a first
         tracked run created (its time is reported apart: the first-run figure).
  mlp    `train()` in this process (imports warm) of the digits MLP for 150 epochs (6750 steps),
         tracking with grad_stats=per_layer (everything else at its default: histograms every
         100 steps, plots, the model, system metrics) vs tracking off.
  cnn    the same for configs/digits_cnn.yaml (a slower step), 15 epochs.
Each run reports its wall time (what the user waits for, start to finish), the CPU time of
the training process and of its child processes (the store's process included), and for the
in-process runs the loop's own time (RunResult.duration_s) and the time outside it (start and
end of the run). Ratios are untracked/tracked wall time of the same pair: 1.0 means free.

    python bench/tracking.py [--pairs 5] [--only cli,mlp,cnn] [--uri URI]

--uri points the in-process runs at another store (e.g. a running `mlflow server`); the
default is a sqlite file in a temp directory, pre-created by a warm-up run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MLP_EPOCHS = 150  # 45 steps an epoch: 6750 steps
CNN_EPOCHS = 15

# Runs the CLI in a wrapper that reports its own CPU time and its reaped children's (the
# store's process exits with it) as JSON on the last line of stderr.
CLI_WRAPPER = """
import json, resource, sys
from gradloop.cli.main import main
code = 0
try:
    main()
except SystemExit as exc:
    code = exc.code if isinstance(exc.code, int) else 0
finally:
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    sys.stderr.write("\\n" + json.dumps({"self": s.ru_utime + s.ru_stime, "children": c.ru_utime + c.ru_stime}) + "\\n")
sys.exit(code)
"""


@dataclass
class Sample:
    wall: float
    cpu_self: float
    cpu_children: float
    loop: float | None = None  # RunResult.duration_s (in-process runs)


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


def mlp_config(out: str, uri: str | None) -> dict:
    """The issue's 6750-step run: the digits MLP with grad_stats=per_layer and the other defaults."""
    cfg = config(MLP_EPOCHS, out, uri)
    cfg["trainer"] = {"epochs": MLP_EPOCHS, "val_every_epochs": 5, "progress": "none"}
    cfg["tracking"] = {"enabled": uri is not None, "uri": uri, "experiment": "bench", "grad_stats": "per_layer"}
    return cfg


def cnn_config(out: str, uri: str | None) -> dict:
    from gradloop.config.loading import load_config

    cfg = load_config(ROOT / "configs" / "digits_cnn.yaml").to_dict()
    cfg["output_dir"] = out
    cfg["trainer"].update({"epochs": CNN_EPOCHS, "progress": "none"})
    cfg["tracking"].update({"enabled": uri is not None, "uri": uri, "experiment": "bench"})
    return cfg


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
    from gradloop import train

    s0, c0 = _cpu()
    t0 = time.perf_counter()
    result = train(cfg)
    wall = time.perf_counter() - t0
    s1, c1 = _cpu()
    return Sample(wall, s1 - s0, c1 - c0, result.duration_s)


def run_cli(cwd: Path, tracked: bool) -> Sample:
    args = [sys.executable, "-c", CLI_WRAPPER, "run", str(ROOT / "configs" / "quickstart.yaml")]
    if not tracked:
        args += ["--set", "tracking.enabled=false"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("MLFLOW_TRACKING_URI", None)
    t0 = time.perf_counter()
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"gradloop run failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    cpu = json.loads(proc.stderr.strip().splitlines()[-1])
    return Sample(wall, cpu["self"], cpu["children"])


def pairs(name: str, n: int, tracked: Any, untracked: Any) -> list[tuple[Sample, Sample]]:
    out = []
    for i in range(n):
        order = (True, False) if i % 2 == 0 else (False, True)
        got: dict[bool, Sample] = {}
        for on in order:
            got[on] = tracked() if on else untracked()
        out.append((got[True], got[False]))
        t, u = got[True], got[False]
        print(
            f"  {name} pair {i + 1}: tracked {t.wall:6.2f} s (cpu {t.cpu_self:5.2f} + {t.cpu_children:5.2f})"
            f"  off {u.wall:6.2f} s (cpu {u.cpu_self:5.2f} + {u.cpu_children:5.2f})  off/tracked {u.wall / t.wall:.3f}"
            + (f"  loop {t.loop:.2f} / {u.loop:.2f} s" if t.loop is not None and u.loop is not None else ""),
            flush=True,
        )
    return out


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):6.2f} [{min(values):.2f}-{max(values):.2f}]"


def report(name: str, got: list[tuple[Sample, Sample]]) -> None:
    tracked, off = [t for t, _ in got], [u for _, u in got]
    ratios = [u.wall / t.wall for t, u in got]
    print(f"\n{name}: {len(got)} alternating pairs; median [min-max]")
    for label, runs in (("tracked", tracked), ("off", off)):
        line = (
            f"  {label:8s} wall {_spread([r.wall for r in runs])} s  cpu self {_spread([r.cpu_self for r in runs])} s"
            f"  cpu children {_spread([r.cpu_children for r in runs])} s"
        )
        if runs[0].loop is not None:
            outside = [r.wall - r.loop for r in runs if r.loop is not None]
            line += f"  loop {_spread([r.loop for r in runs if r.loop is not None])} s  outside it {_spread(outside)} s"
        print(line)
    print(
        f"  off/tracked wall, per pair: {' '.join(f'{r:.3f}' for r in ratios)}; median {statistics.median(ratios):.3f}"
    )
    print(f"  tracked/off wall: median {statistics.median([1 / r for r in ratios]):.3f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--only", default="cli,mlp,cnn")
    parser.add_argument("--uri", default=None, help="store for the in-process runs (default: a temp sqlite file)")
    args = parser.parse_args()
    only = set(args.only.split(","))
    warnings.simplefilter("ignore")
    print(f"bench/tracking.py: {time.strftime('%Y-%m-%d %H:%M')}, load average {os.getloadavg()[0]:.1f}", flush=True)
    with tempfile.TemporaryDirectory(prefix="gradloop-bench-tracking-") as tmp_name:
        tmp = Path(tmp_name)
        if "cli" in only:
            cwd = tmp / "cli"
            cwd.mkdir()
            first = run_cli(cwd, True)  # creates mlflow.db: the first-run figure
            print(
                f"cli first run (creates mlflow.db): {first.wall:.2f} s"
                f" (cpu {first.cpu_self:.2f} + {first.cpu_children:.2f})"
            )
            report("cli quickstart", pairs("cli", args.pairs, lambda: run_cli(cwd, True), lambda: run_cli(cwd, False)))
        uri = args.uri or f"sqlite:///{tmp}/mlflow.db"
        out = str(tmp / "runs")
        if "mlp" in only:
            run_in_process(config(2, out, uri))  # warm-up: imports, the store's tables, its process
            run_in_process(config(2, out, None))
            report(
                f"mlp in-process ({MLP_EPOCHS * 45} steps)",
                pairs(
                    "mlp",
                    args.pairs,
                    lambda: run_in_process(mlp_config(out, uri)),
                    lambda: run_in_process(mlp_config(out, None)),
                ),
            )
        if "cnn" in only:
            run_in_process(cnn_config(out, uri) | {"trainer": {"epochs": 1, "progress": "none"}})
            report(
                f"digits cnn in-process ({CNN_EPOCHS} epochs)",
                pairs(
                    "cnn",
                    args.pairs,
                    lambda: run_in_process(cnn_config(out, uri)),
                    lambda: run_in_process(cnn_config(out, None)),
                ),
            )


if __name__ == "__main__":
    main()

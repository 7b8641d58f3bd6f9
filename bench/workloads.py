"""Real workloads: gradloop's loop against a hand-written PyTorch loop on the same data, model
and batch, in optimizer steps per second, and where the time goes.

Three workloads (configs/workloads/, data made by configs/workloads/make_data.py in a temp dir):
  resnet18  torchvision ResNet-18, 32x32 PNGs from an image folder, batch 32, 2 DataLoader workers
  gpt       the built-in char-GPT (4 layers, width 128) on the shipped Shakespeare, batch 32 x 64 tokens
  bert      a 2-layer BERT (transformers) on short jsonl texts, byte tokenizer, batch 16 x 64 tokens

Each run is a fresh process doing STEPS optimizer steps (no validation, no checkpoint; gradloop
with its default MLflow tracking, log_every 10). Runs alternate hand / gradloop, PAIRS times.
Reported per variant: median steps/s in the steady state (from the end of step WARMUP to the end
of the last step, so worker start-up and first-step allocations are left out), its spread
(min-max), the median steps/s over the whole loop (gradloop: Trainer.fit's duration, which also
holds the observers' start; the hand loop: first step to last), the median wall time of the whole
process and its CPU time (process + children, e.g. DataLoader workers), and the ratios of
medians. Then where the time goes: one hand-loop run's steady-state steps split into data wait,
forward+backward and optimizer step (ms per step and share), gradloop's tracking cost as tracking
on vs off, and the loop's own cost as gradloop untracked against the hand loop.

--threads N sets torch's intra-op threads in every run (0: torch's default, one per core). On a
machine shared with other jobs, more threads than free cores makes every op wait for a
descheduled thread, and the numbers measure the load more than the loop.

    python bench/workloads.py [--pairs 5] [--steps 40] [--warmup 5] [--threads 0] [--only resnet18,gpt,bert]
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "workloads"
WORKLOADS = {
    "resnet18": ("resnet18_images.yaml", ["data.batch_size=32", "data.num_workers=2"]),
    "gpt": ("char_gpt.yaml", []),
    "bert": ("bert_texts.yaml", []),
}


def config(workload: str, steps: int, root: str, out: str, tracking: bool = True):
    from gradloop import load_config

    name, extra = WORKLOADS[workload]
    return load_config(
        CONFIGS / name,
        [
            *extra,
            f"data.root={root}",
            "data.val_fraction=0",
            f"output_dir={out}",
            "trainer.epochs=1000",
            f"trainer.max_steps={steps}",
            "trainer.val_every_epochs=0",
            "trainer.val_every_steps=null",
            "trainer.checkpoint_at_end=false",
            "trainer.progress=none",
            "tracking.log_every=10",
            "tracking.log_model=false",
            f"tracking.enabled={'true' if tracking else 'false'}",
            "scheduler=null",
        ],
    )


def run_gradloop(workload: str, steps: int, warmup: int, root: str, tracking: bool) -> dict:
    from gradloop import train
    from gradloop.observer import NullObserver

    class Clock(NullObserver):
        """Notes the time at the end of two optimizer steps, and asks for nothing else."""

        def __init__(self, *marks: int) -> None:
            self.marks, self.times = set(marks), {}

        def wants_step_stats(self, step: int) -> bool:
            return step in self.marks  # so that after_optimizer_step is called at that step

        def after_optimizer_step(self, step: int, snapshot, metrics) -> None:
            if step in self.marks:
                self.times[step] = time.perf_counter()

    clock = Clock(warmup, steps)
    with tempfile.TemporaryDirectory() as out:
        os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{out}/mlflow.db")
        result = train(
            config(workload, steps, root, out, tracking), observers=[clock]
        )  # (one more observer: two calls a run)
    steady = clock.times[steps] - clock.times[warmup]
    return {"steps": result.steps, "loop_s": result.duration_s, "steady_s": steady}


def run_hand(workload: str, steps: int, warmup: int, root: str, split: bool) -> dict:
    """The loop a user writes: same data (gradloop's dataset plugin), model, optimizer, batches."""
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader

    from gradloop.build import build_data, build_model
    from gradloop.data import TensorData
    from gradloop.optim import build_optimizer_from_config
    from gradloop.outputs import logits_of
    from gradloop.seeding import seed_everything

    with tempfile.TemporaryDirectory() as out:
        cfg = config(workload, steps, root, out, tracking=False)
    seed_everything(cfg.seed)
    splits = build_data(cfg.data, cfg.seed)
    model = build_model(cfg.model, cfg.data.root)
    opt = build_optimizer_from_config(cfg.optimizer, model)
    b = cfg.data.batch_size
    if isinstance(splits.train, TensorData):
        x_all, y_all = splits.train.x, splits.train.y

        def batches():
            while True:
                order = torch.randperm(len(y_all))
                xs, ys = x_all[order], y_all[order]
                for i in range(0, len(ys) - b + 1, b):
                    yield xs[i : i + b], ys[i : i + b]
    else:
        loader = DataLoader(
            splits.train,
            batch_size=b,
            shuffle=True,
            num_workers=cfg.data.num_workers,
            persistent_workers=cfg.data.num_workers > 0,
            drop_last=True,
        )

        def batches():
            while True:
                yield from loader

    clip = cfg.trainer.grad_clip_norm
    model.train()
    it = batches()
    parts = {"data_s": 0.0, "fwd_bwd_s": 0.0, "opt_s": 0.0}
    start = time.perf_counter()
    warm = start
    for step in range(1, steps + 1):
        t0 = time.perf_counter()
        x, y = next(it)
        t1 = time.perf_counter()
        loss = F.cross_entropy(logits_of(model(x)).flatten(0, -2), y.flatten())
        loss.backward()
        t2 = time.perf_counter()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        float(loss.detach())  # a user's loop looks at its loss; gradloop syncs once a step as well
        t3 = time.perf_counter()
        if step > warmup:  # the steady state, as the steps/s: worker start-up is not data wait
            parts["data_s"] += t1 - t0
            parts["fwd_bwd_s"] += t2 - t1
            parts["opt_s"] += t3 - t2
        if step == warmup:
            warm = t3
    end = time.perf_counter()
    out = {"steps": steps, "loop_s": end - start, "steady_s": end - warm}
    return {**out, **parts} if split else out


def child(variant: str, workload: str, args: argparse.Namespace, root: str) -> dict:
    """One whole run in a fresh process: its result, wall time and CPU time (with its children)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            variant,
            workload,
            *("--steps", str(args.steps), "--warmup", str(args.warmup), "--threads", str(args.threads)),
            *("--root", root),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{variant} {workload} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        **result,
        "wall_s": wall,
        "cpu_s": cpu,
        "steps_per_s": (args.steps - args.warmup) / result["steady_s"],
        "loop_steps_per_s": result["steps"] / result["loop_s"],
    }


def summary(runs: list[dict]) -> str:
    rates = [r["steps_per_s"] for r in runs]
    return (
        f"{statistics.median(rates):7.2f} steps/s (min {min(rates):.2f}, max {max(rates):.2f}); "
        f"whole loop {statistics.median(r['loop_steps_per_s'] for r in runs):6.2f} steps/s; "
        f"whole run {statistics.median(r['wall_s'] for r in runs):5.1f} s wall, "
        f"{statistics.median(r['cpu_s'] for r in runs):5.1f} s CPU"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5, help="steps left out of the steady-state rate")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--only", default=",".join(WORKLOADS))
    parser.add_argument("--child", nargs=2, metavar=("VARIANT", "WORKLOAD"))
    parser.add_argument("--root")
    args = parser.parse_args()
    if not 0 < args.warmup < args.steps:
        parser.error("--warmup must be at least 1 and less than --steps")
    if args.child:
        variant, workload = args.child
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        if variant.startswith("gradloop"):
            result = run_gradloop(workload, args.steps, args.warmup, args.root, tracking=variant == "gradloop")
        else:
            result = run_hand(workload, args.steps, args.warmup, args.root, split=variant == "hand-split")
        print(json.dumps(result))
        return

    sys.path.insert(0, str(CONFIGS))
    from make_data import make_images, make_texts  # configs/workloads/make_data.py

    with tempfile.TemporaryDirectory() as root:
        make_images(Path(root), per_class=64)
        make_texts(Path(root), n=512)
        shipped = Path(root) / "configs" / "data"
        shipped.mkdir(parents=True)
        (shipped / "shakespeare.txt").write_bytes((ROOT / "configs" / "data" / "shakespeare.txt").read_bytes())
        threads = args.threads or "torch's default"
        print(
            f"# {args.pairs} pairs of whole runs, {args.steps} steps each ({args.warmup} of warm-up), alternating; "
            f"torch threads: {threads}; load average at start: {os.getloadavg()[0]:.1f}"
        )
        for workload in args.only.split(","):
            runs: dict[str, list[dict]] = {"hand": [], "gradloop": []}
            for _ in range(args.pairs):
                for variant in runs:
                    runs[variant].append(child(variant, workload, args, root))
            hand, ours = (statistics.median(r["steps_per_s"] for r in runs[v]) for v in ("hand", "gradloop"))
            print(f"\n{workload}")
            for variant, results in runs.items():
                print(f"  {variant:9s} {summary(results)}")
            whole = [statistics.median(r["loop_steps_per_s"] for r in runs[v]) for v in ("hand", "gradloop")]
            print(f"  gradloop / hand: {ours / hand:.3f} steady, {whole[1] / whole[0]:.3f} whole loop")
            split = child("hand-split", workload, args, root)
            total, counted = split["steady_s"], args.steps - args.warmup
            print(
                f"  where a hand step's time goes (one more run, {counted / total:.2f} steps/s, steady state): "
                + ", ".join(
                    f"{k[:-2]} {1000 * split[k] / counted:.1f} ms ({100 * split[k] / total:.0f}%)"
                    for k in ("data_s", "fwd_bwd_s", "opt_s")
                )
            )
            on, off = [], []
            for _ in range(max(2, args.pairs // 2)):
                on.append(child("gradloop", workload, args, root)["steps_per_s"])
                off.append(child("gradloop-notrack", workload, args, root)["steps_per_s"])
            print(
                f"  tracking: {statistics.median(on):.2f} steps/s on vs {statistics.median(off):.2f} off "
                f"({len(on)} pairs, steady state; ratio {statistics.median(on) / statistics.median(off):.3f})"
            )
            print(f"  the loop itself: gradloop untracked / hand {statistics.median(off) / hand:.3f} (steady state)")


if __name__ == "__main__":
    main()

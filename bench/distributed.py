"""Data-parallel throughput on CPU: gradloop DDP vs a hand-written DDP loop vs Lightning ddp.

The model: the digits CNN (configs/digits_cnn.yaml's net, 1x8x8 -> conv16 -> conv32 -> 10), AdamW
lr 3e-3, batch 64 per process, all 1797 digits, no validation, no logging, one thread per process
(OMP_NUM_THREADS=1). Variants, each a whole run in a fresh process, alternated REPEATS times:

    gradloop-1   gradloop.train(), one process          hand-1   a plain PyTorch loop
    gradloop-2   gradloop.train() with ddp x 2          hand-2   DDP + DistributedSampler, 2 ranks
    lightning-2  Lightning Trainer(strategy="ddp", devices=2, accelerator="cpu")
    fsdp-2       gradloop.train() with fsdp x 2 (FSDP2 on gloo: a view of its cost, not a goal)

Reported per variant: the median of wall time of the whole run (start to exit, what a user waits),
CPU time of the process and its children, and training samples/s (samples / the time of the
training loop itself, from inside rank 0), with min-max spread; then the ratios and the scaling
efficiency (samples/s of 2 processes / (2 x samples/s of 1)).

    python bench/distributed.py [--repeats 5] [--epochs 3] [--batch 64]

--batch sets the batch per process: the step's compute grows with it and the all-reduce does
not (it is the model's size), so a larger batch shows what the scaling is once the step is not
dominated by the gradients' exchange.
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
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# The batch per process: --batch sets it for the variants' processes through the environment.
BATCH, LR = int(os.environ.get("BENCH_DISTRIBUTED_BATCH", "64")), 3e-3
CNN = {"in_channels": 1, "image_size": 8, "channels": [16, 32], "out_features": 10}
VARIANTS = ("gradloop-1", "hand-1", "gradloop-2", "hand-2", "lightning-2", "fsdp-2")


def gradloop_config(epochs: int, out: str, ranks: int, strategy: str = "ddp") -> dict[str, Any]:
    return {
        "name": "bench-ddp",
        "seed": 0,
        "device": "cpu",
        "output_dir": out,
        "model": {"name": "cnn", "options": CNN},
        "data": {
            "name": "sklearn",
            "options": {"dataset": "digits", "as_images": True},
            "batch_size": BATCH,
            "val_fraction": 0.0,
        },
        "loss": {"name": "cross_entropy"},
        "optimizer": {"name": "adamw", "options": {"lr": LR}},
        "trainer": {"epochs": epochs, "val_every_epochs": 0, "checkpoint_at_end": False, "progress": "none"},
        "tracking": {"enabled": False},
        "distributed": {"strategy": strategy if ranks > 1 else "none", "nproc_per_node": ranks},
    }


def data_and_model(epochs: int) -> tuple[Any, Any, Any]:
    """gradloop's own training tensors and CNN, so that every variant trains the same thing."""
    from gradloop import registry
    from gradloop.build import build_data
    from gradloop.config import load_config

    cfg = load_config(gradloop_config(epochs, tempfile.mkdtemp(), 1))
    splits = build_data(cfg.data, cfg.seed)
    return splits.train.x, splits.train.y, registry.models.build("cnn", CNN)


# -- the variants, each run in a process of its own -------------------------------------------------


def run_gradloop(epochs: int, ranks: int, strategy: str = "ddp") -> dict[str, float]:
    from gradloop import train

    with tempfile.TemporaryDirectory() as out:
        result = train(gradloop_config(epochs, out, ranks, strategy))
    samples = 1797 * epochs
    return {"samples": samples, "train_s": result.duration_s}


def _hand_worker(rank: int, world: int, epochs: int, port: int, out: str) -> None:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.manual_seed(0)
    x, y, model = data_and_model(epochs)
    net = DDP(model) if world > 1 else model
    opt = torch.optim.AdamW(net.parameters(), lr=LR)
    loss_fn = torch.nn.CrossEntropyLoss()
    data = TensorDataset(x, y)
    sampler = DistributedSampler(data, world, rank, shuffle=True, seed=0) if world > 1 else None
    loader = DataLoader(data, batch_size=BATCH, sampler=sampler, shuffle=sampler is None)
    started = time.perf_counter()
    for epoch in range(epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        for xb, yb in loader:
            opt.zero_grad(set_to_none=True)
            loss_fn(net(xb), yb).backward()
            opt.step()
    train_s = time.perf_counter() - started
    if rank == 0:
        Path(out).write_text(json.dumps({"samples": 1797 * epochs, "train_s": train_s}))
    if world > 1:
        dist.destroy_process_group()


def run_hand(epochs: int, ranks: int) -> dict[str, float]:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "result.json")
        if ranks == 1:
            _hand_worker(0, 1, epochs, port, out)
        else:
            mp.spawn(_hand_worker, args=(ranks, epochs, port, out), nprocs=ranks)
        return json.loads(Path(out).read_text())


def run_lightning(epochs: int, ranks: int) -> dict[str, float]:
    import lightning as L
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    torch.set_num_threads(1)

    class Module(L.LightningModule):
        def __init__(self, model: torch.nn.Module) -> None:
            super().__init__()
            self.model, self.loss = model, torch.nn.CrossEntropyLoss()

        def training_step(self, batch: Any, _: int) -> torch.Tensor:
            xb, yb = batch
            return self.loss(self.model(xb), yb)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.AdamW(self.parameters(), lr=LR)

    class Clock(L.Callback):
        def on_train_start(self, trainer: Any, module: Any) -> None:
            self.started = time.perf_counter()

        def on_train_end(self, trainer: Any, module: Any) -> None:
            self.train_s = time.perf_counter() - self.started

    torch.manual_seed(0)
    x, y, model = data_and_model(epochs)
    clock = Clock()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=ranks,
        strategy="ddp" if ranks > 1 else "auto",
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[clock],
    )
    trainer.fit(Module(model), DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=True))
    return {"samples": 1797 * epochs, "train_s": clock.train_s, "rank": trainer.global_rank}


def one_variant(name: str, epochs: int) -> None:
    kind, ranks = name.rsplit("-", 1)
    run = {
        "gradloop": run_gradloop,
        "hand": run_hand,
        "lightning": run_lightning,
        "fsdp": lambda epochs, ranks: run_gradloop(epochs, ranks, "fsdp"),
    }[kind]
    result = run(epochs, int(ranks))
    if result.pop("rank", 0) == 0:
        print("RESULT " + json.dumps(result), flush=True)


# -- the driver ----------------------------------------------------------------------------------------


def timed(name: str, epochs: int, batch: int) -> dict[str, float] | None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "BENCH_DISTRIBUTED_BATCH": str(batch)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, __file__, "--variant", name, "--epochs", str(epochs)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        print(f"  {name} failed (exit code {done.returncode}); this round has no sample of it:\n{done.stderr[-2000:]}")
        return None
    if done.returncode != 0:  # (Lightning's ddp on gloo sometimes aborts at exit, after its run)
        print(f"  {name} exited with code {done.returncode} after its run; its sample is kept")
    result = json.loads(line[len("RESULT ") :])
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu, "samples_per_s": result["samples"] / result["train_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64, help="batch per process")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--only", nargs="*", choices=VARIANTS, default=list(VARIANTS))
    args = parser.parse_args()
    if args.variant:
        one_variant(args.variant, args.epochs)
        return
    print(f"load average before: {os.getloadavg()}; {os.cpu_count()} cores; batch {args.batch} per process", flush=True)
    rows: dict[str, list[dict[str, float]]] = {v: [] for v in args.only}
    for i in range(args.repeats):
        order = args.only if i % 2 == 0 else list(reversed(args.only))  # alternate, both directions
        for name in order:
            sample = timed(name, args.epochs, args.batch)
            if sample is not None:
                rows[name].append(sample)
                print(f"  round {i + 1} {name}: {sample}", flush=True)
    print(f"load average after: {os.getloadavg()}")
    med = {}
    print(f"\n{'variant':<12} {'samples/s':>20} {'wall s':>16} {'cpu s':>16}")
    for name, runs in rows.items():
        if not runs:
            continue
        cols = []
        for key in ("samples_per_s", "wall_s", "cpu_s"):
            values = [r[key] for r in runs]
            cols.append(f"{statistics.median(values):8.1f} ({min(values):.0f}-{max(values):.0f})")
        med[name] = {k: statistics.median(r[k] for r in runs) for k in ("samples_per_s", "wall_s")}
        print(f"{name:<12} {cols[0]:>20} {cols[1]:>16} {cols[2]:>16}")

    def ratio(a: str, b: str, key: str = "samples_per_s") -> str:
        return f"{med[a][key] / med[b][key]:.2f}" if a in med and b in med else "-"

    print(f"\ngradloop-2 / hand-2 samples/s: {ratio('gradloop-2', 'hand-2')}")
    print(f"gradloop-2 / lightning-2 samples/s: {ratio('gradloop-2', 'lightning-2')}")
    print(f"lightning-2 / gradloop-2 wall: {ratio('lightning-2', 'gradloop-2', 'wall_s')}")
    print(f"fsdp-2 / gradloop-2 samples/s: {ratio('fsdp-2', 'gradloop-2')}")
    for kind in ("gradloop", "hand"):
        if f"{kind}-1" in med and f"{kind}-2" in med:
            eff = med[f"{kind}-2"]["samples_per_s"] / (2 * med[f"{kind}-1"]["samples_per_s"])
            print(f"{kind} scaling efficiency on 2 processes: {eff:.2f}")


if __name__ == "__main__":
    main()

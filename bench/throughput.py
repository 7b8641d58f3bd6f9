"""Training throughput: a hand-written PyTorch loop vs Lightning vs gradloop, in one process.

The model (issue 2): the digits MLP 64-128-10, batch 32, SGD lr 0.05 momentum 0.9, 5 epochs,
torch.set_num_threads(1), no validation, no logging (tracking has its own bench). All three train
the same standardised data (all 1797 digits). Each is run REPEATS times in alternation and the best
time is kept, so that one noisy run on a shared 2-core machine does not decide the ratio.
Then the start-up cost: wall time and peak RSS of `gradloop run` on a one-step config.

    python bench/throughput.py [--repeats 3] [--epochs 5] [--device cuda]

On CUDA every loop moves each batch to the GPU as it goes (pinned memory, non_blocking), as a
user's own loop over a CPU DataLoader would.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
BATCH, LR, MOMENTUM = 32, 0.05, 0.9


def gradloop_config(epochs: int, out: str, device: str = "cpu") -> dict:
    return {
        "name": "bench-digits",
        "seed": 0,
        "device": device,
        "output_dir": out,
        "model": {"name": "mlp", "options": {"in_features": 64, "hidden": [128], "out_features": 10}},
        "data": {"name": "sklearn", "options": {"dataset": "digits"}, "batch_size": BATCH, "val_fraction": 0.0},
        "loss": {"name": "cross_entropy"},
        "optimizer": {"name": "sgd", "options": {"lr": LR, "momentum": MOMENTUM}},
        "trainer": {"epochs": epochs, "val_every_epochs": 0, "checkpoint_at_end": False, "progress": "none"},
        "tracking": {"enabled": False},
    }


def training_split(epochs: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The exact training tensors gradloop trains on (same split, same standardisation)."""
    from gradloop.build import build_data
    from gradloop.config import load_config

    cfg = load_config(gradloop_config(epochs, tempfile.mkdtemp()))
    splits = build_data(cfg.data, cfg.seed)
    return splits.train.x, splits.train.y


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


def hand_written(x: torch.Tensor, y: torch.Tensor, epochs: int, device: str = "cpu") -> tuple[int, float]:
    torch.manual_seed(0)
    cuda = device.startswith("cuda")
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y), batch_size=BATCH, shuffle=True, pin_memory=cuda
    )
    model = mlp().to(device)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    loss_fn = nn.CrossEntropyLoss()
    steps = 0
    t0 = time.perf_counter()
    for _ in range(epochs):
        for xb, yb in loader:
            xb, yb = xb.to(device, non_blocking=cuda), yb.to(device, non_blocking=cuda)
            loss = loss_fn(model(xb), yb)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            steps += 1
    if cuda:
        torch.cuda.synchronize()
    return steps, time.perf_counter() - t0


def lightning_run(x: torch.Tensor, y: torch.Tensor, epochs: int, device: str = "cpu") -> tuple[int, float] | None:
    try:
        import lightning as L
    except ImportError:
        return None

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = mlp()
            self.loss_fn = nn.CrossEntropyLoss()

        def training_step(self, batch, _):
            xb, yb = batch
            return self.loss_fn(self.net(xb), yb)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=LR, momentum=MOMENTUM)

    torch.manual_seed(0)
    cuda = device.startswith("cuda")
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y), batch_size=BATCH, shuffle=True, pin_memory=cuda
    )
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="gpu" if cuda else "cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    t0 = time.perf_counter()
    trainer.fit(Module(), loader)
    return trainer.global_step, time.perf_counter() - t0


def gradloop_run(epochs: int, device: str = "cpu") -> tuple[tuple[int, float], tuple[int, float]]:
    """(steps, seconds of Trainer.fit) and (steps, seconds of the whole train() call)."""
    from gradloop import train

    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        result = train(gradloop_config(epochs, out, device))
        wall = time.perf_counter() - t0
    return (result.steps, result.duration_s), (result.steps, wall)


def startup_cost() -> tuple[float, float]:
    """Wall time and peak RSS (MiB) of `gradloop run` on a one-step config, in a fresh process."""
    with tempfile.TemporaryDirectory() as out:
        cfg = Path(out) / "one-step.yaml"
        import yaml

        c = gradloop_config(1, out)
        c["trainer"]["max_steps"] = 1
        cfg.write_text(yaml.safe_dump(c))
        exe = Path(sys.executable).with_name("gradloop")
        t0 = time.perf_counter()
        subprocess.run([str(exe), "run", str(cfg)], check=True, capture_output=True)
        wall = time.perf_counter() - t0
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return wall, peak_kib / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="cpu (the issue's setting) or cuda")
    parser.add_argument("--no-startup", action="store_true", help="skip the `gradloop run` start-up measurement")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    x, y = training_split(args.epochs)

    best: dict[str, tuple[int, float]] = {}
    for _ in range(args.repeats):
        fit, whole = gradloop_run(args.epochs, args.device)
        runs = {
            "hand-written loop": hand_written(x, y, args.epochs, args.device),
            "gradloop": fit,
            "gradloop train()": whole,
        }
        lit = lightning_run(x, y, args.epochs, args.device)
        if lit is not None:
            runs["lightning"] = lit
        for name, (steps, secs) in runs.items():
            if name not in best or secs < best[name][1]:
                best[name] = (steps, secs)

    base = best["hand-written loop"][0] / best["hand-written loop"][1]
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(f"digits MLP 64-128-10, batch {BATCH}, {args.epochs} epochs, 1 thread, {where}, best of {args.repeats}")
    print(f"{'loop':<20}{'steps':>8}{'seconds':>10}{'steps/s':>10}{'vs hand':>9}")
    for name in ("hand-written loop", "lightning", "gradloop", "gradloop train()"):
        if name not in best:
            print(f"{name:<20}  (not installed: pip install lightning)")
            continue
        steps, secs = best[name]
        print(f"{name:<20}{steps:>8}{secs:>10.3f}{steps / secs:>10.0f}{steps / secs / base:>8.2f}x")
    if "lightning" in best:
        g = best["gradloop"][0] / best["gradloop"][1]
        lt = best["lightning"][0] / best["lightning"][1]
        print(f"gradloop vs lightning: {g / lt:.2f}x")
    print(
        "gradloop: the training loop (RunResult.duration_s), like the others;"
        " gradloop train(): the whole call, with loading data and building model and optimizer"
    )
    if args.no_startup:
        return
    wall, rss = startup_cost()
    print(f"`gradloop run` one-step config: {wall:.2f} s wall, peak RSS {rss:.0f} MiB")


if __name__ == "__main__":
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{tempfile.mkdtemp()}/mlflow.db")
    main()

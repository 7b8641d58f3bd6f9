"""Test plugins and helpers shared by the trainer, accumulation, resume and runner tests.

The plugins register themselves (override=True, so re-import is harmless) the way any
third-party plugin would; tests then name them in ordinary configs.
- optimizer `trace_sgd`: torch SGD that appends "step" / "zero_grad" to TRACE.
- model `trace_mlp`: an MLP that appends ("forward", training, inference_mode) to TRACE and can be
  told (FAULTS) to raise, or to return NaN, on its Nth training forward call.
- model `nan_grad`: a linear model whose parameter `gate` always gets a NaN gradient while the
  loss stays finite.
- dataset `pairs_classification`: synthetic_classification served as a map-style torch Dataset
  of (x, y) pairs, so the trainer has to go through a DataLoader.
"""

from __future__ import annotations

import copy
import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn
from torch.utils.data import Dataset

from gradloop import registry
from gradloop.data import DataSplits, TensorData
from gradloop.observer import NullObserver
from gradloop.plugins.datasets.synthetic import ClassificationOptions

TRACE: list[Any] = []
FAULTS: dict[str, int | None] = {"raise_at": None, "nan_at": None}
_calls = {"train_forward": 0}


def reset() -> None:
    TRACE.clear()
    FAULTS.update(raise_at=None, nan_at=None)
    _calls["train_forward"] = 0


class TraceSGD(torch.optim.SGD):
    def step(self, closure: Any = None) -> Any:
        TRACE.append("step")
        return super().step(closure)

    def zero_grad(self, set_to_none: bool = True) -> None:
        TRACE.append("zero_grad")
        super().zero_grad(set_to_none=set_to_none)


class TraceSGDOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lr: float = 0.1
    momentum: float = 0.0


@registry.optimizers.register(
    "trace_sgd", options=TraceSGDOptions, override=True, description="SGD that records its calls (tests)"
)
def trace_sgd(param_groups: list[dict], *, options: TraceSGDOptions) -> torch.optim.Optimizer:
    return TraceSGD(param_groups, lr=options.lr, momentum=options.momentum)


class TraceMLPOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    in_features: int
    out_features: int
    hidden: int = 16
    dropout: float = 0.0


class TraceMLP(nn.Module):
    def __init__(self, options: TraceMLPOptions) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(options.in_features, options.hidden),
            nn.Tanh(),
            nn.Dropout(options.dropout),
            nn.Linear(options.hidden, options.out_features),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        TRACE.append(("forward", self.training, torch.is_inference_mode_enabled(), len(x)))
        out = self.net(x)
        if self.training and torch.is_grad_enabled():
            _calls["train_forward"] += 1
            n = _calls["train_forward"]
            if FAULTS["raise_at"] == n:
                raise RuntimeError(f"injected crash at training forward {n}")
            if FAULTS["nan_at"] == n:
                out = out * float("nan")
        return out


@registry.models.register(
    "trace_mlp",
    options=TraceMLPOptions,
    override=True,
    in_option="in_features",
    out_option="out_features",
    description="MLP that records its forward calls and injects faults (tests)",
)
def trace_mlp(*, options: TraceMLPOptions) -> nn.Module:
    return TraceMLP(options)


class NanGradOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    in_features: int
    out_features: int


class NanGrad(nn.Module):
    def __init__(self, options: NanGradOptions) -> None:
        super().__init__()
        self.linear = nn.Linear(options.in_features, options.out_features)
        self.gate = nn.Parameter(torch.zeros(options.out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # 0 * sqrt(0) is a finite 0, but its gradient is 0 * inf = NaN: a finite loss, a NaN gradient.
        return self.linear(x) + 0.0 * torch.sqrt(self.gate)


@registry.models.register(
    "nan_grad",
    options=NanGradOptions,
    override=True,
    in_option="in_features",
    out_option="out_features",
    description="linear model whose `gate` parameter gets NaN gradients (tests)",
)
def nan_grad(*, options: NanGradOptions) -> nn.Module:
    return NanGrad(options)


class Pairs(Dataset):
    """A map-style Dataset over a TensorData: one (x, y) pair per index."""

    def __init__(self, data: TensorData) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.data.x[i], self.data.y[i]


@registry.datasets.register(
    "pairs_classification",
    options=ClassificationOptions,
    override=True,
    description="synthetic_classification as a torch Dataset (tests)",
)
def pairs_classification(*, options: ClassificationOptions, ctx: Any) -> DataSplits:
    splits = registry.datasets.build("synthetic_classification", options, ctx=ctx)
    return dataclasses.replace(
        splits, train=Pairs(splits.train), val=Pairs(splits.val) if splits.val is not None else None
    )


def base_config(tmp_path: Path, **changes: Any) -> dict[str, Any]:
    """A tiny classification run (80 train / 20 val samples, 8 features, 3 classes), no tracking."""
    cfg: dict[str, Any] = {
        "name": "t",
        "seed": 3,
        "device": "cpu",
        "output_dir": str(tmp_path / "runs"),
        "model": {"name": "trace_mlp", "options": {"in_features": 8, "out_features": 3}},
        "data": {
            "name": "synthetic_classification",
            "options": {"n_samples": 100, "n_features": 8, "n_classes": 3, "seed": 1},
            "batch_size": 8,
            "val_fraction": 0.2,
        },
        "loss": {"name": "cross_entropy"},
        "optimizer": {"name": "sgd", "options": {"lr": 0.1}},
        "trainer": {"epochs": 2, "progress": "none"},
        "tracking": {"enabled": False},
    }
    for dotted, value in changes.items():
        node = cfg
        *parents, last = dotted.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = copy.deepcopy(value)
    return cfg


def model_state(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The model's whole state dict in a checkpoint file, or in the shards an FSDP one names."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if not state.get("sharded"):
        return state["model"]
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save  # FSDP checkpoints only

    with tempfile.TemporaryDirectory() as scratch:
        whole = Path(scratch) / "whole.pt"
        dcp_to_torch_save(Path(checkpoint).parent / state["sharded"], whole)
        return torch.load(whole, map_location="cpu", weights_only=True)["model"]


def assert_bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs"


class StopAt(NullObserver):
    """Sets the run's stop event right after optimizer step `step` (as a signal handler would)."""

    def __init__(self, step: int, event: Any) -> None:
        self.step, self.event = step, event

    def wants_step_stats(self, step: int) -> bool:
        return step == self.step

    def after_optimizer_step(self, step: int, snapshot: Any, metrics: Any) -> None:
        if step == self.step:
            self.event.set()


class Recorder(NullObserver):
    """Keeps every call it receives, with metric values as floats."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.ctx: Any = None

    def start(self, ctx: Any) -> None:
        self.ctx = ctx
        self.calls.append(("start", ctx.start_step))

    def after_optimizer_step(self, step: int, snapshot: Any, metrics: Any) -> None:
        self.calls.append(("after", step, {k: float(v) for k, v in metrics.items()}))

    def log_metrics(self, metrics: Any, step: int) -> None:
        self.calls.append(("val", step, {k: float(v) for k, v in metrics.items()}))

    def log_checkpoint(self, path: Path, step: int) -> None:
        self.calls.append(("checkpoint", step, path))

    def finish(self, status: str, error: BaseException | None = None) -> None:
        self.calls.append(("finish", status, error))

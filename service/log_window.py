"""The logging window: which optimizer steps are logging steps, and what the window's metrics are.

The trainer asks `is_log_step(step)` once per step (a logging step measures the gradient norm and
tells the observers), hands each finished step to `add`, and on a logging step takes `metrics()`,
which also opens the next window. Losses stay 0-d device tensors: observers move them to the host
once per window, so the training step never waits on a host synchronisation here.

On several ranks, each rank adds its own part of each step's loss and `metrics()` sums those parts
over the ranks (one all-reduce per logging window), so train/loss is the global mean.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

# Sums a device tensor over all ranks in place (an all-reduce); None in a single process.
Reducer = Callable[[torch.Tensor], None]


class LogWindow:
    """The optimizer steps since the last logging step, and the rule that ends the window."""

    def __init__(
        self,
        log_every: int,
        total_steps: int,
        stopping: Callable[[], bool],
        device: torch.device,
        *,
        world_size: int = 1,
        reduce_sum: Reducer | None = None,
    ) -> None:
        self.log_every = log_every
        self.total_steps = total_steps
        self._stopping = stopping
        self._device = device
        self._world_size = world_size
        self._reduce_sum = reduce_sum
        self.train_loss: torch.Tensor | None = None  # the last window's mean loss
        self._losses: list[torch.Tensor] = []
        self._counts: list[int] = []
        self._steps = 0
        self._grad_norm: torch.Tensor | None = None
        self._t0 = time.perf_counter()

    def is_log_step(self, step: int) -> bool:
        """Every log_every-th step, the last step, and the step a stop request ends on."""
        return step % self.log_every == 0 or step >= self.total_steps or self._stopping()

    def add(self, window_loss: torch.Tensor, samples: int, grad_norm: torch.Tensor | None, ok: bool) -> None:
        """Record one optimizer step: its window's mean loss over the window's `samples` samples.

        On several ranks, `window_loss` is this rank's share times the world size (the loss whose
        gradient DDP averages) and `samples` counts the window's samples on all ranks."""
        if ok:  # a skipped step's loss is not finite and would poison the logging window's mean
            self._losses.append(window_loss)
            self._counts.append(samples)
        self._steps += 1
        self._grad_norm = grad_norm

    def metrics(self, optimizer: torch.optim.Optimizer, epoch: int, skipped_steps: int) -> dict[str, Any]:
        """The window's metrics (train/loss as the sample-weighted mean); starts the next window."""
        now = time.perf_counter()
        elapsed = max(now - self._t0, 1e-9)
        metrics: dict[str, Any] = {}
        samples = sum(self._counts)
        if self._reduce_sum is not None:
            # Every rank calls this on the same steps (it is a collective), also a rank whose
            # window has no finite loss; the ranks skip the same steps, so `samples` agree.
            loss_sum = torch.stack(self._losses).float() @ self._counts_tensor() if samples else self._zero()
            self._reduce_sum(loss_sum)
            if samples:
                self.train_loss = loss_sum / (samples * self._world_size)
                metrics["train/loss"] = self.train_loss
        elif samples:
            # Each step's mean loss weighted by its samples: the mean over the logging window.
            self.train_loss = (torch.stack(self._losses).float() @ self._counts_tensor()) / samples
            metrics["train/loss"] = self.train_loss
        if not samples and self._steps:  # every step of the window was skipped: no loss, not an older one
            self.train_loss = torch.tensor(float("nan"))
        if self._grad_norm is not None:
            metrics["train/grad_norm"] = self._grad_norm
        for i, group in enumerate(optimizer.param_groups):
            metrics[f"train/lr/{group.get('group_name', i)}"] = float(group["lr"])
        metrics["epoch"] = float(epoch)
        metrics["samples_per_s"] = samples / elapsed
        metrics["steps_per_s"] = self._steps / elapsed
        if skipped_steps:
            metrics["train/skipped_steps"] = float(skipped_steps)
        self._reset(now)
        return metrics

    def _counts_tensor(self) -> torch.Tensor:
        return torch.tensor(self._counts, dtype=torch.float32, device=self._device)

    def _zero(self) -> torch.Tensor:
        return torch.zeros((), device=self._device)

    def _reset(self, now: float) -> None:
        self._losses, self._counts, self._steps, self._grad_norm, self._t0 = [], [], 0, None, now


__all__ = ["LogWindow", "Reducer"]

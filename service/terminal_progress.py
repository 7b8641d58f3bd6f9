"""Progress on the terminal: a live bar on a TTY, plain periodic lines otherwise.

It is an Observer like MLflow tracking, so it sees the same window metrics at the logging
cadence and never forces a host sync of its own between logging steps.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Mapping
from typing import IO, Any

from gradloop.config import RunConfig
from gradloop.observer import NullObserver, RunContext, RunStatus


def _as_float(value: Any) -> float:
    return float(value.item()) if hasattr(value, "item") else float(value)


def _fmt_value(value: float, digits: int, *, short: bool = False) -> str:
    """A metric for a person: never a NaN or infinity that reads like a number (short: for the bar)."""
    if not math.isfinite(value):
        return "not finite" if short else f"{value} (not finite)"
    return f"{value:.{digits}f}"


def _window_loss(metrics: Mapping[str, Any], previous: float | None) -> float | None:
    """train/loss of the logging window that just ended; NaN for a window whose every step was
    skipped (it has no loss, and the one before it is stale), `previous` between windows."""
    if "train/loss" in metrics:
        return _as_float(metrics["train/loss"])
    return float("nan") if metrics else previous


def _fmt_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class _ProgressBase(NullObserver):
    def __init__(self) -> None:
        self.total = 0
        self.epochs = 1
        self.start_step = 0
        self.t0 = time.perf_counter()
        self.loss: float | None = None
        self.val: dict[str, float] = {}
        self.skipped = 0
        self.max_skipped = 0.5

    def start(self, ctx: RunContext) -> None:
        self.total = ctx.total_steps
        self.epochs = ctx.config.trainer.epochs
        self.max_skipped = ctx.config.trainer.max_skipped_fraction
        self.start_step = ctx.start_step
        self.t0 = time.perf_counter()

    def _skip_warning(self, step: int, metrics: Mapping[str, Any]) -> str | None:
        """A warning when steps were skipped since the last logging window, else None."""
        if "train/skipped_steps" not in metrics:
            return None
        skipped = int(_as_float(metrics["train/skipped_steps"]))
        if skipped <= self.skipped:
            return None
        self.skipped = skipped
        return (
            f"warning: {skipped} of {step} steps skipped so far (non-finite loss or gradient); "
            f"the run fails if more than {self.max_skipped:.0%} of its steps are skipped"
        )

    def _rate_and_eta(self, step: int) -> tuple[float, float]:
        elapsed = time.perf_counter() - self.t0
        done = step - self.start_step
        rate = done / elapsed if elapsed > 0 and done > 0 else 0.0
        eta = (self.total - step) / rate if rate > 0 else float("nan")
        return rate, eta


class LineProgress(_ProgressBase):
    """One plain line every `every_s` seconds (and at the end), for logs and pipes."""

    def __init__(self, stream: IO[str] | None = None, every_s: float = 5.0) -> None:
        super().__init__()
        self.stream = stream or sys.stderr
        self.every_s = every_s
        self._last_print = 0.0

    def start(self, ctx: RunContext) -> None:
        super().start(ctx)
        resumed = f", resuming at step {ctx.start_step}" if ctx.start_step else ""
        self._print(f"training {ctx.config.name}: {self.total} steps, {self.epochs} epoch(s) on {ctx.device}{resumed}")

    def after_optimizer_step(self, step: int, snapshot: Any, metrics: Mapping[str, Any]) -> None:
        self.loss = _window_loss(metrics, self.loss)
        warning = self._skip_warning(step, metrics)
        if warning:
            self._print(warning)
        now = time.perf_counter()
        if metrics and (now - self._last_print >= self.every_s or step >= self.total):
            self._last_print = now
            rate, eta = self._rate_and_eta(step)
            epoch = int(_as_float(metrics.get("epoch", 0))) + 1 if "epoch" in metrics else "?"
            loss = _fmt_value(self.loss, 4) if self.loss is not None else "-"
            eta_s = _fmt_duration(eta) if eta == eta else "?"
            self._print(
                f"epoch {epoch}/{self.epochs} step {step}/{self.total} loss {loss} {rate:.1f} steps/s eta {eta_s}"
            )

    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> None:
        shown = " ".join(f"{k} {_fmt_value(_as_float(v), 4)}" for k, v in metrics.items() if k.startswith("val/"))
        if shown:
            self._print(f"step {step}: {shown}")

    def finish(self, status: RunStatus, error: BaseException | None = None) -> None:
        elapsed = time.perf_counter() - self.t0
        self._print(f"{status.lower()} after {_fmt_duration(elapsed)}")

    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)


class BarProgress(_ProgressBase):
    """A rich progress bar: epoch, step/total, loss, steps/s and ETA."""

    def __init__(self) -> None:
        super().__init__()
        # rich.progress only on a terminal: a job's child and plain-lines runs never draw a bar.
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        # Every column but the bar has a bounded width, and the bar shrinks first: at 80
        # columns the step count, loss, validation loss and ETA all stay on the line.
        self._progress = Progress(
            TextColumn("epoch {task.fields[epoch]}"),
            BarColumn(bar_width=None),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[val]}"),
            TextColumn("{task.fields[rate]}/s"),
            TimeRemainingColumn(),
            transient=False,
            expand=False,
        )
        self._task: Any = None

    def start(self, ctx: RunContext) -> None:
        super().start(ctx)
        resumed = f", resuming at step {ctx.start_step}" if ctx.start_step else ""
        self._progress.console.print(
            f"training {ctx.config.name}: {self.total} steps, {self.epochs} epoch(s) on {ctx.device}{resumed}",
            markup=False,
            highlight=False,
        )
        self._progress.start()
        self._task = self._progress.add_task(
            "train",
            total=self.total,
            completed=ctx.start_step,
            name=ctx.config.name,
            epoch=f"1/{self.epochs}",
            loss="-",
            rate="-",
            val="",
        )

    def after_optimizer_step(self, step: int, snapshot: Any, metrics: Mapping[str, Any]) -> None:
        if not metrics:
            return
        self.loss = _window_loss(metrics, self.loss)
        warning = self._skip_warning(step, metrics)
        if warning:
            self._progress.console.print(warning, style="yellow", markup=False, highlight=False)
        rate, _ = self._rate_and_eta(step)
        epoch = int(_as_float(metrics["epoch"])) + 1 if "epoch" in metrics else 1
        self._progress.update(
            self._task,
            completed=step,
            epoch=f"{min(epoch, self.epochs)}/{self.epochs}",
            loss=_fmt_value(self.loss, 4, short=True) if self.loss is not None else "-",
            rate=f"{rate:.0f}",
        )

    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> None:
        # The bar has room for one validation number: the loss (every val/ metric goes to MLflow
        # and to the summary at the end).
        if "val/loss" in metrics and self._task is not None:
            self._progress.update(self._task, val=f"val {_fmt_value(_as_float(metrics['val/loss']), 3, short=True)}")

    def finish(self, status: RunStatus, error: BaseException | None = None) -> None:
        self._progress.stop()


def make_progress_observer(config: RunConfig, stream: IO[str] | None = None) -> NullObserver:
    """The bar on an interactive terminal, lines otherwise, nothing with progress: none."""
    mode = config.trainer.progress
    stream = stream or sys.stderr
    if mode == "none":
        return NullObserver()
    if mode == "bar" or (mode == "auto" and stream.isatty()):
        return BarProgress()
    return LineProgress(stream)


__all__ = ["make_progress_observer", "LineProgress", "BarProgress"]

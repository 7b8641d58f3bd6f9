"""What the trainer tells whoever watches a run (MLflow tracking, job progress, tests).

The trainer calls these methods at fixed points of its loop, in plain sight in Trainer.fit();
an observer never decides anything about the optimisation (no zeroing, no stepping). Metric
values may be 0-d tensors still on the device: an observer moves them to the host once per
logging window, so the training step never waits on a host synchronisation.

Cadence: at every `tracking.log_every`-th optimizer step (and the last one) the trainer calls
`after_optimizer_step` on every observer with the window's metrics (train/loss as the mean over
the window, train/lr/<group>, train/grad_norm when known, epoch, samples_per_s, steps_per_s).
Independently, an observer whose `wants_step_stats(step)` is True gets `before_optimizer_step`
(gradients present, pre-clip) and then `after_optimizer_step` with that snapshot, even between
logging steps (then `metrics` may be empty). Validation results go through `log_metrics`.
An observer may also have `log_figure(data, png, artifact_path)`: a figure the run made for people
to look at (the confusion matrix, saved as JSON at `data`), handed over at the end of a finished
run for the observer to draw to `png` and keep; it is optional, and when no observer has it the
trainer draws the PNG itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    import torch

    from gradloop.config import RunConfig

RunStatus = Literal["FINISHED", "FAILED", "KILLED"]
MetricValue = "float | torch.Tensor"


@dataclass
class RunContext:
    """Everything an observer may need once the run's components are built."""

    config: RunConfig
    run_dir: Path
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    device: torch.device
    param_names: list[str]  # optimizer parameters' names, in group order
    total_steps: int  # optimizer steps the run will take in all
    start_step: int = 0  # > 0 when resumed from a checkpoint
    resumed: bool = False  # continued from a checkpoint (of any step, 0 included)
    mlflow_run_id: str | None = None  # the run to continue, when resumed
    job_id: str | None = None  # set when the HTTP service runs the job
    extra_tags: dict[str, str] = field(default_factory=dict)
    example_input: Any = None  # one batch of inputs (for a model signature)
    # The pre-clip L2 norm of each parameter's gradient (a 1-d device tensor, in param_names
    # order) when the trainer measured them for the step being observed (logging steps,
    # clipping); else None. An observer reuses them instead of measuring them a second time.
    grad_norms: Callable[[], torch.Tensor | None] = field(default=lambda: None)
    # Sharded parameters (FSDP), whose gradients and weights are each rank's shards: at the
    # steps of tracking.histogram_every, the whole gradients (None where absent) and weights of
    # the optimizer's trainable parameters, in param_names order, gathered by every rank; else None.
    full_tensors: Callable[[], tuple[list[torch.Tensor | None], list[torch.Tensor]] | None] = field(
        default=lambda: None
    )
    # Sharded parameters: the final weights in a plain model (rank 0's CPU), which the trainer
    # builds at the end of a finished run when tracking.log_model is on; None before then.
    unsharded_model: Callable[[], torch.nn.Module | None] | None = None

    def model_to_log(self) -> torch.nn.Module | None:
        """The model as it is logged at the end: `model`, or the unsharded copy of a sharded one
        (None when there is none: a sharded model cannot be saved or run by rank 0 alone)."""
        return self.unsharded_model() if self.unsharded_model is not None else self.model


class Observer(Protocol):
    def start(self, ctx: RunContext) -> None: ...

    def wants_step_stats(self, step: int) -> bool:
        """True when optimizer step `step` (1-based) should be observed in detail."""
        ...

    def before_optimizer_step(self, step: int, model: torch.nn.Module) -> Any:
        """Gradients are complete, unscaled and not yet clipped; return a snapshot for after."""
        ...

    def after_optimizer_step(self, step: int, snapshot: Any, metrics: Mapping[str, Any]) -> None:
        """The optimizer has stepped (gradients not yet zeroed); `metrics` e.g. train/loss."""
        ...

    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> None: ...

    def log_checkpoint(self, path: Path, step: int) -> None: ...

    def finish(self, status: RunStatus, error: BaseException | None = None) -> None: ...


class NullObserver:
    """Watches nothing: a run with tracking disabled."""

    mlflow_run_id: str | None = None

    def start(self, ctx: RunContext) -> None:
        pass

    def wants_step_stats(self, step: int) -> bool:
        return False

    def before_optimizer_step(self, step: int, model: Any) -> Any:
        return None

    def after_optimizer_step(self, step: int, snapshot: Any, metrics: Mapping[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> None:
        pass

    def log_checkpoint(self, path: Path, step: int) -> None:
        pass

    def finish(self, status: RunStatus, error: BaseException | None = None) -> None:
        pass

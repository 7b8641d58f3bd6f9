"""The training loop: accumulation, precision, clipping, stepping, validation, checkpoints, resume.

`Trainer.fit()` is meant to be read top to bottom in one sitting. Everything that decides the
optimisation is in plain sight there -- the accumulation window, backward, unscale, the gradient
norm, the non-finite check, clipping, the optimizer step, zero_grad and the scheduler -- and no
callback or observer decides any of it. Observers (MLflow, progress, tests) only watch, through
service/observer.py's protocol.

On several ranks (DDP or FSDP) every rank runs this same loop: the backward passes before a
window's last one run without gradient sync, so gradients are reduced once per window; train/loss
and validation are summed over the ranks; a stop request takes effect once every rank knows of it
(they agree at each logging step); rank 0 alone writes checkpoint files (observers run on rank 0
only). Under FSDP each rank holds shards: the gradient norm is measured every step from the shards
(one small all-reduce, so every rank clips and skips alike), every rank helps gather the whole
tensors rank 0's tracking logs (at histogram steps, and the final model), and every rank writes its
shards of a checkpoint (torch.distributed.checkpoint) beside rank 0's file.

The trainer is handed built components (gradloop.runner builds them from a config); it owns the
loop's state (step, epoch, position in the epoch) and how that state goes in and out of a
checkpoint, which is what makes a stopped run resume to bitwise-identical weights on CPU.
"""

from __future__ import annotations

import contextlib
import functools
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from gradloop.batching import Batch, Batches, Window
from gradloop.checkpoint import CheckpointError, replace_dir, sharded_dirname, step_filename, write_checkpoint
from gradloop.config import RunConfig
from gradloop.devices import autocast_dtype
from gradloop.distributed import fsdp
from gradloop.errors import ConfigError, TrainingError
from gradloop.log_window import LogWindow
from gradloop.observer import Observer, RunContext, RunStatus
from gradloop.outputs import logits_of
from gradloop.seeding import capture_rng_state, restore_rng_state
from gradloop.torch_ops import flag_non_finite, foreach_norm
from gradloop.val_metrics import MetricSet

if TYPE_CHECKING:
    from gradloop.distributed.wrap import Parallel


@dataclass
class Components:
    """What a run trains with, built and validated before anything trains (see gradloop.runner)."""

    model: nn.Module
    loss_fn: Callable[[Any, torch.Tensor], torch.Tensor]
    optimizer: torch.optim.Optimizer
    train: Batches
    val: Batches | None = None
    scheduler: Any = None
    scheduler_capabilities: Mapping[str, Any] = field(default_factory=dict)
    closure: bool = False  # optimizer re-evaluates the loss (L-BFGS)
    metrics: MetricSet | None = None  # validation metrics (torchmetrics), updated batch by batch
    class_names: list[str] | None = None  # for the confusion matrix's axes
    parallel: Parallel | None = None  # DDP or FSDP and the process group, on several ranks
    # FSDP: builds the model afresh, unsharded (the logged model gets the final weights in it).
    unsharded_model: Callable[[], nn.Module] | None = None


@dataclass
class FitOutcome:
    status: RunStatus
    steps: int
    epochs: int  # epochs completed
    metrics: dict[str, float]
    checkpoint_path: Path | None
    duration_s: float
    skipped_steps: int = 0


class _SkipStep(Exception):
    """Raised inside a closure to abandon a step whose gradient is not finite (skip_step)."""


class Trainer:
    """Runs one training run over built components; `fit()` is the loop."""

    def __init__(
        self,
        config: RunConfig,
        parts: Components,
        *,
        device: torch.device,
        run_dir: Path,
        observers: Sequence[Observer] = (),
        stop_event: threading.Event | None = None,
        job_id: str | None = None,
    ) -> None:
        self.config = config
        self.tc = config.trainer
        self.parts = parts
        self.device = device
        self.run_dir = Path(run_dir)
        self.observers = list(observers)
        self.job_id = job_id
        self._stop = stop_event if stop_event is not None else threading.Event()

        self.model = parts.model
        self.loss_fn = parts.loss_fn
        self.optimizer = parts.optimizer
        self.scheduler = parts.scheduler
        self.plan = parts.train.plan
        if len(self.plan) == 0:
            raise ConfigError.single(
                "data.batch_size",
                f"the training split gives no batch of data.batch_size={config.data.batch_size} "
                f"(data.drop_last={config.data.drop_last}); lower batch_size or set drop_last: false",
            )
        self.total_steps = self.plan.steps_per_epoch * self.tc.epochs
        if self.tc.max_steps is not None:
            self.total_steps = min(self.total_steps, self.tc.max_steps)

        dtype = autocast_dtype(self.tc.precision)
        self._autocast: Callable[[], Any] = (
            functools.partial(torch.autocast, device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext
        )
        # fp16 gradients underflow without loss scaling; bf16 and fp32 need none. A disabled
        # scaler passes everything through, so the loop below reads the same for all three.
        # Sharded gradients: each rank sees an overflow in its own shards only, so FSDP's scaler
        # all-reduces it and every rank skips the same steps.
        self._sharded = parts.parallel is not None and parts.parallel.sharded
        self.scaler = (
            fsdp.sharded_grad_scaler(device.type)
            if self._sharded and self.tc.precision == "fp16"
            else torch.amp.GradScaler(device.type, enabled=self.tc.precision == "fp16")
        )
        # GradScaler skips optimizer.step() when the scaled gradients overflowed and tells
        # nobody; a post-step hook says whether the step ran, without a host sync. (Every
        # torch.optim.Optimizer has hooks; a duck-typed plugin without them is not counted.)
        self._count_scaler_skips = self.scaler.is_enabled() and hasattr(self.optimizer, "register_step_post_hook")
        self._stepped = False
        self.parallel = parts.parallel
        self.dist = parts.parallel.ctx if parts.parallel is not None else None
        self.world_size = self.dist.world_size if self.dist is not None else 1
        trained = parts.parallel.module if parts.parallel is not None else self.model
        self.forward: Callable[[Any], Any] = self._compiled(trained) if self.tc.compile else trained
        # DDP's wrapper may sync buffers in a forward pass (a collective); evaluation runs the
        # plain model, whose weights are the same on every rank, so ranks may hold unequal parts.
        self._eval_forward = self.model if parts.parallel is not None else self.forward
        self._stop_agreed = False  # several ranks: a stop request every rank has seen

        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self._step_grad_norms: torch.Tensor | None = None  # this step's, for observers
        # FSDP: rank 0's histograms and logged model need whole tensors, which every rank must
        # help gather, observers or not (they run on rank 0 alone): at the steps of
        # tracking.histogram_every, and once at the end of a finished run.
        tracking = config.tracking
        self._full_every = tracking.histogram_every if self._sharded and tracking.enabled else 0
        self._full_tensors: tuple[list[torch.Tensor | None], list[torch.Tensor]] | None = None
        self._gather_model = self._sharded and tracking.enabled and tracking.log_model
        self._unsharded: nn.Module | None = None
        self._same_dtype = len({(p.dtype, p.device) for p in self.params}) <= 1
        self.param_names = _param_names(self.optimizer, self.model)
        self._monitor = self._plateau_monitor()

        # Loop state: what a checkpoint records and a resume restores.
        self.step = 0  # optimizer steps done
        self.epoch = 0  # current epoch (0-based)
        self.batch_in_epoch = 0  # next micro-batch of the current epoch (a window boundary)
        self.skipped_steps = 0
        self.last_val_step = -1
        self.start_step = 0
        self.resumed = False  # load_state_dict ran: this run continues a checkpoint
        self.resumed_mlflow_run_id: str | None = None
        self._pending_rng: dict[str, Any] | None = None

        self.last_checkpoint: Path | None = None
        self._last_checkpoint_at: tuple[int, int, int] | None = None
        self.val_metrics: dict[str, torch.Tensor] = {}
        self._zero = torch.zeros((), device=device)
        self._found_inf = torch.zeros(1, device=device)
        self._unit_scale = torch.ones(1, device=device)
        self.log_window = LogWindow(
            config.tracking.log_every,
            self.total_steps,
            self._stopping,
            device,
            world_size=self.world_size,
            reduce_sum=self.dist.reduce_sum if self.dist is not None else None,
        )

    @staticmethod
    def _compiled(model: nn.Module) -> Callable[[Any], Any]:
        # torch.compile itself only wraps the model; most failures (no C++ compiler, an
        # unsupported op) surface at the first forward and are turned into a message in fit().
        try:
            return torch.compile(model)
        except Exception as exc:
            raise ConfigError.single(
                "trainer.compile",
                f"torch.compile is not available here ({type(exc).__name__}: {str(exc).strip().splitlines()[0]}); "
                "set trainer.compile: false",
            ) from None

    # -- control ----------------------------------------------------------------------------
    def request_stop(self) -> None:
        """Ask the loop to stop at the next optimizer-step boundary (thread- and signal-safe)."""
        self._stop.set()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def _stopping(self) -> bool:
        return self._stop_agreed if self.dist is not None else self._stop.is_set()

    def _finished(self) -> bool:
        return self._stopping() or self.step >= self.total_steps

    # -- the loop -----------------------------------------------------------------------------
    def fit(self) -> FitOutcome:
        """Train to the end (or max_steps, or a stop request); checkpoint; report to observers."""
        started = time.perf_counter()
        status: RunStatus = "FAILED"
        error: BaseException | None = None
        step_hook = self.optimizer.register_step_post_hook(self._mark_stepped) if self._count_scaler_skips else None
        try:
            self._start_observers()
            self._loop()
            completed = self.step >= self.total_steps or self.epoch >= self.tc.epochs
            if completed:
                self._check_skipped_share()
            status = "KILLED" if self._stopping() and not completed else "FINISHED"
            if status == "FINISHED" and self.parts.val is not None and self.last_val_step != self.step:
                self._validate(step_scheduler=False)  # final metrics; training is over, so no scheduler step
            if status == "FINISHED":
                self._log_figures()
            if status == "KILLED" or self.tc.checkpoint_at_end:
                self.save_checkpoint()
            if status == "FINISHED" and self._gather_model and self.parts.unsharded_model is not None:
                assert self.dist is not None  # (sharded: several ranks)
                self._unsharded = fsdp.unsharded_copy(self.model, self.parts.unsharded_model, self.dist.is_main)
            return FitOutcome(
                status,
                self.step,
                self._epochs_done(),
                self.final_metrics(),
                self.last_checkpoint,
                time.perf_counter() - started,
                self.skipped_steps,
            )
        except BaseException as exc:
            error = exc
            if self.tc.compile and _is_compile_error(exc):
                error = TrainingError(
                    f"trainer.compile: torch.compile could not compile the model ({type(exc).__name__}: "
                    f"{str(exc).strip().splitlines()[0]}); set trainer.compile: false to train without it"
                )
                raise error from exc
            raise
        finally:
            if step_hook is not None:
                step_hook.remove()  # the optimizer may outlive this trainer (and must not keep it alive)
            try:
                self._close_batches()
            finally:
                self._finish_observers(status, error)  # the run's end is reported even if a close fails

    def _close_batches(self) -> None:
        """DataLoader workers stop when the run ends (finished, stopped or failed), not at exit."""
        for batches in (self.parts.train, self.parts.val):
            if batches is not None:
                batches.close()

    def _check_skipped_share(self) -> None:
        """A run that skipped most of its steps did not train: it ends FAILED, saying so."""
        limit = self.tc.max_skipped_fraction
        if self.step and self.skipped_steps / self.step > limit:
            raise TrainingError(
                f"{self.skipped_steps} of {self.step} optimizer steps were skipped (non-finite loss or gradient), "
                f"more than trainer.max_skipped_fraction = {limit:g} of them; lower optimizer.options.lr or set "
                "trainer.grad_clip_norm (or raise trainer.max_skipped_fraction to accept such a run)"
            )

    def _loop(self) -> None:
        tc, model, opt, log_window = self.tc, self.model, self.optimizer, self.log_window
        step_scheduler_per_step = (
            self.scheduler is not None
            and self.parts.scheduler_capabilities.get("interval", "step") == "step"
            and not self._monitor
        )
        model.train()
        # Gradients left on the model by whoever built it must not leak into the first step.
        opt.zero_grad(set_to_none=True)

        while self.epoch < tc.epochs and not self._finished():
            batches = self.parts.train.epoch(self.epoch, start=self.batch_in_epoch)
            for window in self.plan.windows(self.batch_in_epoch):
                step = self.step + 1
                self._step_grad_norms = None

                # 1. Gradients of the window. Each micro-batch's mean loss is weighted by its
                #    share of the window (of its samples, or of its real tokens for a loss that
                #    counts them), so the accumulated gradient is the gradient of the mean loss
                #    over the whole window -- also for a short last window or uneven padding, and
                #    on several ranks (times the world size, since DDP averages over the ranks).
                #    Gradients are synced across ranks at the window's last backward only.
                if self.parts.closure:
                    window_loss, grad_norm, ok, stats = self._closure_step(window, batches, step)
                else:
                    summed: torch.Tensor | None = None  # the window's mean loss, summed on the device (no sync)
                    micro_batches = [next(batches) for _ in window.sizes]
                    shares = self._shares(window, micro_batches)
                    for i, ((x, y), share) in enumerate(zip(micro_batches, shares)):
                        with self._grad_sync(i == len(window.sizes) - 1):
                            with self._autocast():
                                loss = self.loss_fn(logits_of(self.forward(x)), y)
                            if share is not None:
                                loss = loss * share
                            self.scaler.scale(loss).backward()
                        summed = loss.detach() if summed is None else summed + loss.detach()
                    assert summed is not None  # a window holds at least one micro-batch
                    window_loss = summed

                    # 2. Unscale (fp16), measure the pre-clip norm when something uses it
                    #    (clipping, or the logging window that ends here), decide whether to step.
                    self.scaler.unscale_(opt)
                    measure = tc.grad_clip_norm is not None or log_window.is_log_step(step) or self._sharded
                    grad_norm = self._total_grad_norm() if measure else None
                    ok = self._check_finite(step, window_loss, grad_norm)
                    if ok and self._full_every and step % self._full_every == 0:
                        self._gather_full_tensors()
                    stats = (
                        [(o, o.before_optimizer_step(step, model)) for o in self.observers if o.wants_step_stats(step)]
                        if ok
                        else []
                    )
                    self._full_tensors = None  # the observers copied what they keep

                    # 3. Clip and step; a skipped step leaves the weights untouched.
                    if ok:
                        self._clip(grad_norm)
                        self._stepped = False
                        self.scaler.step(opt)  # with fp16, skips the step if the scaled grads overflowed
                        self.scaler.update()
                self.batch_in_epoch = window.stop
                self.step = step
                if not ok or (self._count_scaler_skips and not self._stepped):
                    self.skipped_steps += 1

                # 4. Watchers see the step (gradients still there, per the observer protocol),
                #    then the gradients go: once per optimizer step, never inside a window.
                log_window.add(window_loss, window.samples, grad_norm, ok)
                self._after_step(step, stats)
                opt.zero_grad(set_to_none=True)
                if step_scheduler_per_step:  # skipped steps count too: the schedule ends at total_steps
                    self.scheduler.step()

                # 5. Validation, checkpoint, and whether to go on. Ranks act on a stop request
                #    together: they agree on it at each logging step.
                if self.dist is not None and step % self.config.tracking.log_every == 0:
                    self._stop_agreed = self.dist.any(self._stop.is_set(), self.device)
                if tc.val_every_steps and step % tc.val_every_steps == 0:
                    self._validate()
                if tc.checkpoint_every_steps and step % tc.checkpoint_every_steps == 0:
                    self.save_checkpoint()
                # Stop mid-epoch only: a run that ends with its epoch still gets the epoch's
                # validation and scheduler step below.
                if self._finished() and self.batch_in_epoch < len(self.plan):
                    break
            else:  # the epoch ran to its end (no break)
                self._end_of_epoch()
            _close(batches)

    def _shares(self, window: Window, micro_batches: list[Batch]) -> list[Any]:
        """Each micro-batch's weight in its window's loss: None for a window of one in one process;
        for a loss with `units(target)` (e.g. real tokens) in one process, its part of the window's
        units; else its part of the window's samples (times the world size: DDP averages over the
        ranks). Weighing ranks by tokens would need a collective before the backward passes."""
        if len(window.sizes) == 1 and self.world_size == 1:
            return [None]
        units = getattr(self.loss_fn, "units", None)
        if units is None or self.world_size > 1:
            return [size * self.world_size / window.samples for size in window.sizes]
        counts = [units(y) for _, y in micro_batches]
        total = torch.stack(counts).sum().clamp(min=torch.finfo(torch.float32).tiny)
        return [c / total for c in counts]

    def _end_of_epoch(self) -> None:
        epoch_done = self.epoch + 1
        if (
            self.scheduler is not None
            and self.parts.scheduler_capabilities.get("interval") == "epoch"
            and not self._monitor
        ):
            self.scheduler.step()
        if self.tc.val_every_epochs and epoch_done % self.tc.val_every_epochs == 0 and self.last_val_step != self.step:
            self._validate()
        self.epoch, self.batch_in_epoch = epoch_done, 0

    def _closure_step(
        self, window: Window, batches: Iterator[Batch], step: int
    ) -> tuple[torch.Tensor, torch.Tensor | None, bool, list]:
        """One step of an optimizer that re-evaluates the loss itself (L-BFGS)."""
        assert len(window.sizes) == 1, "config validation forbids accumulation with closure optimizers"
        x, y = next(batches)
        first: dict[str, Any] = {}

        def closure() -> torch.Tensor:
            # The optimizer calls this several times within ONE step (line search, inner
            # iterations), each time at new weights. It must zero the gradients first: without
            # that, each evaluation's gradient would be added to the previous ones and the
            # optimizer would follow their sum instead of the gradient at the current weights.
            self.optimizer.zero_grad(set_to_none=True)
            with self._autocast():
                loss = self.loss_fn(logits_of(self.forward(x)), y)
            loss.backward()
            if not first:  # the first evaluation is at the step's starting weights: check it and show it
                first["loss"], first["norm"] = loss.detach(), self._total_grad_norm()
                if not self._check_finite(step, first["loss"], first["norm"]):
                    raise _SkipStep
                first["stats"] = [
                    (o, o.before_optimizer_step(step, self.model)) for o in self.observers if o.wants_step_stats(step)
                ]
            self._clip(None)  # each evaluation's gradients are new: clipping measures their norm
            return loss

        try:
            self.optimizer.step(closure)  # type: ignore[arg-type]  # (torch's stub says the closure returns a float)
            ok = True
        except _SkipStep:
            ok = False
        return first["loss"], first["norm"], ok, first.get("stats", [])

    # -- pieces of a step ---------------------------------------------------------------------
    def _grad_sync(self, on: bool) -> Any:
        return self.parallel.grad_sync(on) if self.parallel is not None else contextlib.nullcontext()

    def _gather_full_tensors(self) -> None:
        """FSDP: the whole gradients and weights of the trainable parameters, for rank 0's
        histograms (RunContext.full_tensors); every rank takes part, only rank 0 keeps them."""
        full = fsdp.full_tensors([p for p in self.params if p.requires_grad])
        self._full_tensors = full if self.dist is not None and self.dist.is_main else None

    def _mark_stepped(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self._stepped = True

    def _total_grad_norm(self) -> torch.Tensor:
        """The L2 norm of all gradients together, as a 0-d device tensor."""
        grads = [p.grad for p in self.params if p.grad is not None]
        if not grads:
            return self._zero
        if self._sharded:
            # Every rank's optimizer holds all parameters (as shards) with gradients alike, so the
            # ranks' lists match; the norms are of the whole gradients, for clipping and observers.
            norms = fsdp.full_norms(grads)
            self._step_grad_norms = norms if len(grads) == len(self.params) else None
            return torch.linalg.vector_norm(norms)
        if self._same_dtype:
            # One fused kernel for the per-tensor norms: this runs every step, and the generic
            # helper's grouping by device and dtype costs more than the maths on small models.
            norms = torch.stack(foreach_norm(grads))
            # Observers get these through RunContext.grad_norms rather than measure them again.
            self._step_grad_norms = norms if len(grads) == len(self.params) else None
            return torch.linalg.vector_norm(norms)
        return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))

    def _grads_and_loss_finite(self, window_loss: torch.Tensor) -> bool:
        """Whether the loss and every gradient are finite, without measuring the norm: one fused
        kernel flags any inf/NaN among the gradients (the one GradScaler uses, with a scale of
        1), cheaper than a norm."""
        grads = [p.grad for p in self.params if p.grad is not None]
        if not grads or not self._same_dtype:
            return bool(torch.isfinite(window_loss + self._total_grad_norm()))
        found = self._found_inf.zero_()
        flag_non_finite(grads, found, self._unit_scale)
        # loss * 0 is 0 for a finite loss and NaN otherwise, so one comparison covers both.
        return not bool((found + window_loss * 0.0) != 0)

    def _clip(self, total_norm: torch.Tensor | None) -> None:
        """Clip the gradients as trainer.grad_clip_norm / grad_clip_value say (no-op when unset).
        `total_norm` is the norm of these very gradients when already measured, else None."""
        max_norm, max_value = self.tc.grad_clip_norm, self.tc.grad_clip_value
        if max_norm is not None:
            if total_norm is not None and hasattr(torch.nn.utils, "clip_grads_with_norm_"):  # torch >= 2.6
                torch.nn.utils.clip_grads_with_norm_(self.params, max_norm, total_norm)
            else:
                torch.nn.utils.clip_grad_norm_(self.params, max_norm)
        elif max_value is not None:
            torch.nn.utils.clip_grad_value_(self.params, max_value)

    def _check_finite(self, step: int, window_loss: torch.Tensor, grad_norm: torch.Tensor | None) -> bool:
        """True when the step may go ahead. This is the loop's one host sync per step: whether
        to step must be decided on the host before the step, so it cannot be deferred."""
        if self.scaler.is_enabled():
            # fp16: an overflowing gradient is the scaler's business (it skips the step and
            # lowers the scale); only a non-finite loss is a real problem.
            finite = bool(torch.isfinite(window_loss))
        elif grad_norm is not None:
            # loss + norm is finite exactly when both are (short of two values near 3e38).
            finite = bool(torch.isfinite(window_loss + grad_norm))
        else:
            finite = self._grads_and_loss_finite(window_loss)
        if finite:
            return True
        if self.tc.on_nonfinite == "fail":
            raise TrainingError(self._nonfinite_message(step, window_loss))
        return False

    def _nonfinite_message(self, step: int, window_loss: torch.Tensor) -> str:
        what = []
        if not bool(torch.isfinite(window_loss)):
            what.append(f"the loss is {float(window_loss)}")
        for name, p in zip(self.param_names, self.params):
            # (This rank's shard under FSDP: a whole-tensor check would be a collective.)
            if p.grad is not None and not bool(torch.isfinite(fsdp.local(p.grad)).all()):
                what.append(f"the gradient of parameter {name!r} is not finite")
                break
        if not what:
            what.append("the total gradient norm overflowed")
        return (
            f"step {step}: {' and '.join(what)}; lower optimizer.options.lr, set trainer.grad_clip_norm, "
            "or set trainer.on_nonfinite: skip_step to skip such steps"
        )

    def _after_step(self, step: int, stats: list[tuple[Observer, Any]]) -> None:
        log_now = self.log_window.is_log_step(step)
        if not (log_now or stats):
            return
        metrics = self.log_window.metrics(self.optimizer, self.epoch, self.skipped_steps) if log_now else {}
        snapshots = {id(o): snap for o, snap in stats}
        for obs in self.observers:
            if log_now or id(obs) in snapshots:
                obs.after_optimizer_step(step, snapshots.get(id(obs)), metrics)

    # -- validation ---------------------------------------------------------------------------
    def _validate(self, step_scheduler: bool = True) -> dict[str, torch.Tensor]:
        metrics = self.evaluate()
        self.val_metrics = metrics
        self.last_val_step = self.step
        for obs in self.observers:
            obs.log_metrics(metrics, self.step)
        if step_scheduler and self._monitor is not None:
            # reduce-on-plateau needs the value on the host: one sync per validation.
            self.scheduler.step(float(metrics[self._monitor]))
        return metrics

    def evaluate(self) -> dict[str, torch.Tensor]:
        """val/loss (the mean over samples, or over real tokens for a loss that counts them) and
        the run's metrics over the whole validation set; back to train mode after."""
        val = self.parts.val
        if val is None:
            return {}
        metrics_set = self.parts.metrics
        units = getattr(self.loss_fn, "units", None)
        if metrics_set is not None:
            metrics_set.reset()
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                loss_sum, n = self._zero, self._zero
                forwards = 0
                for x, y in val.epoch(0):
                    with self._autocast():
                        out = self._eval_forward(x)
                        loss = self.loss_fn(logits_of(out), y)
                    forwards += 1
                    weight = units(y) if units is not None else len(y)
                    loss_sum = loss_sum + loss.float() * weight
                    n = n + weight
                    if metrics_set is not None:
                        metrics_set.update(out, y)
                if self._sharded:
                    # An FSDP forward all-gathers the weights: a rank that the last validation
                    # batches left without samples still runs as many forwards (on no samples).
                    empty = _no_samples(val.example_input(), self.device)
                    for _ in range(len(val.plan) - forwards):
                        with self._autocast():
                            self._eval_forward(empty)
        finally:
            self.model.train(was_training)
        if self.dist is not None:  # sums over every rank's part of the validation set
            totals = torch.stack([loss_sum.float(), torch.as_tensor(n, dtype=torch.float32, device=self.device)])
            self.dist.reduce_sum(totals)
            loss_sum, n = totals[0], totals[1]
        if (float(n) == 0) if self.dist is not None else not len(val.plan):
            return {}
        metrics = {"val/loss": loss_sum / n.clamp(min=torch.finfo(torch.float32).tiny)}
        if metrics_set is not None:
            metrics.update(metrics_set.compute())
        return metrics

    def _log_figures(self) -> None:
        """The last validation's matrices (confusion matrix), saved as data and drawn to PNGs next
        to them: by the observers that draw figures (MLflow's, in the store's process, so this
        process does not import matplotlib), or here when none does (an untracked run)."""
        if self.parts.metrics is None or (self.dist is not None and not self.dist.is_main):
            return  # (every rank has the same matrices; the main rank's run directory gets them)
        drawers = [obs.log_figure for obs in self.observers if hasattr(obs, "log_figure")]  # optional
        for data in self.parts.metrics.save_matrices(self.run_dir / "figures", self.parts.class_names):
            png = data.with_suffix(".png")
            for log_figure in drawers:
                log_figure(data, png, "plots")
            if not drawers:
                from gradloop.tracking.plots import matrix_png  # matplotlib: only an untracked run's

                matrix_png(data, png)

    def _plateau_monitor(self) -> str | None:
        """The metric a monitoring scheduler (reduce-on-plateau) steps on, checked upfront."""
        spec = self.config.scheduler
        if self.scheduler is None or spec is None or not self.parts.scheduler_capabilities.get("monitor"):
            return None
        name, monitor = spec.name, str(spec.options.get("monitor", "val/loss"))
        available = ["val/loss"] + [
            f"val/{k}" for k in (self.parts.metrics.scalar_keys() if self.parts.metrics else [])
        ]
        if monitor not in available:
            raise ConfigError.single(
                "scheduler.options.monitor",
                f"{monitor!r} is not a metric this run produces; use one of: {', '.join(available)}",
            )
        if self.parts.val is None:
            raise ConfigError.single(
                "scheduler.name",
                f"{name} watches {monitor} but the run has no validation data; set data.val_fraction above 0",
            )
        if not self.tc.val_every_epochs and not self.tc.val_every_steps:
            raise ConfigError.single(
                "trainer.val_every_epochs",
                f"{name} steps after each validation but validation is off; "
                "set trainer.val_every_epochs or trainer.val_every_steps",
            )
        return monitor

    # -- results --------------------------------------------------------------------------------
    def _epochs_done(self) -> int:
        return self.epoch + (1 if self.batch_in_epoch == len(self.plan) else 0)

    def final_metrics(self) -> dict[str, float]:
        """Host floats of the last train/loss and validation metrics (syncs; call at the end)."""
        out: dict[str, float] = {}
        if self.log_window.train_loss is not None:
            out["train/loss"] = float(self.log_window.train_loss)
        out.update({k: float(v) for k, v in self.val_metrics.items()})
        if self.skipped_steps:
            out["train/skipped_steps"] = float(self.skipped_steps)
        return out

    # -- checkpoints --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything a resume needs to continue exactly where this run is now."""
        return {
            # Under FSDP the model and optimizer go to the sharded directory (save_checkpoint).
            **({} if self._sharded else {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict(),
            "rng": capture_rng_state(),
            "progress": {
                "step": self.step,
                "epoch": self.epoch,
                "batch_in_epoch": self.batch_in_epoch,
                "skipped_steps": self.skipped_steps,
                "last_val_step": self.last_val_step,
            },
            "metrics": self.final_metrics(),
            "config": self.config.to_dict(),
            "config_hash": self.config.config_hash(),
            "mlflow_run_id": self.current_mlflow_run_id(),
            "saved_at": time.time(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from a checkpoint (already mapped onto this run's device)."""
        try:
            if self._sharded:
                fsdp.load_sharded(self.model, self.optimizer, Path(state["sharded_dir"]))
            else:
                self.model.load_state_dict(state["model"])
                self.optimizer.load_state_dict(state["optimizer"])
            if self.scheduler is not None and state.get("scheduler") is not None:
                self.scheduler.load_state_dict(state["scheduler"])
            if state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise CheckpointError(
                f"the checkpoint does not fit this run's model or optimizer ({str(exc).splitlines()[0]}); "
                "resume with the config it was saved with"
            ) from None
        progress = state["progress"]
        self.step = self.start_step = int(progress["step"])
        self.epoch = int(progress["epoch"])
        self.batch_in_epoch = int(progress["batch_in_epoch"])
        self.skipped_steps = int(progress.get("skipped_steps", 0))
        self.last_val_step = int(progress.get("last_val_step", -1))
        self.resumed_mlflow_run_id = state.get("mlflow_run_id")
        self.resumed = True
        # Restored in fit(), after the observers start: nothing they draw may shift dropout's RNG.
        # A checkpoint of as many ranks gives each rank its own generators back.
        rng_ranks = state.get("rng_ranks")
        same_world = rng_ranks is not None and len(rng_ranks) == self.world_size and self.dist is not None
        self._pending_rng = rng_ranks[self.dist.rank] if same_world else state["rng"]  # type: ignore[union-attr,index]

    def save_checkpoint(self) -> Path:
        position = (self.step, self.epoch, self.batch_in_epoch)
        if self._last_checkpoint_at == position and self.last_checkpoint is not None:
            return self.last_checkpoint  # this exact state is on disk already
        ckpt_dir = self.run_dir / "checkpoints"
        extra: dict[str, Any] = {}
        if self.dist is not None:
            # Every rank's generators (dropout differs by rank), gathered; rank 0 writes the file.
            rng_ranks = self.dist.gather_objects(capture_rng_state())
            extra = {"rng_ranks": rng_ranks, "world_size": self.world_size}
            extra["strategy"] = self.config.distributed.strategy
            if self._sharded:
                extra["sharded"] = self._save_shards(ckpt_dir)
            if not self.dist.is_main:
                path = ckpt_dir / step_filename(self.step)
                self.last_checkpoint, self._last_checkpoint_at = path, position
                if self._sharded:
                    self.dist.barrier()  # returns once rank 0's file names the complete shards
                return path
        path = write_checkpoint(ckpt_dir, self.step, {**self.state_dict(), **extra}, self.tc.keep_checkpoints)
        if self._sharded:
            self.dist.barrier()  # type: ignore[union-attr]
        self.last_checkpoint, self._last_checkpoint_at = path, position
        for obs in self.observers:
            obs.log_checkpoint(path, self.step)
        return path

    def _save_shards(self, ckpt_dir: Path) -> str:
        """Every rank writes its shards of the model and optimizer into a temporary directory that
        rank 0 renames once all are written; returns the directory's name (for rank 0's file)."""
        assert self.dist is not None
        name = sharded_dirname(self.step)
        tmp = ckpt_dir / f".{name}.tmp"
        if self.dist.is_main:
            ckpt_dir.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)  # left by a run that died while writing
        self.dist.barrier()
        fsdp.save_sharded(self.model, self.optimizer, tmp)  # returns on every rank once all are written
        if self.dist.is_main:
            replace_dir(tmp, ckpt_dir / name)
        return name

    # -- observers ----------------------------------------------------------------------------
    def _start_observers(self) -> None:
        ctx = RunContext(
            config=self.config,
            run_dir=self.run_dir,
            model=self.model,
            optimizer=self.optimizer,
            device=self.device,
            param_names=list(self.param_names),
            total_steps=self.total_steps,
            start_step=self.start_step,
            resumed=self.resumed,
            mlflow_run_id=self.resumed_mlflow_run_id,
            job_id=self.job_id,
            example_input=self.parts.train.example_input(),
            grad_norms=lambda: self._step_grad_norms,
            full_tensors=lambda: self._full_tensors,
            unsharded_model=(lambda: self._unsharded) if self._sharded else None,
            extra_tags=self._distributed_tags(),
        )
        for obs in self.observers:
            obs.start(ctx)
        if self._pending_rng is not None:
            restore_rng_state(self._pending_rng)
            self._pending_rng = None

    def _distributed_tags(self) -> dict[str, str]:
        if self.dist is None:
            return {}
        global_batch = self.config.data.batch_size * self.world_size * self.tc.grad_accum_steps
        return {"gradloop.world_size": str(self.world_size), "gradloop.global_batch_size": str(global_batch)}

    def _finish_observers(self, status: RunStatus, error: BaseException | None) -> None:
        first: BaseException | None = None
        for obs in self.observers:
            try:
                obs.finish(status, error)
            except Exception as exc:  # one observer's failure must not hide the others' finish
                first = first or exc
        if first is not None and error is None:
            raise first

    def current_mlflow_run_id(self) -> str | None:
        for obs in self.observers:
            run_id = getattr(obs, "mlflow_run_id", None)
            if run_id:
                return str(run_id)
        return self.resumed_mlflow_run_id


def _param_names(optimizer: torch.optim.Optimizer, model: nn.Module) -> list[str]:
    """Names of the optimizer's parameters in group order (from the groups, else the model)."""
    by_id = {id(p): n for n, p in model.named_parameters()}
    names: list[str] = []
    for gi, group in enumerate(optimizer.param_groups):
        given = group.get("param_names")
        for pi, p in enumerate(group["params"]):
            names.append(given[pi] if given and pi < len(given) else by_id.get(id(p), f"group{gi}.param{pi}"))
    return names


def _no_samples(example: Any, device: torch.device) -> Any:
    """An input batch of no samples, shaped like `example` (a tensor, or a mapping of them)."""
    if isinstance(example, Mapping):
        return {k: v[:0].to(device) if isinstance(v, torch.Tensor) else v for k, v in example.items()}
    return example[:0].to(device)


def _is_compile_error(exc: BaseException) -> bool:
    dynamo = getattr(torch, "_dynamo", None)
    exc_mod = getattr(dynamo, "exc", None)
    base = getattr(exc_mod, "TorchDynamoException", None)
    return base is not None and isinstance(exc, base)


def _close(batches: Iterator[Batch]) -> None:
    close = getattr(batches, "close", None)
    if close is not None:
        close()  # an abandoned DataLoader iterator shuts its workers down now, not at GC


__all__ = ["Trainer", "Components", "FitOutcome"]

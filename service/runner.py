"""`train()`: one run from a config to a RunResult -- the same path for the CLI, the job worker and Python.

The CLI and the job worker reach it through gradloop.dispatch.run(), which sends a config with a
`sweep:` block to gradloop.sweep instead; the runner itself knows nothing of sweeps.

Order matters and is fixed: load and validate the config; seed; build the data, check it against
the model and loss, build the model, loss, optimizer and scheduler; only then create the run
directory and start training. A run that is going to fail on its config fails before it has
written anything or spent a step.

A config with `distributed.strategy: ddp` runs on several processes: called in an ordinary
process, train() starts them through torch's elastic launcher (gradloop.distributed.launch) and
returns rank 0's result; in a process that a launcher started (gradloop's, or the user's torchrun),
train() is one rank: it joins the process group and trains its part, and rank 0 alone logs.

Run directories are `{output_dir}/{name}/{run_id}` (see gradloop.checkpoint for what lies inside);
a resumed run continues in the directory of the checkpoint it resumes from.
"""

from __future__ import annotations

import gc
import os
import secrets
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence, Sized
from pathlib import Path
from typing import Any, cast

import torch

from gradloop import registry
from gradloop.batching import make_batches
from gradloop.build import build_data, build_loss, build_model, check_compatible
from gradloop.checkpoint import LAST, CheckpointError, load_checkpoint, resolve_resume, run_dir_of
from gradloop.config import RunConfig, load_config
from gradloop.devices import resolve_device
from gradloop.distributed import node_metrics
from gradloop.distributed.launch import launch
from gradloop.distributed.process_group import DistContext, destroy, in_worker, init_process_group, worker_device
from gradloop.distributed.sampler import Shard
from gradloop.distributed.wrap import prepare_model, wrap_model
from gradloop.errors import GradloopError
from gradloop.fitcheck import load_checked
from gradloop.lifecycle import stop_on_signals
from gradloop.observer import Observer
from gradloop.optim import build_optimizer_from_config
from gradloop.outputs import IGNORE_INDEX
from gradloop.result import RunResult
from gradloop.seeding import seed_everything
from gradloop.terminal_progress import make_progress_observer
from gradloop.tracking import make_observer, prestart
from gradloop.trainer import Components, Trainer
from gradloop.val_metrics import build_metric_set

# What rank 0 of a launched run builds in its own process, given its stop event: observers that
# cannot cross from the launching process (a job's progress writer). Picklable: ranks are spawned.
RankObservers = Callable[[threading.Event], Sequence[Observer]]


def train(
    config: RunConfig | Mapping[str, Any] | str | os.PathLike[str],
    *,
    overrides: Iterable[str] = (),
    resume: str | os.PathLike[str] | None = None,
    observers: Sequence[Observer] = (),
    job_id: str | None = None,
    stop_event: threading.Event | None = None,
) -> RunResult:
    """Train one run. A config with a `sweep:` block is many runs: give it to gradloop.run().

    resume: a checkpoint file, a run directory, or "latest" (the newest checkpoint of a run with
    this config's name). stop_event: set it (from any thread, or from a signal handler that the
    caller installed, see gradloop.lifecycle) to stop at the next optimizer step with a checkpoint.
    train() installs no signal handlers of its own.
    Raises GradloopError subclasses for problems the user can fix; a failing run tells its
    observers finish("FAILED") before the error propagates.
    """
    cfg = load_checked(config, overrides, fit="on_error")  # the fit itself is checked once the data is built
    if cfg.sweep:
        raise GradloopError(
            f"config {cfg.name!r} has a sweep: block, which is many runs and train() trains one; "
            "call gradloop.run(config) (or `gradloop run CONFIG`), or remove the sweep block"
        )
    return train_validated(cfg, resume=resume, observers=observers, job_id=job_id, stop_event=stop_event)


def train_validated(
    cfg: RunConfig,
    *,
    resume: str | os.PathLike[str] | None = None,
    observers: Sequence[Observer] = (),
    job_id: str | None = None,
    stop_event: threading.Event | None = None,
    rank_observers: RankObservers | None = None,
    group_signalled: bool = False,
) -> RunResult:
    """train() of a config that load_checked() already validated (gradloop.dispatch.run's path).

    For a distributed config that this process launches: rank_observers builds rank 0's own
    observers in its process; group_signalled: the caller's stop signals reach every rank through
    their process group (a job of the service, see gradloop.distributed.launch)."""
    if cfg.distributed.enabled:
        if not in_worker():
            return _launch_ranks(
                cfg,
                resume=resume,
                observers=observers,
                job_id=job_id,
                rank_observers=rank_observers,
                group_signalled=group_signalled,
            )
    return _train(cfg, resume=resume, observers=observers, job_id=job_id, stop_event=stop_event)


def _train(
    cfg: RunConfig,
    *,
    resume: str | os.PathLike[str] | None,
    observers: Sequence[Observer],
    job_id: str | None,
    stop_event: threading.Event | None,
    run_dir: Path | None = None,
) -> RunResult:
    """One process's run: the whole run, or one rank of a distributed run (in a launched worker)."""
    dist_ctx: DistContext | None = None
    if cfg.distributed.enabled:
        device = worker_device(cfg.device)
        dist_ctx = init_process_group(cfg.distributed, device)
        if device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
            # The ranks of one machine share its cores; torch would give each rank all of them.
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    else:
        device = resolve_device(cfg.device)
    try:
        return _train_on(cfg, device, dist_ctx, resume, observers, job_id, stop_event, run_dir)
    finally:
        if dist_ctx is not None:
            destroy()


def _train_on(
    cfg: RunConfig,
    device: torch.device,
    dist_ctx: DistContext | None,
    resume: str | os.PathLike[str] | None,
    observers: Sequence[Observer],
    job_id: str | None,
    stop_event: threading.Event | None,
    run_dir: Path | None,
) -> RunResult:
    main = dist_ctx is None or dist_ctx.is_main
    if main and cfg.tracking.enabled:  # (rank 0 alone talks to MLflow)
        # (prestart is light: the store's process imports MLflow, not this one)
        prestart(cfg)  # first thing: MLflow's import and the store's opening overlap with the build below
    seed_everything(cfg.seed)  # the same on every rank: every rank builds the same initial weights
    checkpoint_path: Path | None = None
    if main:
        if resume is None and run_dir is not None and int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0:
            # The launcher restarted the ranks after a failure: continue from the run's last checkpoint.
            last = run_dir / "checkpoints" / LAST
            resume = last if last.is_file() else None
        checkpoint_path = resolve_resume(resume, cfg.output_dir, cfg.name) if resume is not None else None
        if run_dir is None:
            run_dir = (run_dir_of(checkpoint_path) if checkpoint_path is not None else None) or new_run_dir(cfg)
    if dist_ctx is not None:
        # Rank 0's run directory and checkpoint, for every rank (several machines resume from a
        # shared filesystem).
        run_dir, checkpoint_path = dist_ctx.broadcast_object((run_dir, checkpoint_path))
    assert run_dir is not None
    checkpoint = load_checkpoint(checkpoint_path, device) if checkpoint_path is not None else None
    world_size = dist_ctx.world_size if dist_ctx is not None else 1
    if checkpoint is not None:
        _check_resumable(cfg, checkpoint, checkpoint_path, world_size)

    parts = build_components(cfg, device, dist_ctx)
    if dist_ctx is not None:
        # Dropout and augmentation differ by rank (the data order comes from its own generator).
        seed_everything(cfg.seed + dist_ctx.rank)
    stop_event = stop_event if stop_event is not None else threading.Event()
    trainer = Trainer(cfg, parts, device=device, run_dir=run_dir, stop_event=stop_event, job_id=job_id)

    # Everything is validated: from here on the run leaves traces (directory, tracking run).
    run_dir.mkdir(parents=True, exist_ok=True)
    if main:
        (run_dir / "config.yaml").write_text(cfg.to_yaml())
        trainer.observers = [*default_observers(cfg, run_dir, job_id), *observers]
    if checkpoint is not None:
        trainer.load_state_dict(checkpoint)
        del checkpoint  # its tensors are now the model's and optimizer's; free the copies

    # Several machines: each one's system metrics, in rank 0's MLflow run (its id, once rank 0 has it).
    machine = (
        node_metrics.start(cfg, dist_ctx, trainer.current_mlflow_run_id, checkpoint_path is not None)
        if dist_ctx is not None
        else None
    )
    try:
        outcome = trainer.fit()
    finally:
        if machine is not None:
            machine.close()
    mlflow_run_id = trainer.current_mlflow_run_id()
    if dist_ctx is not None:
        mlflow_run_id = dist_ctx.broadcast_object(mlflow_run_id)  # every rank's result names the run
    return RunResult(
        steps=outcome.steps,
        epochs=outcome.epochs,
        duration_s=outcome.duration_s,
        metrics=outcome.metrics,
        run_dir=run_dir,
        checkpoint_path=outcome.checkpoint_path,
        mlflow_run_id=mlflow_run_id,
        status=outcome.status,
        name=cfg.name,
        config_hash=cfg.config_hash(),
        skipped_steps=outcome.skipped_steps,
        resumed_from=checkpoint_path,
        world_size=world_size,
        global_batch_size=cfg.data.batch_size * world_size * cfg.trainer.grad_accum_steps,
    )


def _launch_ranks(
    cfg: RunConfig,
    *,
    resume: str | os.PathLike[str] | None,
    observers: Sequence[Observer],
    job_id: str | None,
    rank_observers: RankObservers | None = None,
    group_signalled: bool = False,
) -> RunResult:
    """Start the ranks of this machine through torch's elastic launcher; rank 0's result."""
    if observers:
        raise GradloopError(
            "observers cannot watch a distributed run from this process (its ranks run in processes of their own); "
            "read the run from MLflow, or run its ranks under torchrun"
        )
    checkpoint_path = resolve_resume(resume, cfg.output_dir, cfg.name) if resume is not None else None
    run_dir = (run_dir_of(checkpoint_path) if checkpoint_path is not None else None) or new_run_dir(cfg)
    args = (cfg.to_dict(), str(checkpoint_path) if checkpoint_path else None, str(run_dir), job_id, rank_observers)
    results = launch(cfg, _rank_main, args, run_dir=run_dir, group_signalled=group_signalled)
    return results[min(results)]  # global rank 0 on the first machine; this machine's first rank elsewhere


def _rank_main(
    config: dict[str, Any],
    resume: str | None,
    run_dir: str,
    job_id: str | None,
    rank_observers: RankObservers | None = None,
) -> RunResult:
    """What the launcher runs in each worker process (module level: the workers are spawned)."""
    from torch.distributed.elastic.multiprocessing.errors import record  # in the worker only

    # record() writes the exception where the launcher reads it, to name the failed rank's error.
    return record(_rank_run)(config, resume, run_dir, job_id, rank_observers)  # type: ignore[return-value]


def _rank_run(
    config: dict[str, Any],
    resume: str | None,
    run_dir: str,
    job_id: str | None,
    rank_observers: RankObservers | None = None,
) -> RunResult:
    # A rank is its process's entry point: the launcher stops the ranks with SIGTERM.
    with stop_on_signals() as stop:
        # Only rank 0 reports (the trainer gives observers to rank 0 alone); the others build none.
        observers = rank_observers(stop) if rank_observers is not None and os.environ.get("RANK") == "0" else ()
        try:
            return _train(
                load_config(config),
                resume=resume,
                observers=observers,
                job_id=job_id,
                stop_event=stop,
                run_dir=Path(run_dir),
            )
        finally:
            # The process ends next, and the launcher (and a job's outcome) waits for it: frozen
            # objects are skipped by the interpreter's last collection, which would otherwise
            # walk the whole heap (torch, MLflow) for seconds of CPU on a busy machine.
            gc.freeze()


def build_components(cfg: RunConfig, device: torch.device, dist_ctx: DistContext | None = None) -> Components:
    """Data, model, loss, optimizer and scheduler, in that order, all checked before any training.

    On several ranks, each rank's batches are its part of every global batch, and the model is
    wrapped in DDP or sharded by FSDP (SyncBatchNorm conversion and FSDP's sharding come before
    the optimizer is built, which must hold the final parameters)."""
    splits = build_data(cfg.data, cfg.seed)
    model = build_model(cfg.model, cfg.data.root)
    check_compatible(cfg, splits, model)
    loss_fn = build_loss(cfg.loss)
    val = splits.val if splits.val is not None and len(cast(Sized, splits.val)) > 0 else None
    has_val = val is not None
    # Without validation data no metric is computed: torchmetrics stays unloaded.
    metrics = (
        build_metric_set(
            cfg.metrics,
            splits.task,
            splits.num_classes,
            splits.num_outputs,
            ignore_index=getattr(loss_fn, "ignore_index", IGNORE_INDEX),
            defaults=splits.default_metrics,
        ).to(device)
        if has_val
        else None
    )
    if isinstance(loss_fn, torch.nn.Module):
        loss_fn = loss_fn.to(device)
    model = model.to(device)  # before the optimizer, so its state is created on the device
    parallel = None
    if dist_ctx is not None:
        model = prepare_model(model, cfg.distributed, dist_ctx, device, cfg.trainer.precision)
    optimizer = build_optimizer_from_config(cfg.optimizer, model)
    if dist_ctx is not None:
        parallel = wrap_model(model, cfg.distributed, dist_ctx, device)
    shard = Shard(dist_ctx.rank, dist_ctx.world_size) if dist_ctx is not None else Shard()
    accum = cfg.trainer.grad_accum_steps
    data_seed = cfg.seed
    train_batches = make_batches(
        splits.train,
        cfg.data.batch_size,
        shuffle=cfg.data.shuffle,
        drop_last=cfg.data.drop_last,
        seed=data_seed,
        device=device,
        num_workers=cfg.data.num_workers,
        accum=accum,
        shard=shard,
    )
    val_batches = None
    if val is not None:
        val_batches = make_batches(
            val,
            cfg.data.eval_batch_size or cfg.data.batch_size,
            shuffle=False,
            drop_last=False,
            seed=data_seed,
            device=device,
            num_workers=cfg.data.num_workers,
            shard=shard,
            what="val",
        )
    scheduler, caps = None, {}
    if cfg.scheduler is not None:
        plan = train_batches.plan
        total = plan.steps_per_epoch * cfg.trainer.epochs
        if cfg.trainer.max_steps is not None:
            total = min(total, cfg.trainer.max_steps)
        scheduler = registry.schedulers.build(
            cfg.scheduler.name,
            cfg.scheduler.options,
            optimizer,
            total_steps=total,
            steps_per_epoch=plan.steps_per_epoch,
        )
        caps = dict(registry.schedulers.get(cfg.scheduler.name).capabilities)
    closure = bool(registry.optimizers.get(cfg.optimizer.name).capabilities.get("closure"))
    return Components(
        model=model,
        loss_fn=loss_fn,
        optimizer=optimizer,
        train=train_batches,
        val=val_batches,
        scheduler=scheduler,
        scheduler_capabilities=caps,
        closure=closure,
        metrics=metrics,
        class_names=list(splits.class_names) if splits.class_names else None,
        parallel=parallel,
        unsharded_model=_model_builder(cfg) if parallel is not None and parallel.sharded else None,
    )


def _model_builder(cfg: RunConfig) -> Callable[[], torch.nn.Module]:
    """The model built afresh from the config (FSDP: the plain copy that the final weights go into)."""
    return lambda: build_model(cfg.model, cfg.data.root)


def new_run_dir(cfg: RunConfig) -> Path:
    """`{output_dir}/{name}/{YYYYmmdd-HHMMSS}-{6 hex}`: sorts by start time, unique across processes."""
    run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
    return Path(cfg.output_dir) / cfg.name / run_id


def default_observers(cfg: RunConfig, run_dir: Path, job_id: str | None) -> list[Observer]:
    """MLflow tracking (when enabled) and terminal progress."""
    found: list[Observer] = []
    if cfg.tracking.enabled:
        found.append(make_observer(cfg, run_dir, job_id=job_id))
    found.append(make_progress_observer(cfg))
    return found


# Settings that shape the trajectory: a checkpoint resumed under different ones would not be
# the same run continued, and its position in the epoch would point at other samples.
_RESUME_KEYS = (
    "seed",
    "model",
    "data.name",
    "data.options",
    "data.val_fraction",
    "data.split_seed",
    "data.shuffle",
    "data.drop_last",
    "loss",
    "optimizer.name",
    "trainer.grad_accum_steps",
)


def _check_resumable(cfg: RunConfig, checkpoint: Mapping[str, Any], path: Path | None, world_size: int = 1) -> None:
    saved = checkpoint.get("config") or {}
    now = cfg.to_dict()
    sharded, fsdp = bool(checkpoint.get("sharded")), cfg.distributed.strategy == "fsdp"
    if sharded != fsdp:
        kind = "a sharded FSDP checkpoint" if sharded else "a checkpoint of an unsharded run"
        raise CheckpointError(
            f"checkpoint {str(path)!r} is {kind} and this run's distributed.strategy is "
            f"{cfg.distributed.strategy}; resume with the strategy it was saved with"
        )
    # The global batch (per-process batch x ranks) fixes which samples each step sees, so a run of
    # 2 ranks with batch b resumes in one process with batch 2b, and the other way round.
    saved_world = int(checkpoint.get("world_size", 1))
    saved_batch = _dig(saved, "data.batch_size")
    if saved_batch is not None and saved_batch * saved_world != cfg.data.batch_size * world_size:
        raise CheckpointError(
            f"checkpoint {str(path)!r} was saved with a global batch of {saved_batch * saved_world} "
            f"(data.batch_size {saved_batch} x {saved_world} process(es)) but this run's is "
            f"{cfg.data.batch_size * world_size} ({cfg.data.batch_size} x {world_size}); "
            "resume with the same global batch (or start a new run without --resume)"
        )
    for key in _RESUME_KEYS:
        a, b = _dig(saved, key), _dig(now, key)
        if a != b:
            raise CheckpointError(
                f"checkpoint {str(path)!r} was saved with {key} = {_short(a)} but this config has {_short(b)}; "
                f"resume with the config it was saved with (or start a new run without --resume)"
            )
    # A scheduler's state (e.g. a cosine curve planned for the old length) comes back with the
    # checkpoint; continuing exactly is what a resume is for, so only say what will happen.
    old_len = (_dig(saved, "trainer.epochs"), _dig(saved, "trainer.max_steps"))
    if cfg.scheduler is not None and old_len != (cfg.trainer.epochs, cfg.trainer.max_steps):
        warnings.warn(
            f"resuming with trainer.epochs/max_steps {cfg.trainer.epochs}/{cfg.trainer.max_steps} instead of "
            f"{old_len[0]}/{old_len[1]}: the scheduler continues the schedule saved in the checkpoint, "
            f"planned for the old length",
            RuntimeWarning,
            stacklevel=3,
        )


def _dig(data: Mapping[str, Any], dotted: str) -> Any:
    node: Any = data
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    return node


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


__all__ = [
    "train",
    "train_validated",
    "RankObservers",
    "RunResult",
    "build_components",
    "new_run_dir",
    "default_observers",
]

"""The run's final model: saved by the training process, logged to MLflow by the store's process.

The training process pickles the model (with cloudpickle, as mlflow.pytorch does: a model class
defined in a user's script travels by value) and one example batch's inputs and outputs to
run_dir/tracking/model/; the store's process loads them and calls mlflow.pytorch.log_model with
the signature inferred from them. So the model is an op like any other: when MLflow cannot be
reached, `gradloop sync` logs it later from those files (deleted once it is logged).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from gradloop.observer import RunContext

log = logging.getLogger("gradloop.tracking")


def save_model(ctx: RunContext, directory: Path, uri: str) -> dict[str, Any]:
    """Write the model and an example batch's inputs/outputs; returns the log_model op's args."""
    import cloudpickle  # only when a run logs its model

    model = ctx.model_to_log()
    if model is None:
        raise RuntimeError("the sharded (FSDP) model's whole weights were not gathered")
    directory.mkdir(parents=True, exist_ok=True)
    args: dict[str, Any] = {"model_path": str(directory / "model.pt"), "uri": uri, "torch": str(torch.__version__)}
    torch.save(model, args["model_path"], pickle_module=cloudpickle)
    if isinstance(ctx.example_input, torch.Tensor):
        try:
            # (FSDP's unsharded copy is on the CPU, whatever device the run's batches are on.)
            x = ctx.example_input[:5].to(_device_of(model, ctx.example_input.device))
            was_training = model.training
            model.eval()
            with torch.no_grad():
                y = model(x)
            model.train(was_training)
            np.save(directory / "input.npy", x.detach().cpu().numpy())
            np.save(directory / "output.npy", y.detach().float().cpu().numpy())
            args["input_path"], args["output_path"] = str(directory / "input.npy"), str(directory / "output.npy")
        except Exception as exc:
            log.warning("no model signature: %s", exc)
    return args


def _device_of(model: torch.nn.Module, default: torch.device) -> torch.device:
    for t in itertools.chain(model.parameters(), model.buffers()):
        return t.device
    return default


def log_model(client: MlflowClient, run_id: str, args: dict[str, Any]) -> None:
    """In the store's process: log the saved model to the run as a LoggedModel named "model"."""
    # MLflow: the training process imports this module (save_model) and never imports MLflow.
    import mlflow.pytorch
    from mlflow.models import infer_signature
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    path = Path(args["model_path"])
    if not path.exists():
        return  # logged already (by the run, or by an earlier sync)
    model = torch.load(path, weights_only=False)
    signature = None
    if args.get("input_path"):
        signature = infer_signature(np.load(args["input_path"]), np.load(args["output_path"]))
    # The logged model is created here, in the run's experiment: left to itself, log_model
    # would put it in the process's active experiment (Default, artifacts under ./mlruns).
    experiment = client.get_run(run_id).info.experiment_id
    logged = client.create_logged_model(experiment, name="model", source_run_id=run_id)
    # log_model resolves the store from the process-wide tracking URI; point it at ours.
    # Pickle is chosen on purpose (any nn.Module logs, no export step); MLflow's warning
    # about it would print on every run, so it is silenced for this one call.
    with _use_tracking_uri(args["uri"]), quiet_logger("mlflow.pytorch"), no_requirement_check():
        mlflow.pytorch.log_model(
            model,
            name="model",
            run_id=run_id,
            model_id=logged.model_id,
            signature=signature,
            serialization_format="pickle",
            pip_requirements=[f"torch=={str(args['torch']).split('+')[0]}"],
        )
    shutil.rmtree(path.parent, ignore_errors=True)


@contextlib.contextmanager
def no_requirement_check() -> Iterator[None]:
    """Skip MLflow's check that the model's pip requirements match this environment: they are
    this environment's own torch (and MLflow) by construction, and the check lists the files of
    every installed package, the most CPU a store process spends on one call."""
    import mlflow.utils.environment as environment

    name = "warn_dependency_requirement_mismatches"
    original = getattr(environment, name, None)
    if original is None:  # (a MLflow without the check: nothing to skip)
        yield
        return
    setattr(environment, name, lambda *args, **kwargs: None)
    try:
        yield
    finally:
        setattr(environment, name, original)


@contextlib.contextmanager
def quiet_logger(name: str) -> Iterator[None]:
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)

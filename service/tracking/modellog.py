"""The run's final model, logged to MLflow with a signature (mlflow.pytorch.log_model)."""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any

import torch

from gradloop.observer import RunContext

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

log = logging.getLogger("gradloop.tracking")


def model_logger(ctx: RunContext, uri: str) -> Any:
    """A closure that logs the final model with a signature (runs on the sender's thread)."""
    model = ctx.model
    signature = None
    example = None
    if isinstance(ctx.example_input, torch.Tensor):
        try:
            from mlflow.models import infer_signature

            x = ctx.example_input[:5]
            was_training = model.training
            model.eval()
            with torch.no_grad():
                y = model(x)
            model.train(was_training)
            example = x.detach().cpu().numpy()
            signature = infer_signature(example, y.detach().float().cpu().numpy())
        except Exception as exc:
            log.warning("no model signature: %s", exc)

    def log_model(client: MlflowClient, run_id: str) -> None:
        import mlflow.pytorch
        from mlflow.tracking._tracking_service.utils import _use_tracking_uri

        # The logged model is created here, in the run's experiment: left to itself, log_model
        # would put it in the process's active experiment (Default, artifacts under ./mlruns).
        experiment = client.get_run(run_id).info.experiment_id
        logged = client.create_logged_model(experiment, name="model", source_run_id=run_id)
        # log_model resolves the store from the process-wide tracking URI; point it at ours.
        # Pickle is chosen on purpose (any nn.Module logs, no export step); MLflow's warning
        # about it would print on every run, so it is silenced for this one call.
        with _use_tracking_uri(uri), quiet_logger("mlflow.pytorch"):
            mlflow.pytorch.log_model(
                model,
                name="model",
                run_id=run_id,
                model_id=logged.model_id,
                signature=signature,
                serialization_format="pickle",
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
            )

    return log_model


@contextlib.contextmanager
def quiet_logger(name: str) -> Any:
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)

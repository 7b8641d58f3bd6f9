"""The CUDA paths, run for real on a GPU: device selection, bf16/fp16, checkpoints across devices.

Skipped on a machine without CUDA (CI has none); run on a GPU machine with
`python -m pytest tests/test_cuda.py`. What a CPU-only machine can check about GPU checkpoints
(a file written on cuda:0 resumed on CPU) is in test_checkpoint_resume.py.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import tests.support.trainer_helpers as h
from gradloop import train
from gradloop.observer import NullObserver

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(autouse=True)
def _clean_trace():
    h.reset()
    yield
    h.reset()


def digits(tmp_path: Path, **changes) -> dict:
    """The quickstart's digits MLP, short and without tracking."""
    base = dict(
        name="digits",
        device="auto",
        model={"name": "mlp", "options": {"in_features": 64, "hidden": [128], "out_features": 10}},
        data={"name": "sklearn", "options": {"dataset": "digits"}, "batch_size": 32, "val_fraction": 0.2},
        optimizer={"name": "sgd", "options": {"lr": 0.05, "momentum": 0.9}},
        trainer__epochs=4,
    )
    base.update(changes)
    return h.base_config(tmp_path, **base)


class DeviceWatch(NullObserver):
    """Records where the model lives and what dtype its first layer computes in, once per run."""

    def __init__(self) -> None:
        self.device: torch.device | None = None
        self.param_devices: set[str] = set()
        self.forward_dtypes: set[torch.dtype] = set()
        self.batch_devices: set[str] = set()

    def start(self, ctx) -> None:
        self.device = ctx.device
        self.param_devices = {str(p.device) for p in ctx.model.parameters()}
        first = next(m for m in ctx.model.modules() if isinstance(m, torch.nn.Linear))
        first.register_forward_hook(self._seen)

    def _seen(self, module, inputs, out) -> None:
        if module.training:
            self.forward_dtypes.add(out.dtype)
            self.batch_devices.add(str(inputs[0].device))


def test_auto_picks_the_gpu_and_everything_lives_there(tmp_path):
    watch = DeviceWatch()
    result = train(digits(tmp_path), observers=[watch])
    assert watch.device == torch.device("cuda", torch.cuda.current_device())
    assert watch.param_devices == {f"cuda:{torch.cuda.current_device()}"}
    assert watch.forward_dtypes == {torch.float32} and watch.batch_devices == watch.param_devices
    assert result.status == "FINISHED" and result.metrics["val/accuracy"] > 0.9
    state = torch.load(result.checkpoint_path, weights_only=True)  # no map_location: where it was saved
    assert all(t.device.type == "cuda" for t in state["model"].values())


@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_mixed_precision_trains_in_its_dtype_and_keeps_fp32_weights(tmp_path, precision, dtype):
    watch = DeviceWatch()
    result = train(digits(tmp_path, trainer__precision=precision), observers=[watch])
    assert watch.forward_dtypes == {dtype}  # autocast is on for the forward pass
    assert result.status == "FINISHED" and result.metrics["val/accuracy"] > 0.9
    state = torch.load(result.checkpoint_path, map_location="cpu", weights_only=True)
    assert {t.dtype for t in state["model"].values()} == {torch.float32}  # master weights stay fp32
    scaler = state["scaler"]
    if precision == "fp16":
        # GradScaler's state travels with the checkpoint, so a resume does not restart at 2**16.
        assert scaler["scale"] > 0 and scaler["_growth_tracker"] >= 0
    else:
        assert not scaler  # a disabled scaler saves nothing


def test_fp16_overflow_skips_the_step_instead_of_failing(tmp_path, monkeypatch):
    """A loss scale far too high makes the first scaled gradients overflow: GradScaler must skip
    those steps and lower the scale, and the run must neither fail nor take a NaN step."""
    original = torch.amp.GradScaler.__init__

    def huge_initial_scale(self, *args, **kwargs):
        original(self, *args, **{**kwargs, "init_scale": 2.0**40})

    monkeypatch.setattr(torch.amp.GradScaler, "__init__", huge_initial_scale)
    result = train(digits(tmp_path, trainer__precision="fp16", trainer__epochs=3))
    state = torch.load(result.checkpoint_path, map_location="cpu", weights_only=True)
    assert result.status == "FINISHED"
    assert state["scaler"]["scale"] < 2.0**40  # it backed off
    # Each backoff halved the scale after a skipped step (no growth within 2000 steps).
    assert result.skipped_steps == round(math.log2(2.0**40 / state["scaler"]["scale"])) > 0
    assert all(torch.isfinite(t).all() for t in state["model"].values())
    assert result.metrics["val/accuracy"] > 0.5


def test_same_seed_same_weights_on_the_gpu(tmp_path):
    a = train(digits(tmp_path / "a", trainer__epochs=2))
    b = train(digits(tmp_path / "b", trainer__epochs=2))
    h.assert_bitwise_equal(h.model_state(a.checkpoint_path), h.model_state(b.checkpoint_path))


def _stop_at(cfg: dict, step: int):
    event = threading.Event()
    return train(cfg, observers=[h.StopAt(step, event)], stop_event=event)


@pytest.mark.parametrize("first, then", [("cuda", "cpu"), ("cpu", "cuda")])
def test_a_checkpoint_moves_between_devices(tmp_path, first, then):
    """Stopped on one device, resumed on the other: the run continues where it stopped and ends
    where an uninterrupted run ends (to float tolerance: CPU and GPU kernels round differently)."""
    reference = train(digits(tmp_path / "ref", device=first, trainer__epochs=2))
    cfg = digits(tmp_path / "cut", device=first, trainer__epochs=2)
    stopped = _stop_at(cfg, 30)
    assert (stopped.status, stopped.steps) == ("KILLED", 30)

    moved = dict(cfg, device=then)
    resumed = train(moved, resume="latest")
    assert (resumed.status, resumed.steps, resumed.run_dir) == ("FINISHED", reference.steps, stopped.run_dir)
    saved = torch.load(resumed.checkpoint_path, weights_only=True)
    assert {t.device.type for t in saved["model"].values()} == {then}
    ref, got = h.model_state(reference.checkpoint_path), h.model_state(resumed.checkpoint_path)
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=1e-3, atol=1e-4, msg=f"{name} drifted")


def test_a_map_style_dataset_goes_through_pinned_memory(tmp_path):
    """A torch Dataset is served by a DataLoader with pin_memory on CUDA; batches arrive on the GPU."""
    cfg = h.base_config(tmp_path, device="cuda", data__name="pairs_classification", trainer__epochs=3)
    watch = DeviceWatch()
    result = train(cfg, observers=[watch])
    assert result.status == "FINISHED" and watch.param_devices == {"cuda:0"}
    assert watch.batch_devices == {"cuda:0"}


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    from tests.support.api_service import Service

    svc = Service(tmp_path_factory.mktemp("svc"), extra_args=["--max-concurrent", "1"])
    try:
        yield svc.wait_ready()
    finally:
        svc.stop()


@pytest.mark.server
def test_service_jobs_train_on_the_gpu_in_forked_children(service):
    """Jobs run in children forked from a pre-imported fork server: a parent that had touched
    CUDA would leave them unable to use it. Two jobs in a row, both on the GPU."""
    from mlflow.tracking import MlflowClient

    from tests.support.api_service import iris_config

    assert service.http.get("/healthz").status_code == 200
    for precision in ("fp32", "bf16"):
        config = dict(iris_config(f"gpu-{precision}", epochs=3, precision=precision), device="auto")
        job = service.submit(config).json()
        done = service.wait_for(job["id"])
        assert done["status"] == "succeeded", service.log(job["id"])
        tags = MlflowClient(service.tracking_uri).get_run(done["mlflow"]["run_id"]).data.tags
        assert tags["gradloop.device"].startswith("cuda") and tags["gradloop.precision"] == precision


def test_tracking_tags_the_gpu_and_logs_its_system_metrics(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.5")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = digits(
        tmp_path,
        trainer__precision="bf16",
        trainer__epochs=30,
        tracking={"enabled": True, "uri": uri, "log_every": 10, "grad_stats": "per_layer", "histogram_every": 50},
    )
    result = train(cfg)
    client = MlflowClient(uri)
    run = client.get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["gradloop.device"].startswith("cuda")
    assert "NVIDIA" in run.data.tags["gradloop.device_name"]
    assert run.data.tags["gradloop.precision"] == "bf16"
    keys = set(run.data.metrics)
    assert {"train/loss", "train/grad_norm", "val/accuracy"} <= keys
    assert any(k.startswith("grad_norm/") for k in keys)
    assert any(k.startswith("system/gpu_0") for k in keys), sorted(k for k in keys if k.startswith("system/"))


# -- distributed (NCCL) ----------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_nccl_on_one_gpu_trains_like_one_process(tmp_path, strategy):
    """World size 1 through the launcher and NCCL: the same weights as a one-process run."""
    one = train(digits(tmp_path / "one", device="cuda", trainer__epochs=2))
    ranked = train(digits(tmp_path / "ddp", device="cuda", trainer__epochs=2, distributed={"strategy": strategy}))
    assert (ranked.status, ranked.steps, ranked.world_size) == ("FINISHED", one.steps, 1)
    a, b = h.model_state(ranked.checkpoint_path), h.model_state(one.checkpoint_path)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_nccl_on_two_gpus_matches_one_gpu_at_the_global_batch(tmp_path, strategy):
    one = train(digits(tmp_path / "one", device="cuda", trainer__epochs=2, data__batch_size=64))
    two = train(
        digits(
            tmp_path / "two",
            device="cuda",
            trainer__epochs=2,
            data__batch_size=32,
            distributed={"strategy": strategy, "nproc_per_node": 2},
        )
    )
    assert (two.status, two.steps, two.world_size) == ("FINISHED", one.steps, 2)
    assert two.metrics["val/accuracy"] == one.metrics["val/accuracy"]


@pytest.fixture
def nccl_rank(tmp_path) -> Iterator[object]:
    """This process as the one rank of an NCCL group, on cuda:0."""
    import torch.distributed as dist

    from gradloop.distributed.process_group import DistContext

    torch.cuda.set_device(0)
    dist.init_process_group(
        "nccl", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1, device_id=torch.device("cuda", 0)
    )
    yield DistContext(rank=0, world_size=1, local_rank=0, node_rank=0, backend="nccl")
    dist.destroy_process_group()


@pytest.mark.gpu
@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_fsdp_mixed_precision_computes_in_its_dtype_and_keeps_fp32_shards(tmp_path, nccl_rank, precision, dtype):
    """FSDP's MixedPrecisionPolicy: the layers see their weights in the compute dtype during the
    forward (autocast alone would leave them float32), while the shards and the optimizer stay
    float32; fp16 scales the loss with FSDP's scaler (its overflow check is all-reduced)."""
    from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

    from gradloop.config import load_config
    from gradloop.runner import build_components
    from gradloop.trainer import Trainer

    cfg = load_config(
        digits(
            tmp_path, device="cuda", trainer__epochs=2, trainer__precision=precision, distributed={"strategy": "fsdp"}
        )
    )
    device = torch.device("cuda", 0)
    parts = build_components(cfg, device, nccl_rank)  # type: ignore[arg-type]
    seen: set[torch.dtype] = set()
    first = next(m for m in parts.model.modules() if isinstance(m, torch.nn.Linear))
    first.register_forward_pre_hook(lambda module, args: seen.add(module.weight.dtype))
    trainer = Trainer(cfg, parts, device=device, run_dir=Path(cfg.output_dir))
    assert isinstance(trainer.scaler, ShardedGradScaler) == (precision == "fp16")
    outcome = trainer.fit()
    assert outcome.status == "FINISHED" and outcome.metrics["val/accuracy"] > 0.8
    assert seen == {dtype}
    assert {p.dtype for p in parts.model.parameters()} == {torch.float32}
    assert {type(p).__name__ for p in parts.model.parameters()} == {"DTensor"}
    state = h.model_state(outcome.checkpoint_path)
    assert {v.dtype for v in state.values()} == {torch.float32}

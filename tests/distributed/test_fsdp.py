"""FSDP2 (`strategy: fsdp`) on CPU with gloo: parity with DDP and with one process, full gradient
norms, histograms of the whole tensors, the logged model, sharded checkpoints that resume bitwise
(and on another number of ranks), and sync once per accumulation window.

Each launch costs a few seconds (two spawned interpreters import torch), so each run checks
several things. Where the installed torch cannot shard on CPU with gloo, the tests are skipped
with a message naming its version.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist

import tests.support.trainer_helpers as h
from gradloop import train
from gradloop.checkpoint import CheckpointError
from gradloop.config import load_config
from gradloop.distributed import fsdp as fsdp_mod
from gradloop.distributed.process_group import DistContext
from gradloop.distributed.wrap import Parallel
from gradloop.runner import build_components
from gradloop.trainer import Trainer
from tests.distributed.test_ddp_runs import _assert_close, _config
from tests.support import marks
from tests.support.mlflow_stores import all_logged
from tests.support.trainer_helpers import assert_bitwise_equal, model_state

CPU = torch.device("cpu")


def _fsdp_on_cpu() -> str | None:
    """Why FSDP2 cannot run here, or None."""
    try:
        from torch.distributed.checkpoint.state_dict import get_state_dict  # noqa: F401
        from torch.distributed.fsdp import fully_shard  # noqa: F401
    except ImportError as exc:
        return f"torch {torch.__version__} has no FSDP2 or distributed checkpoint state dicts ({exc})"
    if not dist.is_available() or not dist.is_gloo_available():
        return f"torch {torch.__version__} has no gloo backend"
    return None


pytestmark = pytest.mark.skipif(_fsdp_on_cpu() is not None, reason=str(_fsdp_on_cpu()))


def _tracking(tmp_path: Path, **changes: Any) -> dict[str, Any]:
    return {
        "enabled": True,
        "uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "experiment": "fsdp",
        "log_every": 1,
        "grad_stats": "per_layer",
        "histogram_every": 0,
        "log_model": False,
        "system_metrics": False,
        "plots": False,
        "flush_timeout_s": 300,  # a loaded machine must not leave points for `gradloop sync`
        **changes,
    }


def _fsdp(tmp_path: Path, **changes: Any) -> dict[str, Any]:
    return _config(tmp_path, distributed={"strategy": "fsdp", "nproc_per_node": 2}, **changes)


def _histograms(uri: str, run_id: str, into: Path) -> dict[str, Any]:
    """The run's histogram files, from its MLflow artifacts: file name -> content."""
    import mlflow

    local = Path(mlflow.MlflowClient(uri).download_artifacts(run_id, "histograms", str(into)))
    return {p.name: json.loads(p.read_text()) for p in sorted(local.iterdir())}


def _assert_same_histograms(ours: dict[str, Any], theirs: dict[str, Any]) -> None:
    assert sorted(ours) == sorted(theirs)
    for name, mine in ours.items():
        assert mine["layers"].keys() == theirs[name]["layers"].keys(), name
        for layer, parts in mine["layers"].items():
            for part in ("grad", "weight"):
                a, b = parts[part], theirs[name]["layers"][layer][part]
                where = (name, layer, part)
                assert [a["min"], a["max"]] == pytest.approx([b["min"], b["max"]], rel=1e-5, abs=1e-7), where
                assert a["counts"] == b["counts"], where


def _grad_norms(uri: str, run_id: str) -> dict[str, dict[int, float]]:
    import mlflow

    client = mlflow.MlflowClient(uri)
    keys = [k for k in client.get_run(run_id).data.metrics if k.startswith("grad_norm/")]
    return {k: {m.step: m.value for m in client.get_metric_history(run_id, k)} for k in keys}


@marks.heavy
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_mlp_matches_ddp_and_one_process_with_full_grad_norms_histograms_and_logged_model(tmp_path, monkeypatch):
    """Windows of 2 with a short last one, clipping on the global norm, uneven data: FSDP 2 x 8
    trains to DDP 2 x 8's weights; its per-layer gradient norms and its histograms (of the whole
    gradients and weights, gathered from the shards) are the one-process ones; it logs the
    final model, whole, with tracking.log_model left at its default."""
    one = train(_config(tmp_path / "one", ranks=1, batch=16, tracking=_tracking(tmp_path / "one", histogram_every=3)))
    ddp = train(_config(tmp_path / "ddp"))
    tracked = _tracking(tmp_path / "fsdp", histogram_every=3)
    del tracked["log_model"]  # (its default: true)
    fsdp = train(_fsdp(tmp_path / "fsdp", tracking=tracked))
    all_logged(one.run_dir, fsdp.run_dir)  # (histograms and the model: logged in the background)
    assert (fsdp.status, fsdp.steps, fsdp.world_size, fsdp.global_batch_size) == ("FINISHED", ddp.steps, 2, 32)
    _assert_close(model_state(fsdp.checkpoint_path), model_state(ddp.checkpoint_path))
    assert fsdp.metrics["val/accuracy"] == one.metrics["val/accuracy"]
    assert fsdp.metrics["val/loss"] == pytest.approx(one.metrics["val/loss"], rel=1e-5)
    assert fsdp.metrics["train/loss"] == pytest.approx(one.metrics["train/loss"], rel=1e-5)

    ours = _grad_norms(f"sqlite:///{tmp_path / 'fsdp' / 'mlflow.db'}", fsdp.mlflow_run_id)
    theirs = _grad_norms(f"sqlite:///{tmp_path / 'one' / 'mlflow.db'}", one.mlflow_run_id)
    assert sorted(ours) == sorted(theirs) == [f"grad_norm/net.{i}.{p}" for i in (0, 3) for p in ("bias", "weight")]
    for key in theirs:
        assert sorted(ours[key]) == list(range(1, one.steps + 1)), key  # every step, logged once
        for step, value in theirs[key].items():
            assert ours[key][step] == pytest.approx(value, rel=1e-5), (key, step)

    hist_fsdp = _histograms(f"sqlite:///{tmp_path / 'fsdp' / 'mlflow.db'}", fsdp.mlflow_run_id, tmp_path / "h1")
    hist_one = _histograms(f"sqlite:///{tmp_path / 'one' / 'mlflow.db'}", one.mlflow_run_id, tmp_path / "h2")
    assert sorted(hist_fsdp) == ["step_000003.json", "step_000006.json"]
    _assert_same_histograms(hist_fsdp, hist_one)

    import mlflow

    uri = f"sqlite:///{tmp_path / 'fsdp' / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    experiment = client.get_run(fsdp.mlflow_run_id).info.experiment_id
    (logged,) = client.search_logged_models(experiment_ids=[experiment])
    assert logged.source_run_id == fsdp.mlflow_run_id
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # load_model reads the process-wide store
    model = mlflow.pytorch.load_model(f"models:/{logged.model_id}")
    assert not any(fsdp_mod.is_sharded(p) for p in model.parameters())
    assert_bitwise_equal(model.state_dict(), model_state(fsdp.checkpoint_path))

    # Rank 0's file names the shards, which every rank wrote into the directory beside it.
    names = sorted(p.name for p in (fsdp.run_dir / "checkpoints").iterdir())
    assert names == ["last.pt", "step-000006.dcp", "step-000006.pt"]
    shards = sorted(p.name for p in (fsdp.run_dir / "checkpoints" / "step-000006.dcp").iterdir())
    assert shards == [".metadata", "__0_0.distcp", "__1_0.distcp"]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_cnn_matches_ddp_with_accumulation_and_clipping(tmp_path):
    changes: dict[str, Any] = dict(
        model={
            "name": "cnn",
            "options": {"in_channels": 1, "image_size": 8, "channels": [4, 8], "out_features": 10},
        },
        data={
            "name": "sklearn",
            "options": {"dataset": "digits", "as_images": True},
            "batch_size": 8,
            "val_fraction": 0.9,  # 179 training samples: a short last global batch
        },
        optimizer={"name": "adamw", "options": {"lr": 0.01}},
        trainer__epochs=1,
    )
    ddp = train(_config(tmp_path / "ddp", **changes))
    fsdp = train(_fsdp(tmp_path / "fsdp", **changes))
    assert fsdp.steps == ddp.steps == 6
    _assert_close(model_state(fsdp.checkpoint_path), model_state(ddp.checkpoint_path))
    assert fsdp.metrics["val/accuracy"] == ddp.metrics["val/accuracy"]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_stopped_and_resumed_run_is_bitwise_identical_and_keeps_n_checkpoints(tmp_path):
    """A 2-rank FSDP run stopped mid-epoch and resumed ends with the uninterrupted run's weights,
    bitwise -- with dropout, whose generators differ by rank."""
    changes = dict(model__options={"in_features": 8, "out_features": 3, "dropout": 0.3})
    uninterrupted = train(_fsdp(tmp_path / "whole", **changes))

    cfg = _fsdp(tmp_path / "cut", trainer__checkpoint_every_steps=1, trainer__keep_checkpoints=2, **changes)
    cut = train({**cfg, "trainer": {**cfg["trainer"], "max_steps": 4}})  # mid-epoch 2 (3 steps an epoch)
    assert (cut.steps, cut.status) == (4, "FINISHED")
    state = torch.load(cut.checkpoint_path, weights_only=True)
    assert (state["world_size"], state["strategy"], state["sharded"]) == (2, "fsdp", "step-000004.dcp")
    assert "model" not in state and len(state["rng_ranks"]) == 2
    kept = sorted(p.name for p in (cut.run_dir / "checkpoints").iterdir())
    assert kept == ["last.pt", "step-000003.dcp", "step-000003.pt", "step-000004.dcp", "step-000004.pt"]

    resumed = train(cfg, resume="latest")
    assert (resumed.steps, resumed.run_dir) == (6, cut.run_dir)
    whole = model_state(uninterrupted.checkpoint_path)
    assert_bitwise_equal(model_state(resumed.checkpoint_path), whole)

    # A sharded checkpoint resumes only in an FSDP run, said before anything trains.
    single = _config(tmp_path / "cut", ranks=1, batch=16, **changes)
    with pytest.raises(CheckpointError, match="sharded FSDP checkpoint.*distributed.strategy is none"):
        train(single, resume=str(resumed.checkpoint_path))  # (the cut's own files are pruned by now)


@marks.heavy
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_two_rank_sharded_checkpoint_resumes_on_one_rank(tmp_path):
    """DCP reshards on load: the shards 2 ranks wrote (model, SGD momentum and learning rate) load
    into 1 rank's at the same global batch, which finishes the run as one uninterrupted process
    does. The resumed config names another lr: the optimizer's comes back from the checkpoint, so a
    run that started afresh instead of loading the shards would end elsewhere."""
    whole = train(_config(tmp_path / "whole", ranks=1, batch=16))  # in this process: no launch
    cfg = _fsdp(tmp_path / "cut")
    cut = train({**cfg, "trainer": {**cfg["trainer"], "max_steps": 4}})  # mid-epoch 2 (3 steps an epoch)
    assert torch.load(cut.checkpoint_path, weights_only=True)["world_size"] == 2

    one_rank = _config(
        tmp_path / "cut",
        ranks=1,
        batch=16,
        distributed={"strategy": "fsdp", "nproc_per_node": 1},
        optimizer__options={"lr": 0.05, "momentum": 0.9},
    )
    resumed = train(one_rank, resume=str(cut.checkpoint_path))
    assert (resumed.status, resumed.steps, resumed.world_size, resumed.run_dir) == ("FINISHED", 6, 1, cut.run_dir)
    _assert_close(model_state(resumed.checkpoint_path), model_state(whole.checkpoint_path))


@pytest.fixture
def one_rank_group(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield DistContext(rank=0, world_size=1, local_rank=0, node_rank=0, backend="gloo")
    dist.destroy_process_group()


def _fit_watching_grads(cfg: Any, ctx: DistContext) -> tuple[Any, list[bool], dict[str, torch.Tensor]]:
    """Train; at every loss call, whether any parameter holds a gradient already."""
    torch.manual_seed(cfg.seed)
    parts = build_components(cfg, CPU, ctx)
    params = list(parts.model.parameters())
    seen: list[bool] = []
    loss_fn = parts.loss_fn

    def watching_loss(out: Any, y: torch.Tensor) -> torch.Tensor:
        seen.append(any(p.grad is not None for p in params))
        return loss_fn(out, y)

    parts.loss_fn = watching_loss
    outcome = Trainer(cfg, parts, device=CPU, run_dir=cfg.output_dir).fit()
    return outcome, seen, {k: v.full_tensor() for k, v in parts.model.state_dict().items()}


def test_micro_batches_before_a_windows_last_do_not_sync(tmp_path, one_rank_group, monkeypatch):
    """In a gloo group of one rank, in this process. FSDP gives the sharded parameters their
    gradients only when it reduces them: a micro-batch that finds gradients left by the one before
    it in its window means that one synced."""
    changes = dict(
        trainer__grad_accum_steps=3, trainer__epochs=1, trainer__checkpoint_at_end=False, data__val_fraction=0.0
    )
    cfg = load_config(h.base_config(tmp_path, distributed={"strategy": "fsdp"}, **changes))
    outcome, seen, fsdp_weights = _fit_watching_grads(cfg, one_rank_group)
    # 100 samples in batches of 8: 13 micro-batches, windows of 3 -> 5 optimizer steps.
    assert (outcome.steps, len(seen)) == (5, 13)
    assert not any(seen), "a micro-batch before a window's last one synced its gradients"

    torch.manual_seed(cfg.seed)
    plain = load_config(h.base_config(tmp_path, **changes))
    plain_parts = build_components(plain, CPU)
    Trainer(plain, plain_parts, device=CPU, run_dir=plain.output_dir).fit()
    for name, value in plain_parts.model.state_dict().items():
        torch.testing.assert_close(fsdp_weights[name], value, rtol=1e-6, atol=1e-7)

    # The check sees a sync: with every micro-batch synced, the second and third of each window
    # find gradients.
    monkeypatch.setattr(Parallel, "grad_sync", lambda self, on: contextlib.nullcontext())
    _, synced, _ = _fit_watching_grads(cfg, one_rank_group)
    assert synced == [False, True, True] * 4 + [False]

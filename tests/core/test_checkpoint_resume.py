"""Checkpoints and resume: bitwise-identical weights after a stop or a crash, atomic files, devices."""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

import pytest
import torch
import torch.serialization

import tests.support.trainer_helpers as h
from gradloop import train
from gradloop.checkpoint import CheckpointError, atomic_save, load_checkpoint, resolve_resume, write_checkpoint


@pytest.fixture(autouse=True)
def _clean_trace():
    h.reset()
    yield
    h.reset()


def _config(tmp_path: Path, **changes):
    # Dropout (global RNG), momentum (optimizer state), a per-step scheduler and accumulation:
    # everything a resume has to restore exactly.
    base = dict(
        model={"name": "trace_mlp", "options": {"in_features": 8, "out_features": 3, "dropout": 0.3}},
        optimizer={"name": "sgd", "options": {"lr": 0.2, "momentum": 0.9}},
        scheduler={"name": "cosine", "options": {"warmup_steps": 3}},
        trainer__epochs=3,
        trainer__grad_accum_steps=2,
    )
    base.update(changes)
    return h.base_config(tmp_path, **base)


def _full_state(path: Path) -> dict:
    state = torch.load(path, map_location="cpu", weights_only=True)
    flat = {f"model.{k}": v for k, v in state["model"].items()}
    for pid, st in state["optimizer"]["state"].items():
        flat.update({f"opt.{pid}.{k}": v for k, v in st.items() if isinstance(v, torch.Tensor)})
    return flat


def test_stop_mid_epoch_then_resume_is_bitwise_identical(tmp_path):
    reference = train(_config(tmp_path / "ref"))
    assert reference.steps == 15  # 10 micro-batches / k=2 -> 5 steps per epoch, 3 epochs

    event = threading.Event()
    cfg = _config(tmp_path / "cut")
    stopped = train(cfg, observers=[h.StopAt(7, event)], stop_event=event)  # epoch 1, mid-epoch
    assert (stopped.status, stopped.steps) == ("KILLED", 7)
    state = torch.load(stopped.checkpoint_path, weights_only=True)
    assert state["progress"] == {"step": 7, "epoch": 1, "batch_in_epoch": 4, "skipped_steps": 0, "last_val_step": 5}

    resumed = train(cfg, resume="latest")
    assert (resumed.status, resumed.steps, resumed.run_dir) == ("FINISHED", 15, stopped.run_dir)
    assert resumed.resumed_from == stopped.checkpoint_path.parent / "last.pt"
    h.assert_bitwise_equal(_full_state(resumed.checkpoint_path), _full_state(reference.checkpoint_path))
    assert resumed.metrics == reference.metrics


@pytest.mark.parametrize("crash_at", [15, 18])
def test_crash_inside_an_accumulation_window_then_resume_is_bitwise_identical(tmp_path, crash_at):
    # k=3 over 10 micro-batches: windows [0-2] [3-5] [6-8] [9]. Training forward 15 is the 2nd
    # micro-batch of epoch 1's second window (last checkpoint: step 4, at the end of epoch 0);
    # forward 18 is inside the third window (last checkpoint: step 6, mid-epoch).
    cfg = _config(tmp_path, trainer__grad_accum_steps=3, trainer__checkpoint_every_steps=2)
    reference = train(_config(tmp_path / "ref", trainer__grad_accum_steps=3, trainer__checkpoint_every_steps=2))
    h.reset()

    h.FAULTS["raise_at"] = crash_at
    rec = h.Recorder()
    with pytest.raises(RuntimeError, match="injected crash"):
        train(cfg, observers=[rec])
    assert rec.calls[-1][:2] == ("finish", "FAILED")
    h.reset()

    watcher = h.Recorder()
    resumed = train(cfg, resume="latest", observers=[watcher])
    assert watcher.calls[0] == ("start", {15: 4, 18: 6}[crash_at])
    assert resumed.steps == 12
    h.assert_bitwise_equal(_full_state(resumed.checkpoint_path), _full_state(reference.checkpoint_path))


def test_fixed_seed_is_bitwise_reproducible(tmp_path):
    a = train(_config(tmp_path / "a"))
    b = train(_config(tmp_path / "b"))
    h.assert_bitwise_equal(_full_state(a.checkpoint_path), _full_state(b.checkpoint_path))
    c = train(_config(tmp_path / "c", seed=4))
    assert not torch.equal(
        h.model_state(a.checkpoint_path)["net.0.weight"], h.model_state(c.checkpoint_path)["net.0.weight"]
    )


def test_checkpoint_holds_everything_a_resume_needs(tmp_path):
    result = train(_config(tmp_path, trainer__epochs=1))
    state = torch.load(result.checkpoint_path, weights_only=True)  # plain data only: no pickled code
    assert {
        "model",
        "optimizer",
        "scheduler",
        "scaler",
        "rng",
        "progress",
        "config",
        "config_hash",
        "mlflow_run_id",
    } <= set(state)
    assert set(state["rng"]) == {"torch", "numpy", "python", "cuda"}
    assert state["config"]["name"] == "t" and state["config_hash"] == result.config_hash
    assert state["progress"]["step"] == 5 and state["progress"]["epoch"] == 1


def test_retention_keeps_the_newest_step_files_and_last(tmp_path):
    result = train(_config(tmp_path, trainer__checkpoint_every_steps=2, trainer__keep_checkpoints=2))
    names = sorted(p.name for p in result.checkpoint_path.parent.iterdir())
    assert names == ["last.pt", "step-000014.pt", "step-000015.pt"]
    assert (result.checkpoint_path.parent / "last.pt").read_bytes() == result.checkpoint_path.read_bytes()


class _Unpicklable:
    def __reduce__(self):
        raise RuntimeError("cannot pickle this")


def test_atomic_save_leaves_no_temp_file_and_a_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "ckpt" / "step-000001.pt"
    atomic_save({"w": torch.ones(3)}, target)
    before = target.read_bytes()
    with pytest.raises(RuntimeError, match="cannot pickle"):
        atomic_save({"w": torch.zeros(1000), "bad": _Unpicklable()}, target)
    assert target.read_bytes() == before
    assert os.listdir(target.parent) == ["step-000001.pt"]  # no .tmp left behind
    assert torch.equal(torch.load(target, weights_only=True)["w"], torch.ones(3))


def test_write_checkpoint_points_last_at_the_newest(tmp_path):
    d = tmp_path / "checkpoints"
    for step in (1, 2, 3):
        write_checkpoint(d, step, {"progress": {"step": step}}, keep=2)
    assert sorted(os.listdir(d)) == ["last.pt", "step-000002.pt", "step-000003.pt"]
    assert load_checkpoint(d / "last.pt", "cpu")["progress"]["step"] == 3


@contextlib.contextmanager
def storages_tagged_as_cuda():
    """Make torch.save label CPU tensors as living on cuda:0, as a GPU machine's checkpoint would.

    The one stand-in for hardware this machine lacks: the file then reads exactly like one
    written on a CUDA device, and loading it without map_location fails here.
    """
    entry = (1, lambda storage: "cuda:0" if storage.device.type == "cpu" else None, lambda storage, location: None)
    torch.serialization._package_registry.insert(0, entry)
    try:
        yield
    finally:
        torch.serialization._package_registry.remove(entry)


@pytest.mark.skipif(torch.cuda.is_available(), reason="about a checkpoint from a GPU machine resumed on a CPU-only one")
def test_a_cuda_checkpoint_resumes_on_cpu(tmp_path):
    reference = train(_config(tmp_path / "ref"))
    event = threading.Event()
    cfg = _config(tmp_path / "cut")
    stopped = train(cfg, observers=[h.StopAt(6, event)], stop_event=event)
    state = torch.load(stopped.checkpoint_path, weights_only=True)
    gpu_file = stopped.checkpoint_path.parent / "from-gpu.pt"
    with storages_tagged_as_cuda():
        torch.save(state, gpu_file)
    with pytest.raises(RuntimeError, match="CUDA"):
        torch.load(gpu_file, weights_only=True)  # what a load without map_location does here

    assert load_checkpoint(gpu_file, torch.device("cpu"))["model"]["net.0.weight"].device.type == "cpu"
    resumed = train(cfg, resume=gpu_file)
    h.assert_bitwise_equal(_full_state(resumed.checkpoint_path), _full_state(reference.checkpoint_path))


def test_resume_with_a_different_model_is_refused(tmp_path):
    first = train(_config(tmp_path, trainer__epochs=1))
    other = _config(
        tmp_path, model={"name": "trace_mlp", "options": {"in_features": 8, "out_features": 3, "hidden": 32}}
    )
    with pytest.raises(CheckpointError, match="model"):
        train(other, resume=first.checkpoint_path)


def test_resume_latest_without_runs_says_what_to_do(tmp_path):
    with pytest.raises(CheckpointError, match="run it once without --resume"):
        resolve_resume("latest", tmp_path / "runs", "nothing-here")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt", "cpu")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="damaged or not a gradloop checkpoint"):
        load_checkpoint(tmp_path / "junk.pt", "cpu")


def test_resume_accepts_a_run_directory(tmp_path):
    first = train(_config(tmp_path, trainer__epochs=1))
    assert resolve_resume(first.run_dir, tmp_path / "runs", "t") == first.run_dir / "checkpoints" / "last.pt"

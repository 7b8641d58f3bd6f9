"""The training loop's contract: zeroing, non-finite handling, validation, schedulers, stopping, precision."""

from __future__ import annotations

import math
import threading

import pytest
import torch

import tests.support.trainer_helpers as h
from gradloop import train
from gradloop.errors import ConfigError, TrainingError


@pytest.fixture(autouse=True)
def _clean_trace():
    h.reset()
    yield
    h.reset()


def _events() -> list[str]:
    """The trace as forward/step/zero_grad, training forwards only."""
    out = []
    for e in h.TRACE:
        if isinstance(e, tuple):
            if e[1] and not e[2]:
                out.append("f")
        else:
            out.append({"step": "S", "zero_grad": "Z"}[e])
    return out


def test_zero_grad_once_per_step_and_never_inside_a_window(tmp_path):
    # 10 training samples, batch 3, k=2: micro-batches 3,3,3,1 -> windows [3,3] and [3,1] per epoch.
    cfg = h.base_config(
        tmp_path,
        data__options={"n_samples": 10, "n_features": 8, "n_classes": 3, "seed": 1},
        data__batch_size=3,
        data__val_fraction=0.0,
        optimizer={"name": "trace_sgd", "options": {"lr": 0.1}},
        trainer__grad_accum_steps=2,
        trainer__epochs=2,
        trainer__val_every_epochs=0,
    )
    result = train(cfg)
    assert result.steps == 4
    # One zero_grad before the first window (nothing from outside leaks in), then exactly:
    # forward x2, step, zero_grad -- per window.
    assert "".join(_events()) == "Z" + "ffSZ" * 4


def test_zero_grad_with_validation_and_scheduler_between_steps(tmp_path):
    cfg = h.base_config(
        tmp_path,
        optimizer={"name": "trace_sgd", "options": {"lr": 0.1, "momentum": 0.9}},
        scheduler={"name": "cosine", "options": {"warmup_steps": 2}},
        trainer__grad_accum_steps=3,
        trainer__epochs=2,
        trainer__val_every_steps=2,
    )
    train(cfg)
    ev = "".join(_events())
    # 80 samples / batch 8 = 10 micro-batches -> windows of 3,3,3,1 -> 4 steps per epoch.
    assert ev == "Z" + ("fffSZ" * 3 + "fSZ") * 2


def test_validation_runs_in_inference_mode_and_restores_train_mode(tmp_path):
    cfg = h.base_config(tmp_path, trainer__val_every_steps=3, trainer__epochs=1)
    rec = h.Recorder()
    train(cfg, observers=[rec])
    forwards = [e for e in h.TRACE if isinstance(e, tuple)]
    # The first forward is the compatibility check before training (eval mode, no grad).
    kinds = ["train" if e[1] else "val" if e[2] else "other" for e in forwards[1:]]
    assert "other" not in kinds, "an eval-mode forward ran outside inference_mode"
    assert "val" in kinds
    # After every validation the next forward is a training one, in train mode, with grad.
    resumed = [forwards[1:][i + 1] for i, k in enumerate(kinds[:-1]) if k == "val" and kinds[i + 1] != "val"]
    assert len(resumed) == 3 and all(e[1] and not e[2] for e in resumed)
    vals = [c for c in rec.calls if c[0] == "val"]
    assert [c[1] for c in vals] == [3, 6, 9, 10]  # every 3 steps, plus the epoch's end
    assert set(vals[0][2]) == {"val/loss", "val/accuracy"}
    assert 0.0 <= vals[-1][2]["val/accuracy"] <= 1.0


def test_nonfinite_loss_fails_naming_step_and_parameter(tmp_path):
    h.FAULTS["nan_at"] = 5
    with pytest.raises(TrainingError) as info:
        train(h.base_config(tmp_path))
    msg = str(info.value)
    assert "step 5" in msg and "loss is nan" in msg and "'net.0.weight'" in msg


def test_nonfinite_gradient_with_finite_loss_names_the_parameter(tmp_path):
    cfg = h.base_config(tmp_path, model={"name": "nan_grad", "options": {"in_features": 8, "out_features": 3}})
    rec = h.Recorder()
    with pytest.raises(TrainingError, match=r"step 1: the gradient of parameter 'gate' is not finite"):
        train(cfg, observers=[rec])
    assert rec.calls[-1][:2] == ("finish", "FAILED")


def test_skip_step_skips_the_update_and_keeps_going(tmp_path):
    h.FAULTS["nan_at"] = 3
    rec = h.Recorder()
    cfg = h.base_config(tmp_path, trainer__on_nonfinite="skip_step", tracking__log_every=1)
    result = train(cfg, observers=[rec])
    assert result.status == "FINISHED" and result.steps == 20 and result.skipped_steps == 1
    assert result.metrics["train/skipped_steps"] == 1.0
    weights = h.model_state(result.checkpoint_path)
    assert all(torch.isfinite(t).all() for t in weights.values())
    losses = [c[2]["train/loss"] for c in rec.calls if c[0] == "after" and "train/loss" in c[2]]
    assert len(losses) == 19 and all(torch.isfinite(torch.tensor(losses)))  # the NaN window is not logged


def test_skipped_step_leaves_weights_untouched(tmp_path):
    # Step 1 is poisoned; with lr on plain SGD the weights after step 1 equal the initial ones.
    h.FAULTS["nan_at"] = 1
    cfg = h.base_config(
        tmp_path,
        trainer__on_nonfinite="skip_step",
        trainer__max_steps=1,
        trainer__val_every_epochs=0,
        trainer__max_skipped_fraction=1.0,  # its one step is skipped on purpose
    )
    result = train(cfg)
    h.reset()
    init = h.base_config(
        tmp_path, trainer__max_steps=1, optimizer={"name": "sgd", "options": {"lr": 1e-30}}, trainer__val_every_epochs=0
    )
    untouched = train(init)
    h.assert_bitwise_equal(h.model_state(result.checkpoint_path), h.model_state(untouched.checkpoint_path))


def test_max_steps_stops_early(tmp_path):
    result = train(h.base_config(tmp_path, trainer__max_steps=7, trainer__epochs=5))
    assert (result.steps, result.epochs, result.status) == (7, 0, "FINISHED")
    assert result.checkpoint_path.name == "step-000007.pt"
    assert "val/loss" in result.metrics  # a final validation at the stopping step


def test_stop_request_ends_killed_with_a_checkpoint(tmp_path):
    event = threading.Event()
    rec = h.Recorder()
    result = train(h.base_config(tmp_path), observers=[h.StopAt(4, event), rec], stop_event=event)
    assert (result.status, result.steps, result.stopped) == ("KILLED", 4, True)
    assert result.checkpoint_path.name == "step-000004.pt" and result.checkpoint_path.exists()
    assert rec.calls[-1][:2] == ("finish", "KILLED")


def test_reduce_on_plateau_steps_after_each_validation(tmp_path):
    # A learning rate too small to change anything: the val loss never improves by 10%.
    cfg = h.base_config(
        tmp_path,
        trainer__epochs=4,
        optimizer={"name": "sgd", "options": {"lr": 1e-6}},
        scheduler={"name": "reduce_on_plateau", "options": {"patience": 0, "factor": 0.5, "threshold": 0.1}},
    )
    result = train(cfg)
    state = torch.load(result.checkpoint_path, weights_only=True)
    # 4 validations: the first sets the best, each later one halves the lr.
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-6 * 0.5**3)


def test_reduce_on_plateau_unknown_monitor_is_a_config_error(tmp_path):
    cfg = h.base_config(tmp_path, scheduler={"name": "reduce_on_plateau", "options": {"monitor": "val/los"}})
    with pytest.raises(ConfigError, match="scheduler.options.monitor"):
        train(cfg)
    assert not (tmp_path / "runs").exists()  # nothing written before the config is known good


def test_step_scheduler_changes_lr_per_step(tmp_path):
    rec = h.Recorder()
    cfg = h.base_config(tmp_path, scheduler={"name": "cosine", "options": {"warmup_steps": 0}}, tracking__log_every=1)
    train(cfg, observers=[rec])
    lrs = [c[2]["train/lr/default"] for c in rec.calls if c[0] == "after"]
    assert len(lrs) == 20 and lrs[0] == pytest.approx(0.1) and all(a > b for a, b in zip(lrs, lrs[1:]))


def test_lbfgs_closure_converges_on_regression(tmp_path):
    cfg = h.base_config(
        tmp_path,
        model={"name": "linear", "options": {"in_features": 4, "out_features": 1}},
        data={
            "name": "synthetic_regression",
            "options": {"n_samples": 64, "n_features": 4, "noise": 0.0},
            "batch_size": 64,
            "val_fraction": 0.0,
        },
        loss={"name": "mse"},
        optimizer={"name": "lbfgs", "options": {"lr": 1.0, "max_iter": 20}},
        trainer__epochs=3,
        trainer__val_every_epochs=0,
        tracking__log_every=1,
    )
    rec = h.Recorder()
    result = train(cfg, observers=[rec])
    assert result.steps == 3
    # train/loss of a closure step is the loss at the step's starting weights.
    losses = [c[2]["train/loss"] for c in rec.calls if c[0] == "after"]
    assert losses[0] > 0.1 and losses[-1] < 1e-6


def test_bf16_on_cpu_trains(tmp_path):
    result = train(h.base_config(tmp_path, trainer__precision="bf16", trainer__epochs=3))
    assert result.status == "FINISHED"
    assert torch.isfinite(torch.tensor(result.metrics["val/loss"]))
    assert result.metrics["val/accuracy"] > 0.5


def test_fp16_on_cpu_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="trainer.precision"):
        train(h.base_config(tmp_path, trainer__precision="fp16"))


def test_clip_by_norm_reports_the_preclip_norm(tmp_path):
    rec = h.Recorder()
    cfg = h.base_config(tmp_path, trainer__grad_clip_norm=1e-3, tracking__log_every=1, trainer__epochs=1)
    train(cfg, observers=[rec])
    norms = [c[2]["train/grad_norm"] for c in rec.calls if c[0] == "after"]
    assert len(norms) == 10 and all(n > 1e-3 for n in norms)  # reported before clipping


def test_observer_cadence_follows_log_every(tmp_path):
    rec = h.Recorder()
    train(h.base_config(tmp_path, tracking__log_every=3), observers=[rec])
    after = [c for c in rec.calls if c[0] == "after"]
    assert [c[1] for c in after] == [3, 6, 9, 12, 15, 18, 20]
    assert {"train/loss", "train/grad_norm", "epoch", "samples_per_s", "steps_per_s", "train/lr/default"} <= set(
        after[0][2]
    )
    assert rec.calls[0] == ("start", 0) and rec.calls[-1][:2] == ("finish", "FINISHED")


@pytest.mark.slow
def test_compile_failure_is_a_clear_training_error(tmp_path):
    # A machine without a working C++ compiler: inductor fails at the first forward. Run in a
    # child process with its own inductor cache so nothing cached makes it succeed.
    import json
    import os
    import subprocess
    import sys

    cfg = h.base_config(
        tmp_path,
        model={"name": "mlp", "options": {"in_features": 8, "hidden": [8], "out_features": 3}},
        trainer__compile=True,
        trainer__epochs=1,
    )
    code = (
        "import json, sys\nfrom service import train\nfrom gradloop.errors import TrainingError\n"
        "try:\n    train(json.loads(sys.argv[1]))\nexcept TrainingError as exc:\n    print('ERROR:', exc)\n"
    )
    env = {**os.environ, "CXX": "/bin/false", "CC": "/bin/false", "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(cfg)], env=env, capture_output=True, text=True, timeout=240
    )
    assert "ERROR: trainer.compile: torch.compile could not compile the model" in out.stdout, out.stderr[-2000:]
    assert "set trainer.compile: false" in out.stdout


def test_clip_by_value_bounds_every_update(tmp_path):
    # Plain SGD with lr 1: one clipped step moves no weight by more than the clip value.
    clipped = train(
        h.base_config(
            tmp_path / "a",
            optimizer={"name": "sgd", "options": {"lr": 1.0}},
            trainer__grad_clip_value=1e-4,
            trainer__max_steps=1,
            trainer__val_every_epochs=0,
        )
    )
    start = train(
        h.base_config(
            tmp_path / "b",
            optimizer={"name": "sgd", "options": {"lr": 1e-30}},
            trainer__max_steps=1,
            trainer__val_every_epochs=0,
        )
    )
    after, before = h.model_state(clipped.checkpoint_path), h.model_state(start.checkpoint_path)
    moved = max(float((after[k] - before[k]).abs().max()) for k in after)
    assert moved == pytest.approx(1e-4, rel=1e-3)  # clipped (an unclipped lr-1 step moves far more)


def test_epoch_scheduler_steps_once_per_epoch(tmp_path):
    rec = h.Recorder()
    cfg = h.base_config(
        tmp_path,
        scheduler={"name": "step", "options": {"step_size": 1, "gamma": 0.5}},
        trainer__epochs=3,
        tracking__log_every=1,
    )
    train(cfg, observers=[rec])
    lrs = [c[2]["train/lr/default"] for c in rec.calls if c[0] == "after"]
    assert lrs == pytest.approx([0.1] * 10 + [0.05] * 10 + [0.025] * 10)


def test_clip_by_norm_bounds_the_update(tmp_path):
    # Plain SGD with lr 1: the update is the clipped gradient, whose total norm is the clip value.
    clipped = train(
        h.base_config(
            tmp_path / "a",
            optimizer={"name": "sgd", "options": {"lr": 1.0}},
            trainer__grad_clip_norm=1e-3,
            trainer__max_steps=1,
            trainer__val_every_epochs=0,
        )
    )
    start = train(
        h.base_config(
            tmp_path / "b",
            optimizer={"name": "sgd", "options": {"lr": 1e-30}},
            trainer__max_steps=1,
            trainer__val_every_epochs=0,
        )
    )
    after, before = h.model_state(clipped.checkpoint_path), h.model_state(start.checkpoint_path)
    update = torch.cat([(after[k] - before[k]).flatten() for k in after])
    assert float(update.norm()) == pytest.approx(1e-3, rel=1e-2)


@pytest.mark.parametrize(
    "init_scale, overflows", [(torch.finfo(torch.float32).max, True), (1.0, False)], ids=["overflowing", "healthy"]
)
def test_steps_a_loss_scaler_skips_are_counted_as_skipped(tmp_path, monkeypatch, init_scale, overflows):
    """fp16 runs need CUDA, but GradScaler itself runs on the CPU: forced on here (the model
    stays fp32). Diabetes targets are in the hundreds, so an MSE scaled by float32's maximum
    overflows; the scaler skips those steps and halves its scale each time until the scaled
    gradients fit. The run must count exactly those steps, and a scale of 1 none."""
    real = torch.amp.GradScaler

    def forced_on(device, enabled=True, **kwargs):
        return real(device, enabled=True, init_scale=init_scale, growth_interval=10**6)

    monkeypatch.setattr(torch.amp, "GradScaler", forced_on)
    optimizers = []

    class Rec(h.Recorder):
        def start(self, ctx):
            optimizers.append(ctx.optimizer)
            super().start(ctx)

    rec = Rec()
    cfg = h.base_config(
        tmp_path,
        model={"name": "mlp", "options": {"in_features": 10, "hidden": [16], "out_features": 1}},
        data={"name": "sklearn", "options": {"dataset": "diabetes"}, "batch_size": 32},
        loss={"name": "mse"},
        optimizer={"name": "adam", "options": {"lr": 0.01}},
        tracking__log_every=1,
    )
    result = train(cfg, observers=[rec])
    state = torch.load(result.checkpoint_path, map_location="cpu", weights_only=True)
    backoffs = round(math.log2(init_scale / state["scaler"]["scale"]))
    assert result.status == "FINISHED" and result.skipped_steps == backoffs
    assert (0 < backoffs < result.steps) == overflows and (backoffs == 0) != overflows
    assert result.metrics.get("train/skipped_steps", 0.0) == backoffs
    counts = [c[2].get("train/skipped_steps", 0.0) for c in rec.calls if c[0] == "after"]
    assert counts == sorted(counts) and counts[-1] == backoffs  # a running count, window by window
    assert all(torch.isfinite(t).all() for t in state["model"].values())
    # The step hook that told skipped steps apart is gone with the run (torch keeps hooks in
    # a private dict; the optimizer could outlive the trainer and must not keep it alive).
    assert optimizers and optimizers[0]._optimizer_step_post_hooks == {}

"""Scheduler plugins: lr curves, capabilities, build-time checks, state_dict round trips."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from gradloop import build_optimizer, registry
from gradloop.errors import ConfigError


def optimizer(lr: float = 1.0, **kw) -> torch.optim.Optimizer:
    torch.manual_seed(0)
    return build_optimizer("sgd", nn.Linear(2, 1), lr=lr, **kw)


def scheduler(name: str, opt: torch.optim.Optimizer, total_steps: int = 10, steps_per_epoch: int = 5, **options):
    return registry.schedulers.build(name, options, opt, total_steps=total_steps, steps_per_epoch=steps_per_epoch)


def curve(opt: torch.optim.Optimizer, sched, n: int, group: int = 0) -> list[float]:
    """The lr each of n optimizer steps uses, stepping the scheduler after each."""
    out = []
    for _ in range(n):
        out.append(opt.param_groups[group]["lr"])
        opt.step()
        sched.step()
    return out


def test_capabilities_say_when_each_scheduler_steps():
    caps = {p.name: dict(p.capabilities) for p in registry.schedulers}
    assert {
        n: c["interval"]
        for n, c in caps.items()
        if n in {"step", "multistep", "cosine", "linear", "reduce_on_plateau", "onecycle"}
    } == {
        "step": "epoch",
        "multistep": "epoch",
        "cosine": "step",
        "linear": "step",
        "reduce_on_plateau": "epoch",
        "onecycle": "step",
    }
    assert caps["reduce_on_plateau"]["monitor"] is True
    assert not caps["cosine"].get("monitor")


def test_cosine_warms_up_linearly_then_decays_to_min_lr():
    opt = optimizer(lr=1.0)
    lrs = curve(opt, scheduler("cosine", opt, total_steps=7, warmup_steps=2, min_lr=0.1), 7)
    # warmup (s+1)/(W+1); then cosine over the remaining steps, the last one at min_lr
    expected = [1 / 3, 2 / 3, 1.0] + [0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * k / 4)) for k in (1, 2, 3, 4)]
    assert lrs == pytest.approx(expected)
    assert lrs[-1] == pytest.approx(0.1)


def test_cosine_min_lr_is_absolute_for_every_group():
    opt = build_optimizer("sgd", nn.Linear(2, 1), lr=1.0, param_groups=[{"match": "bias", "lr": 0.5}])
    sched = scheduler("cosine", opt, total_steps=5, min_lr=0.05)
    curve(opt, sched, 5)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.05, 0.05])
    fresh = build_optimizer("sgd", nn.Linear(2, 1), lr=1.0, param_groups=[{"match": "bias", "lr": 0.5}])
    with pytest.raises(ConfigError, match=r"min_lr \(0\.7\) is above the lr of param group 'bias' \(0\.5\)"):
        scheduler("cosine", fresh, total_steps=5, min_lr=0.7)


def test_linear_warmup_then_linear_decay():
    opt = optimizer(lr=2.0)
    lrs = curve(opt, scheduler("linear", opt, total_steps=6, warmup_steps=1), 6)
    assert lrs == pytest.approx([1.0, 2.0, 1.5, 1.0, 0.5, 0.0])


def test_warmup_must_be_shorter_than_the_run():
    opt = optimizer()
    with pytest.raises(ConfigError) as exc:
        scheduler("cosine", opt, total_steps=10, warmup_steps=10)
    [err] = exc.value.errors
    assert err.path == "scheduler.options.warmup_steps"
    assert "warmup_steps (10) must be less than the run's total optimizer steps (10)" in err.message


def test_step_and_multistep_decay_per_epoch():
    opt = optimizer(lr=1.0)
    assert curve(opt, scheduler("step", opt, step_size=2, gamma=0.5), 5) == pytest.approx([1, 1, 0.5, 0.5, 0.25])
    opt = optimizer(lr=1.0)
    assert curve(opt, scheduler("multistep", opt, milestones=[1, 3], gamma=0.1), 4) == pytest.approx(
        [1, 0.1, 0.1, 0.01]
    )


@pytest.mark.parametrize("milestones", [[3, 2], [2, 2], [0, 4], []])
def test_multistep_milestones_must_increase(milestones):
    with pytest.raises(ValueError) as exc:
        registry.schedulers.parse_options("multistep", {"milestones": milestones})
    assert "milestones" in str(exc.value)


@pytest.mark.parametrize(
    "name, options, field",
    [
        ("step", {"gamma": 0}, "gamma"),
        ("step", {"step_size": 0}, "step_size"),
        ("cosine", {"warmup_steps": -1}, "warmup_steps"),
        ("reduce_on_plateau", {"mode": "up"}, "mode"),
        ("reduce_on_plateau", {"factor": 1.0}, "factor"),
        ("onecycle", {"pct_start": 1.0}, "pct_start"),
        ("cosine", {"warmup": 5}, "warmup"),
    ],
)
def test_option_ranges_are_checked(name, options, field):
    with pytest.raises(ValueError) as exc:
        registry.schedulers.parse_options(name, options)
    assert field in str(exc.value)


def test_reduce_on_plateau_steps_on_the_metric():
    opt = optimizer(lr=1.0)
    sched = scheduler("reduce_on_plateau", opt, patience=1, factor=0.5, mode="max")
    options = registry.schedulers.parse_options("reduce_on_plateau", {"mode": "max"})
    assert options.monitor == "val/loss"  # the trainer reads which metric to feed from here
    lrs = []
    for acc in (0.5, 0.6, 0.6, 0.6, 0.6, 0.6):
        sched.step(acc)
        lrs.append(opt.param_groups[0]["lr"])
    # best 0.6 at the 2nd; the 2nd stall in a row exceeds patience 1 -> halve; two more stalls -> halve again
    assert lrs == pytest.approx([1, 1, 1, 0.5, 0.5, 0.25])


def test_onecycle_peaks_at_each_groups_lr_by_default():
    opt = build_optimizer("sgd", nn.Linear(2, 1), lr=1.0, param_groups=[{"match": "bias", "lr": 0.1}])
    sched = scheduler("onecycle", opt, total_steps=10, pct_start=0.3)
    main, bias = [], []
    for _ in range(10):
        main.append(opt.param_groups[0]["lr"])
        bias.append(opt.param_groups[1]["lr"])
        opt.step()
        sched.step()
    assert main[0] == pytest.approx(1.0 / 25) and max(main) == pytest.approx(1.0)
    assert max(bias) == pytest.approx(0.1)
    assert main.index(max(main)) == 2  # pct_start 0.3 of 10 steps
    assert main[-1] < main[0] / 1000
    assert opt.param_groups[0]["momentum"] == 0  # cycle_momentum is off unless asked for


def test_onecycle_cycle_momentum_needs_momentum():
    with pytest.raises(ConfigError, match="cycle_momentum needs an optimizer with momentum"):
        scheduler("onecycle", optimizer(), cycle_momentum=True)
    opt = optimizer(momentum=0.9)
    scheduler("onecycle", opt, cycle_momentum=True)
    assert opt.param_groups[0]["momentum"] == pytest.approx(0.95)


@pytest.mark.parametrize(
    "name, options",
    [
        ("cosine", {"warmup_steps": 3, "min_lr": 0.01}),
        ("linear", {"warmup_steps": 2}),
        ("step", {"step_size": 2}),
        ("multistep", {"milestones": [2, 5]}),
        ("onecycle", {}),
    ],
)
def test_state_dict_round_trip_continues_the_same_curve(name, options):
    opt_a = optimizer()
    sched_a = scheduler(name, opt_a, total_steps=12, **options)
    curve(opt_a, sched_a, 4)
    state = copy.deepcopy(sched_a.state_dict())
    rest_a = curve(opt_a, sched_a, 8)

    opt_b = optimizer()
    sched_b = scheduler(name, opt_b, total_steps=12, **options)
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))  # lr as of the end; the scheduler resets it below
    sched_b.load_state_dict(state)
    for g, lr in zip(opt_b.param_groups, sched_b.get_last_lr()):
        g["lr"] = lr
    assert curve(opt_b, sched_b, 8) == pytest.approx(rest_a)


def test_reduce_on_plateau_state_round_trip():
    opt = optimizer()
    sched = scheduler("reduce_on_plateau", opt, patience=2)
    for v in (1.0, 0.9, 0.95):
        sched.step(v)
    other = scheduler("reduce_on_plateau", optimizer(), patience=2)
    other.load_state_dict(copy.deepcopy(sched.state_dict()))
    assert other.best == 0.9 and other.num_bad_epochs == 1

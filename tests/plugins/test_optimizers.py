"""gradloop.optim and the optimizer plugins: options validation, every plugin steps, Lion, L-BFGS."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from gradloop import build_optimizer, registry
from gradloop.config import OptimizerConfig
from gradloop.errors import ConfigError, GradloopError, ParamsError
from gradloop.optim import build_optimizer_from_config

BUILTINS = ["sgd", "adam", "adamw", "rmsprop", "adagrad", "lbfgs"]


def regression(seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    x = torch.randn(64, 5)
    y = x @ torch.randn(5, 1) + 0.1
    return nn.Linear(5, 1), x, y


def train(opt: torch.optim.Optimizer, model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> list[float]:
    losses = []
    for _ in range(steps):
        loss = nn.functional.mse_loss(model(x), y)
        losses.append(loss.item())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return losses


def only_error(exc: ConfigError) -> tuple[str, str]:
    assert len(exc.errors) == 1, exc.errors
    return exc.errors[0].path, exc.errors[0].message


# -- the registry holds what the issue asks for -------------------------------------------------


def test_builtin_plugins_and_capabilities():
    names = registry.optimizers.names()
    assert set(BUILTINS) <= set(names)
    assert registry.optimizers.get("lbfgs").capabilities["closure"] is True
    assert all(registry.optimizers.get(n).capabilities["closure"] is False for n in BUILTINS if n != "lbfgs")


@pytest.mark.parametrize("name", [n for n in BUILTINS if n != "lbfgs"] + ["lion"])
def test_every_first_order_optimizer_wraps_its_torch_class_and_lowers_the_loss(name):
    model, x, y = regression()
    lr = {"sgd": 0.1, "adagrad": 0.3}.get(name, 0.05)
    opt = build_optimizer(name, model, lr=lr)
    expected = {
        "sgd": torch.optim.SGD,
        "adam": torch.optim.Adam,
        "adamw": torch.optim.AdamW,
        "rmsprop": torch.optim.RMSprop,
        "adagrad": torch.optim.Adagrad,
    }.get(name)
    if expected is not None:
        assert type(opt) is expected
    losses = train(opt, model, x, y, 30)
    assert losses[-1] < 0.5 * losses[0]


def test_lbfgs_runs_a_closure_step_and_refuses_several_groups():
    model, x, y = regression()
    opt = build_optimizer("lbfgs", model, lr=1.0, max_iter=20, line_search_fn="strong_wolfe")
    assert isinstance(opt, torch.optim.LBFGS)

    def closure() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    first = closure().item()
    opt.step(closure)
    assert nn.functional.mse_loss(model(x), y).item() < 1e-3 * first
    with pytest.raises(ParamsError, match=r"lbfgs supports a single parameter group, got 2 \(default, bias\)"):
        build_optimizer("lbfgs", model, param_groups=[{"match": "bias", "lr": 0.5}])


# -- accepted params forms through build_optimizer ------------------------------------------------


def test_param_names_and_group_names_reach_the_optimizer():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 1))
    opt = build_optimizer("adamw", model, lr=1e-3, weight_decay=0.1, param_groups=[{"match": "1.*", "lr": 1e-2}])
    assert [(g["group_name"], g["param_names"], g["lr"], g["weight_decay"]) for g in opt.param_groups] == [
        ("default", ["0.weight"], 1e-3, 0.1),
        ("default/no_decay", ["0.bias"], 1e-3, 0.0),
        ("1.*", ["1.weight"], 1e-2, 0.1),
        ("1.*/no_decay", ["1.bias"], 1e-2, 0.0),
    ]


def test_adamw_default_weight_decay_turns_no_weight_decay_on():
    opt = build_optimizer("adamw", nn.Linear(2, 2))
    assert [g["group_name"] for g in opt.param_groups] == ["default", "default/no_decay"]
    assert len(build_optimizer("adamw", nn.Linear(2, 2), no_weight_decay=False).param_groups) == 1


def test_group_overrides_are_validated_and_normalised():
    a, b = torch.ones(2, requires_grad=True), torch.ones(2, requires_grad=True)
    opt = build_optimizer("adam", [{"params": [a]}, {"params": [b], "betas": [0.5, 0.6]}], lr=0.01)
    assert opt.param_groups[1]["betas"] == (0.5, 0.6)  # the options model's tuple, not the raw list
    with pytest.raises(ConfigError) as exc:
        build_optimizer("adam", [{"params": [a]}, {"params": [b], "betas": [0.5, 1.5]}], lr=0.01)
    path, message = only_error(exc.value)
    assert path == "groups.1.betas.1" and "less than 1" in message and "1.5" in message
    with pytest.raises(ConfigError) as exc:
        build_optimizer("sgd", [{"params": [a], "momentun": 0.9}], lr=0.01)
    path, message = only_error(exc.value)
    assert path == "groups.0.momentun" and "did you mean 'momentum'" in message


def test_rule_override_errors_name_the_rule():
    with pytest.raises(ConfigError) as exc:
        build_optimizer("sgd", nn.Linear(2, 2), lr=0.1, param_groups=[{"match": "bias", "lr": -1}])
    path, message = only_error(exc.value)
    assert path == "param_groups.0.lr" and "greater than 0" in message and "-1" in message


# -- option validation --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, options, path, words",
    [
        ("sgd", {"lr": 0}, "lr", ["greater than 0", "got 0"]),
        ("sgd", {"lr": 0.1, "momentum": -0.5}, "momentum", ["greater than or equal to 0"]),
        (
            "sgd",
            {"lr": 0.1, "nesterov": True},
            "options",
            ["nesterov needs momentum > 0 and dampening 0", "momentum=0.0"],
        ),
        ("sgd", {"lr": 0.1, "nesterov": True, "momentum": 0.9, "dampening": 0.1}, "options", ["dampening=0.1"]),
        ("adam", {"betas": (0.9, 1.0)}, "betas.1", ["less than 1", "got 1.0"]),
        ("adam", {"eps": 0}, "eps", ["greater than 0"]),
        ("adamw", {"weight_decay": -0.1}, "weight_decay", ["greater than or equal to 0"]),
        ("adam", {"foreach": True, "fused": True}, "options", ["foreach and fused cannot both be true"]),
        ("rmsprop", {"alpha": 1.0}, "alpha", ["less than 1"]),
        ("lbfgs", {"line_search_fn": "wolfe"}, "line_search_fn", ["strong_wolfe", "wolfe"]),
        ("lion", {"betas": (1.2, 0.99)}, "betas.0", ["less than 1"]),
    ],
)
def test_bad_option_values_name_option_value_and_what_is_allowed(name, options, path, words):
    with pytest.raises(ConfigError) as exc:
        build_optimizer(name, nn.Linear(2, 2), **options)
    got_path, message = only_error(exc.value)
    assert got_path == path
    for w in words:
        assert w in message
    assert isinstance(exc.value, GradloopError)
    assert str(exc.value).startswith(f"optimizer {name!r}: ")


def test_unknown_option_lists_allowed_with_did_you_mean():
    with pytest.raises(ConfigError) as exc:
        build_optimizer("sgd", nn.Linear(2, 2), lr=0.1, momentun=0.9)
    path, message = only_error(exc.value)
    assert path == "momentun"
    assert "sgd has no option 'momentun' (did you mean 'momentum'?)" in message
    assert "allowed: lr, momentum, dampening, weight_decay, nesterov" in message


def test_unknown_optimizer_name_suggests_close_one():
    with pytest.raises(GradloopError, match=r"unknown optimizer 'adamm'\. Did you mean 'adam'\?"):
        build_optimizer("adamm", nn.Linear(2, 2))


def test_options_json_schema_carries_the_ranges():
    props = registry.optimizers.options_schema("sgd")["properties"]
    assert props["lr"]["exclusiveMinimum"] == 0
    described = {o["name"]: o for o in registry.optimizers.get("adam").describe()["options"]}
    assert described["betas"]["default"] == [0.9, 0.999]


# -- from a run config --------------------------------------------------------------------------


def test_build_from_config_applies_rules_and_no_weight_decay():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    cfg = OptimizerConfig.model_validate(
        {
            "name": "sgd",
            "options": {"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4},
            "param_groups": [{"match": "0.*", "lr": 0.1}],
            "no_weight_decay": False,
        }
    )
    opt = build_optimizer_from_config(cfg, model)
    assert [(g["group_name"], g["lr"], g["momentum"]) for g in opt.param_groups] == [
        ("default", 0.05, 0.9),
        ("0.*", 0.1, 0.9),
    ]


def test_build_from_config_errors_use_config_paths():
    cfg = OptimizerConfig.model_validate(
        {"name": "sgd", "options": {"lr": 0.1}, "param_groups": [{"match": "*", "nesterov": True}]}
    )
    with pytest.raises(ConfigError) as exc:
        build_optimizer_from_config(cfg, nn.Linear(2, 2))
    path, message = only_error(exc.value)
    assert path == "optimizer.param_groups.0" and "nesterov needs momentum" in message


# -- state_dict ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["sgd", "adamw", "lion"])
def test_state_dict_round_trip_resumes_identically(name):
    def make() -> tuple[nn.Module, torch.optim.Optimizer]:
        model, _, _ = regression(seed=1)
        opts = {"sgd": {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.01}}.get(name, {"lr": 0.01})
        return model, build_optimizer(name, model, param_groups=[{"match": "bias", "lr": 0.02}], **opts)

    _, x, y = regression()
    model_a, opt_a = make()
    train(opt_a, model_a, x, y, 3)
    model_b, opt_b = make()
    model_b.load_state_dict(model_a.state_dict())
    state = copy.deepcopy(opt_a.state_dict())  # as after torch.save/load: no buffers shared with opt_a
    assert [g["param_names"] for g in state["param_groups"]][-1] == ["bias"]
    opt_b.load_state_dict(state)
    train(opt_a, model_a, x, y, 2)
    train(opt_b, model_b, x, y, 2)
    for pa, pb in zip(model_a.parameters(), model_b.parameters()):
        assert torch.equal(pa, pb)


# -- Lion, the third-party-style plugin -----------------------------------------------------------


def test_lion_arrives_through_its_entry_point_not_self_registration():
    import gradloop.plugins.optimizers.lion as lion_module

    plugin = registry.optimizers.get("lion")
    assert plugin.source == "entry point gradloop.plugins.optimizers.lion:plugin"
    assert plugin.factory is lion_module.plugin.factory
    registry.optimizers.reload()  # drops entry-point plugins and loads them again
    assert registry.optimizers.get("lion").source.startswith("entry point")


def test_lion_update_is_the_sign_of_interpolated_momentum():
    p = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    # no_weight_decay=False: a 1-D tensor would otherwise land in the weight_decay=0 group
    opt = build_optimizer("lion", p, lr=0.1, betas=(0.9, 0.99), weight_decay=0.5, no_weight_decay=False)
    p.grad = torch.tensor([0.5, -0.001, 0.0])
    opt.step()
    # m = 0: update = sign(0.1 * g); decay first: p * (1 - 0.1 * 0.5)
    expected = torch.tensor([1.0, -2.0, 3.0]) * 0.95 - 0.1 * torch.tensor([1.0, -1.0, 0.0])
    assert torch.allclose(p.detach(), expected)
    assert torch.allclose(opt.state[p]["exp_avg"], 0.01 * torch.tensor([0.5, -0.001, 0.0]))

"""gradloop.params: every accepted form of `params`, every rejection, and how groups are made."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradloop.config import ParamGroupRule
from gradloop.errors import GradloopError, ParamsError
from gradloop.params import build_param_groups, collect


def leaf(*shape: int) -> torch.Tensor:
    return torch.ones(*shape, requires_grad=True)


class Net(nn.Module):
    """Named like a small real model: an encoder, a norm and a head."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8))
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.encoder(x)))


def names(groups: list[dict]) -> list[list[str]]:
    return [g["param_names"] for g in groups]


# -- accepted forms -----------------------------------------------------------------------------


def test_single_tensor_becomes_one_named_group():
    w = leaf(4)
    [g] = build_param_groups(w)
    assert g["params"][0] is w
    assert g["param_names"] == ["params.0"]
    assert g["group_name"] == "default"


@pytest.mark.parametrize(
    "wrap", [list, tuple, lambda xs: (x for x in xs), iter], ids=["list", "tuple", "generator", "iterator"]
)
def test_sequences_of_tensors_keep_their_order(wrap):
    a, b, c = leaf(2), leaf(3), leaf(4)
    [g] = build_param_groups(wrap([a, b, c]))
    assert [id(t) for t in g["params"]] == [id(a), id(b), id(c)]
    assert g["param_names"] == ["params.0", "params.1", "params.2"]


def test_module_uses_its_parameter_names_in_model_order():
    net = Net()
    [g] = build_param_groups(net)
    assert g["param_names"] == [n for n, _ in net.named_parameters()]
    assert g["param_names"][0] == "encoder.0.weight"


def test_named_parameters_generator_and_dict_keep_names():
    net = Net()
    [from_gen] = build_param_groups(net.named_parameters())
    [from_dict] = build_param_groups(dict(net.named_parameters()))
    assert from_gen["param_names"] == from_dict["param_names"] == [n for n, _ in net.named_parameters()]


def test_param_group_dicts_keep_options_and_name_unnamed_tensors_by_position():
    a, b, c = leaf(2), leaf(2), leaf(2)
    groups = build_param_groups([{"params": [a]}, {"params": [b, c], "lr": 0.5, "group_name": "fast"}])
    assert [g["group_name"] for g in groups] == ["groups.0", "fast"]
    assert names(groups) == [["groups.0.params.0"], ["groups.1.params.0", "groups.1.params.1"]]
    assert groups[1]["lr"] == 0.5 and "lr" not in groups[0]


def test_a_single_group_dict_and_modules_inside_groups():
    net = Net()
    groups = build_param_groups([{"params": net.encoder}, {"params": net.head, "lr": 0.1}])
    assert names(groups)[1] == ["weight", "bias"]
    [one] = build_param_groups({"params": net.head, "lr": 0.2})
    assert one["lr"] == 0.2 and one["param_names"] == ["weight", "bias"]


def test_frozen_parameters_are_dropped():
    net = Net()
    for p in net.encoder.parameters():
        p.requires_grad_(False)
    [g] = build_param_groups(net)
    assert g["param_names"] == ["norm.weight", "norm.bias", "head.weight", "head.bias"]


# -- rejections --------------------------------------------------------------------------------


def test_all_frozen_module_names_module_and_count():
    lin = nn.Linear(3, 2)
    lin.requires_grad_(False)
    with pytest.raises(ParamsError, match=r"all 2 parameters of Linear are frozen") as exc:
        build_param_groups(lin)
    assert "empty parameter list" not in str(exc.value)
    assert isinstance(exc.value, GradloopError)


def test_frozen_single_tensor_and_frozen_list_say_so():
    with pytest.raises(ParamsError, match="the tensor passed as params does not require grad"):
        build_param_groups(torch.ones(3))
    with pytest.raises(ParamsError, match=r"all 2 tensors in params are frozen"):
        build_param_groups([torch.ones(3), torch.ones(2)])


def test_non_leaf_tensor_says_what_to_pass_instead():
    w = leaf(3)
    with pytest.raises(
        ParamsError,
        match=r"params\.1 is not a leaf tensor \(it was computed by MulBackward0\).*detach\(\)\.requires_grad_\(\)",
    ):
        build_param_groups([w, w * 2])


def test_non_tensor_names_type_and_position():
    with pytest.raises(ParamsError, match=r"params\.2 is a str, not a tensor"):
        build_param_groups([leaf(2), leaf(2), "bias"])
    with pytest.raises(ParamsError, match=r"groups\.1\.params\.0 is a int"):
        build_param_groups([{"params": [leaf(2)]}, {"params": [3]}])
    with pytest.raises(ParamsError, match=r"params\['w'\] is a float"):
        build_param_groups({"w": 1.0})
    with pytest.raises(ParamsError, match=r"params\.0 is a Linear.*pass the module itself"):
        build_param_groups([nn.Linear(2, 2)])


@pytest.mark.parametrize("bad", ["weights", None, 3.0], ids=["str", "None", "float"])
def test_things_that_are_not_params_at_all(bad):
    with pytest.raises(ParamsError, match=rf"params is a {type(bad).__name__}; pass a tensor"):
        build_param_groups(bad)


def test_set_is_rejected_as_unordered():
    with pytest.raises(ParamsError, match=r"params is a set, which has no order.*pass a list"):
        build_param_groups({leaf(2), leaf(3)})


def test_empty_input_is_rejected():
    with pytest.raises(ParamsError, match="params is empty"):
        build_param_groups([])


def test_parameter_in_two_groups_names_both_places():
    net = Net()
    with pytest.raises(
        ParamsError, match=r"one parameter is in two groups: groups\.0 \('0\.weight'\) and groups\.1 \('weight'\)"
    ):
        build_param_groups([{"params": net.encoder}, {"params": net.encoder[0]}])


def test_same_tensor_twice_in_one_list():
    w = leaf(2)
    with pytest.raises(ParamsError, match=r"params\.1 is the same tensor as params\.0"):
        build_param_groups([w, w])


def test_group_dict_without_params_key():
    with pytest.raises(ParamsError, match=r"groups\.1 has no 'params' key \(keys: lr\)"):
        build_param_groups([{"params": [leaf(2)]}, {"lr": 0.1}])


# -- rules, no_weight_decay, order ----------------------------------------------------------------


def test_rules_first_match_wins_and_default_group_comes_first():
    net = Net()
    groups = build_param_groups(net, rules=[{"match": "head.*", "lr": 0.1}, {"match": "*.weight", "lr": 0.2}])
    assert [g["group_name"] for g in groups] == ["default", "head.*", "*.weight"]
    assert names(groups) == [
        ["encoder.0.bias", "encoder.2.bias", "norm.bias"],
        ["head.weight", "head.bias"],
        ["encoder.0.weight", "encoder.2.weight", "norm.weight"],
    ]
    assert "lr" not in groups[0] and groups[1]["lr"] == 0.1 and groups[2]["lr"] == 0.2


def test_config_rule_models_are_accepted():
    net = Net()
    groups = build_param_groups(net, rules=[ParamGroupRule.model_validate({"match": "encoder.*", "lr": 0.3})])
    assert groups[1]["group_name"] == "encoder.*" and groups[1]["lr"] == 0.3


def test_rule_matching_nothing_names_pattern_and_real_names():
    with pytest.raises(
        ParamsError,
        match=r"'decoder\.\*' matches no parameter; parameter names look like: encoder\.0\.weight, encoder\.0\.bias",
    ):
        build_param_groups(Net(), rules=[{"match": "decoder.*", "lr": 0.1}])


def test_rule_shadowed_by_an_earlier_rule_is_reported():
    with pytest.raises(
        ParamsError,
        match=r"param_groups\.1 match 'encoder\.0\.\*' gets no parameter because an earlier rule \('encoder\.\*'\)",
    ):
        build_param_groups(Net(), rules=[{"match": "encoder.*"}, {"match": "encoder.0.*"}])


def test_rule_matching_only_frozen_parameters_is_allowed():
    net = Net()
    net.encoder.requires_grad_(False)
    groups = build_param_groups(net, rules=[{"match": "encoder.*", "lr": 0.1}])
    assert [g["group_name"] for g in groups] == ["default"]


def test_no_weight_decay_default_splits_biases_and_1d_params():
    net = Net()
    groups = build_param_groups(net, weight_decay=0.1)
    assert [g["group_name"] for g in groups] == ["default", "default/no_decay"]
    assert names(groups)[0] == ["encoder.0.weight", "encoder.2.weight", "head.weight"]
    assert names(groups)[1] == ["encoder.0.bias", "encoder.2.bias", "norm.weight", "norm.bias", "head.bias"]
    assert groups[1]["weight_decay"] == 0.0 and "weight_decay" not in groups[0]


def test_no_weight_decay_off_without_decay_or_when_false():
    assert len(build_param_groups(Net(), weight_decay=0.0)) == 1
    assert len(build_param_groups(Net(), weight_decay=0.1, no_weight_decay=False)) == 1


def test_no_weight_decay_applies_per_rule_group_and_uses_the_rules_weight_decay():
    net = Net()
    groups = build_param_groups(net, rules=[{"match": "head.*", "weight_decay": 0.5}], weight_decay=0.0)
    # no optimizer-wide decay, but the rule's own weight_decay is > 0: only the head splits
    assert [g["group_name"] for g in groups] == ["default", "head.*", "head.*/no_decay"]
    assert groups[1]["weight_decay"] == 0.5 and groups[2]["weight_decay"] == 0.0
    assert names(groups)[2] == ["head.bias"]


def test_rules_inside_explicit_groups_are_prefixed_by_the_group():
    net = Net()
    groups = build_param_groups(
        [{"params": net.encoder, "lr": 0.1}, {"params": net.head}], rules=[{"match": "*bias", "lr": 0.01}]
    )
    assert [g["group_name"] for g in groups] == ["groups.0", "groups.0/*bias", "groups.1", "groups.1/*bias"]
    assert groups[0]["lr"] == 0.1 and groups[1]["lr"] == 0.01


def test_collect_counts_frozen_names():
    net = Net()
    net.norm.requires_grad_(False)
    [src] = collect(net)
    assert src.frozen == ["norm.weight", "norm.bias"]


def test_groups_work_with_torch_state_dict_round_trip():
    net = Net()
    groups = build_param_groups(net, rules=[{"match": "head.*", "lr": 0.1}], weight_decay=0.01)
    opt = torch.optim.SGD(groups, lr=0.05, momentum=0.9, weight_decay=0.01)
    net(torch.randn(5, 4)).sum().backward()
    opt.step()
    state = opt.state_dict()
    assert [g["group_name"] for g in state["param_groups"]] == [
        "default",
        "default/no_decay",
        "head.*",
        "head.*/no_decay",
    ]
    assert state["param_groups"][0]["param_names"] == ["encoder.0.weight", "encoder.2.weight"]

    fresh = torch.optim.SGD(
        build_param_groups(net, rules=[{"match": "head.*", "lr": 0.1}], weight_decay=0.01),
        lr=0.05,
        momentum=0.9,
        weight_decay=0.01,
    )
    fresh.load_state_dict(state)
    for p in net.parameters():
        assert torch.equal(fresh.state[p]["momentum_buffer"], opt.state[p]["momentum_buffer"])
    assert fresh.param_groups[2]["lr"] == 0.1

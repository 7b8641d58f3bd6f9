"""Built-in model plugins: forward shapes, stable parameter names, option validation."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from gradloop.registry import models


def names(model: torch.nn.Module) -> list[str]:
    return [n for n, _ in model.named_parameters()]


def test_linear_shape_names_and_bias_option():
    m = models.build("linear", {"in_features": 5, "out_features": 3})
    assert m(torch.randn(4, 5)).shape == (4, 3)
    assert names(m) == ["layers.0.weight", "layers.0.bias"]
    no_bias = models.build("linear", {"in_features": 5, "out_features": 3, "bias": False})
    assert names(no_bias) == ["layers.0.weight"]


def test_mlp_names_follow_the_linear_layers_whatever_the_norm():
    base = {"in_features": 6, "hidden": [8, 4], "out_features": 2}
    plain = models.build("mlp", base)
    assert names(plain) == [f"layers.{i}.{p}" for i in range(3) for p in ("weight", "bias")]
    assert [tuple(p.shape) for p in plain.parameters()] == [(8, 6), (8,), (4, 8), (4,), (2, 4), (2,)]
    for norm in ("batch", "layer"):
        m = models.build("mlp", {**base, "norm": norm, "dropout": 0.2, "activation": "gelu"})
        assert names(m)[:6] == names(plain)
        assert names(m)[6:] == ["norms.0.weight", "norms.0.bias", "norms.1.weight", "norms.1.bias"]
        assert m(torch.randn(5, 6)).shape == (5, 2)


@pytest.mark.parametrize("act", ["relu", "gelu", "tanh", "silu"])
def test_mlp_activation_is_applied(act: str):
    torch.manual_seed(0)
    m = models.build("mlp", {"in_features": 3, "hidden": [4], "out_features": 1, "activation": act})
    x = torch.randn(7, 3)
    expected = getattr(torch.nn.functional, act)(m.layers[0](x))
    assert torch.allclose(m(x), m.layers[1](expected))


def test_mlp_dropout_only_in_training_mode():
    m = models.build("mlp", {"in_features": 16, "hidden": [64], "out_features": 4, "dropout": 0.5})
    x = torch.randn(8, 16)
    m.eval()
    assert torch.equal(m(x), m(x))
    m.train()
    torch.manual_seed(1)
    a = m(x)
    torch.manual_seed(2)
    assert not torch.equal(a, m(x))


def test_model_building_is_reproducible_under_a_seed():
    opts = {"in_features": 4, "hidden": [8], "out_features": 2}
    torch.manual_seed(3)
    a = models.build("mlp", opts)
    torch.manual_seed(3)
    b = models.build("mlp", opts)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_cnn_forward_and_names():
    m = models.build("cnn", {"in_channels": 1, "image_size": 8, "channels": [4, 6], "out_features": 10})
    assert m(torch.randn(3, 1, 8, 8)).shape == (3, 10)
    assert names(m) == ["convs.0.weight", "convs.0.bias", "convs.1.weight", "convs.1.bias", "head.weight", "head.bias"]
    assert m.head.in_features == 6 * 2 * 2
    normed = models.build(
        "cnn", {"in_channels": 3, "image_size": 16, "channels": [4], "out_features": 1, "norm": "batch", "dropout": 0.1}
    )
    assert normed(torch.randn(2, 3, 16, 16)).shape == (2, 1)
    assert "norms.0.weight" in names(normed)


def test_cnn_capability_describes_the_image_shape():
    caps = models.get("cnn").capabilities
    assert tuple(caps["in_option"]) == ("in_channels", "image_size", "image_size")
    assert models.get("mlp").capabilities["in_option"] == "in_features"
    assert models.get("linear").capabilities["out_option"] == "out_features"


@pytest.mark.parametrize(
    "name, options, field",
    [
        ("mlp", {"in_features": 4, "out_features": 2, "dropout": 1.0}, "dropout"),
        ("mlp", {"in_features": 4, "out_features": 2, "activation": "sigmoid"}, "activation"),
        ("mlp", {"in_features": 4, "out_features": 2, "hidden": [0]}, "hidden"),
        ("mlp", {"in_features": 4, "out_features": 2, "widths": [3]}, "widths"),
        ("linear", {"in_features": 0, "out_features": 2}, "in_features"),
        ("cnn", {"image_size": 4, "channels": [8, 8, 8], "out_features": 2}, "3 conv blocks"),
        ("cnn", {"image_size": 8, "out_features": 2, "kernel_size": 4}, "kernel_size must be odd"),
    ],
)
def test_bad_options_are_rejected(name: str, options: dict, field: str):
    with pytest.raises(ValidationError, match=field):
        models.parse_options(name, options)

"""Model/data/loss compatibility before training, model building (names and import paths), accuracy."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import torch

from gradloop.build import build_data, build_loss, build_model, check_compatible
from gradloop.config import ModelConfig, RunConfig
from gradloop.errors import ConfigError
from gradloop.val_metrics import build_metric_set


def run_config(model: dict, data: dict, loss: str = "cross_entropy", loss_options: dict | None = None) -> RunConfig:
    # model_validate, not load_config: these tests need no optimizer plugin to exist.
    return RunConfig.model_validate(
        {
            "model": model,
            "data": {"val_fraction": 0.25, **data},
            "loss": {"name": loss, "options": loss_options or {}},
            "optimizer": {"name": "sgd", "options": {"lr": 0.1}},
        }
    )


DIGITS = {"name": "sklearn", "options": {"dataset": "digits", "max_samples": 40}}
DIGITS_IMAGES = {"name": "sklearn", "options": {"dataset": "digits", "max_samples": 40, "as_images": True}}
DIABETES = {"name": "sklearn", "options": {"dataset": "diabetes", "max_samples": 40}}


def check(cfg: RunConfig, with_model: bool = True) -> None:
    splits = build_data(cfg.data, cfg.seed)
    check_compatible(cfg, splits, build_model(cfg.model) if with_model else None)


def messages(exc: pytest.ExceptionInfo[ConfigError]) -> dict[str, str]:
    return {e.path: e.message for e in exc.value.errors}


def test_matching_config_passes():
    check(run_config({"name": "mlp", "options": {"in_features": 64, "hidden": [16], "out_features": 10}}, DIGITS))
    check(run_config({"name": "cnn", "options": {"image_size": 8, "channels": [4], "out_features": 10}}, DIGITS_IMAGES))
    check(run_config({"name": "linear", "options": {"in_features": 10, "out_features": 1}}, DIABETES, loss="huber"))


def test_feature_and_class_mismatches_name_both_numbers_and_the_keys():
    cfg = run_config({"name": "mlp", "options": {"in_features": 32, "out_features": 3}}, DIGITS)
    with pytest.raises(ConfigError) as exc:
        check(cfg)
    assert messages(exc) == {
        "model.options.in_features": (
            "data has 64 features but model.options.in_features is 32; set model.options.in_features: 64"
        ),
        "model.options.out_features": (
            "data has 10 classes but model.options.out_features is 3; set model.options.out_features: 10"
        ),
    }


def test_regression_and_binary_output_counts():
    cfg = run_config({"name": "linear", "options": {"in_features": 10, "out_features": 2}}, DIABETES, loss="mse")
    with pytest.raises(
        ConfigError,
        match="data has 1 regression target but model.options.out_features is 2; set model.options.out_features: 1",
    ):
        check(cfg)
    binary = {"name": "synthetic_classification", "options": {"n_samples": 20, "n_features": 3, "binary": True}}
    cfg = run_config(
        {"name": "linear", "options": {"in_features": 3, "out_features": 2}}, binary, loss="bce_with_logits"
    )
    with pytest.raises(ConfigError, match="data is binary .* set model.options.out_features: 1"):
        check(cfg)


def test_loss_for_the_wrong_task():
    cfg = run_config(
        {"name": "linear", "options": {"in_features": 10, "out_features": 1}}, DIABETES, loss="cross_entropy"
    )
    with pytest.raises(ConfigError) as exc:
        check(cfg, with_model=False)
    assert messages(exc)["loss.name"] == (
        "cross_entropy is a classification loss but the data is a regression dataset; set loss.name to one of: huber, "
        "l1, mse"
    )
    cfg = run_config({"name": "linear", "options": {"in_features": 64, "out_features": 10}}, DIGITS, loss="mse")
    with pytest.raises(
        ConfigError,
        match="mse is a regression loss but the data is a classification dataset; set loss.name to one of: "
        "cross_entropy",
    ):
        check(cfg, with_model=False)


def test_class_weights_must_cover_every_class():
    cfg = run_config(
        {"name": "linear", "options": {"in_features": 64, "out_features": 10}},
        DIGITS,
        loss_options={"class_weights": [1.0, 2.0]},
    )
    with pytest.raises(
        ConfigError, match="loss.options.class_weights: data has 10 classes but .* has 2 weights; give exactly 10"
    ):
        check(cfg)


def test_images_against_flat_models_and_back():
    flat_model = run_config({"name": "mlp", "options": {"in_features": 64, "out_features": 10}}, DIGITS_IMAGES)
    with pytest.raises(ConfigError, match=r"data samples have shape \(1, 8, 8\) but mlp takes flat vectors"):
        check(flat_model)
    image_model = run_config({"name": "cnn", "options": {"image_size": 8, "out_features": 10}}, DIGITS)
    with pytest.raises(ConfigError, match="data has 64 flat features but cnn takes samples of shape"):
        check(image_model)


def test_cnn_shape_mismatch_names_the_option_to_change():
    cfg = run_config(
        {"name": "cnn", "options": {"in_channels": 3, "image_size": 16, "channels": [4], "out_features": 10}},
        DIGITS_IMAGES,
    )
    with pytest.raises(ConfigError) as exc:
        check(cfg)
    msgs = messages(exc)
    assert msgs["model.options.in_channels"].endswith("set model.options.in_channels: 1")
    assert msgs["model.options.image_size"].endswith("set model.options.image_size: 8")
    assert "(1, 8, 8)" in msgs["model.options.image_size"] and "(3, 16, 16)" in msgs["model.options.image_size"]


def test_trial_forward_leaves_the_model_as_it_was():
    cfg = run_config(
        {"name": "mlp", "options": {"in_features": 64, "hidden": [8], "out_features": 10, "norm": "batch"}}, DIGITS
    )
    model = build_model(cfg.model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    check_compatible(cfg, build_data(cfg.data, 0), model)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BN running stats too


# -- import-path models -------------------------------------------------------------------


@pytest.fixture
def user_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    module = "gradloop_test_user_models"
    (tmp_path / f"{module}.py").write_text(
        textwrap.dedent("""
        import torch
        from torch import nn

        def make(in_features, out_features, width=8):
            return nn.Sequential(nn.Linear(in_features, width), nn.ReLU(), nn.Linear(width, out_features))

        class Squeezed(nn.Module):
            def __init__(self, n):
                super().__init__()
                self.fc = nn.Linear(n, 1)
            def forward(self, x):
                return self.fc(x).squeeze(-1)

        def not_a_model():
            return "model"
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield module
    sys.modules.pop(module, None)


def test_import_path_model_is_built_with_its_options(user_models: str):
    model = build_model(
        ModelConfig(name=f"{user_models}:make", options={"in_features": 64, "out_features": 10, "width": 5})
    )
    assert [n for n, _ in model.named_parameters()] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert model[0].out_features == 5
    check(run_config({"name": f"{user_models}:make", "options": {"in_features": 64, "out_features": 10}}, DIGITS))


def test_import_path_model_checked_by_a_trial_forward(user_models: str):
    wrong_in = run_config({"name": f"{user_models}:make", "options": {"in_features": 10, "out_features": 10}}, DIGITS)
    with pytest.raises(ConfigError, match=r"model.name: .*:make fails on a batch of data samples of shape \(64,\)"):
        check(wrong_in)
    squeezed = run_config({"name": f"{user_models}:Squeezed", "options": {"n": 10}}, DIABETES, loss="mse")
    with pytest.raises(ConfigError, match=r"returns \(2,\) for a batch of 2, .* must return \(2, 1\)"):
        check(squeezed)


def test_import_path_model_errors(user_models: str):
    with pytest.raises(ConfigError, match="model.options: .* cannot be called with these options"):
        build_model(ModelConfig(name=f"{user_models}:make", options={"in_features": 3, "out_features": 1, "depth": 2}))
    with pytest.raises(ConfigError, match="returned a str, not a torch.nn.Module"):
        build_model(ModelConfig(name=f"{user_models}:not_a_model"))
    with pytest.raises(ConfigError, match="has no attribute 'nope'"):
        build_model(ModelConfig(name=f"{user_models}:nope"))


def test_registered_model_and_loss_building():
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="linear", options={"in_features": 2, "out_features": 1}))
    assert model(torch.ones(1, 2)).shape == (1, 1)
    assert (
        build_loss(run_config({"name": "linear"}, DIGITS, loss="huber", loss_options={"delta": 2.0}).loss).delta == 2.0
    )


# -- accuracy -----------------------------------------------------------------------------


def test_default_accuracy_counts_correct_predictions():
    count = build_metric_set(None, "classification", 2, 2)
    count.update(torch.tensor([[0.1, 2.0], [3.0, 0.0], [0.0, 1.0]]), torch.tensor([1, 1, 1]))
    assert count.compute()["val/accuracy"].item() == pytest.approx(2 / 3)
    binary = build_metric_set(None, "binary", None, 1)
    binary.update(torch.tensor([[0.5], [-1.0], [2.0]]), torch.tensor([[1.0], [1.0], [0.0]]))
    assert binary.compute()["val/accuracy"].item() == pytest.approx(1 / 3)
    assert "accuracy" not in build_metric_set(None, "regression", None, 1).scalar_keys()

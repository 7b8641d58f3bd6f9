"""Token-level cross entropy with padding: a window's loss is the mean over all of its real
tokens, so accumulating micro-batches with different amounts of padding equals one big batch."""

from __future__ import annotations

import pytest
import torch
from pydantic import BaseModel, ConfigDict

import tests.support.trainer_helpers as h
from gradloop import registry, train
from gradloop.data import DataContext, DataSplits, TensorData
from gradloop.outputs import IGNORE_INDEX
from gradloop.plugins.losses.cross_entropy import CrossEntropy

VOCAB, T = 11, 6


class PaddedOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


@registry.datasets.register("padded_tokens", options=PaddedOptions, override=True, description="tests")
def padded_tokens(*, options: PaddedOptions, ctx: DataContext) -> DataSplits:
    g = torch.Generator().manual_seed(7)
    x = torch.randint(0, VOCAB, (8, T), generator=g)
    y = torch.randint(0, VOCAB, (8, T), generator=g)
    for i, real in enumerate([6, 1, 5, 2, 6, 3, 4, 1]):  # very uneven padding between micro-batches
        y[i, real:] = IGNORE_INDEX
    return DataSplits(TensorData(x, y), None, "classification", T, VOCAB, VOCAB)


def _run(tmp_path, name: str, batch_size: int, accum: int, weights: list[float] | None = None):
    loss = {"name": "cross_entropy", "options": {"class_weights": weights} if weights else {}}
    cfg = h.base_config(
        tmp_path / name,
        model={
            "name": "gpt",
            "options": {"vocab_size": VOCAB, "block_size": T, "n_layer": 1, "n_head": 2, "n_embd": 8},
        },
        data={"name": "padded_tokens", "batch_size": batch_size, "val_fraction": 0.0, "shuffle": False},
        loss=loss,
        optimizer={"name": "sgd", "options": {"lr": 0.5}},
        trainer__grad_accum_steps=accum,
        trainer__epochs=2,
        trainer__val_every_epochs=0,
    )
    result = train(cfg)
    return h.model_state(result.checkpoint_path)


@pytest.mark.parametrize("weights", [None, [1.0, 2.0, 0.5, 1.0, 1.0, 3.0, 1.0, 1.0, 0.2, 1.0, 1.0]])
def test_accumulated_token_windows_equal_one_batch(tmp_path, weights):
    big = _run(tmp_path, "big", 4, 1, weights)
    small = _run(tmp_path, "small", 1, 4, weights)  # windows of 4 sequences with 6, 1, 5, 2 real tokens
    for name in big:
        torch.testing.assert_close(small[name], big[name], rtol=1e-5, atol=1e-6)
    # The runs did train: the first weights moved.
    assert not torch.allclose(big["wte.weight"], _initial_embedding(), atol=1e-3)


def _initial_embedding() -> torch.Tensor:
    from gradloop.plugins.models.gpt import GPT, GPTOptions

    torch.manual_seed(3)  # the runs' seed: the model is built right after seeding
    return GPT(GPTOptions(vocab_size=VOCAB, block_size=T, n_layer=1, n_head=2, n_embd=8)).wte.weight.detach()


def test_the_window_loss_is_the_mean_over_its_tokens_not_a_mean_of_means():
    torch.manual_seed(0)
    logits = torch.randn(2, T, VOCAB, requires_grad=True)
    y = torch.randint(0, VOCAB, (2, T))
    y[0, 1:] = IGNORE_INDEX  # 1 real token in the first sequence, 6 in the second
    ce = CrossEntropy(0.0, None)
    whole = torch.autograd.grad(ce(logits, y), logits)[0]
    units = [ce.units(y[:1]), ce.units(y[1:])]
    total = units[0] + units[1]
    shared = torch.autograd.grad(
        ce(logits[:1], y[:1]) * units[0] / total + ce(logits[1:], y[1:]) * units[1] / total, logits
    )[0]
    torch.testing.assert_close(shared, whole)
    naive = torch.autograd.grad((ce(logits[:1], y[:1]) + ce(logits[1:], y[1:])) / 2, logits)[0]
    assert not torch.allclose(naive, whole, atol=1e-4)
    # A micro-batch that is all padding counts for nothing (no NaN).
    empty = torch.full((1, T), IGNORE_INDEX)
    assert ce(logits[:1], empty).item() == 0.0 and ce.units(empty).item() == 0.0

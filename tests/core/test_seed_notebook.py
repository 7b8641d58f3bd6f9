"""The seed notebook's autograd lessons (/work/shared/seed), as tests of gradloop's own code.

The notebook ends on `torch.optim.SGD(weights, lr=0.01)` raising TypeError; gradloop's
build_optimizer is the fix. The other lessons (accumulating .grad, vector-Jacobian products,
keeping updates out of the graph) are what gradloop's optimizer path must respect.
"""

from __future__ import annotations

import pytest
import torch
from torch.autograd.functional import jacobian

from gradloop import build_optimizer


def model_output(weights: torch.Tensor) -> torch.Tensor:
    return (weights * 3).sum()  # the notebook's "dummy operation to simulate some model output"


def test_a_loop_that_never_zeroes_accumulates_3_6_9():
    weights = torch.ones(4, requires_grad=True)
    seen = []
    for _ in range(3):
        model_output(weights).backward()
        seen.append(weights.grad.clone())
    assert [g.tolist() for g in seen] == [[3.0] * 4, [6.0] * 4, [9.0] * 4]


def test_gradloops_optimizer_path_sees_3_3_3_and_steps_with_it():
    weights = torch.ones(4, requires_grad=True)
    optimizer = build_optimizer("sgd", weights, lr=0.01)
    seen = []
    for _ in range(3):
        model_output(weights).backward()
        seen.append(weights.grad.clone())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        assert weights.grad is None  # set_to_none: nothing left to accumulate into
    assert [g.tolist() for g in seen] == [[3.0] * 4, [3.0] * 4, [3.0] * 4]
    # three SGD steps of lr * 3 each; with accumulated grads it would be 1 - 0.01 * (3 + 6 + 9)
    assert torch.allclose(weights.detach(), torch.full((4,), 1 - 3 * 0.03))


def test_the_notebooks_failing_call_works_through_build_optimizer():
    weights = torch.ones(4, requires_grad=True)
    with pytest.raises(TypeError):
        torch.optim.SGD(weights, lr=0.01)  # the notebook's error: a tensor is not an iterable of params
    optimizer = build_optimizer("sgd", weights, lr=0.01)
    model_output(weights).backward()
    optimizer.step()
    optimizer.zero_grad()
    assert optimizer.param_groups[0]["params"][0] is weights
    assert torch.allclose(weights.detach(), torch.full((4,), 0.97))


def test_a_list_of_two_tensors_works_too():
    weights = torch.ones(4, requires_grad=True)
    weights2 = torch.ones(5, requires_grad=True)
    optimizer = build_optimizer("sgd", [weights, weights2], lr=0.01)
    assert optimizer.param_groups[0]["param_names"] == ["params.0", "params.1"]
    (model_output(weights) + (weights2 * 2).sum()).backward()
    optimizer.step()
    assert torch.allclose(weights.detach(), torch.full((4,), 0.97))
    assert torch.allclose(weights2.detach(), torch.full((5,), 0.98))


def test_scalar_backward_gives_dz_dx():
    x = torch.tensor([0.1929, -0.2860, 2.6335], requires_grad=True)  # the notebook's x
    z = ((x + 2) * (x + 2) * 2).mean()
    z.backward()
    assert torch.allclose(x.grad, 4 * (x.detach() + 2) / 3)


def test_backward_with_a_vector_is_the_vector_jacobian_product():
    torch.manual_seed(0)
    x = torch.randn(3, requires_grad=True)
    v = torch.tensor([0.1, 1.0, 0.001])

    def f(t: torch.Tensor) -> torch.Tensor:
        y = t + 2
        return y * y * 2 + t.roll(1)  # roll: a non-diagonal Jacobian, so the order of v @ J matters

    f(x).backward(v)
    J = jacobian(f, x.detach())
    assert torch.allclose(x.grad, v @ J)
    assert not torch.allclose(x.grad, J @ v)


def test_non_scalar_backward_without_a_vector_fails_as_the_notebook_says():
    x = torch.randn(3, requires_grad=True)
    with pytest.raises(RuntimeError, match="implicitly created only for scalar outputs"):
        ((x + 2) * 2).backward()


def test_updates_under_no_grad_stay_out_of_the_graph():
    w = torch.ones(3, requires_grad=True)
    model_output(w).backward()
    with torch.no_grad():
        w -= 0.1 * w.grad
        z = w + 2
    assert w.is_leaf and w.grad_fn is None and z.grad_fn is None and not z.requires_grad
    w.grad = None
    model_output(w).backward()
    assert torch.equal(w.grad, torch.full((3,), 3.0))  # the update left no trace in the next gradient


def test_detach_and_requires_grad_false_stay_out_of_the_graph():
    x = torch.randn(3, requires_grad=True)
    y = x.detach()
    assert not y.requires_grad and y.grad_fn is None
    assert y.data_ptr() == x.data_ptr()  # same storage, no history
    x.requires_grad_(False)
    z = x * 2 + 1
    assert z.grad_fn is None and not z.requires_grad


def test_gradloops_optimizer_step_leaves_parameters_as_leaves():
    weights = torch.ones(4, requires_grad=True)
    optimizer = build_optimizer("sgd", weights, lr=0.01, momentum=0.9)
    for _ in range(2):
        model_output(weights).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    assert weights.is_leaf and weights.grad_fn is None and weights.requires_grad

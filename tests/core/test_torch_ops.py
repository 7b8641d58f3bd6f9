"""gradloop.torch_ops: each fused private torch call and its public fallback give the same answers."""

from __future__ import annotations

import pytest
import torch

from gradloop import torch_ops

DTYPES = [torch.float32, torch.float64, torch.bfloat16]


def _tensors(dtype: torch.dtype, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = [(7,), (3, 5), (2, 3, 4), (1,), (64, 33)]
    return [(torch.randn(s, generator=g) * 10 ** (i - 2)).to(dtype) for i, s in enumerate(shapes)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_foreach_norm(dtype: torch.dtype) -> None:
    ts = _tensors(dtype)
    fused = torch_ops.foreach_norm(ts, fused=True)
    public = torch_ops.foreach_norm(ts, fused=False)
    assert [n.dtype for n in fused] == [n.dtype for n in public] == [dtype] * len(ts)
    tol = {"rtol": 1e-2, "atol": 1e-6} if dtype == torch.bfloat16 else {"rtol": 1e-6, "atol": 1e-9}
    torch.testing.assert_close(torch.stack(fused), torch.stack(public), **tol)
    # and both are the norm: against float64 maths
    exact = torch.stack([t.double().pow(2).sum().sqrt() for t in ts])
    torch.testing.assert_close(torch.stack(public).double(), exact, **tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("bad", [None, float("inf"), float("-inf"), float("nan")], ids=repr)
def test_flag_non_finite(dtype: torch.dtype, bad: float | None) -> None:
    answers = []
    for fused in (True, False):
        ts = _tensors(dtype)
        if bad is not None:
            ts[2][1, 2, 3] = bad
        before = [t.clone() for t in ts]
        found = torch.zeros(1)
        torch_ops.flag_non_finite(ts, found, torch.ones(1), fused=fused)
        answers.append(found.item())
        for t, b in zip(ts, before):  # the tensors are left as they were (scaled by 1)
            torch.testing.assert_close(t, b, equal_nan=True, rtol=0, atol=0)
    assert answers == [0.0, 0.0] if bad is None else answers == [1.0, 1.0]


def test_flag_non_finite_leaves_an_earlier_flag() -> None:
    for fused in (True, False):
        found = torch.ones(1)
        torch_ops.flag_non_finite(_tensors(torch.float32), found, torch.ones(1), fused=fused)
        assert found.item() == 1.0


def test_foreach_copy_and_sub() -> None:
    src = _tensors(torch.float32, seed=1)
    results = []
    for fused in (True, False):
        dst = _tensors(torch.float32, seed=2)
        torch_ops.foreach_sub_(dst, src, fused=fused)
        diff = [d.clone() for d in dst]
        torch_ops.foreach_copy_(dst, src, fused=fused)
        results.append((diff, [d.clone() for d in dst]))
    (diff_f, copy_f), (diff_p, copy_p) = results
    for a, b in zip(diff_f, diff_p):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for a, b, s in zip(copy_f, copy_p, src):
        assert torch.equal(a, s) and torch.equal(b, s)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_foreach_max(dtype: torch.dtype) -> None:
    ts = _tensors(dtype)
    fused = torch.stack(torch_ops.foreach_max(ts, fused=True))
    public = torch.stack(torch_ops.foreach_max(ts, fused=False))
    assert torch.equal(fused, public)


def test_the_default_uses_the_fused_kernel_when_torch_has_it(monkeypatch: pytest.MonkeyPatch) -> None:
    ts = _tensors(torch.float32)
    expected = torch.stack(torch_ops.foreach_norm(ts, fused=False))
    monkeypatch.delattr(torch, "_foreach_norm")  # a torch without it: the public fallback answers
    torch.testing.assert_close(torch.stack(torch_ops.foreach_norm(ts)), expected)

"""Seeding and random-number-generator state: what makes a run reproducible and resumable.

`seed_everything` fixes every global generator a run draws from (torch CPU and CUDA, numpy,
Python's `random`). `capture_rng_state` / `restore_rng_state` move those generators' states in and
out of a checkpoint as plain tensors, ints and lists, so that a checkpoint loads with
`torch.load(weights_only=True)` and dropout after a resume draws the same masks as an
uninterrupted run would have.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any, cast

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and every CUDA device), numpy and Python's random with `seed`."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed mixed from `parts` (e.g. the run's seed and an epoch).

    Hashing instead of adding keeps (seed=1, epoch=0) and (seed=0, epoch=1) apart.
    """
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def capture_rng_state() -> dict[str, Any]:
    """The state of every global generator, in types that `weights_only` loading accepts."""
    legacy = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state(legacy=True))  # (the tuple form)
    kind, keys, pos, has_gauss, cached = legacy
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": _python_state_to_plain(random.getstate()),
        "cuda": None,
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Put the generators back where `capture_rng_state` found them.

    Every tensor is brought to the host first: a checkpoint loaded with map_location=cuda has
    put these states on the GPU too, but they belong to host-side generators.
    """
    torch.set_rng_state(state["torch"].cpu())
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["kind"],
            np_state["keys"].cpu().numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    random.setstate(_python_state_from_plain(state["python"]))
    cuda = state.get("cuda")
    # A checkpoint from a CUDA machine resumed on CPU (or on fewer GPUs) has nowhere to put
    # those states; the CPU generator, which drives CPU dropout, is restored regardless.
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


def _python_state_to_plain(st: tuple) -> list:
    version, internal, gauss_next = st
    return [int(version), list(internal), gauss_next]


def _python_state_from_plain(st: list) -> tuple:
    version, internal, gauss_next = st
    return (int(version), tuple(int(v) for v in internal), gauss_next)


__all__ = ["seed_everything", "derive_seed", "capture_rng_state", "restore_rng_state"]

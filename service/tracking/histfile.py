"""Histogram files, and counting on the host with numpy (no torch: the store's child process,
which imports MLflow and numpy but not torch, counts CPU runs' histograms with it).

One file per recorded step, histograms/step_000100.json: for every parameter, the gradient's and
the weight's min, max and bin counts (equal-width bins between the two). `count` bins a
concatenation of tensors, each over its own range, in one pass: each element's bin is offset
by its tensor's index times `bins`, so one bincount counts every tensor. histograms._count does
the same with torch kernels on the tensors' device; both bin alike (tested): non-finite values
count as 0, and an element equal to its tensor's max goes in the last bin, as with torch.histc.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import orjson

BINS = 30


def file_name(step: int) -> str:
    return f"step_{step:06d}.json"


def to_json(step: int, labels: list[str], table: list[list[float]]) -> dict:
    """Rows per label: a gradient row, then a weight row, each [min, max, count_0 ...]."""
    layers = {}
    for i, name in enumerate(labels):
        g, w = table[2 * i], table[2 * i + 1]
        layers[name] = {
            "grad": {"min": g[0], "max": g[1], "counts": _ints(g[2:])},
            "weight": {"min": w[0], "max": w[1], "counts": _ints(w[2:])},
        }
    return {"step": step, "bins": len(table[0]) - 2 if table else 0, "layers": layers}


def _ints(values: list) -> list[int]:
    """Counts as ints; counts read from an integer array are ints already."""
    return values if values and type(values[0]) is int else [int(v) for v in values]


def encode(step: int, labels: list[str], table: list[list[float]]) -> bytes:
    return orjson.dumps(to_json(step, labels, table))


def count(flat: np.ndarray, sizes: tuple[int, ...], bins: int = BINS) -> list[list[float]]:
    """Rows [min, max, count_0 .. count_{bins-1}], one per consecutive segment of `flat`."""
    flat = np.nan_to_num(flat.astype(np.float32, copy=False), nan=0.0, posinf=0.0, neginf=0.0)
    starts, segment = _segments(sizes)
    lo = np.minimum.reduceat(flat, starts)
    hi = np.maximum.reduceat(flat, starts)
    per_bin = (np.float32(bins) / np.maximum(hi - lo, np.float32(1e-30))).astype(np.float32)
    position = (flat - lo[segment]) * per_bin[segment]
    index = np.clip(position.astype(np.int64), 0, bins - 1) + segment * bins
    counts = np.bincount(index, minlength=len(sizes) * bins).reshape(len(sizes), bins)
    return [[float(a), float(b)] + c for a, b, c in zip(lo, hi, counts.tolist())]


@functools.lru_cache(maxsize=8)  # the same model's sizes come back every histogram step
def _segments(sizes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Where each segment starts, and each element's segment index."""
    sizes_arr = np.asarray(sizes, dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes_arr)[:-1]]).astype(np.int64)
    return starts, np.repeat(np.arange(len(sizes), dtype=np.int64), sizes_arr)


def count_and_write(directory: str, items: list[tuple[int, list[str], tuple[int, ...], bytes]], bins: int) -> list[str]:
    """Count float32 concatenations and write their files; returns one message per failure
    (one file that cannot be written does not stop the others)."""
    errors: list[str] = []
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    for step, labels, sizes, data in items:
        try:
            table = count(np.frombuffer(data, dtype=np.float32), tuple(sizes), bins)
            (folder / file_name(step)).write_bytes(encode(step, labels, table))
        except Exception as exc:  # reported back: the parent counts it as a failed histogram
            errors.append(f"{type(exc).__name__}: {exc}")
    return errors

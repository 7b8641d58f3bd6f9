"""End-of-run PNGs for the MLflow artifact view: loss curves, a gradient-norm heatmap, and the
validation confusion matrix.

The curves and the heatmap are drawn from the run's metrics.jsonl (every point the run computed,
sent or not), the confusion matrix from the JSON file the trainer saved (MetricSet.save_matrices),
with matplotlib's Agg backend so that no display is needed. A tracked run's are drawn by the
store's process at the end of the run (or by `gradloop sync`): the training process never imports
matplotlib for them. Only an untracked run, which has no store's process, draws its confusion
matrix itself. The heatmap shows log10 of each layer's gradient norm (rows) over optimizer steps
(columns): vanishing gradients are a dark band, exploding ones a bright one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

from gradloop.tracking.jsonl import Record, read_records  # noqa: E402

GRAD_PREFIX = "grad_norm/"


def draw(journal: Path, directory: Path, title: str = "") -> Path | None:
    """Both plots of a journal into `directory`; None when there is nothing to draw."""
    records = list(read_records(journal))
    drawn = [
        loss_curves(records, directory / "loss_curves.png", title),
        grad_norm_heatmap(records, directory / "grad_norm_heatmap.png", f"{title}: gradient norm per layer"),
    ]
    return directory if any(drawn) else None


def series(records: Iterable[Record], key: str) -> tuple[list[int], list[float]]:
    by_step: dict[int, float] = {}
    for r in records:
        if key in r.metrics:
            by_step[r.step] = r.metrics[key]  # a re-logged step keeps its latest value
    steps = sorted(by_step)
    return steps, [by_step[s] for s in steps]


def loss_curves(records: list[Record], path: Path, title: str = "") -> Path | None:
    train = series(records, "train/loss")
    val = series(records, "val/loss")
    acc = series(records, "val/accuracy")
    if not train[0] and not val[0]:
        return None
    ncols = 2 if acc[0] else 1
    fig, axes = plt.subplots(1, ncols, figsize=(6 * ncols, 4), squeeze=False)
    ax = axes[0][0]
    if train[0]:
        ax.plot(*train, label="train/loss", color="tab:blue")
    if val[0]:
        ax.plot(*val, label="val/loss", color="tab:orange", marker="o")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title("loss")
    values = [v for v in train[1] + val[1] if math.isfinite(v)]
    if values and min(values) > 0 and max(values) / min(values) > 50:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    if acc[0]:
        ax2 = axes[0][1]
        ax2.plot(*acc, label="val/accuracy", color="tab:green", marker="o")
        ax2.set_xlabel("optimizer step")
        ax2.set_ylabel("accuracy")
        ax2.set_title("validation accuracy")
        ax2.grid(alpha=0.3)
        ax2.legend()
    if title:
        fig.suptitle(title)
    # Fixed margins instead of tight_layout, which lays every tick label out once more to
    # measure it: that pass was a third of the plots' CPU time at the end of each run.
    width = 6.0 * ncols
    fig.subplots_adjust(left=0.8 / width, right=1 - 0.2 / width, bottom=0.12, top=0.84 if title else 0.9, wspace=0.25)
    return _save(fig, path)


def grad_norm_heatmap(records: list[Record], path: Path, title: str = "") -> Path | None:
    layers: list[str] = []
    for r in records:
        for k in r.metrics:
            if k.startswith(GRAD_PREFIX) and k[len(GRAD_PREFIX) :] not in layers:
                layers.append(k[len(GRAD_PREFIX) :])
    if not layers:
        return None
    steps = sorted({r.step for r in records if any(k.startswith(GRAD_PREFIX) for k in r.metrics)})
    col = {s: i for i, s in enumerate(steps)}
    row = {name: i for i, name in enumerate(layers)}
    grid = [[math.nan] * len(steps) for _ in layers]
    for r in records:
        for k, v in r.metrics.items():
            if k.startswith(GRAD_PREFIX) and r.step in col:
                grid[row[k[len(GRAD_PREFIX) :]]][col[r.step]] = (
                    math.log10(v) if v > 0 and math.isfinite(v) else math.nan
                )
    fig, ax = plt.subplots(figsize=(max(6.0, min(14.0, 0.08 * len(steps) + 4)), max(2.5, 0.35 * len(layers) + 1.5)))
    # Columns are evenly spaced logging steps: centre each column on its step.
    half = (steps[-1] - steps[0]) / (2 * (len(steps) - 1)) if len(steps) > 1 else 0.5
    image = ax.imshow(
        grid,
        aspect="auto",
        interpolation="nearest",
        cmap="viridis",
        extent=(steps[0] - half, steps[-1] + half, len(layers) - 0.5, -0.5),
    )
    ax.set_yticks(range(len(layers)))
    ax.set_yticklabels(layers, fontsize=8)
    ax.set_xlabel("optimizer step")
    ax.set_title(title or "gradient norm per layer")
    fig.colorbar(image, ax=ax, label="log10 ||grad||")
    width, height = fig.get_size_inches()
    # Room on the left for the longest layer name (8-point labels: about 0.075 inch a character).
    left = min(0.6, (0.3 + 0.075 * max(map(len, layers))) / width)
    fig.subplots_adjust(left=left, right=0.98, bottom=0.55 / height + 0.05, top=1 - 0.45 / height)
    return _save(fig, path)


def confusion_matrix_png(matrix: Any, path: Path, title: str = "", class_names: Sequence[str] | None = None) -> Path:
    """Rows are true classes, columns predicted ones; each cell shows its value when they fit."""
    values = [[float(v) for v in row] for row in (matrix.tolist() if hasattr(matrix, "tolist") else matrix)]
    n = len(values)
    names = list(class_names) if class_names and len(class_names) == n else [str(i) for i in range(n)]
    side = max(4.0, min(16.0, 0.45 * n + 2.5))
    fig, ax = plt.subplots(figsize=(side + 1.0, side))
    image = ax.imshow(values, interpolation="nearest", cmap="Blues")
    if n <= 30:
        ax.set_xticks(range(n))
        ax.set_xticklabels(names, rotation=90, fontsize=8)
        ax.set_yticks(range(n))
        ax.set_yticklabels(names, fontsize=8)
    if n <= 20:
        top = max((v for row in values for v in row), default=0.0)
        integral = all(v == int(v) for row in values for v in row)
        for i, row in enumerate(values):
            for j, v in enumerate(row):
                text = f"{int(v)}" if integral else f"{v:.2f}"
                ax.text(j, i, text, ha="center", va="center", fontsize=7, color="white" if v > top / 2 else "black")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title or "confusion matrix")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    return _save(fig, path)


def matrix_png(data: Path, path: Path) -> Path:
    """The matrix MetricSet.save_matrices wrote to `data`, drawn to `path`."""
    saved = json.loads(Path(data).read_text())
    return confusion_matrix_png(saved["matrix"], path, saved.get("title", ""), saved.get("class_names") or None)


def _save(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

"""Per-layer histograms of gradients and weights (MLflow has no histogram type).

Each recorded step becomes one JSON file, histograms/step_000100.json, logged as an artifact:
for every parameter, the gradient's and the weight's min, max and bin counts. The counts are
computed on the device without a host round trip per parameter: each tensor is rescaled to
[0, 1] by its own min and max (tensors, not Python floats) before `torch.histc`.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

BINS = 30


def _hist(t: torch.Tensor, bins: int) -> torch.Tensor:
    """[min, max, count_0 .. count_{bins-1}] of one tensor, as a float vector on its device."""
    x = t.detach().reshape(-1).float()
    x = torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = torch.aminmax(x)
    scaled = (x - lo) / (hi - lo).clamp_min(1e-30)
    counts = torch.histc(scaled, bins=bins, min=0.0, max=1.0)
    return torch.cat([lo.reshape(1), hi.reshape(1), counts])


def compute(names: list[str], params: list[torch.nn.Parameter], bins: int = BINS) -> tuple[list[str], torch.Tensor] | None:
    """A (2 * P, 2 + bins) device tensor: one row per gradient, then one per weight."""
    rows: list[torch.Tensor] = []
    labels: list[str] = []
    for name, p in zip(names, params):
        if p.grad is None:
            continue
        labels.append(name)
        rows.append(_hist(p.grad, bins))
        rows.append(_hist(p, bins))
    if not rows:
        return None
    device = rows[0].device
    return labels, torch.stack([r.to(device) for r in rows])


def to_json(step: int, labels: list[str], table: list[list[float]]) -> dict:
    layers = {}
    for i, name in enumerate(labels):
        g, w = table[2 * i], table[2 * i + 1]
        layers[name] = {
            "grad": {"min": g[0], "max": g[1], "counts": [int(c) for c in g[2:]]},
            "weight": {"min": w[0], "max": w[1], "counts": [int(c) for c in w[2:]]},
        }
    return {"step": step, "bins": len(table[0]) - 2 if table else 0, "layers": layers}


def write(directory: Path, step: int, labels: list[str], table: list[list[float]]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"step_{step:06d}.json"
    path.write_text(json.dumps(to_json(step, labels, table)))
    return path

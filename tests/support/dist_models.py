"""A model for distributed tests, named by import path (`tests.support.dist_models:faulty_mlp`).

The launcher's workers are spawned processes: plugins that a test registers in its own process do
not exist there, but an import path resolves in every worker. The model can be told to fail on
one rank at its Nth training forward: raise (a Python error the launcher reports), or die once
(os._exit on the first attempt only, for max_restarts). Or rank 0 can hold its first training
forward until an MLflow sqlite store has a metric under each of some key prefixes (`hold_db`,
`hold_prefixes`): a run that lasts until what other processes log has arrived, however busy the machine.
"""

from __future__ import annotations

import os
import sqlite3
import time

import torch
from torch import nn


class FaultyMLP(nn.Module):
    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden: int,
        dropout: float,
        rank: int | None,
        at: int,
        how: str,
        hold: tuple[str, list[str]] | None = None,
    ) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_features, hidden), nn.Tanh(), nn.Dropout(dropout), nn.Linear(hidden, out_features)
        )
        self.rank, self.at, self.how, self.calls = rank, at, how, 0
        self.hold = hold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.hold is not None and int(os.environ.get("RANK", "-1")) == 0:
            _wait_for_metrics(*self.hold)
            self.hold = None
        if self.training and torch.is_grad_enabled() and self.rank is not None:
            self.calls += 1
            if self.calls == self.at and int(os.environ.get("RANK", "-1")) == self.rank:
                if self.how == "raise":
                    raise RuntimeError(f"injected failure at forward {self.at}")
                if self.how == "die_once" and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0":
                    os._exit(3)
        return self.net(x)


def faulty_mlp(
    in_features: int,
    out_features: int,
    hidden: int = 16,
    dropout: float = 0.0,
    fail_rank: int | None = None,
    at_forward: int = 1,
    how: str = "raise",
    hold_db: str | None = None,
    hold_prefixes: list[str] | None = None,
) -> nn.Module:
    hold = (hold_db, hold_prefixes or []) if hold_db else None
    return FaultyMLP(in_features, out_features, hidden, dropout, fail_rank, at_forward, how, hold)


def _wait_for_metrics(db: str, prefixes: list[str], limit_s: float = 180.0) -> None:
    """Until the store has a metric key starting with each prefix (or `limit_s` passed: the
    test's assertion then says what is missing)."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
                keys = [k for (k,) in conn.execute("SELECT DISTINCT key FROM metrics")]
            if all(any(k.startswith(p) for k in keys) for p in prefixes):
                return
        except sqlite3.Error:
            pass  # (the store has no tables yet)
        time.sleep(0.5)

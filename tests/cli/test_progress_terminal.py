"""On a real terminal `gradloop run` draws a progress bar; piped, it prints plain lines."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import yaml

GRADLOOP = str(Path(sys.executable).with_name("gradloop"))


def _config(tmp_path: Path) -> Path:
    cfg = {
        "name": "tty-run",
        "output_dir": str(tmp_path / "runs"),
        "model": {"name": "mlp", "options": {"in_features": 4, "hidden": [8], "out_features": 3}},
        "data": {"name": "sklearn", "options": {"dataset": "iris"}, "batch_size": 8},
        "loss": {"name": "cross_entropy"},
        "optimizer": {"name": "sgd", "options": {"lr": 0.1}},
        "trainer": {"epochs": 3},
        "tracking": {"enabled": False, "log_every": 2},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_progress_bar_on_a_pseudo_terminal(tmp_path):
    primary, secondary = pty.openpty()
    env = {**os.environ, "COLUMNS": "160", "LINES": "40", "TERM": "xterm-256color"}
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen(
        [GRADLOOP, "run", str(_config(tmp_path))],
        stdin=secondary,
        stdout=secondary,
        stderr=secondary,
        env=env,
        close_fds=True,
    )
    os.close(secondary)
    chunks = []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        ready, _, _ = select.select([primary], [], [], 1.0)
        if ready:
            try:
                data = os.read(primary, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    proc.wait(timeout=30)
    os.close(primary)
    screen = b"".join(chunks).decode("utf-8", "replace")
    assert proc.returncode == 0, screen[-2000:]
    assert "━" in screen  # rich's bar
    assert "/s" in screen and "loss" in screen and "epoch 3/3" in screen
    assert "45/45" in screen  # 120 training samples / 8 per batch = 15 steps x 3 epochs
    assert " steps/s eta " not in screen  # the plain-line reporter is for pipes only

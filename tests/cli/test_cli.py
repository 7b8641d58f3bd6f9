"""The `gradloop` command as a user runs it: a real subprocess, real files, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
GRADLOOP = str(Path(sys.executable).with_name("gradloop"))


def tiny_config(tmp_path: Path, **trainer) -> dict:
    return {
        "name": "cli-iris",
        "output_dir": str(tmp_path / "runs"),
        "model": {"name": "mlp", "options": {"in_features": 4, "hidden": [8], "out_features": 3}},
        "data": {"name": "sklearn", "options": {"dataset": "iris"}, "batch_size": 16},
        "loss": {"name": "cross_entropy"},
        "optimizer": {"name": "sgd", "options": {"lr": 0.1, "momentum": 0.9}},
        "trainer": {"epochs": 2, **trainer},
        "tracking": {"enabled": False},
    }


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [GRADLOOP, *args],
        capture_output=True,
        text=True,
        cwd=cwd or ROOT,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
        timeout=240,
    )


def write(tmp_path: Path, cfg: dict, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def test_run_with_overrides_prints_lines_and_a_summary(tmp_path):
    path = write(tmp_path, tiny_config(tmp_path))
    proc = run_cli("run", str(path), "--set", "optimizer.options.lr=0.05", "--set", "trainer.epochs=3")
    assert proc.returncode == 0, proc.stderr
    # Not a terminal: plain progress lines on stderr, a summary table on stdout.
    assert "training cli-iris" in proc.stderr and "steps/s" in proc.stderr
    assert "\x1b[" not in proc.stderr
    assert "val/loss" in proc.stdout and "checkpoint" in proc.stdout
    assert "(3 epochs)" in proc.stdout
    ckpts = list((tmp_path / "runs").rglob("last.pt"))
    assert len(ckpts) == 1


def test_bad_config_is_one_message_without_traceback_exit_2(tmp_path):
    cfg = tiny_config(tmp_path)
    cfg["optimizer"]["options"]["lr"] = -1
    cfg["trainer"]["epochs"] = "many"
    path = write(tmp_path, cfg)
    proc = run_cli("run", str(path))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "optimizer.options.lr" in proc.stderr and "trainer.epochs" in proc.stderr
    assert str(path) in proc.stderr


def test_yaml_syntax_error_exit_2(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\nmodel: [unclosed\n")
    proc = run_cli("validate", str(path))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "line" in proc.stderr and "column" in proc.stderr


def test_validate_prints_the_resolved_config(tmp_path):
    path = write(tmp_path, tiny_config(tmp_path))
    proc = run_cli("validate", str(path), "--set", "trainer.grad_accum_steps=2")
    assert proc.returncode == 0, proc.stderr
    resolved = yaml.safe_load(proc.stdout)
    assert resolved["trainer"]["grad_accum_steps"] == 2
    assert resolved["optimizer"]["options"]["momentum"] == 0.9
    assert "dampening" in resolved["optimizer"]["options"]  # plugin defaults filled in


def test_plugins_lists_every_kind_with_options(tmp_path):
    proc = run_cli("plugins")
    assert proc.returncode == 0, proc.stderr
    for name in (
        "sgd",
        "adamw",
        "lbfgs",
        "lion",
        "cosine",
        "reduce_on_plateau",
        "mlp",
        "cnn",
        "sklearn",
        "cross_entropy",
    ):
        assert name in proc.stdout
    proc = run_cli("plugins", "optimizers", "--json")
    described = json.loads(proc.stdout)
    sgd = next(p for p in described["optimizers"] if p["name"] == "sgd")
    lr = next(o for o in sgd["options"] if o["name"] == "lr")
    assert lr["constraints"] and lr["type"] == "number"
    proc = run_cli("plugins", "optimisers")
    assert proc.returncode == 2 and "Did you mean 'optimizers'" in proc.stderr


def test_several_configs_one_failing_does_not_stop_the_others(tmp_path):
    good = write(tmp_path, tiny_config(tmp_path), "good.yaml")
    bad_cfg = tiny_config(tmp_path)
    bad_cfg["model"]["options"]["in_features"] = 5  # iris has 4 features: caught before training
    bad = write(tmp_path, bad_cfg, "bad.yaml")
    good2 = write(tmp_path, {**tiny_config(tmp_path), "name": "second"}, "good2.yaml")
    proc = run_cli("run", str(good), str(bad), str(good2))
    assert proc.returncode != 0
    assert "in_features" in proc.stderr
    table = proc.stdout
    assert "good.yaml" in table and "bad.yaml" in table and "good2.yaml" in table
    assert table.count("FINISHED") == 2


@pytest.mark.slow
def test_resume_latest_continues_a_stopped_run(tmp_path):
    path = write(tmp_path, tiny_config(tmp_path, max_steps=5, checkpoint_every_steps=5))
    assert run_cli("run", str(path)).returncode == 0
    proc = run_cli("run", str(path), "--resume", "latest", "--set", "trainer.max_steps=12")
    assert proc.returncode == 0, proc.stderr
    assert "resuming at step 5" in proc.stderr


def test_the_cli_and_the_http_policy_import_no_torch():
    """Every command loads gradloop.cli.main and the HTTP policy's checks load limits: neither
    imports torch (a command that trains, or a limit that counts a model, imports it then)."""
    code = (
        "import sys, gradloop.cli.main, gradloop.http_policy\n"
        "print([m for m in ('torch', 'numpy') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240, check=True)
    assert out.stdout.strip() == "[]"


def test_the_http_app_and_the_job_progress_observer_import_no_torch():
    """The API process builds the app (api.app, api.workers) and its routes import the job
    machinery, job_progress included: none of it imports torch (metric keys are made in a
    torch-free module; torch comes in only once a job's child trains)."""
    code = (
        "import sys, gradloop.api.app, gradloop.api.workers, gradloop.jobs.job_progress\n"
        "from gradloop.tracking.metric_keys import metric_safe\n"
        "assert metric_safe('val/acc@1 (top)') == 'val/acc_1 _top_'\n"
        "print([m for m in ('torch', 'numpy') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240, check=True)
    assert out.stdout.strip() == "[]"

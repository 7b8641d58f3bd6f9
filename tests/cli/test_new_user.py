"""What a new user hits at the terminal (issue 18): one answer from validate, skipped steps that
show, exit codes, a progress bar that fits 80 columns, the resume command after Ctrl-C, plugins
that fail to load. Each test runs the real `gradloop` command; terminal ones on a pseudo-terminal.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from tests.support.terminal import Terminal

GRADLOOP = str(Path(sys.executable).with_name("gradloop"))


def _config(tmp_path: Path, name: str = "newbie", **changes: object) -> Path:
    cfg = {
        "name": name,
        "device": "cpu",
        "output_dir": str(tmp_path / "runs"),
        "model": {"name": "mlp", "options": {"in_features": 4, "hidden": [8], "out_features": 3}},
        "data": {"name": "sklearn", "options": {"dataset": "iris"}, "batch_size": 16},
        "loss": {"name": "cross_entropy"},
        "optimizer": {"name": "sgd", "options": {"lr": 0.1}},
        "trainer": {"epochs": 1},
        "tracking": {"enabled": False},
    }
    cfg.update(changes)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _gradloop(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([GRADLOOP, *args], capture_output=True, text=True, timeout=300, cwd=cwd, env=env, check=False)


def _in_process(*args: str) -> subprocess.CompletedProcess:
    """The same command in this process (no interpreter and torch start-up per call)."""
    from typer.testing import CliRunner

    from gradloop.cli.main import app

    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "100"})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return subprocess.CompletedProcess(list(args), result.exit_code, result.stdout, result.stderr)


def test_validate_reports_every_error_a_run_would_meet_at_once(tmp_path: Path) -> None:
    path = _config(
        tmp_path,
        model={"name": "mlp", "options": {"in_features": 32, "hidden": [8], "out_features": 3}},
        optimizer={"name": "sgd", "options": {"lr": -0.1}},
        trainer={"epochs": 1, "grad_clip_norm": 1.0, "grad_clip_value": 1.0, "precision": "fp16"},
    )
    done = _in_process("validate", str(path))
    assert done.returncode == 2, done.stderr
    for where in ("optimizer.options.lr", "trainer.grad_clip_value", "trainer.precision", "model.options.in_features"):
        assert where in done.stderr, done.stderr
    assert "(4 errors)" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="asks for CUDA on a machine without it")
def test_a_broken_field_hides_no_other_error_in_its_section_or_after_it(tmp_path: Path) -> None:
    """The report of issue 18 in one config: field errors (epochs 0, batch_size 0) once hid the
    rules that read their neighbours (both clips), `device: cuda` hid fp16 on the CPU, and a
    wrong batch size hid the model/data fit. One answer now, over the CLI and over HTTP alike."""
    path = _config(
        tmp_path,
        device="cuda",
        model={"name": "mlp", "options": {"in_features": 32, "hidden": [8], "out_features": 3}},
        data={"name": "sklearn", "options": {"dataset": "iris"}, "batch_size": 0},
        trainer={"epochs": 0, "grad_clip_norm": 1.0, "grad_clip_value": 1.0, "precision": "fp16"},
    )
    done = _in_process("validate", str(path))
    assert done.returncode == 2, done.stderr
    found = re.findall(r"^  - ([\w.]+) \(line \d+\): (.*)$", done.stderr, re.M)
    assert {where for where, _ in found} == {
        "data.batch_size",
        "trainer.epochs",
        "trainer.grad_clip_value",
        "device",
        "trainer.precision",
        "model.options.in_features",
    }, done.stderr
    assert "fp16 needs a CUDA device (this machine has none)" in done.stderr


def test_an_error_message_is_printed_as_text_not_markup(tmp_path: Path) -> None:
    done = _in_process("validate", str(_config(tmp_path)), "--set", "[red]lr=1")
    assert done.returncode == 2 and "'[red]lr=1' is not of the form key.path=value" in done.stderr, done.stderr


def test_skipped_steps_fail_the_run_past_the_share_and_show_otherwise(tmp_path: Path) -> None:
    blowup = {"name": "sgd", "options": {"lr": 1.0e30}}
    path = _config(tmp_path, optimizer=blowup, trainer={"epochs": 1, "on_nonfinite": "skip_step"})
    done = _in_process("run", str(path))
    assert done.returncode == 1, done.stdout + done.stderr
    assert re.search(r"(\d+) of 8 optimizer steps were skipped", done.stderr), done.stderr
    assert "trainer.max_skipped_fraction" in done.stderr
    assert re.search(r"warning: \d+ of \d+ steps skipped so far", done.stderr), done.stderr  # as they happen

    accept = {"epochs": 1, "on_nonfinite": "skip_step", "max_skipped_fraction": 1.0}
    no_tracking = {"enabled": False, "log_every": 2}
    path = _config(tmp_path, name="accepted", optimizer=blowup, trainer=accept, tracking=no_tracking)
    done = _in_process("run", str(path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"steps\s+8 \(1 epoch\), \d+ skipped", done.stdout), done.stdout
    # The progress line shows the last window's loss as such too, never an older window's number.
    assert re.search(r"step 8/8 loss nan \(not finite\)", done.stderr), done.stderr
    # The last window's steps were all skipped: its loss is no number, and never shown as one.
    assert re.search(r"train/loss\s+nan \(not finite\)", done.stdout), done.stdout
    assert re.search(r"val/loss\s+nan \(not finite\)", done.stdout), done.stdout


def test_bad_resume_and_sync_arguments_exit_2(tmp_path: Path) -> None:
    path = _config(tmp_path)
    latest = _in_process("run", str(path), "--resume", "latest")
    assert latest.returncode == 2 and "found no checkpoint" in latest.stderr, latest.stderr
    missing = _in_process("run", str(path), "--resume", str(tmp_path / "missing.pt"))
    assert missing.returncode == 2 and "missing.pt" in missing.stderr, missing.stderr
    sync = _in_process("sync", str(tmp_path / "nonexistent"))
    assert sync.returncode == 2 and "does not exist" in sync.stderr and "runs/<name>/<run id>" in sync.stderr


def test_progress_fits_80_columns_and_ctrl_c_prints_the_resume_command(tmp_path: Path) -> None:
    path = _config(
        tmp_path,
        name="a-rather-long-run-name-for-80-columns",
        trainer={"epochs": 400, "val_every_steps": 4, "val_every_epochs": 0},
        tracking={"enabled": False, "log_every": 2},
    )
    term = Terminal([GRADLOOP, "run", str(path)], columns=80, cwd=tmp_path)
    # After the first validation the bar still shows the step count, the loss, the validation
    # loss and the time left (rich draws "-:--:--" or "0:00:12").
    bar = re.compile(r"\d+/3200 .*loss \d\.\d{4} .*val \d\.\d{3} .*\d+/s .*(\d+:\d\d:\d\d|-:--:--)")
    seen = term.read_until(lambda screen: any(bar.search(line) for line in screen.splitlines()[-5:]), timeout=120)
    assert seen, term.screen[-3000:]
    term.interrupt()
    code = term.finish()
    lines = term.lines()
    assert code == 130, term.screen[-3000:]
    assert all(len(line) <= 80 for line in lines if "━" in line), [line for line in lines if len(line) > 80]
    (resume,) = [line for line in lines if line.startswith("stopped; continue it with: ")]
    argv = shlex.split(resume.split(": ", 1)[1])
    assert argv[:3] == ["gradloop", "run", str(path)] and argv[3] == "--resume"
    assert Path(argv[4]).is_file() and argv[4].endswith(".pt")  # the path is whole: not cut, not wrapped


def test_a_broken_plugin_is_one_line_once_and_named_when_used(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "gradloop_broken.py").write_text("raise ImportError('needs torch_nightly_only')\n")
    info = site / "gradloop_broken-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: gradloop-broken\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        textwrap.dedent("""
        [gradloop.optimizers]
        broken = gradloop_broken:plugin
        """)
    )
    import os

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    listing = _gradloop("plugins", "optimizers", env=env)
    assert listing.returncode == 0, listing.stderr
    warnings = [line for line in listing.stderr.splitlines() if "broken" in line]
    assert warnings == [
        "warning: optimizer plugin 'broken' (package gradloop-broken, entry point gradloop_broken:plugin) "
        "failed to load: ImportError: needs torch_nightly_only"
    ], listing.stderr

    path = _config(tmp_path, optimizer={"name": "broken", "options": {}})
    done = _gradloop("validate", str(path), env=env)
    assert done.returncode == 2
    assert "optimizer 'broken' failed to load: ImportError: needs torch_nightly_only" in done.stderr, done.stderr
    assert "unknown optimizer" not in done.stderr


def test_the_mlflow_run_is_named_with_the_run_directorys_short_id(tmp_path: Path) -> None:
    """One short id for one run (issue 18, item 11): `runs/<name>/<time>-<id>` and the MLflow run `<name>-<id>`."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking = {"uri": uri, "system_metrics": False, "log_model": False, "plots": False, "histogram_every": 0}
    done = _gradloop("run", str(_config(tmp_path, tracking=tracking)), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    run_dir = Path(re.search(r"^  run dir\s+(\S+)$", done.stdout, re.M).group(1))  # type: ignore[union-attr]
    run_id = re.search(r"^  mlflow run\s+(\w+)$", done.stdout, re.M).group(1)  # type: ignore[union-attr]
    short_id = run_dir.name.rsplit("-", 1)[1]
    assert MlflowClient(uri).get_run(run_id).info.run_name == f"newbie-{short_id}"


@pytest.mark.server
@pytest.mark.timeout(1200)  # an mlflow server and a run on a machine others load
def test_a_tracking_server_that_died_mid_run_is_not_waited_for_and_mlflow_logs_no_errors(tmp_path: Path) -> None:
    """Issue 18, item 9: once the server is known to be down, the end of the run does not wait
    for it (flush_timeout_s is an hour here: waiting would outlast the test's timeout), MLflow's
    system-metrics thread prints no ERROR lines, and the one warning line says what sync sends."""
    import os
    import signal
    import threading
    import time

    from mlflow.tracking import MlflowClient

    from tests.support.mlflow_stores import MlflowServer

    (tmp_path / "server").mkdir()
    server = MlflowServer(tmp_path / "server")
    server.start(timeout=300)  # minutes on a machine others load
    tracking = {
        "uri": server.uri,
        "experiment": "dies",
        "log_every": 2,
        "histogram_every": 0,
        "log_model": False,
        "system_metrics": True,
        "flush_timeout_s": 3600,
    }
    trainer = {"epochs": 5000, "progress": "lines"}
    path = _config(tmp_path, trainer=trainer, tracking=tracking)
    env = {**os.environ, "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1"}
    proc = subprocess.Popen(
        [GRADLOOP, "run", str(path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path, env=env
    )
    lines: list[str] = []

    def read() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        client = MlflowClient(server.uri)
        deadline = time.monotonic() + 300
        sampled = False  # the run exists and its system metrics are being logged: the thread that leaked
        while not sampled and time.monotonic() < deadline and proc.poll() is None:
            runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
            sampled = any(k.startswith("system/") for r in runs for k in r.data.metrics)
            time.sleep(0.5)
        assert sampled, "".join(lines[-40:])
        server.stop()
        seen = len(lines)
        # Two more progress lines (one each 5 s): the sender and the system-metrics thread have
        # both met the dead server by then.
        while sum("step" in line for line in lines[seen:]) < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
        server.stop()
    reader.join(30)
    output = "".join(lines)
    assert code == 130, output[-3000:]
    assert not [line for line in lines if "ERROR" in line or "Traceback" in line], output[-3000:]
    (warning,) = [line for line in lines if "was unreachable" in line]
    assert warning.startswith(f"warning: MLflow at {server.uri} was unreachable") and "gradloop sync" in warning
    assert "TrackingWarning" not in output and ".py:" not in output  # no Python warning format


def test_the_sweep_table_at_80_columns_cuts_no_value(tmp_path: Path) -> None:
    """Two children whose labels differ only at their end stay told apart (issue 18, item 4):
    the label folds onto more lines instead of being cut to `optimizer.options.momentum=0…`."""
    sweep = {"optimizer.options.momentum": [0.0, 0.9], "optimizer.options.nesterov": [False]}
    path = _config(tmp_path, name="swept", sweep=sweep, trainer={"epochs": 1, "progress": "none"})
    term = Terminal([GRADLOOP, "run", str(path)], columns=80, cwd=tmp_path)
    assert term.finish() == 0, term.screen[-3000:]
    table = [line for line in term.lines() if line.startswith("│")]
    assert table and "…" not in term.screen and all(len(line) <= 80 for line in table), term.screen
    # The last column, read cell by cell down the table, holds each child's whole label.
    cells = "".join(line.rstrip(" │").rsplit("│", 1)[1].strip() for line in table)
    for momentum in ("0.0", "0.9"):
        assert f"optimizer.options.momentum={momentum},optimizer.options.nesterov=false" in cells, term.screen

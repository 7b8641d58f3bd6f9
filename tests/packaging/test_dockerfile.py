"""The Dockerfile cannot be built here (no Docker engine); check that what it runs and exposes
matches the project: the entry point exists, the port is the service's default, the serve
flags it passes are real options, and it runs as a non-root user with a health check."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import tomllib
from typer.testing import CliRunner

from gradloop.api.settings import DEFAULT_PORT
from gradloop.cli.main import app

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def _instruction(name: str) -> list[str]:
    return [line.split(None, 1)[1] for line in DOCKERFILE.splitlines() if line.startswith(name + " ")]


def _json_array(text: str) -> list[str]:
    import json

    return json.loads(text)


def test_entrypoint_is_the_projects_console_script() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    (entry,) = _instruction("ENTRYPOINT")
    assert _json_array(entry) == ["gradloop"] and "gradloop" in scripts


def test_cmd_is_serve_with_real_flags_on_the_default_port() -> None:
    (cmd,) = _instruction("CMD")
    args = _json_array(cmd)
    assert args[0] == "serve"
    flags = [a for a in args if a.startswith("--")]
    help_text = CliRunner().invoke(app, ["serve", "--help"], terminal_width=200).output
    for flag in flags:
        assert flag in help_text, f"gradloop serve has no {flag}"
    assert args[args.index("--port") + 1] == str(DEFAULT_PORT)
    assert args[args.index("--host") + 1] == "0.0.0.0"
    assert _instruction("EXPOSE") == [str(DEFAULT_PORT)]


def test_runs_unprivileged_with_state_volume_and_healthcheck() -> None:
    users = _instruction("USER")
    assert users and users[-1] not in ("root", "0")
    (volume,) = _instruction("VOLUME")
    (cmd,) = _instruction("CMD")
    state = _json_array(cmd)[_json_array(cmd).index("--state-dir") + 1]
    assert state in _json_array(volume)
    assert "sqlite:////state/" in cmd  # the MLflow store is on the volume too
    health = re.search(r"HEALTHCHECK .*?CMD (.+?)$", DOCKERFILE, re.S | re.M)
    assert health and f"127.0.0.1:{DEFAULT_PORT}/healthz" in DOCKERFILE
    assert _instruction("ARG")[0].startswith("BASE=python:") and "slim" in _instruction("ARG")[0]
    assert any(a.startswith("TORCH_INDEX=") and a.endswith("/cpu") for a in _instruction("ARG"))
    # everything the image copies exists in the project
    for line in _instruction("COPY"):
        for src in shlex.split(line)[:-1]:
            assert (ROOT / src).exists(), src

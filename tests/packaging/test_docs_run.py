"""Every code block in README.md and docs/*.md runs (issue 18, item 7).

python blocks run as scripts with this venv's python, bash blocks through bash with the venv's
bin first on PATH (`bash -e`: every command must succeed). Blocks marked text, yaml, toml or json
are shown, not run; a block with no language fails here, so that each is marked one way or the
other. Each block runs in a temp directory that mirrors the repository's top level through
symlinks (so `configs/...` paths work) with its own MLflow store, and under a timeout: a block
cannot write into the repository or into another block's store.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
NOT_RUN = {"text", "yaml", "yml", "toml", "json", "console-output"}
# `bash -e`: every command must succeed; a pipeline is judged by its last command, as in the
# shell a reader pastes it into (`... | head -20` closes its input early, and that is fine).
RUNNERS = {"python": [sys.executable], "bash": ["bash", "-e"], "sh": ["bash", "-e"]}
TIMEOUT_S = 600  # a block of several training runs on a busy machine; a hang still ends
_FENCE = re.compile(r"^(?P<fence>```+)(?P<lang>[^\n`]*)\n(?P<body>.*?)^(?P=fence)[ \t]*$", re.M | re.S)


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def blocks(path: Path) -> list[tuple[int, str, str]]:
    """(line, language, code) of each fenced block of a Markdown file."""
    text = path.read_text()
    found = []
    for m in _FENCE.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        found.append((line, m.group("lang").strip().split(" ")[0].lower(), m.group("body")))
    return found


ALL = [(path, line, lang, code) for path in doc_files() for line, lang, code in blocks(path)]
RUNNABLE = [b for b in ALL if b[2] not in NOT_RUN]


def _id(block: tuple[Path, int, str, str]) -> str:
    return f"{block[0].relative_to(ROOT)}:{block[1]}"


def test_blocks_are_found() -> None:
    readme = [b for b in ALL if b[0].name == "README.md"]
    assert readme and any(b[2] == "python" for b in readme)


def _param(block: tuple[Path, int, str, str]) -> object:
    """Each block is a reader's whole session (slow); one that starts the job service is a server
    test too. make test-fast leaves both out."""
    starts_server = "gradloop serve" in block[3] or "mlflow server" in block[3]
    marks = [pytest.mark.slow, *([pytest.mark.server] if starts_server else [])]
    return pytest.param(block, id=_id(block), marks=marks)


@pytest.mark.parametrize("block", [_param(b) for b in RUNNABLE])
def test_code_block_runs(block: tuple[Path, int, str, str], tmp_path: Path) -> None:
    path, line, lang, code = block
    assert lang in RUNNERS, (
        f"{_id(block)}: a ```{lang or '(no language)'} block; mark it python or bash to have it run, "
        "or text/yaml/toml/json to have it shown only"
    )
    work = tmp_path / "repo"
    work.mkdir()
    for entry in ROOT.iterdir():  # the repository's files, read-only in spirit: outputs land in `work`
        if entry.name not in (".git", ".venv", "runs", "mlflow.db", "mlruns") and not entry.name.startswith("."):
            (work / entry.name).symlink_to(entry)
    (work / ".venv").symlink_to(BIN.parent)  # blocks may `. .venv/bin/activate`, as the README says after `make run`
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "GRADLOOP_DATA_ROOT": str(work),
        "HOME": str(tmp_path),
    }
    script = tmp_path / ("block.py" if lang == "python" else "block.sh")
    script.write_text(code)
    done = subprocess.run(
        [*RUNNERS[lang], str(script)], cwd=work, env=env, capture_output=True, text=True, timeout=TIMEOUT_S
    )
    assert done.returncode == 0, (
        f"{_id(block)} failed ({done.returncode}):\n{code}\n--- output:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
    )

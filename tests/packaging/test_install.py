"""`pip install .` (not editable) into a fresh venv, used from outside the repository: the import
names are gradloop and gradloop.plugins and nothing else, the command runs, and pyproject.toml
lists every package folder (a new subpackage left out of the list would be missing from the wheel).
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
FOLDERS = {"service": "gradloop", "plugins": "gradloop.plugins"}  # folder -> import name

pytestmark = pytest.mark.timeout(600)  # one venv and one build: quick enough for make test-fast


def _packages_in_folders() -> set[str]:
    found = set()
    for folder, name in FOLDERS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            found.add(".".join([name, *init.parent.relative_to(ROOT / folder).parts]))
    return found


def test_pyproject_lists_every_package_folder() -> None:
    setuptools = PYPROJECT["tool"]["setuptools"]
    assert {v: k for k, v in setuptools["package-dir"].items()} == FOLDERS
    listed, found = set(setuptools["packages"]), _packages_in_folders()
    assert not found - listed, f"add to [tool.setuptools] packages in pyproject.toml: {sorted(found - listed)}"
    assert not listed - found, f"listed in pyproject.toml but no such package folder: {sorted(listed - found)}"


def _run(args: list[str | Path], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=500)
    if check:
        assert done.returncode == 0, f"{args}: {done.stdout[-2000:]}{done.stderr[-3000:]}"
    return done


def _setuptools_version(site_packages: str) -> tuple[int, ...]:
    for dist in importlib.metadata.distributions(path=[site_packages]):
        if dist.metadata["Name"] == "setuptools":
            return tuple(int(x) for x in dist.version.split(".")[:2] if x.isdigit())
    return ()


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with gradloop installed from a copy of the repository (so that the build
    writes nothing here); the dependencies come from this interpreter's site-packages."""
    base = tmp_path_factory.mktemp("install")
    source = base / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for folder in FOLDERS:
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    venv = base / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=base)
    python = venv / "bin" / "python"
    where = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], base)
    purelib = Path(where.stdout.strip())
    # Installing torch and the rest again would download gigabytes. A .pth line only adds its
    # folder to sys.path (the .pth files inside it are not run), so an editable gradloop there,
    # which is an import hook started by its own .pth, stays out of this venv.
    deps = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
    # The build runs offline (no build isolation), with the newest setuptools among them first.
    tools = {d: _setuptools_version(d) for d in deps}
    newest = max(deps, key=lambda d: tools[d])
    if tools[newest] < (70, 1):  # older ones build wheels only with the `wheel` package beside them
        pytest.skip(f"building offline needs setuptools>=70.1 here (found {tools[newest]}); pip install -U setuptools")
    deps.remove(newest)
    (purelib / "zz_dependencies.pth").write_text("\n".join([newest, *deps]) + "\n")
    _run([python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index", source], base)
    shutil.rmtree(source)  # nothing may still read from the source tree
    return venv


def test_import_names_are_gradloop_only(venv: Path, tmp_path: Path) -> None:
    python = venv / "bin" / "python"
    code = "import gradloop, gradloop.plugins; print(gradloop.__file__, gradloop.plugins.__file__)"
    done = _run([python, "-c", code], tmp_path)
    files = [Path(p) for p in done.stdout.split()]
    assert all(venv in p.parents for p in files), files  # the installed copy, not the repository
    for name in ("service", "plugins"):
        gone = _run([python, "-c", f"import {name}"], tmp_path, check=False)
        assert gone.returncode != 0 and "ModuleNotFoundError" in gone.stderr, (name, gone.stderr[-500:])


def test_installed_package_has_its_data_and_public_names(venv: Path, tmp_path: Path) -> None:
    code = (
        "import importlib.resources as r, gradloop\n"
        "from gradloop import RunConfig, RunResult, build_optimizer, load_config, run, train\n"
        "from gradloop.registry import Plugin\n"
        "root = r.files('gradloop')\n"
        "print((root / 'py.typed').is_file(), (root / 'jobs' / 'migrations' / 'script.py.mako').is_file())\n"
    )
    assert _run([venv / "bin" / "python", "-c", code], tmp_path).stdout.split() == ["True", "True"]


def test_the_command_runs(venv: Path, tmp_path: Path) -> None:
    done = _run([venv / "bin" / "gradloop", "--help"], tmp_path)
    for command in ("run", "validate", "serve", "submit"):
        assert command in done.stdout

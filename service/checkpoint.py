"""Checkpoint files: atomic writes, retention, loading onto the current device, finding `latest`.

Layout of a run (the runner creates it; `latest` relies on it):

    {output_dir}/{config name}/{run_id}/            run_id = YYYYmmdd-HHMMSS-xxxxxx (sorts by start time)
        config.yaml                                 the resolved config
        checkpoints/step-000040.pt                  every trainer.checkpoint_every_steps
        checkpoints/last.pt                         the newest checkpoint of the run
        checkpoints/step-000040.dcp/                FSDP: the sharded model and optimizer state
                                                    (torch.distributed.checkpoint), next to
                                                    step-000040.pt, which holds the rest and names it

A file appears only complete: it is written to a temporary file in the same directory, flushed
and fsync'ed, then renamed over the target with os.replace (atomic on POSIX), so a crash or a
full disk leaves the previous file as it was. A sharded directory is written under a temporary
name and renamed the same way, before the file that names it. Files hold only tensors and plain Python values and
are loaded with `weights_only=True`: resuming from a checkpoint never runs pickled code.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from contextlib import suppress
from pathlib import Path
from typing import Any

import torch

from gradloop.errors import GradloopError

FORMAT = "gradloop-checkpoint"
VERSION = 1
LAST = "last.pt"
_STEP_FILE = re.compile(r"^step-(\d+)\.pt$")


class CheckpointError(GradloopError):
    """A checkpoint cannot be found, read or used for this run."""


def step_filename(step: int) -> str:
    return f"step-{step:06d}.pt"


def sharded_dirname(step: int) -> str:
    """The directory of a step's sharded state (FSDP), beside its step file."""
    return f"step-{step:06d}.dcp"


def atomic_save(obj: Any, path: Path) -> Path:
    """torch.save `obj` to `path` so that `path` is never seen half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)  # make the rename itself durable
    return path


def write_checkpoint(ckpt_dir: Path, step: int, state: dict[str, Any], keep: int) -> Path:
    """Write step-NNNNNN.pt and point last.pt at it; keep the newest `keep` step files (and
    their sharded directories). A sharded checkpoint's state names its directory (`sharded`),
    which must be complete already."""
    ckpt_dir = Path(ckpt_dir)
    payload = {"format": FORMAT, "version": VERSION, **state}
    path = atomic_save(payload, ckpt_dir / step_filename(step))
    _replace_last(path)
    for old in step_checkpoints(ckpt_dir)[:-keep]:
        with suppress(OSError):
            old.unlink()
        shutil.rmtree(old.with_suffix(".dcp"), ignore_errors=True)
    return path


def replace_dir(tmp: Path, target: Path) -> Path:
    """Rename the complete directory `tmp` to `target` (replacing an older one), durably."""
    if target.exists():
        shutil.rmtree(target)  # a re-save of the same step: the new state replaces it whole
    os.replace(tmp, target)
    _fsync_dir(target.parent)
    return target


def step_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Step checkpoint files of a run directory, oldest first."""
    if not Path(ckpt_dir).is_dir():
        return []
    found = [(int(m.group(1)), p) for p in Path(ckpt_dir).iterdir() if (m := _STEP_FILE.match(p.name))]
    return [p for _, p in sorted(found)]


def load_checkpoint(path: Path, device: torch.device | str) -> dict[str, Any]:
    """Read a checkpoint with every tensor mapped onto `device` (CUDA files resume on CPU and back)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {str(path)!r} does not exist; give a checkpoint file, a run directory or 'latest'"
        )
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"cannot read checkpoint {str(path)!r} ({type(exc).__name__}: {str(exc).splitlines()[0]}); it is damaged "
            "or not a gradloop checkpoint"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(
            f"{str(path)!r} is not a gradloop checkpoint; give a file from a run's checkpoints/ directory"
        )
    if state.get("version") != VERSION:
        raise CheckpointError(
            f"checkpoint {str(path)!r} has format version {state.get('version')}, this gradloop reads version {VERSION}"
        )
    if state.get("sharded"):
        # The sharded state sits beside the step file (last.pt is a link to one: same folder).
        state["sharded_dir"] = path.parent / str(state["sharded"])
        if not (state["sharded_dir"] / ".metadata").is_file():
            raise CheckpointError(
                f"checkpoint {str(path)!r} names sharded state {str(state['sharded_dir'])!r}, which is missing or "
                "incomplete; resume from another checkpoint of the run"
            )
    return state


def resolve_resume(resume: str | os.PathLike[str], output_dir: str | os.PathLike[str], name: str) -> Path:
    """The checkpoint file that `--resume` means: a file, a run directory, or `latest`.

    `latest` is the newest last.pt among the runs of config `name` under `output_dir`.
    """
    if str(resume) == "latest":
        base = Path(output_dir) / name
        candidates = [p for p in base.glob(f"*/checkpoints/{LAST}") if p.is_file()]
        if not candidates:
            raise CheckpointError(
                f"--resume latest found no checkpoint of a run named {name!r} under {str(base)!r}; run it once "
                "without --resume, or give a checkpoint path"
            )
        return max(candidates, key=lambda p: (p.stat().st_mtime_ns, str(p)))
    path = Path(resume)
    if path.is_dir():
        for candidate in (path / "checkpoints" / LAST, path / LAST):
            if candidate.is_file():
                return candidate
        raise CheckpointError(
            f"directory {str(path)!r} holds no checkpoints/{LAST}; give a checkpoint file or a run directory"
        )
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {str(path)!r} does not exist; give a checkpoint file, a run directory or 'latest'"
        )
    return path


def run_dir_of(checkpoint: Path) -> Path | None:
    """The run directory a checkpoint belongs to, when it sits in one's checkpoints/ folder."""
    checkpoint = Path(checkpoint).resolve()
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else None


def _replace_last(path: Path) -> None:
    # last.pt is a hard link to the newest step file: no second write of the same bytes, and
    # pruning the step file later leaves last.pt's data in place. The link is made under a
    # temporary name and renamed, so last.pt is always whole.
    last = path.parent / LAST
    tmp = path.parent / f".{LAST}.{os.getpid()}.tmp"
    with suppress(OSError):
        tmp.unlink()
    try:
        os.link(path, tmp)
    except OSError:  # a filesystem without hard links: copy instead
        shutil.copyfile(path, tmp)
    os.replace(tmp, last)
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems cannot fsync a directory; the rename is still atomic
    finally:
        os.close(fd)


__all__ = [
    "atomic_save",
    "replace_dir",
    "write_checkpoint",
    "load_checkpoint",
    "resolve_resume",
    "run_dir_of",
    "step_checkpoints",
    "step_filename",
    "sharded_dirname",
    "CheckpointError",
    "LAST",
]

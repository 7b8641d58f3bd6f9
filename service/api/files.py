"""Reading a job's files over HTTP (its log and its artifacts) without ever leaving the job's
own directory.

A path from a client is refused when it is absolute or has a `..` part, and whatever it names is
resolved (symlinks followed) and must still lie inside the job's directory; the file is then
opened with O_NOFOLLOW so that a link swapped in after the check is not followed either. A job's
directory may sit on a volume other hosts write to, so its contents are not trusted.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from starlette.exceptions import HTTPException

MAX_LISTED = 1000


def _inside(root: Path, candidate: Path) -> bool:
    return candidate == root or root in candidate.parents


def safe_path(job_dir: Path, relative: str) -> Path:
    """`relative` under `job_dir`, or a 4xx: 400 for a path that tries to leave, 404 otherwise."""
    if not relative or "\x00" in relative or "\\" in relative:
        raise HTTPException(
            400, "the file path must be a relative path inside the job's directory, e.g. runs/latest/metrics.jsonl"
        )
    pure = PurePosixPath(relative)
    if pure.is_absolute() or ".." in pure.parts:
        raise HTTPException(
            400, f"the file path {relative!r} leaves the job's directory; give a path relative to it without '..'"
        )
    root = job_dir.resolve()
    try:
        resolved = (root / pure).resolve(strict=True)
    except (FileNotFoundError, NotADirectoryError, RuntimeError):  # RuntimeError: a symlink loop
        raise HTTPException(
            404, f"the job has no file {relative!r}; list its files with GET /v1/jobs/{{id}}/artifacts"
        ) from None
    if not _inside(root, resolved):
        # A symlink out of the job's directory: answered like a missing file, so the answer
        # says nothing about what exists outside.
        raise HTTPException(404, f"the job has no file {relative!r}; list its files with GET /v1/jobs/{{id}}/artifacts")
    return resolved


def open_regular(path: Path) -> int:
    """A read-only descriptor of the regular file `path`, not following a final symlink."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise
    except OSError:
        raise HTTPException(404, f"{path.name!r} is not a regular file of the job") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise HTTPException(404, f"{path.name!r} is not a regular file of the job")
    return fd


def read_range(path: Path, offset: int, limit: int) -> tuple[bytes, int]:
    """Up to `limit` bytes from `offset` and the file's size; a missing file reads as empty."""
    try:
        fd = open_regular(path)
    except FileNotFoundError:
        return b"", 0
    with os.fdopen(fd, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        fh.seek(min(offset, size))
        return fh.read(limit), size


def list_files(job_dir: Path) -> tuple[list[dict[str, object]], bool]:
    """Regular files under `job_dir` (links not followed), relative paths, sorted; and whether
    the listing was cut at MAX_LISTED."""
    root = job_dir.resolve()
    out: list[dict[str, object]] = []
    for path in _walk(root):
        out.append({"path": path.relative_to(root).as_posix(), "size": path.stat(follow_symlinks=False).st_size})
        if len(out) > MAX_LISTED:
            break
    out.sort(key=lambda f: str(f["path"]))
    return out[:MAX_LISTED], len(out) > MAX_LISTED


def _walk(root: Path) -> Iterator[Path]:
    if not root.is_dir():
        return
    for folder, _dirs, files in os.walk(root, followlinks=False):
        base = Path(folder)
        for name in files:
            path = base / name
            if path.is_file() and not path.is_symlink():
                yield path

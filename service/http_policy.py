"""The one policy for every config the job service accepts: what a network client may ask for.

`check_http_config(raw, policy)` is the only way from a raw config to a RunConfig in the job
service: the API calls it on a submission, the worker again on the stored config before it runs
it, and the sweep runner on each child. It applies to the top-level config and, with the same
rules, to every child of its sweep:

- registered plugins only (no `package.module:factory` import paths);
- every data and model path under the data root, decided from the path string alone (symlinks
  followed inside the root) before any file is looked at, so a refusal never tells whether a
  file outside the root exists or how big it is;
- MLflow: the service's own store, or an address the operator allows (--allow-tracking-uri);
- output_dir is the service's to pick: a config that names one is refused;
- every --max-* limit (gradloop.limits), and the size of a sweep's grid, counted from the
  lengths of its lists before a single child is built;
- a `distributed` block: all of a job's ranks run on the host that claims it, so one machine
  (nnodes 1) with a rendezvous the service picks, at most --max-procs-per-job processes, and not
  inside a sweep.

All problems come back in one ConfigError; a child's problems name the child.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from gradloop.config import RunConfig, validate_config
from gradloop.config.validation import line_for
from gradloop.errors import ConfigError, FieldError
from gradloop.limits import ServiceLimits, check_limits, human_bytes, job_disk
from gradloop.plugin_files import paths_outside, under_root
from gradloop.sweep_expand import grid_size, sweep_children

REMOTE_SCHEMES = ("http://", "https://", "databricks")
MAX_LABEL = 120  # characters of a child's label in a message: the values that set it, cut


class HttpPolicy(BaseModel):
    """What the operator set: the data root, the service's MLflow store, the tracking servers jobs
    may log to instead, and the limits."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    data_root: Path
    tracking_uri: str | None = Field(None, description="the service's own MLflow store")
    allowed_tracking_uris: tuple[str, ...] = Field((), description="other tracking URIs a job may name, exactly")
    limits: ServiceLimits = Field(default_factory=ServiceLimits)


def check_http_config(
    raw: dict[str, Any],
    policy: HttpPolicy,
    *,
    lines: Mapping[str, int] | None = None,
    source: str | None = None,
) -> RunConfig:
    """The validated config of `raw` (JSON-native; data.root is filled in place with the resolved
    path under the data root), or one ConfigError listing every problem, the sweep children's
    included."""
    lines = lines or {}
    root = policy.data_root.resolve()
    size = grid_size(raw.get("sweep"))
    cap = policy.limits.max_sweep_children
    if size > cap:
        raise ConfigError(
            [
                FieldError(
                    "sweep",
                    f"the grid has {size} combinations, over this service's limit of {cap}; sweep fewer values",
                    line_for("sweep", lines),
                )
            ],
            source,
        )
    config, errors = _check_one(raw, policy, root, lines, in_sweep=bool(raw.get("sweep")))
    if config is not None and config.sweep:
        errors += _children_errors(config, policy, root, lines, errors)
    if errors or config is None:
        raise ConfigError(errors, source)
    return config


def _check_one(
    raw: dict[str, Any], policy: HttpPolicy, root: Path, lines: Mapping[str, int], *, in_sweep: bool = False
) -> tuple[RunConfig | None, list[FieldError]]:
    """One config (a top-level one or a sweep child) under every rule: the config, if it
    validates, and the problems found. in_sweep: it is a sweep or one of its children."""
    errors: list[FieldError] = []
    _non_finite(raw, "", errors)
    if "output_dir" in raw:
        errors.append(
            FieldError(
                "output_dir",
                "the service picks each job's output directory (under the job's own directory); leave output_dir out",
                line_for("output_dir", lines),
            )
        )
    paths_ok = _data_root_rule(raw, root, lines, errors)
    _tracking_rule(raw, policy, lines, errors)
    try:
        config = validate_config(raw, lines=lines, allow_import_paths=False)
    except ConfigError as exc:
        return None, errors + exc.errors
    outside = paths_outside(config, root)
    found = [*_distributed_rule(config, policy, in_sweep), *outside]
    errors += [FieldError(e.path, e.message, line_for(e.path, lines)) for e in found]
    if paths_ok and not outside:
        # Only now: the limits look at the dataset's files and the model's, all under the root.
        errors += [
            FieldError(e.path, e.message, line_for(e.path, lines)) for e in check_limits(config, policy.limits, root)
        ]
    return config, errors


def _data_root_rule(raw: dict[str, Any], root: Path, lines: Mapping[str, int], errors: list[FieldError]) -> bool:
    """data.root: under the service's root (filled in resolved), else an error; False when the
    config's data root is not known to be under it."""
    data = raw.get("data")
    if not isinstance(data, dict):
        return True  # validation reports it
    given = data.get("root")
    if given is None:
        data["root"] = str(root)
        return True
    if not isinstance(given, str):
        errors.append(
            FieldError(
                "data.root", "must be a path (a string) under the service's data root", line_for("data.root", lines)
            )
        )
        return False
    if not under_root(root / given, root):
        errors.append(
            FieldError(
                "data.root",
                f"{given!r} is outside the service's data root; use a path under it, or leave data.root out",
                line_for("data.root", lines),
            )
        )
        return False
    data["root"] = str((root / given).resolve())
    return True


def _tracking_rule(raw: dict[str, Any], policy: HttpPolicy, lines: Mapping[str, int], errors: list[FieldError]) -> None:
    tracking = raw.get("tracking")
    uri = tracking.get("uri") if isinstance(tracking, dict) else None
    if not isinstance(uri, str) or tracking_uri_allowed(uri, policy):
        return  # none (the service's store), allowed, or not a string (validation reports it)
    if uri.lower().startswith(REMOTE_SCHEMES):
        message = (
            f"{uri!r} is not a tracking server this service allows; leave tracking.uri out to log to the "
            "service's MLflow store, or ask its operator to allow it (gradloop serve --allow-tracking-uri)"
        )
    else:
        message = (
            f"{uri!r} is a local MLflow store; over HTTP the service picks it; leave tracking.uri out "
            "(or name a tracking server the operator allows with --allow-tracking-uri)"
        )
    errors.append(FieldError("tracking.uri", message, line_for("tracking.uri", lines)))


def job_procs(config: RunConfig) -> int:
    """The processes a job starts, which is what it takes of a host's --slots: its ranks, or 1."""
    if not config.distributed.enabled:
        return 1
    # (torch is already loaded here: validation's machine checks and the model count use it)
    from gradloop.distributed.checks import nproc_per_node

    return nproc_per_node(config)


def _distributed_rule(config: RunConfig, policy: HttpPolicy, in_sweep: bool) -> list[FieldError]:
    """A distributed job runs every rank on the host that claims it, within the operator's limit."""
    d = config.distributed
    if not d.enabled:
        return []
    errors: list[FieldError] = []
    if in_sweep:
        errors.append(
            FieldError(
                "distributed.strategy",
                "the job service cannot run a sweep of distributed runs; submit each distributed run as its own job, "
                "or sweep with strategy: none",
            )
        )
    if d.node_range()[1] > 1:
        errors.append(
            FieldError(
                "distributed.nnodes",
                f"nnodes {d.nnodes}: the job service runs all of a job's ranks on the one host that claims it "
                "(multi-node jobs over HTTP are not supported); set nnodes: 1, or launch on several machines "
                "with `gradloop run --nnodes N` or torchrun",
            )
        )
    if d.rdzv_endpoint is not None:
        errors.append(
            FieldError(
                "distributed.rdzv_endpoint",
                "the job service picks a free local port for a job's rendezvous; leave rdzv_endpoint out",
            )
        )
    if d.node_rank is not None:
        errors.append(
            FieldError("distributed.node_rank", "a job runs on one machine, which has no node rank; leave it out")
        )
    limit = policy.limits.max_procs_per_job
    procs = job_procs(config)
    if limit is not None and procs > limit:
        asked = f"{procs} processes" + (" (auto: one per visible GPU)" if d.nproc_per_node == "auto" else "")
        errors.append(
            FieldError(
                "distributed.nproc_per_node",
                f"{asked} is over this service's limit of {limit} processes per job (--max-procs-per-job); "
                f"ask for at most {limit}",
            )
        )
    return errors


def tracking_uri_allowed(uri: str, policy: HttpPolicy) -> bool:
    """The service's own store, or exactly one the operator allows (a trailing slash aside)."""
    allowed = {u.rstrip("/") for u in policy.allowed_tracking_uris}
    return uri == policy.tracking_uri or uri.rstrip("/") in allowed


def _children_errors(
    config: RunConfig, policy: HttpPolicy, root: Path, lines: Mapping[str, int], parent: list[FieldError]
) -> list[FieldError]:
    """Every child of the sweep under the same rules, and their disk together under the job's
    limit. A problem many children share is listed once, with the children it concerns; one the
    parent already has is not repeated."""
    seen = {(e.path, e.message) for e in parent}
    found: dict[tuple[str, str], list[str]] = {}
    disk, count = 0, 0
    try:
        for label, _, child in sweep_children(config):
            count += 1
            child_config, child_errors = _check_one(child, policy, root, {}, in_sweep=True)
            for e in child_errors:
                if (e.path, e.message) not in seen:
                    found.setdefault((e.path, e.message), []).append(label)
            estimate = job_disk(child_config, policy.limits, root) if child_config is not None else None
            disk += estimate.total if estimate is not None else 0
    except ConfigError as exc:  # a grid key that cannot be set: no child can be built
        return [FieldError(e.path, e.message, line_for(e.path, lines)) for e in exc.errors]
    grid_keys = list(config.sweep or {})
    errors = [
        FieldError(path, f"{message} ({_children_text(labels)})", _child_line(path, grid_keys, lines))
        for (path, message), labels in found.items()
    ]
    limit = policy.limits.max_job_disk
    if not found and disk > limit:
        errors.append(
            FieldError(
                "sweep",
                f"the sweep's {count} children would write up to {human_bytes(disk)} together, over this service's "
                f"limit of {human_bytes(limit)} for a job; sweep fewer values, or keep fewer checkpoints",
                line_for("sweep", lines),
            )
        )
    return errors


def _children_text(labels: list[str]) -> str:
    shown = [label if len(label) <= MAX_LABEL else label[: MAX_LABEL - 1] + "…" for label in labels[:3]]
    if len(labels) == 1:
        return f"sweep child {shown[0]}"
    more = f" and {len(labels) - 3} more" if len(labels) > 3 else ""
    return f"sweep children {'; '.join(shown)}{more}"


def _child_line(path: str, grid_keys: list[str], lines: Mapping[str, int]) -> int | None:
    """The line of the grid key that set `path` (or the sweep block's)."""
    for key in grid_keys:
        if path == key or path.startswith(f"{key}.") or key.startswith(f"{path}."):
            return line_for(f"sweep.{key}", lines)
    return line_for("sweep", lines)


def _non_finite(value: Any, path: str, out: list[FieldError]) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        out.append(FieldError(path, f"{value} is not allowed; give a finite number"))
    elif isinstance(value, dict):
        for k, v in value.items():
            _non_finite(v, f"{path}.{k}" if path else str(k), out)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _non_finite(v, f"{path}.{i}" if path else str(i), out)


__all__ = ["HttpPolicy", "check_http_config", "job_procs", "tracking_uri_allowed"]

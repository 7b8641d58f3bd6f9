"""A property of the HTTP policy (gradloop.http_policy), called directly: whatever `sweep:` block
a client sends, over any config key and with hostile values, a config the policy accepts has no
child that names an import path, reads outside the data root, logs to a foreign tracking store,
picks its own output dir or goes over a limit. Anything else it refuses with a ConfigError,
never with another exception.

The children are built here the way the runner builds them (gradloop.sweep_expand), and what the
policy returns for each (what a worker trains) is held to an oracle written from the rules, not
from the policy's code.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from gradloop import registry
from gradloop.config import DataConfig, DistributedConfig, RunConfig, TrackingConfig, TrainerConfig
from gradloop.errors import ConfigError
from gradloop.http_policy import HttpPolicy, check_http_config
from gradloop.limits import ServiceLimits
from gradloop.sweep_expand import grid_size, sweep_children

pytestmark = pytest.mark.timeout(120)

LIMITS = ServiceLimits(
    max_epochs=20,
    max_steps=5_000,
    max_dataset_samples=1_000,
    max_dataset_bytes=10_000,
    max_model_params=50_000,
    max_num_workers=2,
    max_keep_checkpoints=3,
    min_histogram_every=10,
    max_job_disk=5_000_000,
    max_sweep_children=12,
    max_procs_per_job=2,
)
ALLOWED = "http://mlflow.allowed.example:5000"


def _keys(prefix: str, model: type[BaseModel]) -> list[str]:
    return [f"{prefix}{name}" for name in model.model_fields]


def _option_keys(section: str, kind: str) -> list[str]:
    return sorted({f"{section}.options.{k}" for p in registry.registry(kind) for k in p.options.model_fields})


# Every key of the config: each top-level field and section, each field of the sections, each
# option of every model and dataset plugin, and a few that are not config keys at all.
KEYS = sorted(
    {
        *_keys("", RunConfig),
        *_keys("trainer.", TrainerConfig),
        *_keys("tracking.", TrackingConfig),
        *_keys("distributed.", DistributedConfig),
        *_keys("data.", DataConfig),
        "model.name",
        "model.options",
        "loss.name",
        "optimizer.name",
        "optimizer.options.lr",
        "scheduler.name",
        "metrics.0",
        "sweep.x",
        "model.options.hidden.0",
        "nope.deeper",
        *_option_keys("model", "models"),
        *_option_keys("data", "datasets"),
    }
)

HOSTILE_STRINGS = [
    "subprocess:run",
    "os:system",
    "builtins:eval",
    "/etc/passwd",
    "../outside/secret.csv",
    "../../etc",
    "/",
    "..",
    "link.csv",
    "link_dir",
    "loop/x.csv",
    "a\x00b",
    "sub",
    "sub/inside.csv",
    "inside.csv",
    "sqlite:////tmp/evil.db",
    "sqlite:///evil.db",
    "file:///etc",
    "http://169.254.169.254/latest",
    "https://mlflow.internal",
    "databricks://../../x",
    ALLOWED,
    "mlp",
    "gpt",
    "linear",
    "csv",
    "tensors",
    "sklearn",
    "synthetic_classification",
    "adam",
    "ddp",
    "cpu",
    "",
]
HOSTILE_NUMBERS = [-1, 0, 1, 2, 3, 4, 9, 10, 11, 64, 1000, 10**6, 10**9, 10**12, 0.5, 1e-9, 1e30]
HOSTILE_OBJECTS = [
    {"args": ["touch", "/tmp/PWNED"]},
    {"path": "/etc/passwd", "target": "target"},
    {"path": "link.csv", "target": "target"},
    {"uri": "http://169.254.169.254"},
    {"root": "/"},
    {"name": "subprocess:run", "options": {}},
    {"in_features": 2, "hidden": [10**6, 10**6], "out_features": 2},
    {"name": "synthetic_classification", "options": {"n_samples": 10**7, "n_features": 2}},
    {"n_samples": 10**7, "n_features": 2},
    [10**6, 10**6],
    [8, 8, 8],
    ["subprocess:run"],
]
# Values a valid config could hold, so that a good share of the grids is accepted and checked.
BENIGN = st.one_of(
    st.integers(min_value=0, max_value=12),
    st.sampled_from([0.01, 0.1, True, False, "inside.csv", "sub", "sub/inside.csv", ALLOWED, [4], [2, 2]]),
)
VALUES = st.one_of(
    BENIGN,
    BENIGN,
    BENIGN,
    st.sampled_from(HOSTILE_STRINGS),
    st.sampled_from(HOSTILE_NUMBERS),
    st.sampled_from(HOSTILE_OBJECTS),
    st.integers(min_value=-(10**3), max_value=10**13),
    st.booleans(),
    st.none(),
    st.text(max_size=12),
)
# The keys a rule is about, drawn more often than the rest.
RULED_KEYS = [
    "data.root",
    "data.options.path",
    "data.num_workers",
    "tracking.uri",
    "tracking.histogram_every",
    "output_dir",
    "model.name",
    "model.options.hidden",
    "trainer.epochs",
    "trainer.max_steps",
    "trainer.keep_checkpoints",
    "trainer.checkpoint_every_steps",
]
SWEEPS = st.dictionaries(
    keys=st.one_of(st.sampled_from(RULED_KEYS), st.sampled_from(KEYS)),
    values=st.lists(VALUES, min_size=1, max_size=3, unique_by=repr),
    min_size=1,
    max_size=3,
)


@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory) -> HttpPolicy:
    base = tmp_path_factory.mktemp("policy-property")
    root, outside = base / "data", base / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    csv = "a,b,target\n1,2,0\n3,4,1\n"
    for folder in (root, root / "sub", outside):
        (folder / "inside.csv").write_text(csv)
    (outside / "secret.csv").write_text(csv)
    (root / "link.csv").symlink_to(outside / "secret.csv")
    (root / "link_dir").symlink_to(outside, target_is_directory=True)
    (root / "loop").symlink_to(root / "loop")
    return HttpPolicy(
        data_root=root,
        tracking_uri=f"sqlite:///{base / 'mlflow.db'}",
        allowed_tracking_uris=(ALLOWED,),
        limits=LIMITS,
    )


BASE: dict[str, Any] = {
    "name": "prop",
    "device": "cpu",
    "model": {"name": "mlp", "options": {"in_features": 2, "hidden": [4], "out_features": 2}},
    "data": {"name": "csv", "options": {"path": "inside.csv", "target": "target"}, "batch_size": 2},
    "loss": {"name": "cross_entropy"},
    "optimizer": {"name": "sgd", "options": {"lr": 0.1}},
    "trainer": {"epochs": 1},
    "tracking": {"histogram_every": 0},
}


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sweep=SWEEPS)
def test_an_accepted_sweep_has_no_child_that_breaks_a_rule(policy: HttpPolicy, sweep: dict[str, Any]) -> None:
    raw = copy.deepcopy(BASE)
    raw["sweep"] = sweep
    try:
        config = check_http_config(raw, policy)
    except ConfigError as exc:
        assert exc.errors and all(e.message for e in exc.errors)
        event("refused")
        return
    event("accepted")
    assert_within_rules(config, policy)
    assert 1 <= grid_size(config.sweep) <= LIMITS.max_sweep_children
    children = 0
    for _, _, child in sweep_children(config):
        children += 1
        assert "output_dir" not in child, "a child chose its own output dir"
        assert "sweep" not in child, "a child has a sweep of its own"
        # What the worker trains: the child as the policy returns it (it runs each child through
        # the policy again); the parent's acceptance means every child passes.
        assert_within_rules(check_http_config(child, policy), policy)
    assert children == grid_size(config.sweep)


@settings(max_examples=40, deadline=None)
@given(sweep=SWEEPS)
def test_a_grid_over_the_cap_is_refused_before_any_child_is_built(policy: HttpPolicy, sweep: dict[str, Any]) -> None:
    raw = copy.deepcopy(BASE)
    raw["sweep"] = {**sweep, "seed": list(range(LIMITS.max_sweep_children + 1))}
    with pytest.raises(ConfigError) as caught:
        check_http_config(raw, policy)
    assert [e.path for e in caught.value.errors] == ["sweep"]


def assert_within_rules(config: RunConfig, policy: HttpPolicy) -> None:
    """The oracle: each rule of the policy, read off the validated config."""
    root = policy.data_root.resolve()

    def under_root(path: Path) -> bool:
        resolved = path.resolve()
        return resolved == root or root in resolved.parents

    for section in ("model", "data", "loss", "optimizer"):
        name = getattr(config, section).name
        assert ":" not in name, f"{section}.name is an import path: {name}"
    assert config.data.root is not None and under_root(Path(config.data.root))
    for section in ("model", "data"):
        for key, value in getattr(config, section).options.items():
            if isinstance(value, str) and "path" in key:
                assert under_root(Path(config.data.root) / value), f"{section}.options.{key}={value!r}"
    assert config.tracking.uri in (None, policy.tracking_uri, ALLOWED)
    assert config.output_dir == RunConfig.model_fields["output_dir"].default
    trainer, data = config.trainer, config.data
    assert trainer.epochs <= LIMITS.max_epochs
    assert trainer.max_steps is None or trainer.max_steps <= LIMITS.max_steps
    assert data.num_workers <= LIMITS.max_num_workers
    assert trainer.keep_checkpoints <= LIMITS.max_keep_checkpoints
    assert config.tracking.histogram_every == 0 or config.tracking.histogram_every >= LIMITS.min_histogram_every
    d = config.distributed
    if d.enabled:  # every rank on the one host that claims the job, within the operator's limit
        assert d.node_range() == (1, 1) and d.rdzv_endpoint is None and d.node_rank is None
        assert d.nproc_per_node == "auto" or d.nproc_per_node <= LIMITS.max_procs_per_job  # (no GPU: auto is 1)
        assert not config.sweep
    for key in ("n_samples", "max_samples"):
        value = data.options.get(key)
        assert not isinstance(value, int) or value <= LIMITS.max_dataset_samples
    with torch.device("meta"):
        model = registry.models.build(config.model.name, dict(config.model.options))
    params = sum(p.numel() for p in model.parameters())
    assert params <= LIMITS.max_model_params
    # A checkpoint holds at least the weights: the job's disk limit bounds them too.
    assert 4 * params <= LIMITS.max_job_disk
    assert all(math.isfinite(v) for v in _numbers(config.to_dict()))


def _numbers(value: Any) -> list[float]:
    if isinstance(value, bool):
        return []
    if isinstance(value, (int, float)):
        return [float(value)]
    if isinstance(value, dict):
        return [n for v in value.values() for n in _numbers(v)]
    if isinstance(value, list):
        return [n for v in value for n in _numbers(v)]
    return []

"""The run config's shape: pydantic models with bounds and descriptions, extra fields forbidden everywhere."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gradloop.config.yaml_source import dump_yaml

DEVICE_PATTERN = r"^(auto|cpu|cuda|cuda:\d+|mps)$"


# Keys of a `sweep:` block that are settings of the sweep rather than dotted config keys to vary.
SWEEP_SETTINGS = ("metric", "goal")


def sweep_grid(sweep: Mapping[str, Any] | None) -> dict[str, list[Any]]:
    """The grid of a `sweep:` block: its dotted keys and their values, without metric and goal."""
    return {k: v for k, v in (sweep or {}).items() if k not in SWEEP_SETTINGS}


def sweep_setting(sweep: Mapping[str, Any] | None, name: str) -> str | None:
    """One of a `sweep:` block's settings (metric, goal): the string the schema requires, or None."""
    value = (sweep or {}).get(name)
    return value if isinstance(value, str) else None


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class PluginSpec(Strict):
    name: str = Field(min_length=1, description="registered plugin name")
    options: dict[str, Any] = Field(default_factory=dict, description="options, validated by the plugin's own model")


class ModelConfig(PluginSpec):
    name: str = Field(
        min_length=1, description="registered model name, or `package.module:factory` (CLI and Python only)"
    )


class DataConfig(PluginSpec):
    batch_size: int = Field(32, ge=1, le=1_000_000)
    eval_batch_size: int | None = Field(
        None, ge=1, le=1_000_000, description="validation batch size (default: batch_size)"
    )
    val_fraction: float = Field(0.2, ge=0.0, lt=1.0, description="fraction held out for validation")
    split_seed: int | None = Field(None, description="seed of the train/validation split (default: the run's seed)")
    shuffle: bool = True
    drop_last: bool = False
    num_workers: int = Field(0, ge=0, le=64, description="DataLoader workers, for datasets that need a DataLoader")
    root: str | None = Field(
        None,
        description="data root that relative paths resolve against (default: $GRADLOOP_DATA_ROOT or the working "
        "directory)",
    )


class ParamGroupRule(BaseModel):
    """`{match: "encoder.*", lr: 1e-4, ...}`: optimizer options for the parameters whose name matches."""

    model_config = ConfigDict(extra="allow")
    match: str = Field(min_length=1, description="glob on parameter names (fnmatch); first matching rule wins")


class OptimizerConfig(PluginSpec):
    param_groups: list[ParamGroupRule] = Field(default_factory=list)
    no_weight_decay: bool | None = Field(
        None, description="biases and 1-D parameters get weight_decay 0 (default: on when weight_decay > 0)"
    )


class SchedulerConfig(PluginSpec):
    pass


class TrainerConfig(Strict):
    epochs: int = Field(1, ge=1, le=100_000)
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps")
    grad_accum_steps: int = Field(1, ge=1, le=10_000)
    grad_clip_norm: float | None = Field(None, gt=0, description="clip the total gradient norm to this value")
    grad_clip_value: float | None = Field(None, gt=0, description="clip each gradient element to [-v, v]")
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    on_nonfinite: Literal["fail", "skip_step"] = "fail"
    max_skipped_fraction: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="a run that skips more than this share of its optimizer steps (non-finite, fp16 overflow) fails",
    )
    val_every_epochs: int = Field(1, ge=0, description="validate every N epochs (0: only when val_every_steps says)")
    val_every_steps: int | None = Field(None, ge=1)
    checkpoint_every_steps: int | None = Field(None, ge=1)
    checkpoint_at_end: bool = True
    keep_checkpoints: int = Field(2, ge=1, description="how many step checkpoints to keep besides the last")
    compile: bool = False
    progress: Literal["auto", "bar", "lines", "none"] = "auto"


class MetricConfig(PluginSpec):
    key: str | None = Field(
        None,
        min_length=1,
        max_length=100,
        pattern=r"^[A-Za-z0-9_.\-]+$",
        description="logged as val/<key> (default: the name); needed to use one metric twice",
    )


class TrackingConfig(Strict):
    enabled: bool = True
    uri: str | None = Field(
        None, description="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)"
    )
    experiment: str = Field("gradloop", min_length=1)
    log_every: int = Field(10, ge=1, description="log metrics every N optimizer steps")
    histogram_every: int = Field(100, ge=0, description="record gradient/weight histograms every N steps (0: never)")
    grad_stats: Literal["none", "total", "per_layer", "per_module"] = "per_layer"
    log_checkpoint: bool = True
    log_model: bool = True
    system_metrics: bool = True
    plots: bool = True
    flush_timeout_s: float = Field(
        30.0,
        ge=0,
        description="at the end of a run, how long to keep trying to send unsent points (the rest waits for `gradloop "
        "sync`)",
    )


class DistributedConfig(Strict):
    """`distributed:` how many processes train the model together (data parallel, torch.distributed)."""

    strategy: Literal["none", "ddp", "fsdp"] = Field(
        "none", description="none: one process; ddp: DistributedDataParallel; fsdp: FSDP2 fully_shard"
    )
    nproc_per_node: int | Literal["auto"] = Field(
        1, description="processes on this machine (auto: one per visible GPU, else 1)"
    )
    nnodes: int | str = Field(1, description='machines: N, or "MIN:MAX" for an elastic run')
    node_rank: int | None = Field(
        None, ge=0, description="this machine's rank (0 hosts the rendezvous); default: whoever binds first"
    )
    backend: Literal["auto", "gloo", "nccl"] = Field("auto", description="auto: nccl on CUDA, gloo on CPU")
    rdzv_endpoint: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_.\-\[\]:]+:\d+$",
        description="HOST:PORT of the c10d rendezvous (default: a free local port, for one machine)",
    )
    max_restarts: int = Field(0, ge=0, le=100, description="restart all ranks this often after a failure")
    timeout_s: float = Field(1800.0, gt=0, description="collective timeout: a stalled rank fails the run")
    find_unused_parameters: bool = Field(False, description="DDP: let some parameters get no gradient in a step")
    sync_batchnorm: bool = Field(
        False, description="convert BatchNorm layers to SyncBatchNorm (statistics over all ranks)"
    )

    @field_validator("nproc_per_node")
    @classmethod
    def _positive(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 1:
            raise ValueError("nproc_per_node must be at least 1 (or auto)")
        return v

    @field_validator("nnodes")
    @classmethod
    def _node_range(cls, v: int | str) -> int | str:
        text = str(v)
        lo, sep, hi = text.partition(":")
        if not (lo.isdigit() and (not sep or hi.isdigit())) or int(lo) < 1 or (sep and int(hi) < int(lo)):
            raise ValueError(f'nnodes must be a number of machines N >= 1 or "MIN:MAX" with MIN <= MAX, got {text!r}')
        return int(text) if not sep else text

    @property
    def enabled(self) -> bool:
        return self.strategy != "none"

    def node_range(self) -> tuple[int, int]:
        """(min, max) machines."""
        lo, _, hi = str(self.nnodes).partition(":")
        return int(lo), int(hi or lo)


class RunConfig(Strict):
    name: str = Field("run", min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    seed: int = Field(0, ge=0, le=2**32 - 1)
    device: str = Field("auto", pattern=DEVICE_PATTERN)
    output_dir: str = Field("runs", description="run directories (checkpoints, metrics.jsonl, logs) go under it")
    model: ModelConfig
    data: DataConfig
    loss: PluginSpec
    optimizer: OptimizerConfig
    scheduler: SchedulerConfig | None = None
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    metrics: list[str | MetricConfig] | None = Field(
        None,
        max_length=64,
        description="validation metrics: names or {name, options, key}; default: the task's (e.g. accuracy)",
    )
    sweep: dict[str, list[Any] | str] | None = Field(
        None,
        description="grid over dotted keys (each combination is one run), plus `metric` and `goal` "
        "(minimize | maximize) that choose the best run",
    )

    @field_validator("sweep")
    @classmethod
    def _sweep_non_empty(cls, v: dict[str, list[Any] | str] | None) -> dict[str, list[Any] | str] | None:
        if v is not None:
            for key, values in v.items():
                if key in SWEEP_SETTINGS:
                    if not isinstance(values, str):
                        raise ValueError(f"sweep.{key} is a setting of the sweep, not a grid key; give one string")
                    if key == "goal" and values not in ("minimize", "maximize"):
                        raise ValueError(f"sweep.goal must be minimize or maximize, not {values!r}")
                elif not isinstance(values, list):
                    raise ValueError(f"sweep.{key} must be a list of values to try")
                elif not values:
                    raise ValueError(f"sweep.{key} has no values; give at least one")
            if not sweep_grid(v):
                raise ValueError("the sweep has no grid keys; add e.g. optimizer.options.lr: [0.1, 0.01]")
        return v

    @field_validator("metrics")
    @classmethod
    def _metric_keys_unique(cls, v: list[str | MetricConfig] | None) -> list[str | MetricConfig] | None:
        seen: set[str] = set()
        for item in v or []:
            key = item if isinstance(item, str) else (item.key or item.name)
            if key in seen:
                raise ValueError(f"metric {key!r} is listed twice; give one of them a different key")
            seen.add(key)
        return v

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return dump_yaml(self.to_dict())

    def config_hash(self) -> str:
        """Stable short hash of the resolved config (the same run config gives the same hash)."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

"""The run config: schema.py (the pydantic models), loading.py (files, text, `--set` overrides),
validation.py (everything checked before the first step, in one pass), messages.py (how a problem
is worded) and yaml_source.py (safe YAML that remembers each key's line).
"""

from gradloop.config.loading import apply_overrides, get_dotted, load_config, load_raw_text, read_raw, set_dotted
from gradloop.config.schema import (
    SWEEP_SETTINGS,
    DataConfig,
    DistributedConfig,
    MetricConfig,
    ModelConfig,
    OptimizerConfig,
    ParamGroupRule,
    PluginSpec,
    RunConfig,
    SchedulerConfig,
    TrackingConfig,
    TrainerConfig,
    sweep_grid,
    sweep_setting,
)
from gradloop.config.validation import PLUGIN_FIELDS, is_import_path, validate_config

__all__ = [
    "PLUGIN_FIELDS",
    "SWEEP_SETTINGS",
    "DataConfig",
    "DistributedConfig",
    "MetricConfig",
    "ModelConfig",
    "OptimizerConfig",
    "ParamGroupRule",
    "PluginSpec",
    "RunConfig",
    "SchedulerConfig",
    "TrackingConfig",
    "TrainerConfig",
    "apply_overrides",
    "get_dotted",
    "is_import_path",
    "load_config",
    "load_raw_text",
    "read_raw",
    "set_dotted",
    "sweep_grid",
    "sweep_setting",
    "validate_config",
]

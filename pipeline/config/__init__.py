"""The run configuration: its schema (schema.py) and how a config is loaded and changed.

Stages import from here: `load_config`, `validate`, `with_overrides`, `to_yaml`, `ConfigError`.
"""
from pipeline.config.schema import (
    Config, ConfigError, ExportConfig, SplitConfig, config_hash, load_config, load_yaml, merge, to_yaml, validate,
    with_overrides)

__all__ = ["Config", "ConfigError", "ExportConfig", "SplitConfig", "config_hash", "load_config", "load_yaml", "merge",
           "to_yaml", "validate", "with_overrides"]

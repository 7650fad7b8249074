"""The run configuration: its schema (schema.py, synthetic.py, on base.py's Section) and how a config
is loaded, overridden and written back (load.py). Stages import from here."""
from pipeline.config.load import (
    ConfigError, config_hash, load_config, load_yaml, merge, to_yaml, validate, with_overrides)
from pipeline.config.schema import Config, ExportConfig, SplitConfig, without_execution_fields

__all__ = ["Config", "ConfigError", "ExportConfig", "SplitConfig", "config_hash", "load_config", "load_yaml", "merge",
           "to_yaml", "validate", "with_overrides", "without_execution_fields"]

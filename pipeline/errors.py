"""Errors the CLI reports as one line (exit code 2): bad config, unusable input or artifacts."""
from features.errors import MtlrecError

__all__ = ["MtlrecError"]

"""Errors the CLI reports as one line (exit code 2): bad config, unusable input or artifacts."""


class MtlrecError(ValueError):
    """A problem with what the user gave us, stated as one line naming the file, path or key."""

"""The error every part of mtlrec reports as one line (pipeline/errors.py re-exports it): defined
here, below pipeline/, because features/ (the declarations) never imports pipeline/."""


class MtlrecError(ValueError):
    """A problem with what the user gave us, stated as one line naming the file, path or key."""

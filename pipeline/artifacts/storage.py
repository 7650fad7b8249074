"""Paths that may be local or on an object store (gs://, s3://, TF's ram:// in tests).

pathlib folds `gs://bucket/x` into `gs:/bucket/x`, so a path that can be remote stays a string
and goes through here: local paths use os and shutil, others tf.io.gfile (the TFX convention).
TensorFlow is imported only for a remote path: reading a local run's results, the CLI's config
errors and `--help` stay instant.
"""
from __future__ import annotations

import glob as _glob
import os
import shutil
from typing import IO, Union

# A path as the stages take it: a string (local, or an object store's URL) or a local os.PathLike.
Location = Union[str, "os.PathLike[str]"]


def is_url(path: Location) -> bool:
    """gs://, s3://, ram:// and the like: object stores, reached through tf.io.gfile."""
    return "://" in str(path)


def _gfile():
    import tensorflow as tf
    return tf.io.gfile


def join(base: Location, *parts: str) -> str:
    """`base/part/...` as a string; a remote base keeps its `scheme://`."""
    if is_url(base):
        return "/".join([str(base).rstrip("/"), *(str(p).strip("/") for p in parts)])
    return os.path.join(str(base), *map(str, parts))


def absolute(path: Location) -> str:
    """A local path made absolute (never stored relative to the cwd); a remote one as it is."""
    return str(path) if is_url(path) else os.path.abspath(str(path))


def name(path: Location) -> str:
    return str(path).rstrip("/").rsplit("/", 1)[-1]


def parent(path: Location) -> str:
    return str(path).rstrip("/").rsplit("/", 1)[0] if is_url(path) else os.path.dirname(os.path.abspath(str(path)))


def exists(path: Location) -> bool:
    return _gfile().exists(str(path)) if is_url(path) else os.path.exists(path)


def isdir(path: Location) -> bool:
    return _gfile().isdir(str(path)) if is_url(path) else os.path.isdir(path)


def makedirs(path: Location) -> None:
    _gfile().makedirs(str(path)) if is_url(path) else os.makedirs(path, exist_ok=True)


def glob(pattern: Location) -> list[str]:
    """Matching paths, sorted."""
    return sorted(_gfile().glob(str(pattern)) if is_url(pattern) else _glob.glob(str(pattern)))


def listdir(path: Location) -> list[str]:
    """Entry names of a folder (no trailing slashes), sorted; [] when it does not exist."""
    if not isdir(path):
        return []
    return sorted(e.rstrip("/") for e in (_gfile().listdir(str(path)) if is_url(path) else os.listdir(path)))


def remove(path: Location) -> None:
    """Remove a file if it exists."""
    if is_url(path):
        if _gfile().exists(str(path)):
            _gfile().remove(str(path))
    elif os.path.lexists(path):
        os.remove(path)


def rmtree(path: Location) -> None:
    """Remove a folder and everything in it, if it exists."""
    if is_url(path):
        if _gfile().exists(str(path)):
            _gfile().rmtree(str(path))
    else:
        shutil.rmtree(path, ignore_errors=True)


def read_bytes(path: Location) -> bytes:
    if is_url(path):
        with _gfile().GFile(str(path), "rb") as handle:
            return handle.read()
    with open(path, "rb") as handle:
        return handle.read()


def read_text(path: Location) -> str:
    return read_bytes(path).decode("utf-8")


def write_bytes(path: Location, data: bytes) -> None:
    """Write a whole file (an object store writes an object whole or not at all)."""
    if str(path).startswith("ram://"):
        remove(path)  # TF's ram:// appends to an existing file instead of replacing it (TF 2.21)
    with open_file(path, "wb") as handle:
        handle.write(data)


def open_file(path: Location, mode: str = "r") -> IO:
    """A file object (tf.io.gfile.GFile for a remote path)."""
    return _gfile().GFile(str(path), mode) if is_url(path) else open(path, mode)


def copy_tree(local_dir: Location, destination: Location) -> None:
    """Copy a local folder's files into `destination` (local or remote), file by file."""
    for root, _, files in os.walk(str(local_dir)):
        relative = os.path.relpath(root, str(local_dir))
        target = destination if relative == "." else join(destination, *relative.split(os.sep))
        makedirs(target)
        for file in sorted(files):
            with open(os.path.join(root, file), "rb") as handle:
                write_bytes(join(target, file), handle.read())

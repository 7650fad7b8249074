"""Artifacts on disk: atomic files and folders, and JSON.

A stage writes into a hidden temporary sibling and renames it into place only when it
has succeeded, so a crash or kill leaves at most a `.<name>.tmp-*` folder that no later
stage reads. (A rename is atomic on a local disk; on object stores such as GCS, which
cannot rename folders, the manifest, written last, is what marks a folder complete.)
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import numpy as np

from pipeline.errors import MtlrecError

MANIFEST = "manifest.json"
_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read the process umask (the only way is to set it) and put it back


class ArtifactError(MtlrecError):
    """A missing or unusable artifact, naming its path."""


def is_url(path) -> bool:
    """gs://, s3:// and the like: object stores, reached through tf.io.gfile."""
    return "://" in str(path)


def atomic_write(path, data: bytes):
    if is_url(path):  # an object store writes an object whole or not at all
        import tensorflow as tf
        with tf.io.gfile.GFile(str(path), "wb") as handle:
            handle.write(data)
        return str(path)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes the file private; results are not
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path


def _jsonable(obj):
    """numpy values to Python ones, and NaN/inf (not valid JSON) to None."""
    if isinstance(obj, dict):
        return {(k.item() if isinstance(k, np.generic) else k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return _jsonable(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path, obj) -> Path:
    """Write `obj` as indented JSON, atomically; numpy converted, NaN and inf as null."""
    text = json.dumps(_jsonable(obj), indent=2, allow_nan=False, sort_keys=False) + "\n"
    return atomic_write(path, text.encode("utf-8"))


def read_json(path, what: str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: no {what} (missing file)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path}: invalid {what}: {exc}") from None


@contextlib.contextmanager
def staged_folder(final):
    """Yield a temporary sibling of `final`; rename it to `final` if the block succeeds.

    An existing `final` is replaced only after the new one is complete. On any exception the
    temporary folder is removed and nothing at `final` changes.

    On an object store (gs://...) folders cannot be renamed: the stage writes in place, as a
    string path, after removing any old manifest, so the folder counts as complete only once
    the stage writes its manifest again, last.
    """
    if is_url(final):
        import tensorflow as tf
        final = str(final).rstrip("/")
        if tf.io.gfile.exists(f"{final}/{MANIFEST}"):
            tf.io.gfile.remove(f"{final}/{MANIFEST}")
        tf.io.gfile.makedirs(final)
        yield final
        return
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)

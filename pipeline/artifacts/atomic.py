"""Artifacts on disk: atomic files and folders, and JSON.

A stage writes into a hidden temporary sibling and renames it into place only when it
has succeeded, so a crash or kill leaves at most a `.<name>.tmp-*` folder that no later
stage reads, and that the next run writing <name> removes. (A rename is atomic on a local disk;
on object stores such as GCS, which cannot rename folders, the manifest, written last, is what
marks a folder complete.)
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.artifacts import locks, storage
from pipeline.errors import MtlrecError
from pipeline.artifacts.storage import is_url  # also for the stages: whether a path is remote

if TYPE_CHECKING:  # names in annotations only
    from pipeline.artifacts.storage import Location

MANIFEST = "manifest.json"
_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read the process umask (the only way is to set it) and put it back


class ArtifactError(MtlrecError):
    """A missing or unusable artifact, naming its path."""


def atomic_write(path: Location, data: bytes) -> None:
    if is_url(path):  # an object store writes an object whole or not at all
        storage.write_bytes(path, data)
        return str(path)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes the file private; results are not
        os.replace(tmp, path)
    except BaseException as exc:
        os.unlink(tmp)
        if isinstance(exc, OSError) and exc.filename is None:  # a failed write names no file: name it
            raise OSError(exc.errno, f"cannot write: {exc.strerror}", str(path)) from exc
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


def write_json(path: Location, obj: Any) -> Path:
    """Write `obj` as indented JSON, atomically; numpy converted, NaN and inf as null."""
    text = json.dumps(_jsonable(obj), indent=2, allow_nan=False, sort_keys=False) + "\n"
    return atomic_write(path, text.encode("utf-8"))


def read_json(path: Location, what: str) -> dict:
    if not storage.exists(path) or storage.isdir(path):
        raise ArtifactError(f"{path}: no {what} (missing file)")
    try:
        return json.loads(storage.read_text(path))
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path}: invalid {what}: {exc}") from None


# A staging folder's name says whose it is: .<final>.tmp-<random>-<pid>@<host> (and .old- for
# the replaced folder, while it is being removed), so a later run can tell a dead run's from a live one's.
_STAGING = re.compile(r"^\.(?P<final>.+)\.(?:tmp|old)-[0-9a-f]{8}(?:-(?P<pid>\d+)@(?P<host>.+))?$")


def _staging_name(final: Path, kind: str) -> Path:
    return final.parent / f".{final.name}.{kind}-{uuid.uuid4().hex[:8]}-{os.getpid()}@{locks.HOST}"


def remove_stale_staging(final: Location) -> list[Path]:
    """Remove the staging folders of `final` that killed runs left; returns those removed.

    One is stale when its owner is provably gone (its name's pid no longer runs on this host), or
    when this process holds the lock of `final` and the owner is not a live process of this host:
    every writer of `final` takes that lock, so no live run can be writing it (this covers
    staging folders of other hosts, and of older versions, which did not record their owner).
    A staging folder whose owner runs on this host is never removed, whatever it is doing.
    """
    final = Path(final)
    if not final.parent.is_dir():
        return []
    locked = locks.holds(final)
    removed = []
    for entry in final.parent.iterdir():
        match = _STAGING.match(entry.name)
        if not match or match["final"] != final.name or not entry.is_dir():
            continue
        pid, host = (int(match["pid"]), match["host"]) if match["pid"] else (None, None)
        if host == locks.HOST and locks.pid_alive(pid):
            continue  # a live process's (ours included)
        if locked or (pid is not None and locks.owner_gone(pid, host)):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


@contextlib.contextmanager
def staged_folder(final: Location) -> Iterator[Path]:
    """Yield a temporary sibling of `final`; rename it to `final` if the block succeeds.

    An existing `final` is replaced only after the new one is complete. On any exception the
    temporary folder is removed and nothing at `final` changes. Staging folders of killed runs
    are removed first (remove_stale_staging).

    On an object store (gs://...) folders cannot be renamed: the stage writes in place, as a
    string path, after removing any old manifest, so the folder counts as complete only once
    the stage writes its manifest again, last.
    """
    if is_url(final):
        final = str(final).rstrip("/")
        storage.remove(f"{final}/{MANIFEST}")
        storage.makedirs(final)
        yield final
        return
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(final)
    tmp = _staging_name(final, "tmp")
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        old = _staging_name(final, "old")
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)


@contextlib.contextmanager
def local_staging(final: Location) -> Iterator[Path]:
    """Yield a local folder to write; on success it becomes `final`, atomically on a local disk
    (staged_folder), or copied up file by file to an object store, the old folder removed first.

    For small outputs written by code that needs local files (reports: matplotlib, relative links).
    """
    if not is_url(final):
        with staged_folder(final) as folder:
            yield Path(folder)
        return
    with tempfile.TemporaryDirectory(prefix="mtlrec-staging-") as local:
        yield Path(local)
        storage.rmtree(final)
        storage.copy_tree(local, final)

"""One writer at a time per folder: run folders, data folders, compare's workdir, tune's folder.

The lock of folder X is the file `.X.lock` beside it: a sibling, because a data folder is
replaced by a rename (pipeline/artifacts/atomic.py) that would carry a lock inside it away. The file
records its holder (pid, host, start time), so that a process refused names who holds it.

- Local disk: fcntl.flock. The OS releases it when the holder dies, however it dies, so the
  lock of a killed run never blocks: the next process simply takes it. The file stays (deleting
  a flock'ed file lets two processes hold "the" lock); a free lock's file is empty.
- Object stores (gs://, ram://): no file locking; the lock file's existence is the lock, and it
  is removed on release. A lock left by a process of this host whose pid is gone is taken over;
  one of another host is never taken over (its pid cannot be checked there): the refusal names
  it, and removing the file frees it. tf.io.gfile offers no compare-and-swap, so two processes
  starting within the same instant on different hosts could both get it: the write is read back
  to narrow that window, not close it.

Re-entrant within a process: nested stages (compare runs preprocess and train in-process) take
the locks they need without deadlocking on one their caller already holds.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from pipeline.artifacts import storage
from pipeline.errors import MtlrecError

if TYPE_CHECKING:  # names in annotations only
    from pipeline.artifacts.storage import Location

HOST = socket.gethostname()


class LockError(MtlrecError):
    """A folder another live process is writing, naming that process."""


_held: dict[str, list] = {}  # lock path -> [depth, local file descriptor or None]
_guard = threading.Lock()


def lock_path(folder: Location) -> str:
    """The lock file of `folder`: `.<name>.lock` in its parent folder."""
    return storage.join(storage.parent(folder), f".{storage.name(folder)}.lock")


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (signal 0 checks without sending)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def owner_gone(pid: int, host: str) -> bool:
    """True only when the process is provably dead: on this host, and its pid is gone."""
    return host == HOST and not pid_alive(pid)


def holds(folder: Location) -> bool:
    """Whether this process holds the lock of `folder`."""
    return lock_path(folder) in _held


def _holder_info() -> dict:
    return {"pid": os.getpid(), "host": HOST, "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "command": " ".join(os.path.basename(a) for a in sys.argv[:2])}


def _describe(folder, what: str, path: str, holder: dict | None) -> str:
    who = (f"pid {holder.get('pid')} on host {holder.get('host')}, since {holder.get('started')}"
           if holder else "a process that has not recorded itself yet")
    return (f"{what} {folder}: in use by another mtlrec process ({who}; lock {path}); "
            f"wait for it to finish, or stop it and run again")


def _parse(text: str) -> dict | None:
    try:
        holder = json.loads(text)
    except ValueError:
        return None
    return holder if isinstance(holder, dict) else None


@contextlib.contextmanager
def hold(folder: Location, what: str = "folder") -> Iterator[None]:
    """Hold the lock of `folder` for the block; LockError at once if another process holds it.

    Args:
      folder: the folder (local or remote) to write; it need not exist yet.
      what: how the refusal names it, e.g. "run folder".
    """
    path = lock_path(folder)
    with _guard:
        entry = _held.get(path)
        if entry:
            entry[0] += 1
    if entry:  # our own caller's lock: nested stages share it
        try:
            yield
        finally:
            with _guard:
                entry[0] -= 1
        return
    release = _acquire_remote(folder, what, path) if storage.is_url(path) else _acquire_local(folder, what, path)
    with _guard:
        _held[path] = [1, None]
    try:
        yield
    finally:
        with _guard:
            del _held[path]
        release()


def _acquire_local(folder, what: str, path: str):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _parse(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
        os.close(fd)
        raise LockError(_describe(folder, what, path, holder)) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(_holder_info()).encode(), 0)

    def release():
        os.ftruncate(fd, 0)  # a free lock records no holder
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    return release


def _acquire_remote(folder, what: str, path: str):
    if storage.exists(path):
        holder = _parse(storage.read_text(path))
        if holder is None or not owner_gone(int(holder.get("pid", -1)), holder.get("host", "")):
            raise LockError(_describe(folder, what, path, holder))
        # Left by a killed process of this host: take it over.
    mine = json.dumps({**_holder_info(), "token": os.urandom(8).hex()})
    storage.makedirs(storage.parent(path))
    storage.write_bytes(path, mine.encode())
    if storage.read_text(path) != mine:  # another process wrote in the same instant
        raise LockError(_describe(folder, what, path, _parse(storage.read_text(path))))

    def release():
        if storage.exists(path) and storage.read_text(path) == mine:
            storage.remove(path)
    return release

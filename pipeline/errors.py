"""Errors the CLI reports as one line, and which kind of failure a library's exception is.

Two kinds of one-line errors:

- MtlrecError: a problem with what the user gave us (config, input, artifacts, a folder in
  use), naming the file, path or key. Exit code 2, `mtlrec CMD: error: ...`.
- Failure: something outside the pipeline failed us, in one of these categories (exit code 1,
  `mtlrec CMD: <category>: ...`):
    storage error   the disk or object store: full, read-only, permission denied, a missing
                    path we read or write (ENOSPC, EFBIG, EROFS, EACCES, ENOENT, ...);
    network error   a host name that does not resolve, a refused or reset connection, a gRPC
                    call that failed or timed out, an endpoint that does not answer;
    cluster error   a peer of a multi-worker job that was lost (it stopped sending
                    heartbeats) or never joined;
    system error    another operating-system failure (e.g. out of memory).
  Our code raises StorageError / NetworkError / ClusterError where it knows the endpoint or
  task; `classify` finds the category of a library's exception (OSError, socket, gRPC,
  TensorFlow), searching the chain of exceptions it wraps.

Anything else is a bug and keeps its traceback. Nothing here imports TensorFlow or gRPC: their
exception types are looked up only if a stage already imported them.
"""
from __future__ import annotations

import errno
import os
import re
import socket
import sys

from features.errors import MtlrecError  # defined below pipeline/: features/ raises it too

__all__ = ["ClusterError", "Failure", "MtlrecError", "NetworkError", "StorageError", "SystemFailure", "classify",
           "one_line"]


class Failure(Exception):
    """Something outside the pipeline failed: one line (its category and message), exit code 1."""
    category = "error"

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))  # always one line


class StorageError(Failure):
    category = "storage error"


class NetworkError(Failure):
    category = "network error"


class ClusterError(Failure):
    category = "cluster error"


class SystemFailure(Failure):
    category = "system error"


# errno values that mean the network, not the disk, failed (ConnectionError and TimeoutError
# cover most; these come as plain OSErrors from some libraries).
NETWORK_ERRNOS = frozenset({errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.ETIMEDOUT,
                            errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENETDOWN, errno.EHOSTDOWN,
                            errno.EADDRNOTAVAIL, errno.ENOTCONN})
# errno values of the storage itself; an OSError naming a file counts as storage whatever its errno.
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM,
                            errno.EIO, errno.ENOTDIR, errno.EISDIR, errno.ENOENT, errno.EEXIST, errno.ENOTEMPTY,
                            errno.ESTALE, errno.EXDEV})

# TensorFlow's errors that tf.io.gfile, checkpoints and SavedModels raise for the storage itself;
# others (e.g. OutOfRangeError, which a file over its size limit raises) count when their message
# gives a storage cause.
_TF_STORAGE_ERRORS = ("PermissionDeniedError", "ResourceExhaustedError", "NotFoundError", "AlreadyExistsError",
                      "UnavailableError", "DataLossError")
_TF_NETWORK_ERRORS = ("UnavailableError", "DeadlineExceededError")
_STORAGE_CAUSES = tuple(os.strerror(e) for e in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EACCES,
                                                 errno.EIO, errno.ENOTDIR))
# A TensorFlow message about the tasks of a cluster (collectives, the coordination service).
CLUSTER_MESSAGE = re.compile(r"/job:\w+/replica:\d+/task:\d+|heartbeat|[Cc]ollective ops is aborted|"
                             r"coordination service", re.IGNORECASE)


def one_line(text: object) -> str:
    return " ".join(str(text).split())


def classify(exc: BaseException) -> Failure | None:
    """The Failure an exception stands for, or None for anything else (a bug).

    The exception and those it wraps (__cause__, else __context__) are searched, outermost
    first: Beam and Keras wrap the original error."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        found = _classify_one(exc)
        if found is not None:
            return found
        exc = exc.__cause__ or exc.__context__
    return None


def _classify_one(exc: BaseException) -> Failure | None:
    if isinstance(exc, Failure):
        return exc
    if isinstance(exc, (socket.gaierror, socket.herror)):
        return NetworkError(f"cannot resolve a host name: {exc.strerror or exc}")
    if isinstance(exc, OSError) and (isinstance(exc, (ConnectionError, TimeoutError))
                                     or exc.errno in NETWORK_ERRNOS):
        cause = exc.strerror or (os.strerror(exc.errno) if exc.errno else str(exc) or type(exc).__name__)
        return NetworkError(f"{exc.filename}: {cause}" if exc.filename else cause)
    if isinstance(exc, OSError) and exc.errno is not None:
        cause = exc.strerror or os.strerror(exc.errno)
        if exc.filename:
            return StorageError(f"{exc.filename}: {cause}")
        return StorageError(cause) if exc.errno in STORAGE_ERRNOS else SystemFailure(cause)
    grpc = sys.modules.get("grpc")  # its errors can only occur once something imported it
    if grpc is not None:
        if isinstance(exc, grpc.FutureTimeoutError):
            return NetworkError("a gRPC endpoint did not become ready in time")
        if isinstance(exc, grpc.RpcError) and callable(getattr(exc, "code", None)):
            code = exc.code()
            details = exc.details() if callable(getattr(exc, "details", None)) else ""
            return NetworkError(f"gRPC {getattr(code, 'name', code)}: {details}")
    tf = sys.modules.get("tensorflow")
    if tf is not None and isinstance(exc, tf.errors.OpError):
        # TensorFlow's message names the path or task; drop the op names around it.
        message = re.sub(r"^\{\{[^}]*\}\}\s*|\s*\[Op:\w+\]( name: ?\S*)?$", "", one_line(exc.message))
        name = type(exc).__name__
        if CLUSTER_MESSAGE.search(message):
            return ClusterError(message)
        if name in _TF_NETWORK_ERRORS and "://" not in message:  # an object store's URL: its storage failed
            return NetworkError(message)
        if name in _TF_STORAGE_ERRORS or any(c in message for c in _STORAGE_CAUSES):
            return StorageError(message)
    return None

"""Failures outside the pipeline end `mtlrec` with one line naming their category and what failed.

Storage, network and cluster failures are told apart (issue 27: a failed DNS lookup used to be
reported as "storage error: Name or service not known"). Each case raises the exception a
library raises (real ones where they are cheap to provoke: gRPC) from inside a stage, and runs
the CLI's entry point. The failures met in real runs (a refused job endpoint, a host that does
not resolve, a lost training worker) are tested end to end in tests/test_portable.py and
tests/test_multiworker.py.
"""
import errno
import socket
import urllib.error

import grpc
import pytest
import tensorflow as tf

from pipeline import cli
from pipeline.stages import preprocess


def _wrapped(inner):
    """A RuntimeError raised from `inner`, as Beam and Keras wrap errors."""
    try:
        try:
            raise inner
        except BaseException as exc:
            raise RuntimeError("the pipeline failed") from exc
    except RuntimeError as exc:
        return exc


def _gaierror_as_urllib_raises_it():
    try:
        try:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        except OSError as err:
            raise urllib.error.URLError(err)  # what urlopen raises: the gaierror is its context
    except urllib.error.URLError as exc:
        return _wrapped(exc)


def _grpc_error(timeout: float, listen: bool):
    """A real gRPC error: a call to a port where nothing listens (UNAVAILABLE), or to a socket that
    accepts connections and never answers (DEADLINE_EXCEEDED)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    port = server.getsockname()[1]
    if listen:
        server.listen()
    else:
        server.close()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary("/mtlrec.Test/Ping")
            try:
                call(b"", timeout=timeout)
            except grpc.RpcError as exc:
                return exc, port
            raise AssertionError("the call did not fail")
    finally:
        server.close()


HEARTBEATS = ("Collective ops is aborted by: Error reported from /job:worker/task:0: The following tasks are "
              "unhealthy (stopped sending heartbeats):\n/job:worker/replica:0/task:1\nThe tasks have crashed.")

CASES = {
    "disk full": (OSError(errno.ENOSPC, "No space left on device", "/w/data/train-0.gz"),
                  "storage error: /w/data/train-0.gz: No space left on device"),
    "read-only": (_wrapped(OSError(errno.EROFS, "Read-only file system", "/ro/run/config.yaml")),
                  "storage error: /ro/run/config.yaml: Read-only file system"),
    "permission": (PermissionError(errno.EACCES, "Permission denied", "/w/run"),
                   "storage error: /w/run: Permission denied"),
    "missing path": (FileNotFoundError(errno.ENOENT, "No such file or directory", "/w/data/manifest.json"),
                     "storage error: /w/data/manifest.json: No such file or directory"),
    "object store": (tf.errors.UnavailableError(None, None, "gs://bucket/run/x: Error executing an HTTP request"),
                     "storage error: gs://bucket/run/x: Error executing an HTTP request"),
    "dns": (_gaierror_as_urllib_raises_it(), "network error: cannot resolve a host name: Name or service not known"),
    "refused": (_wrapped(ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")),
                "network error: Connection refused"),
    "tf deadline": (tf.errors.DeadlineExceededError(None, None, "Timed out waiting for the job server"),
                    "network error: Timed out waiting for the job server"),
    "lost worker": (_wrapped(tf.errors.UnavailableError(None, None, HEARTBEATS)),
                    "cluster error: " + " ".join(HEARTBEATS.split())),
    "out of memory": (OSError(errno.ENOMEM, "Cannot allocate memory"), "system error: Cannot allocate memory"),
}


def _run_preprocess_raising(monkeypatch, capsys, exc):
    def fail(config, output=None, beam_args=()):
        raise exc
    monkeypatch.setattr(preprocess, "run", fail)
    code = cli.main(["preprocess"])
    return code, capsys.readouterr().err.splitlines()


@pytest.mark.parametrize("name", list(CASES))
def test_failures_are_one_line_of_their_category(monkeypatch, capsys, name):
    exc, expected = CASES[name]
    code, err = _run_preprocess_raising(monkeypatch, capsys, exc)
    assert code == 1 and err == [f"mtlrec preprocess: {expected}"], err


@pytest.mark.parametrize("listen, code", [(False, "UNAVAILABLE"), (True, "DEADLINE_EXCEEDED")])
def test_grpc_failures_are_network_errors_naming_the_endpoint(monkeypatch, capsys, listen, code):
    exc, port = _grpc_error(timeout=1.0, listen=listen)
    status, err = _run_preprocess_raising(monkeypatch, capsys, _wrapped(exc))
    assert status == 1 and len(err) == 1, err
    assert err[0].startswith(f"mtlrec preprocess: network error: gRPC {code}: "), err
    if not listen:  # gRPC names the address it could not reach
        assert f"127.0.0.1:{port}" in err[0], err

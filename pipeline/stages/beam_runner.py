"""Which Beam runner `mtlrec preprocess` uses, and one line within a timeout when a portable
runner's servers do not answer.

`data.runner`:

- `direct` (default): Beam's DirectRunner in this process (in-memory unless Beam options say
  otherwise, pipeline/stages/preprocess.py).
- `portable`: Beam's PortableRunner. The pipeline goes to the Beam job server at
  `data.job_endpoint` (host:port), which runs it with the SDK workers of the worker pool at
  `data.worker_pool` (host:port; Beam's EXTERNAL environment). Left unset, Beam's own options
  (after `--` or in `data.beam_args`) choose the environment, e.g. `--environment_type=LOOPBACK`.

Dataflow, Flink and Spark are reached through Beam's options (docs/SCALE.md). Whichever way the
options come, `check` looks at them: for a job endpoint (PortableRunner, and Flink or Spark given
one) and for an EXTERNAL worker pool.

What Beam 2.78 does on its own when a portable runner's servers fail, and what is done here:

- no job server at the endpoint: Beam retries for `--job_server_timeout` (300 s by default),
  then raises a bare grpc.FutureTimeoutError. Here: the endpoint's host is resolved and the
  server must answer within `data.runner_timeout_seconds`, before anything is written.
- `--job_server_timeout` is also the deadline of the stream Beam reads the job's state from: a
  job that runs longer dies with DEADLINE_EXCEEDED. Unless given, it is set to a week here.
- no worker pool at its address: the job fails ~10 s later with the job server's traceback.
  Here: the pool must answer within the timeout, before the job is submitted.
- a pool whose workers cannot start (a broken Python on its PATH, a missing package): the job
  server waits for a worker forever. Here, for an EXTERNAL pool: the job's first bundle on a
  worker writes a marker file (`MarkWorkerStarted`); without it within the timeout of the
  submission, the job is cancelled and the line names the pool. (Other environments, e.g.
  Docker images a cluster first pulls, may take minutes to start: they are not timed.)
"""
from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PortableOptions, StandardOptions

from pipeline.artifacts import storage
from pipeline.errors import NetworkError

if TYPE_CHECKING:  # names in annotations only
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.runner import PipelineResult
    from pipeline.config.schema import DataConfig

PORTABLE_RUNNERS = ("PortableRunner", "FlinkRunner", "SparkRunner")
WEEK = 7 * 24 * 3600  # --job_server_timeout unless given: the job's state stream must outlive the job


def portable_args(data_config: DataConfig) -> list[str]:
    """The Beam options of data.runner=portable ([] for direct)."""
    if data_config.runner != "portable":
        return []
    args = ["--runner=PortableRunner", f"--job_endpoint={data_config.job_endpoint}"]
    if data_config.worker_pool:
        args += ["--environment_type=EXTERNAL", f"--environment_config={data_config.worker_pool}"]
    return args


def with_job_server_timeout(args: list[str]) -> list[str]:
    """Beam options for a job server: --job_server_timeout a week unless given (see above)."""
    if any(a.startswith(("--job_server_timeout", "--job-server-timeout")) for a in args):
        return args
    return [*args, f"--job_server_timeout={WEEK}"]


def is_portable(options: PipelineOptions) -> bool:
    runner = options.view_as(StandardOptions).runner or ""
    endpoint = options.view_as(PortableOptions).job_endpoint
    return runner.split(".")[-1] in PORTABLE_RUNNERS and bool(endpoint) and endpoint != "embed"


def worker_pool_of(options: PipelineOptions) -> str | None:
    """The address of an EXTERNAL environment's worker pool, if the options name one."""
    portable = options.view_as(PortableOptions)
    if (portable.environment_type or "").upper() != "EXTERNAL":
        return None
    config = portable.environment_config or portable.lookup_environment_option("external_service_address")
    if config and config.lstrip().startswith("{"):
        import json
        config = json.loads(config).get("url")
    return config or None


def check(options: PipelineOptions, timeout: float, settings: dict | None = None) -> None:
    """Raise NetworkError (one line naming the endpoint) unless the job server and the worker pool
    the options name answer within `timeout` seconds each.

    settings: {"job": name, "pool": name} of the config keys that set them, for the message."""
    if not is_portable(options):
        return
    settings = settings or {}
    reach(options.view_as(PortableOptions).job_endpoint, "Beam job server", settings.get("job", "--job_endpoint"),
          timeout)
    pool = worker_pool_of(options)
    if pool:
        reach(pool, "Beam worker pool", settings.get("pool", "--environment_config"), timeout)


def reach(endpoint: str, what: str, setting: str, timeout: float) -> None:
    """Resolve `endpoint` (host:port) and wait until it accepts a connection and answers gRPC.

    A refused connection is retried until the timeout (the server may be starting)."""
    host, sep, port = endpoint.rpartition(":")
    host = host.strip("[]")
    where = f"{what} at {endpoint} ({setting})"
    if not sep or not port.isdigit() or not host:
        raise NetworkError(f"{where}: not host:port")
    try:
        socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise NetworkError(f"{where}: cannot resolve host {host} ({exc.strerror})") from None
    deadline = time.monotonic() + timeout
    cause = "no answer"
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=max(0.1, min(5.0, deadline - time.monotonic()))):
                break
        except OSError as exc:
            cause = (exc.strerror or str(exc) or type(exc).__name__).lower()
        if time.monotonic() >= deadline:
            raise NetworkError(f"{where} did not answer within {timeout:g} s (data.runner_timeout_seconds): {cause}; "
                               f"is it running?")
        time.sleep(0.5)
    import grpc
    channel = grpc.insecure_channel(endpoint)
    try:
        grpc.channel_ready_future(channel).result(timeout=max(0.1, deadline - time.monotonic()))
    except grpc.FutureTimeoutError:
        raise NetworkError(f"{where} accepts connections but did not answer gRPC within {timeout:g} s "
                           f"(data.runner_timeout_seconds); is it a Beam server?") from None
    finally:
        channel.close()


class MarkWorkerStarted(beam.DoFn):
    """Passes its elements on; the first bundle a worker runs writes `marker`: a worker runs."""

    def __init__(self, marker: str):
        self.marker = marker
        self.written = False

    def start_bundle(self) -> None:
        if not self.written:
            storage.write_bytes(self.marker, b"")
            self.written = True

    def process(self, element: Any) -> Iterator[Any]:
        yield element


def wait_for_a_worker(result: PipelineResult, marker: str, timeout: float, pool: str,
                      setting: str = "data.worker_pool") -> None:
    """Return once a worker ran a bundle (`marker` exists) or the job ended (the caller's
    wait_until_finish reports how); after `timeout` seconds without either, cancel the job and
    raise NetworkError naming the worker pool."""
    deadline = time.monotonic() + timeout
    while not storage.exists(marker):
        if str(result.state).split(".")[-1] in ("DONE", "FAILED", "CANCELLED", "STOPPED", "DRAINED"):
            return
        if time.monotonic() > deadline:
            try:
                result.cancel()
            except Exception:  # noqa: BLE001  (the line below says what matters)
                pass
            raise NetworkError(f"no Beam SDK worker ran within {timeout:g} s (data.runner_timeout_seconds): "
                               f"the Beam worker pool at {pool} ({setting}) accepted the job but its workers "
                               f"did not start; the pool's log says why")
        time.sleep(0.5)

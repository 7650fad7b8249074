"""Training on several processes or machines: `train.strategy=multi_worker`.

Every worker runs the same `mtlrec train` command with its own TF_CONFIG (the cluster's
addresses and which task it is); tf.distribute.MultiWorkerMirroredStrategy keeps their
weights in step with an all-reduce of the gradients after every batch. How the pipeline makes
that give the run a single process would give (docs/SCALE.md):

- data: every worker reads the whole train split and keeps its slice of each global batch
  (pipeline/training/dataset.py, `shard_by_data`), so the batches, their split between replicas and the
  number of steps are those of one process with as many replicas;
- metrics: Keras' metrics are all-reduced already; each worker logs them as they are
  (`distribute_reduction_method = "first"`: tf-keras' default sums them over the workers);
- writing: the chief (task 0 of `worker`, or the `chief` task) writes the run folder; the
  others write their checkpoints and export, which need every worker to take part, into a
  scratch folder (`scratch_folder`) that is removed when they finish;
- peers: the coordination service of TensorFlow checks that every task sends heartbeats. A
  task silent for `train.worker_timeout_seconds` counts as lost: the others stop with one
  line naming it (`failure`), and the run folder keeps its last completed epoch, from which
  the same command on every worker resumes. A worker that does not join within
  `train.worker_start_timeout_seconds` ends the others the same way (`_start_watch`).

The coordination service is configured here, before the strategy starts it, because the
strategy's own configuration has no heartbeat setting; the modules that hold the service's
configuration types are taken from TensorFlow's strategy module, whichever TF version it is.
"""
from __future__ import annotations

import contextlib
import faulthandler
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import TYPE_CHECKING

import tensorflow as tf

from pipeline.artifacts import storage
from pipeline.errors import ClusterError, MtlrecError

if TYPE_CHECKING:  # names in annotations only
    from pipeline.artifacts.storage import Location
    from pipeline.config.schema import TrainConfig

COORDINATED_JOBS = ("chief", "worker")  # the tasks that train (an `evaluator` would not)
TASK = re.compile(r"/job:(\w+)(?:/replica:\d+)?/task:(\d+)")
# What gRPC says when a peer's process is gone (TensorFlow's own message around it is long).
CAUSE = re.compile(r"Connection reset by peer|Connection refused|Socket closed|failed to connect to all addresses|"
                   r"Deadline Exceeded|Broken pipe", re.IGNORECASE)


class ClusterConfigError(MtlrecError):
    """A TF_CONFIG that does not describe a cluster this process belongs to."""


def resolver_from_env() -> tf.distribute.cluster_resolver.TFConfigClusterResolver:
    """The cluster of TF_CONFIG (none: one local worker), checked enough to fail with one line."""
    text = os.environ.get("TF_CONFIG", "")
    if text:
        try:
            spec = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ClusterConfigError(f"TF_CONFIG is not JSON ({exc})") from None
        task = spec.get("task") or {}
        cluster = spec.get("cluster") or {}
        job, index = task.get("type"), task.get("index")
        if job not in cluster or not isinstance(index, int) or not 0 <= index < len(cluster[job]):
            raise ClusterConfigError(f"TF_CONFIG: task {job!r} {index!r} is not in its cluster "
                                     f"({', '.join(f'{j}: {len(a)}' for j, a in cluster.items()) or 'empty'})")
    return tf.distribute.cluster_resolver.TFConfigClusterResolver()


def strategy(train_config: TrainConfig) -> tf.distribute.MultiWorkerMirroredStrategy:
    """MultiWorkerMirroredStrategy over the TF_CONFIG cluster, with the coordination service's
    heartbeat and start-up timeouts from the train config."""
    from tensorflow.python.distribute import collective_all_reduce_strategy as collective
    resolver = resolver_from_env()
    spec = resolver.cluster_spec()
    jobs = [job for job in COORDINATED_JOBS if job in spec.jobs]
    if jobs:
        context = collective.context.context()
        timeout_ms = int(train_config.worker_timeout_seconds * 1000)
        context.configure_coordination_service(
            service_type="standalone",
            service_leader=collective.multi_worker_util.coordination_leader(spec),
            enable_health_check=True,
            cluster_register_timeout_in_ms=int(train_config.worker_start_timeout_seconds * 1000),
            heartbeat_timeout_in_ms=timeout_ms,
            shutdown_barrier_timeout_in_ms=timeout_ms,  # a lost peer must not hold the others at exit
            coordinated_jobs=[collective.coordination_config_pb2.CoordinatedJob(name=job, num_tasks=spec.num_tasks(job))
                              for job in jobs])
    try:
        with _start_watch(resolver, train_config) if jobs else contextlib.nullcontext():
            return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
    except tf.errors.OpError as exc:  # the cluster did not come together
        raise _failure(exc, resolver, train_config) or exc


# The watcher of `_start_watch`: it waits for one byte from its pipe until the deadline. A byte
# (the cluster started, or failed with an error of its own) or the pipe's end (the process died of
# something else): nothing to say. The deadline: it prints the line; faulthandler ends the process.
_WATCHER = """
import os, select, socket, sys, time
fd, deadline, me, line = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3], sys.argv[4]
if select.select([fd], [], [], max(0.0, deadline - time.time()))[0]:
    sys.exit(0)
def accepts(address):
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=0.5):
            return True
    except (OSError, ValueError):
        return False
tasks = [a.split("|") for a in sys.argv[5:]]
absent = [f"{task} ({address})" for task, address in tasks if task != me and not accepts(address)]
os.write(2, (line % (", ".join(absent) or "a worker of the cluster")).encode())
"""


@contextlib.contextmanager
def _start_watch(resolver, train_config):
    """End the process with one line if the cluster has not come together in time.

    The strategy waits in TensorFlow's C++ code, holding Python's GIL, until every task has
    connected to the coordination service, and TF 2.21 bounds that wait for no task: no Python
    thread or signal handler runs meanwhile (Ctrl-C included). So a small watcher process prints
    the line at the deadline, naming the tasks whose address accepts no connection, and
    faulthandler's C watchdog ends this process a moment later (exit code 1; nothing has been
    written yet). A cluster that comes together after the deadline ends the same way."""
    timeout = train_config.worker_start_timeout_seconds
    spec = resolver.cluster_spec().as_dict()
    me = f"{resolver.task_type} {int(resolver.task_id)}"
    tasks = [f"{job} {i}|{address}" for job in COORDINATED_JOBS for i, address in enumerate(spec.get(job, ()))]
    line = (f"mtlrec train: {ClusterError.category}: %s did not join within {timeout:g} s "
            f"(train.worker_start_timeout_seconds); start every worker with the same command and its own TF_CONFIG\n")
    read_end, write_end = os.pipe()
    deadline = time.time() + timeout
    watcher = subprocess.Popen([sys.executable, "-c", _WATCHER, str(read_end), repr(deadline), me, line, *tasks],
                               pass_fds=(read_end,), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    os.close(read_end)
    sys.stderr.flush()
    faulthandler.dump_traceback_later(timeout + 2, exit=True, file=_DEVNULL)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
        os.write(write_end, b"x")
        os.close(write_end)
        watcher.wait()
        if time.time() >= deadline:  # the watcher has said the cluster did not come together
            os._exit(1)


_DEVNULL = open(os.devnull, "w")  # faulthandler needs a file that stays open


def _resolver(strategy_):
    """The cluster resolver of a multi-worker strategy with a cluster; None otherwise (one
    process, or another strategy: a TPU's resolver names TPU hosts, not our workers)."""
    if not isinstance(strategy_, tf.distribute.MultiWorkerMirroredStrategy):
        return None
    resolver = strategy_.cluster_resolver
    if resolver is None or resolver.task_type is None or not resolver.cluster_spec().as_dict():
        return None
    return resolver


def task_of(strategy_: tf.distribute.Strategy) -> tuple[str, int] | None:
    """(job, index) of this process in its multi-worker cluster; None without one."""
    resolver = _resolver(strategy_)
    return None if resolver is None else (resolver.task_type, int(resolver.task_id))


def describe(strategy_: tf.distribute.Strategy) -> str:
    """', worker 1 of 2 workers' for a process of a multi-worker cluster, '' otherwise."""
    task = task_of(strategy_)
    if task is None:
        return ""
    spec = strategy_.cluster_resolver.cluster_spec()
    total = sum(spec.num_tasks(job) for job in COORDINATED_JOBS if job in spec.jobs)
    return f", {task[0]} {task[1]} of {total} workers"


def scratch_folder(run_dir: Location, strategy_: tf.distribute.Strategy) -> str:
    """Where a non-chief worker writes what saving needs it to write and nothing reads: a local
    folder named after the run folder and the task, so that the next session of the same task
    replaces the folder a killed session left behind."""
    job, index = task_of(strategy_) or ("worker", 0)
    key = hashlib.sha256(storage.absolute(run_dir).encode()).hexdigest()[:12]
    folder = os.path.join(tempfile.gettempdir(), f"mtlrec-worker-{key}-{job}{index}")
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    return folder


def failure(exc: tf.errors.OpError, strategy_: tf.distribute.Strategy,
            train_config: TrainConfig) -> ClusterError | None:
    """One line for a TensorFlow error of a multi-worker strategy that says a peer of the cluster
    was lost or never came; None if it says nothing about the cluster's tasks."""
    return _failure(exc, _resolver(strategy_), train_config)


def _failure(exc: tf.errors.OpError, resolver, train_config) -> ClusterError | None:
    message = " ".join(str(exc.message).split())
    if resolver is None:
        return None
    spec = resolver.cluster_spec().as_dict()
    me = (resolver.task_type, int(resolver.task_id or 0))
    unhealthy = re.search(r"unhealthy \(stopped sending heartbeats\):\s*(\S+)", message)
    tasks = [(job, int(i)) for job, i in TASK.findall(unhealthy.group(1) if unhealthy else message)]
    others = [t for t in tasks if t != me and t[0] in spec and t[1] < len(spec[t[0]])]
    if not others:
        return None
    job, index = others[0]
    peer = f"{job} {index} ({spec[job][index]})"
    resume = "start every worker again with the same command to resume after the last completed epoch"
    if unhealthy or "heartbeat" in message.lower():
        return ClusterError(f"lost contact with {peer}: no heartbeat for {train_config.worker_timeout_seconds:g} s "
                            f"(train.worker_timeout_seconds); {resume}")
    if re.search(r"regist", message, re.IGNORECASE):
        return ClusterError(f"{peer} did not join within {train_config.worker_start_timeout_seconds:g} s "
                            f"(train.worker_start_timeout_seconds); start every worker with the same command")
    cause = CAUSE.search(message)
    return ClusterError(f"lost contact with {peer}: {cause.group(0) if cause else 'its connection failed'}; {resume}")

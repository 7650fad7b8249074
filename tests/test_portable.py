"""`mtlrec preprocess` on Beam's portable runner: Beam's Python job server and an external SDK
worker pool on localhost, started here on free ports and stopped however the tests end (issue 27).

Its output is byte for byte the DirectRunner's. A job server or worker pool that does not
answer, and a pool whose workers cannot start, end the stage with one line naming the endpoint
within data.runner_timeout_seconds (Beam alone waited 5 minutes, or forever).
"""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import EMBEDDED_OVERRIDES
from fixtures import cli_sets
from pipeline import cli
from processes import MTLREC, PORT_TAKEN, Processes, free_ports, listening, mtlrec_lines

TIMEOUT = 3  # data.runner_timeout_seconds of the failure tests
# The worker pool starts each SDK worker as `python -c ...` from its PATH: this environment's.
WITH_OUR_PYTHON = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


def start_servers(processes, *, pool_env=None, job_server=True, attempts=3):
    """Beam's job server (unless job_server=False) and a worker pool on free ports, once both listen;
    returns {"job": port, "pool": port}."""
    for attempt in range(attempts):
        job, pool = free_ports(2)
        started = {"pool": processes.start(f"pool-{attempt}", [sys.executable, "-m",
                                           "apache_beam.runners.worker.worker_pool_main", f"--service_port={pool}"],
                                           {**WITH_OUR_PYTHON, **(pool_env or {})})}
        if job_server:
            started["job"] = processes.start(f"job-server-{attempt}", [
                sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main", f"--port={job}"])
        ports = {"job": job, "pool": pool}
        processes.wait_for(lambda: all(listening(ports[k]) or p.poll() is not None for k, p in started.items()),
                           120, "Beam servers listen")
        if all(p.poll() is None for p in started.values()):
            return {k: ports[k] for k in started}
        if not any(t in processes.output(p) for p in started.values() for t in PORT_TAKEN):
            raise AssertionError("\n".join(processes.output(p)[-2000:] for p in started.values()))
        for p in started.values():
            processes.kill(p)
    raise AssertionError(f"no free ports in {attempts} attempts")


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    processes = Processes(tmp_path_factory.mktemp("beam-servers"))
    try:
        ports = start_servers(processes)
        yield ports, processes
    finally:
        processes.stop_all()


@pytest.fixture
def processes(tmp_path):
    started = Processes(tmp_path)
    yield started
    started.stop_all()


def portable(job, pool, *more):
    return ["data.runner=portable", f"data.job_endpoint=localhost:{job}", f"data.worker_pool=localhost:{pool}", *more]


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_portable_runner_writes_the_direct_runners_bytes(embedded_data, servers, tmp_path):
    """Every file, the transform graph and the manifest included: no file differs (the manifest
    records the data settings, not the runner's)."""
    direct_dir, _ = embedded_data
    (ports, processes) = servers
    done = subprocess.run(
        [str(MTLREC), "preprocess", *cli_sets(f"workdir={tmp_path}", *EMBEDDED_OVERRIDES,
                                              *portable(ports["job"], ports["pool"]))],
        capture_output=True, text=True, timeout=600, env={**os.environ, **WITH_OUR_PYTHON})
    assert done.returncode == 0, done.stderr[-3000:]
    ours, direct = tree(tmp_path / "data"), tree(direct_dir)
    assert sorted(ours) == sorted(direct) and len(direct) > 30
    assert [name for name in direct if ours[name] != direct[name]] == []
    # The job ran on the pool's SDK workers, not in the job server.
    assert "Starting worker with command" in "".join(processes.output(p) for p in processes.started)


def _preprocess(tmp_path, capsys, *overrides):
    """`mtlrec preprocess` in this process (TensorFlow is imported already: the time measured is
    the stage's); returns its exit code, its lines and the seconds it took."""
    started = time.monotonic()
    code = cli.main(["preprocess", *cli_sets(f"workdir={tmp_path}", *EMBEDDED_OVERRIDES,
                                             f"data.runner_timeout_seconds={TIMEOUT}", *overrides)])
    return code, mtlrec_lines(capsys.readouterr().err, "preprocess"), time.monotonic() - started


def test_no_job_server_is_one_line_within_the_timeout(tmp_path, capsys):
    job, pool = free_ports(2)  # nothing listens on either
    code, lines, seconds = _preprocess(tmp_path, capsys, *portable(job, pool))
    assert code == 1 and lines == [
        f"mtlrec preprocess: network error: Beam job server at localhost:{job} (data.job_endpoint) did not answer "
        f"within {TIMEOUT} s (data.runner_timeout_seconds): connection refused; is it running?"]
    assert TIMEOUT <= seconds < TIMEOUT + 60, seconds  # Beam alone waited 300 s; loose for a loaded machine
    assert not (tmp_path / "data").exists()


def test_a_job_server_host_that_does_not_resolve_is_one_line(tmp_path, capsys):
    code, lines, _ = _preprocess(tmp_path, capsys, "data.runner=portable",
                                 "data.job_endpoint=no-such-host.invalid:8099")
    assert code == 1 and len(lines) == 1 and lines[0].startswith(
        "mtlrec preprocess: network error: Beam job server at no-such-host.invalid:8099 (data.job_endpoint): "
        "cannot resolve host no-such-host.invalid ("), lines


@pytest.mark.slow
def test_no_worker_pool_is_one_line_within_the_timeout(servers, tmp_path, capsys):
    (ports, _) = servers
    (pool,) = free_ports(1)
    code, lines, seconds = _preprocess(tmp_path, capsys, *portable(ports["job"], pool))
    assert code == 1 and lines == [
        f"mtlrec preprocess: network error: Beam worker pool at localhost:{pool} (data.worker_pool) did not answer "
        f"within {TIMEOUT} s (data.runner_timeout_seconds): connection refused; is it running?"]
    assert TIMEOUT <= seconds < TIMEOUT + 60, seconds
    assert not (tmp_path / "data").exists()


@pytest.mark.slow
def test_a_pool_whose_workers_cannot_start_is_one_line_within_the_timeout(servers, processes, tmp_path, capsys):
    """The pool answers, but the `python` on its PATH fails: Beam's job server waits forever for
    the worker. The job is cancelled after the timeout; nothing half-written is left."""
    (ports, _) = servers
    broken = tmp_path / "broken-bin"
    broken.mkdir()
    (broken / "python").write_text("#!/bin/sh\necho 'this python cannot run Beam' >&2\nexit 1\n")
    (broken / "python").chmod(0o755)
    pool = start_servers(processes, job_server=False,
                         pool_env={"PATH": f"{broken}{os.pathsep}{os.environ.get('PATH', '')}"})["pool"]
    code, lines, seconds = _preprocess(tmp_path, capsys, *portable(ports["job"], pool))
    assert code == 1 and lines == [
        f"mtlrec preprocess: network error: no Beam SDK worker ran within {TIMEOUT} s (data.runner_timeout_seconds): "
        f"the Beam worker pool at localhost:{pool} (data.worker_pool) accepted the job but its workers did not "
        f"start; the pool's log says why"]
    # Building and submitting the pipeline takes a few seconds; then the timeout, not Beam's forever.
    assert seconds < TIMEOUT + 60, seconds
    assert "this python cannot run Beam" in "".join(processes.output(p) for p in processes.started)
    assert not (tmp_path / "data").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".data.tmp")]

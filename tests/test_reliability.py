"""Run folders as users meet them (issue 14 items 6-8, 13): one writer per folder, full and
read-only disks, staging folders of killed runs, and runs found again from any directory.

One tiny GroupLens folder is preprocessed and trained once for the module, from a working
directory and with RELATIVE paths, as a user types them; the tests then use that run.
"""
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fixtures import TINY_DATA as DATA
from fixtures import TINY_TRAIN as TRAIN
from fixtures import cli_sets as sets
from fixtures import hold_lock_in_another_process, ratings, write_ml100k
from pipeline import cli
from pipeline.artifacts import locks, storage

MTLREC = Path(sys.executable).parent / "mtlrec"


def _finished_pid() -> int:
    """The pid of a process that has exited (its staging folder is a killed run's)."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """ml-100k files -> w/data -> w/run, with relative paths from `root` as the cwd. Before the
    preprocess, staging folders are planted beside w/data: of a killed run, of an older version
    (no owner in the name), and of a live process. Returns (root, what was left of them)."""
    root = tmp_path_factory.mktemp("tiny")
    files = write_ml100k(root / "files", ratings(num_users=12, num_items=30, per_user=12))
    (root / "w").mkdir()
    planted = {"dead": root / f"w/.data.tmp-0badc0de-{_finished_pid()}@{socket.gethostname()}",
               "legacy": root / "w/.data.tmp-1234abcd",
               "other_folder": root / f"w/.report.tmp-0badc0de-{_finished_pid()}@{socket.gethostname()}"}
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    planted["live"] = root / f"w/.data.tmp-5eed5eed-{live.pid}@{socket.gethostname()}"
    for folder in planted.values():
        (folder / "tmp").mkdir(parents=True)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert cli.main(["preprocess", *sets("workdir=w", f"data.path={files.name}", *DATA)]) == 0
        left = {name: folder.exists() for name, folder in planted.items()}
        assert cli.main(["train", *sets("workdir=w", "train.run_dir=w/run", "train.data=w/data", *TRAIN)]) == 0
    finally:
        os.chdir(cwd)
        live.kill()
        live.wait()
    return root, left


# ---------------------------------------------------------------- item 8: staging folders
@pytest.mark.slow
def test_staging_folders_of_killed_runs_are_removed_never_a_live_ones(tiny):
    _, left = tiny
    assert not left["dead"]  # its pid is gone on this host
    assert not left["legacy"]  # no owner recorded, but preprocess held w/data's lock: no live writer
    assert left["live"]  # its owner still runs: never touched
    assert left["other_folder"]  # another folder's (w/report) staging: not this stage's to judge


# ---------------------------------------------------------------- item 13: no cwd-relative path
@pytest.mark.slow
def test_run_folder_stores_no_cwd_relative_path(tiny):
    root, _ = tiny
    summary = json.loads((root / "w/run/train.json").read_text())
    assert summary["data"] == "../data"  # relative to the run folder
    assert summary["run_dir"] == str(root / "w/run")
    assert f"run_dir: {root / 'w/run'}\n" in (root / "w/run/config.yaml").read_text()
    source = json.loads((root / "w/data/manifest.json").read_text())["source"]  # data.path was "files"
    assert source["location"] == str(root / "files") and source["files"][0].startswith(f"{root / 'files'}/")


@pytest.mark.slow
def test_evaluate_a_run_by_absolute_path_from_another_directory(tiny, tmp_path):
    root, _ = tiny
    done = subprocess.run([MTLREC, "evaluate", "--run", str(root / "w/run")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((root / "w/run/eval.json").read_text())["users"] > 0


# ---------------------------------------------------------------- item 7: full and read-only disks
def _file_size_limit(limit):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


@pytest.mark.slow
def test_disk_full_during_export_is_one_line_and_keeps_the_old_export(tiny):
    """A file-size limit makes every write past 64 KiB fail (EFBIG), as a full disk would."""
    root, _ = tiny
    run = root / "w/run"
    before = (run / "export/saved_model.pb").read_bytes()
    done = subprocess.run([MTLREC, "export", "--run", str(run)], capture_output=True, text=True, timeout=600,
                          preexec_fn=_file_size_limit(64 * 1024))
    lines = [line for line in done.stderr.splitlines() if line.startswith("mtlrec ")]
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith(f"mtlrec export: storage error: {run}/.export.tmp/"), lines
    assert lines[0].endswith("File too large"), lines
    assert (run / "export/saved_model.pb").read_bytes() == before  # the complete export is untouched
    assert not (run / ".export.tmp").exists()  # nothing half-written is left behind


def test_unwritable_folder_is_one_line(tmp_path, capsys):
    """Read-only via chmod; as root (chmod binds nobody) a path under a file, which no one can create."""
    if os.geteuid() != 0:
        (tmp_path / "ro").mkdir(mode=0o555)
        cause = "Permission denied"
    else:
        (tmp_path / "ro").write_text("a file, not a folder")
        cause = "Not a directory"
    output = tmp_path / "ro/sub/data"
    assert cli.main(["preprocess", "--output", str(output)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mtlrec preprocess: storage error: ") and err[0].endswith(cause), err
    assert str(tmp_path / "ro") in err[0]


def test_a_bug_keeps_its_traceback(monkeypatch):
    """Only failures of the storage, network or cluster become one line (tests/test_errors.py): anything
    else is a bug, and is raised as it is."""
    from pipeline.stages import compare
    monkeypatch.setattr(compare, "run", lambda config, force=False: {}["a bug"])
    with pytest.raises(KeyError, match="a bug"):
        cli.main(["compare"])


# ---------------------------------------------------------------- item 6: locks
@pytest.mark.slow
def test_second_train_on_a_run_folder_is_refused_naming_the_first(tiny, tmp_path, capsys):
    root, _ = tiny
    train = sets(f"train.data={root / 'w/data'}", f"train.run_dir={tmp_path / 'run'}", *TRAIN, "train.epochs=1000")
    first = subprocess.Popen([MTLREC, "train", *train], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lock = tmp_path / ".run.lock"
    try:
        deadline = time.time() + 300
        while not (lock.exists() and lock.read_text()):  # the first one holds the lock
            assert first.poll() is None and time.time() < deadline
            time.sleep(0.2)
        assert cli.main(["train", *train]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, err
        assert err[0].startswith(f"mtlrec train: error: run folder {tmp_path / 'run'}: in use by another mtlrec "
                                 f"process (pid {first.pid} on host {socket.gethostname()}, since ")
    finally:
        first.kill()  # SIGKILL: no clean-up of its own
        first.wait()
    with locks.hold(tmp_path / "run"):  # a killed holder's lock does not block: it is taken over
        assert json.loads(lock.read_text())["pid"] == os.getpid()


@pytest.mark.parametrize("command, folder, what", [("compare", "w", "workdir"), ("preprocess", "w/data", "data folder"),
                                                   ("tune", "w/tune", "tune folder")])
def test_compare_preprocess_and_tune_refuse_a_folder_in_use(tmp_path, capsys, command, folder, what):
    holder = hold_lock_in_another_process(tmp_path / folder)
    try:
        assert cli.main([command, *sets(f"workdir={tmp_path / 'w'}")]) == 2
    finally:
        holder.kill()
        holder.wait()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert f"{what} {tmp_path / folder}: in use by another mtlrec process (pid {holder.pid} " in err[0]


def test_nested_stages_share_their_lock_and_release_it(tmp_path):
    folder = tmp_path / "data"
    with locks.hold(folder, "data folder"):
        with locks.hold(folder, "data folder"):  # compare -> preprocess on the same folder: no deadlock
            assert locks.holds(folder)
        assert locks.holds(folder)
    assert not locks.holds(folder)
    other = hold_lock_in_another_process(folder)  # released: another process gets it
    other.kill()
    other.wait()


def test_object_store_lock_taken_over_only_from_a_dead_process_of_this_host():
    import tensorflow as tf
    folder = f"ram://locks-{os.getpid()}/run"
    path = locks.lock_path(folder)
    assert path == f"ram://locks-{os.getpid()}/.run.lock"

    def left_by(pid, host):
        storage.write_bytes(path, json.dumps({"pid": pid, "host": host, "started": "2026-01-01 00:00:00 UTC"}).encode())

    left_by(_finished_pid(), socket.gethostname())
    with locks.hold(folder):
        assert json.loads(tf.io.gfile.GFile(path).read())["pid"] == os.getpid()
    assert not tf.io.gfile.exists(path)  # released
    for pid, host in ((os.getppid(), socket.gethostname()), (_finished_pid(), "another-host")):
        left_by(pid, host)
        with pytest.raises(locks.LockError, match=rf"\(pid {pid} on host {host}, since 2026-01-01"):
            with locks.hold(folder):
                pass

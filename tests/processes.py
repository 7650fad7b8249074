"""Processes a test starts (training workers, Beam's job server and worker pool): free ports,
each process in its own process group with its output in a file, and all of them stopped
when the test ends, however it ends."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

MTLREC = Path(sys.executable).parent / "mtlrec"
# What a server prints when the port we picked was taken in the meantime (then: new ports, again).
PORT_TAKEN = ("Address already in use", "Failed to add port", "Could not start gRPC server", "Failed to bind")


def free_ports(n: int) -> list[int]:
    """n distinct localhost ports nothing listens on now: bound to port 0 together (so the OS
    picks distinct ones), read, and closed. Another process may take one before ours binds it:
    callers retry with new ports when a server reports PORT_TAKEN."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def listening(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


class Processes:
    """Started processes, each in its own session (process group), killed with their children on
    `stop_all` (the fixture's finalizer: also when the test fails)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.started: list[subprocess.Popen] = []

    def start(self, name: str, args, env=None) -> subprocess.Popen:
        log = self.folder / f"{name}.log"
        with open(log, "w") as out:
            proc = subprocess.Popen([str(a) for a in args], stdout=out, stderr=subprocess.STDOUT,
                                    env={**os.environ, **(env or {})}, start_new_session=True)
        proc.log = log
        self.started.append(proc)
        return proc

    @staticmethod
    def output(proc) -> str:
        return proc.log.read_text(errors="replace")

    @staticmethod
    def kill(proc) -> None:
        """SIGKILL the process and everything it started (its process group)."""
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()

    def stop_all(self) -> None:
        for proc in self.started:
            self.kill(proc)

    @staticmethod
    def wait_for(condition, timeout: float, what: str, poll: float = 0.2, alive=()) -> None:
        """Wait until condition() is true; fail naming `what` on timeout or if a process of `alive` ended."""
        deadline = time.monotonic() + timeout
        while not condition():
            for proc in alive:
                if proc.poll() is not None:
                    raise AssertionError(f"{what}: process {proc.args[:3]} ended ({proc.returncode}):\n"
                                         f"{Processes.output(proc)[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not within {timeout} s")
            time.sleep(poll)


def mtlrec_lines(text: str, command: str) -> list[str]:
    """The lines `mtlrec COMMAND` itself printed (TensorFlow's start-up lines differ by CPU)."""
    return [line for line in text.splitlines() if line.startswith(f"mtlrec {command}:")]


# The project's own stderr lines: "<stage>: ..." and the synthetic study's "[i/N, ...] ..." progress.
OWN = re.compile(r"(preprocess|train|evaluate|export|tune|compare|mtlrec synthetic): .+|\[\d+/\d+, \d+ left, .+\] .+")
# Library lines a quiet run may still show, each with why. None today: add one only for a harmless
# message that can be neither fixed at its cause nor matched exactly by pipeline/terminal.py.
ALLOWED: list[re.Pattern] = []


def user_env() -> dict[str, str]:
    """The environment of a user's shell: this suite's (conftest.py) without its quieting of TensorFlow's logs."""
    return {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}


def foreign_lines(stderr: str) -> list[str]:
    """The stderr lines of a quiet (not --verbose) `mtlrec` run that are not the project's own (issue 18)."""
    return [line for line in stderr.splitlines()
            if not OWN.fullmatch(line) and not any(p.fullmatch(line) for p in ALLOWED)]

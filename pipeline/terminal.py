"""What the terminal shows: the pipeline's own lines by default, library logs with `--verbose`.

By default only messages known to be harmless are hidden, each matched in full, so a library
message of any other text (a real problem) still reaches the user:

- TensorFlow's C++ logs below ERROR (TF_CPP_MIN_LOG_LEVEL=2, unless the user set it);
- the C++ start-up lines TensorFlow writes while it is imported and finds its devices, which
  come before its log level is applied (STARTUP_LINES): fd 2 goes through a filter meanwhile;
- Python log records of exact known texts from TensorFlow and tf.Transform (LOG_MESSAGES).

`--verbose` shows everything again: C++ logs from level 0 (INFO), absl and TensorFlow INFO,
and Python warnings with the "default" action (DeprecationWarning included).
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading
import warnings

_TF_LOG = r"[IWE]\d{4} [\d:.]+ +\d+ "  # absl C++ prefix: severity, date, time, thread id

# C++ lines written while TensorFlow loads and looks for GPUs, before its log level applies.
STARTUP_LINES = [re.compile(p) for p in (
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR",
    _TF_LOG + r"cudart_stub\.cc:\d+\] Could not find cuda drivers on your machine, GPU will not be used\.",
)]
# Harmless only after "Could not find cuda drivers": no driver, so CUDA cannot start; on a
# machine with a driver, the same failure is a real problem and stays visible.
NO_DRIVER_CUINIT = re.compile(
    _TF_LOG + r"cuda_platform\.cc:\d+\] failed call to cuInit: INTERNAL: CUDA error: "
              r"Failed call to cuInit: UNKNOWN ERROR \(303\)")

_RETRACING_TAIL = re.escape(
    " triggered tf.function retracing. Tracing is expensive and the excessive number of tracings could be due "
    "to (1) creating @tf.function repeatedly in a loop, (2) passing tensors with different shapes, (3) passing "
    "Python objects instead of tensors. For (1), please define your @tf.function outside of the loop. For (2), "
    "@tf.function has reduce_retracing=True option that can avoid unnecessary retracing. For (3), please refer "
    "to https://www.tensorflow.org/guide/function#controlling_retracing and "
    "https://www.tensorflow.org/api_docs/python/tf/function for  more details.")
# logger name -> messages (full match) that name no problem.
LOG_MESSAGES = {
    # Our z-score analyzer reads the aggregates another analyzer computes, so its graph path differs
    # between tf.Transform's tracing phases. Every analyzer is named: the case the text calls safe.
    "absl": [re.compile(
        r"Analyzer \(z_score/mean_and_var/temporary_analyzer_output(_\d+)?/PlaceholderWithDefault:0\) node's "
        r"cache key varies on repeated tracing\. This warning is safe to ignore if you either specify `name` "
        r"for all analyzers or if the order in which they are invoked is deterministic\. If not, please file "
        r"a bug with details\.")],
    # The synthetic study builds ~100 models, each with its own compiled epoch loop, on purpose.
    "tensorflow": [re.compile(r"\d+ out of the last \d+ calls to <function train_run\.<locals>\."
                              r"(run_epoch|<lambda>) at 0x[0-9a-f]+>" + _RETRACING_TAIL)],
}

_verbose = False


def verbose() -> bool:
    """Whether library logs are shown (`mtlrec --verbose`)."""
    return _verbose


class _DropKnown(logging.Filter):
    def __init__(self, patterns):
        super().__init__()
        self.patterns = patterns

    def filter(self, record):
        message = record.getMessage()
        return not any(p.fullmatch(message) for p in self.patterns)


def configure(verbose_: bool) -> None:
    """Set what the terminal shows, before TensorFlow is imported (its C++ level is read then)."""
    global _verbose
    _verbose = verbose_
    if "TF_CPP_MIN_LOG_LEVEL" not in os.environ:  # the user's own setting wins
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0" if verbose_ else "2"
    from absl import logging as absl_logging  # absl's logger must be created by absl (its own class)
    if verbose_:
        absl_logging.set_verbosity(absl_logging.INFO)
        logging.getLogger("tensorflow").setLevel(logging.INFO)
        warnings.simplefilter("default")
        return
    for name, patterns in LOG_MESSAGES.items():
        logger = absl_logging.get_absl_logger() if name == "absl" else logging.getLogger(name)
        if not any(isinstance(f, _DropKnown) for f in logger.filters):
            logger.addFilter(_DropKnown(patterns))


@contextlib.contextmanager
def startup_lines_filtered():
    """Within the block, lines written to fd 2 (C++ or Python) reach it unless in STARTUP_LINES.

    A thread forwards the lines as they come, so a crash in the block still shows its message.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def forward():
        no_driver = False
        with os.fdopen(read_end, "rb") as lines:
            for line in lines:
                text = line.decode("utf-8", "replace").rstrip("\n")
                if any(p.fullmatch(text) for p in STARTUP_LINES):
                    no_driver = no_driver or "Could not find cuda drivers" in text
                elif not (no_driver and NO_DRIVER_CUINIT.fullmatch(text)):
                    os.write(saved, line)

    forwarder = threading.Thread(target=forward, name="mtlrec-startup-lines", daemon=True)
    forwarder.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # closes the pipe's last write end: the forwarder reads to the end and stops
        forwarder.join()
        os.close(saved)


def import_tensorflow() -> None:
    """Import TensorFlow and let it find its devices, hiding only its known start-up lines."""
    if "tensorflow" in sys.modules or _verbose:
        return
    with startup_lines_filtered():
        import tensorflow as tf
        tf.config.list_physical_devices("GPU")  # CUDA's start-up (cuInit) logs here, not at import


def time_left(seconds: float) -> str:
    """The estimate progress lines end with: '~40 s left', '~12 min left'."""
    return f"~{seconds:.0f} s left" if seconds < 90 else f"~{seconds / 60:.0f} min left"

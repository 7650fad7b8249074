"""What the terminal shows: the pipeline's own lines by default, library logs with `--verbose`.

By default only messages known to be harmless are hidden, each matched in full, so a library
message of any other text (a real problem) still reaches the user:

- TensorFlow's C++ logs below ERROR (TF_CPP_MIN_LOG_LEVEL=2, unless the user set it);
- the C++ start-up lines TensorFlow writes while it is imported and finds its devices, which
  come before its log level is applied (STARTUP_LINES): fd 2 goes through a filter meanwhile;
- Python log records of exact known texts from TensorFlow and tf.Transform (LOG_MESSAGES).

`--verbose` shows everything again: C++ logs from level 0 (INFO), absl and TensorFlow INFO,
and Python warnings with the "default" action (DeprecationWarning included).

The pipeline's own lines are log records of one logger per stage (`stage_log`: "mtlrec.train",
...), written to stderr as `<stage>: <message>` whatever --verbose says: what a stage did and
where its results went.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading
import warnings
from collections.abc import Iterator

# TensorFlow's C++ log prefix: absl's "I0000 00:00:1712345678.123456   12345 port.cc:153] " (TF >= 2.16:
# severity, date, time, thread, file), or the older "2024-03-01 10:00:00.123456: I tensorflow/core/util/port.cc:113] ".
_PREFIX = r"(?:[IWE]\d{4} [\d:.]+ +\d+ |\d{4}-\d\d-\d\d [\d:.]+: [IWE] (?:[\w.-]+/)*)"


def _cpp(files: str, message: str) -> re.Pattern:
    """A C++ log line of one of `files` (a regex, e.g. "port"), any line number, whose message is `message`."""
    return re.compile(_PREFIX + f"(?:{files})" + r"\.cc:\d+\] " + message)


# C++ lines written while TensorFlow loads and looks for GPUs, before its log level applies. Which
# of them appear depends on the CPU (oneDNN, the instruction-set notice) and on the CUDA install.
_NO_DRIVER = _cpp("cudart_stub", r"Could not find cuda drivers on your machine, GPU will not be used\.")
_CPU_GUARD = [  # the binary's instruction-set notice; the next line names the instructions it was not built with
    _cpp("cpu_feature_guard", r"This TensorFlow binary is optimized to use available CPU instructions in "
                              r"performance-critical operations\."),
    _cpp("cpu_feature_guard", r"This TensorFlow binary is optimized with oneAPI Deep Neural Network Library "
                              r"\(oneDNN\) to use the following CPU instructions in performance-critical "
                              r"operations: +[A-Z0-9_ ]+")]
STARTUP_LINES = [
    re.compile(r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"),
    _cpp("port", re.escape("oneDNN custom operations are on. You may see slightly different numerical results due "
                           "to floating-point round-off errors from different computation orders. To turn them off, "
                           "set the environment variable `TF_ENABLE_ONEDNN_OPTS=0`.")),
    *_CPU_GUARD,
    _NO_DRIVER,
    _cpp("py_utils", r"TF-TRT Warning: Could not find TensorRT"),
    # The CUDA wheels register these plugins twice (XLA's and TensorFlow's copies); the first one is used.
    *[_cpp(file, f"Unable to register {plugin} factory: Attempting to register factory for plugin {plugin} when "
                 f"one has already been registered")
      for file, plugin in (("cuda_dnn", "cuDNN"), ("cuda_fft", "cuFFT"), ("cuda_blas", "cuBLAS"))],
]
# Lines harmless only after one of the given start-up lines: (the line, those it must follow).
STARTUP_SEQUELS = [
    (re.compile(r"To enable the following instructions: [A-Z0-9_ ]+, in other operations, rebuild TensorFlow with "
                r"the appropriate compiler flags\."), _CPU_GUARD),
    (re.compile(r"To enable them in other operations, rebuild TensorFlow with the appropriate compiler flags\."),
     _CPU_GUARD),
    # No driver, so CUDA cannot start; on a machine with a driver, the same failure is a real
    # problem and stays visible.
    (_cpp("cuda_platform|cuda_driver", r"failed call to cuInit: (?:INTERNAL: CUDA error: Failed call to cuInit: )?"
                                       r"UNKNOWN ERROR \(303\)"), [_NO_DRIVER]),
]

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
    # The synthetic study builds ~100 models, each with its own compiled epoch loop and gate read-outs, on
    # purpose: runs of 1-2 epochs trace them more often than TensorFlow expects (pipeline/synthetic/training.py).
    "tensorflow": [re.compile(r"\d+ out of the last \d+ calls to (<function train_runs\.<locals>\.run_epoch at "
                              r"0x[0-9a-f]+>|<bound method TaskRoutedMoE\.(expert_weights|row_diagnostics) of "
                              r"<models\.synthetic\.TaskRoutedMoE object at 0x[0-9a-f]+>>)"
                              + _RETRACING_TAIL)],
}

# Keras compiles a train, test and predict function per model, all from the same code, which
# TensorFlow's retracing count does not tell apart: a stage that trains model after model in one
# process (tune's trials, compare's runs), each for a few steps, gets its notice about no problem.
# Hidden only there (models_one_after_another): in one model, a retracing notice is news.
PER_MODEL_RETRACING = re.compile(r"\d+ out of the last \d+ calls to <function Model\.make_(train|test|predict)_function"
                                 r"\.<locals>\.(train|test|predict)_function at 0x[0-9a-f]+>" + _RETRACING_TAIL)

_verbose = False

# The pipeline's own loggers: "mtlrec.<stage>", each line written to stderr as its prefix + message.
ROOT_LOGGER = "mtlrec"


class _Stderr(logging.StreamHandler):
    """A handler that writes to sys.stderr as it is at each record (pytest's capsys replaces it)."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _):
        pass


def _own_lines() -> logging.Logger:
    """The "mtlrec" logger, writing plain lines to stderr: set up once, on first use."""
    root = logging.getLogger(ROOT_LOGGER)
    if not any(isinstance(h, _Stderr) for h in root.handlers):
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("%(prefix)s%(message)s", defaults={"prefix": ""}))
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        root.propagate = False  # not also through the root logger's handlers (absl's, under --verbose)
    return root


def stage_log(stage: str, prefix: str | None = None) -> logging.LoggerAdapter:
    """The logger of one stage ("mtlrec.<stage>"): `.info(message)` writes `<stage>: <message>` to
    stderr, or `<prefix><message>` when a prefix is given.

    A caller silences a stage with `logging.getLogger("mtlrec.<stage>").setLevel(logging.WARNING)`
    (tune's trials, which train quietly)."""
    _own_lines()
    return logging.LoggerAdapter(logging.getLogger(f"{ROOT_LOGGER}.{stage}"),
                                 {"prefix": f"{stage}: " if prefix is None else prefix})


@contextlib.contextmanager
def quiet(*stages: str) -> Iterator[None]:
    """Within the block, the given stages' loggers show warnings only (tune's trials train quietly)."""
    loggers = [logging.getLogger(f"{ROOT_LOGGER}.{stage}") for stage in stages]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


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
def models_one_after_another() -> Iterator[None]:
    """Within the block, a stage trains one Keras model after another: TensorFlow's retracing notice
    for Keras' per-model functions (PER_MODEL_RETRACING) is hidden, unless --verbose."""
    if _verbose:
        yield
        return
    logger, hide = logging.getLogger("tensorflow"), _DropKnown([PER_MODEL_RETRACING])
    logger.addFilter(hide)
    try:
        yield
    finally:
        logger.removeFilter(hide)


@contextlib.contextmanager
def startup_lines_filtered() -> Iterator[None]:
    """Within the block, lines written to fd 2 (C++ or Python) reach it unless in STARTUP_LINES.

    A thread forwards the lines as they come, so a crash in the block still shows its message.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def forward():
        seen = set()  # the start-up lines met so far
        with os.fdopen(read_end, "rb") as lines:
            for line in lines:
                text = line.decode("utf-8", "replace").rstrip("\n")
                known = [p for p in STARTUP_LINES if p.fullmatch(text)]
                seen.update(known)
                if not known and not any(p.fullmatch(text) and seen.intersection(after)
                                         for p, after in STARTUP_SEQUELS):
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

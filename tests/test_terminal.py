"""Issue 18: every `mtlrec` subcommand shows only its own lines on stderr; `--verbose` shows the libraries'.

The subcommands run as a user runs them (the console script, in a fresh process, without
TF_CPP_MIN_LOG_LEVEL), one after the other on one tiny workdir. Two are checked where a fresh
process of theirs already runs (CHECKED_ELSEWHERE): the same checks, without a second run.
"""
import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import EMBEDDED_OVERRIDES
from processes import OWN, foreign_lines, user_env

REPO = Path(__file__).resolve().parents[1]
MTLREC = Path(sys.executable).parent / "mtlrec"

TINY = [*EMBEDDED_OVERRIDES, "train.epochs=2", "train.steps_per_epoch=2", "train.batch_size=256",
        "train.diagnostics_batches=1", "model.expert_units=[8]", "model.tower_units=[4]", "model.num_experts=3",
        "model.id_embedding_dim=4", "model.gate.k=2", "compare.focus=[dselect_k_static]",
        # Tune's variants. Top-k without noise, as in the default compare: it once made Keras warn about its
        # noise weights. Two variants keep tune short (the softmax gate adds no library of its own).
        "compare.variants={topk: {model: {gate: {type: topk, k: 2, noise: false}}}, "
        "dselect_k_static: {model: {gate: {type: dselect_k, k: 2}}}}", "tune.trials=2",
        # Bands far narrower than Adam's first step: the 4-step DSelect-k trials end binary (feasible).
        "tune.space={gamma: {low: 0.0005, high: 0.001, log: true}}", "tune.learning_rate=[0.005, 0.01]"]
# Subcommands whose fresh-process run in another test checks its stderr with this file's rules
# (processes.foreign_lines) and its progress lines.
CHECKED_ELSEWHERE = {"compare": ("test_compare", "test_compare_prints_its_own_lines_and_progress"),
                     "synthetic": ("test_synthetic", "test_tiny_run_through_the_cli")}


def mtlrec(*args):
    env = user_env()
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    return subprocess.run([str(MTLREC), *args], capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """name -> finished process of each subcommand, run in the order a user would."""
    workdir = tmp_path_factory.mktemp("terminal")
    sets = sum([["--set", o] for o in [f"workdir={workdir}", *TINY]], [])
    commands = {
        "config": ["config", *sets],
        "preprocess": ["preprocess", *sets],
        "train": ["train", *sets],
        "evaluate": ["evaluate", *sets],
        "export": ["export", *sets],
        "export --sparse --verbose": ["--verbose", "export", "--sparse", *sets],
        "tune": ["tune", *sets],
    }
    done = {}
    for name, args in commands.items():
        done[name] = mtlrec(*args)
        assert done[name].returncode == 0, f"mtlrec {name}:\n{done[name].stderr[-3000:]}"
    return done


@pytest.mark.slow
def test_every_subcommand_prints_only_its_own_lines(runs):
    listed = set(re.findall(r"^    (\w+) ", mtlrec("--help").stdout, re.M))
    assert {"preprocess", "synthetic"} <= listed <= set(runs) | set(CHECKED_ELSEWHERE), \
        f"subcommands no test runs: {listed - set(runs) - set(CHECKED_ELSEWHERE)}"
    for name, (module, test) in CHECKED_ELSEWHERE.items():  # the tests named still exist
        assert callable(getattr(importlib.import_module(module), test, None)), f"{name}: {module}.{test} is gone"
    for name, result in runs.items():
        if "--verbose" in name:
            continue
        assert foreign_lines(result.stderr) == [], f"mtlrec {name} printed library lines"
    assert runs["config"].stderr == ""
    # Each says what it did and where the results went.
    assert re.search(r"^preprocess: \d+ rows = \d+ accepted \+ 0 rejected", runs["preprocess"].stderr, re.M)
    assert "train: default: best epoch" in runs["train"].stderr
    assert re.search(r"^evaluate: wrote .*eval\.json$", runs["evaluate"].stderr, re.M)
    assert re.search(r"^export: wrote .*export$", runs["export"].stderr, re.M)
    assert "tune: best settings in" in runs["tune"].stderr and runs["tune"].stdout.strip().endswith("best.yaml")
    # Per-run progress: i/N and, once a run has finished, the time left.
    assert re.search(r"^tune: \w+ \[2/2\] .*; ~\d+ (s|min) left$", runs["tune"].stderr, re.M)


@pytest.mark.slow
def test_keras_shows_one_line_per_epoch_when_not_a_terminal(runs):
    stdout = runs["train"].stdout
    assert "\r" not in stdout and "\x08" not in stdout  # no progress bar redrawn in a log file
    lines = stdout.splitlines()
    assert lines[0::2] == ["Epoch 1/2", "Epoch 2/2"]
    assert all(re.match(r"2/2 - \d+m?s - .*val_loss: [\d.]+", line) for line in lines[1::2]), lines


@pytest.mark.slow
def test_verbose_shows_the_library_logs(runs):
    result = runs["export --sparse --verbose"]
    library = foreign_lines(result.stderr)
    assert any(re.match(r"[IWE]\d{4} ", line) for line in library), library  # TensorFlow's C++ log
    assert any(re.match(r"(INFO|WARNING):(tensorflow|absl):", line) for line in library), library  # Python logs
    assert [line for line in result.stderr.splitlines() if OWN.fullmatch(line)] == \
        [runs["export"].stderr.strip() + "_sparse"]  # and the pipeline's own line


HARMLESS = ("Analyzer (z_score/mean_and_var/temporary_analyzer_output/PlaceholderWithDefault:0) node's cache key "
            "varies on repeated tracing. This warning is safe to ignore if you either specify `name` for all "
            "analyzers or if the order in which they are invoked is deterministic. If not, please file a bug "
            "with details.")
NO_DRIVER = ("I0000 00:00:1796162886.032995   10045 cudart_stub.cc:31] Could not find cuda drivers on your machine, "
             "GPU will not be used.")
CUINIT = ("E0000 00:00:1796162898.494630   10045 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: "
          "Failed call to cuInit: UNKNOWN ERROR (303)")
REAL_CPP = "E0000 00:00:1796162898.494630   10045 some_kernel.cc:12] a real problem in C++"


def test_only_the_exact_harmless_messages_are_hidden():
    """Messages of other texts, or the harmless ones from another source, still reach the user."""
    script = f"""
import logging, os, sys, warnings
from absl import logging as absl_logging
from pipeline import terminal
terminal.configure(False)
absl_logging.warning({HARMLESS!r})
absl_logging.warning({HARMLESS.replace("z_score", "my_scale")!r})
absl_logging.warning("a real absl warning")
logging.getLogger("tensorflow").warning("a real TensorFlow warning")
warnings.warn("a real Python warning")
with terminal.startup_lines_filtered():
    os.write(2, {CUINIT!r}.encode() + b"\\n")  # CUDA failed, and there is a driver: a real problem
    os.write(2, {NO_DRIVER!r}.encode() + b"\\n" + {CUINIT!r}.encode() + b"\\n")  # no driver: expected
    os.write(2, {REAL_CPP!r}.encode() + b"\\n")
    print("python during import", file=sys.stderr)
print("done", file=sys.stderr)
"""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = str(REPO)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()

    def shown(message):  # a log record's line ends with its message, whatever the handler's format
        return any(line.endswith(message) for line in lines)

    assert not shown(HARMLESS) and not shown(NO_DRIVER)
    assert shown(HARMLESS.replace("z_score", "my_scale"))
    assert shown("a real absl warning") and shown("a real TensorFlow warning")
    assert shown("UserWarning: a real Python warning"), lines
    assert lines.count(CUINIT) == 1 and REAL_CPP in lines and lines[-1] == "done"
    assert lines.index(CUINIT) < lines.index(REAL_CPP) < lines.index("python during import") < lines.index("done")


# TensorFlow's start-up lines on x86 CPUs (with and without the CUDA wheels, GPU or not), typed out as it
# prints them: absl's prefix (TF >= 2.16) and the older dated one. Which appear depends on the machine, so
# the filter is fed them all here. The instruction-set notice is two lines: the second has no prefix.
STARTUP = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1796640300.942340    9624 port.cc:153] oneDNN custom operations are on. You may see slightly "
    "different numerical results due to floating-point round-off errors from different computation orders. To turn "
    "them off, set the environment variable `TF_ENABLE_ONEDNN_OPTS=0`.",
    "2024-03-01 10:11:12.345678: I tensorflow/core/util/port.cc:113] oneDNN custom operations are on. You may see "
    "slightly different numerical results due to floating-point round-off errors from different computation orders. "
    "To turn them off, set the environment variable `TF_ENABLE_ONEDNN_OPTS=0`.",
    "I0000 00:00:1796640300.984335    9624 cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use "
    "available CPU instructions in performance-critical operations.",
    "To enable the following instructions: AVX2 AVX512F AVX512_VNNI AVX512_BF16 FMA, in other operations, rebuild "
    "TensorFlow with the appropriate compiler flags.",
    "2024-03-01 10:11:12.400001: I tensorflow/core/platform/cpu_feature_guard.cc:210] This TensorFlow binary is "
    "optimized to use available CPU instructions in performance-critical operations.",
    "To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow with the appropriate "
    "compiler flags.",
    "2022-06-01 10:11:12.400001: I tensorflow/core/platform/cpu_feature_guard.cc:193] This TensorFlow binary is "
    "optimized with oneAPI Deep Neural Network Library (oneDNN) to use the following CPU instructions in "
    "performance-critical operations:  AVX2 AVX512F FMA",
    "To enable them in other operations, rebuild TensorFlow with the appropriate compiler flags.",
    "I0000 00:00:1796640300.943349    9624 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will "
    "not be used.",
    "2024-03-01 10:11:12.456789: I external/local_tsl/tsl/cuda/cudart_stub.cc:31] Could not find cuda drivers on "
    "your machine, GPU will not be used.",
    "E0000 00:00:1796640302.494630    9624 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: Failed "
    "call to cuInit: UNKNOWN ERROR (303)",
    "2024-03-01 10:11:15.000004: E external/local_xla/xla/stream_executor/cuda/cuda_driver.cc:282] failed call to "
    "cuInit: UNKNOWN ERROR (303)",
    "W0000 00:00:1796640301.123456    9624 py_utils.cc:38] TF-TRT Warning: Could not find TensorRT",
    "2024-03-01 10:11:14.000002: W tensorflow/compiler/tf2tensorrt/utils/py_utils.cc:38] TF-TRT Warning: Could not "
    "find TensorRT",
    "E0000 00:00:1796640301.223344    9624 cuda_dnn.cc:8310] Unable to register cuDNN factory: Attempting to register "
    "factory for plugin cuDNN when one has already been registered",
    "E0000 00:00:1796640301.223350    9624 cuda_fft.cc:485] Unable to register cuFFT factory: Attempting to register "
    "factory for plugin cuFFT when one has already been registered",
    "2024-03-01 10:11:14.000003: E external/local_xla/xla/stream_executor/cuda/cuda_blas.cc:1515] Unable to register "
    "cuBLAS factory: Attempting to register factory for plugin cuBLAS when one has already been registered",
]


def _through_startup_filter(lines: list[str]) -> list[str]:
    """The lines of `lines`, written to fd 2 inside terminal.startup_lines_filtered, that reach stderr."""
    script = f"""
import os
from pipeline import terminal
with terminal.startup_lines_filtered():
    for line in {lines!r}:
        os.write(2, line.encode() + b"\\n")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr
    return result.stderr.splitlines()


def test_tensorflow_startup_lines_of_any_x86_cpu_are_hidden_and_others_pass():
    """Issue 24: on an AMD EPYC, TensorFlow wrote the oneDNN notice; other CPUs write the
    instruction-set notice, GPU-less CUDA installs their notices. All are hidden; a line of any other
    text passes, and so does a line harmless only after another (its sequel) when that one did not come."""
    unknown = ["E0000 00:00:1796162898.494630   10045 some_kernel.cc:12] a real problem in C++",
               "I0000 00:00:1796640300.942340    9624 port.cc:153] oneDNN custom operations are off.",
               "2024-03-01 10:11:12.345678: W tensorflow/core/framework/op_kernel.cc:1745] OP_REQUIRES failed"]
    assert _through_startup_filter(STARTUP + unknown) == unknown
    sequels = [line for line in STARTUP if line.startswith("To enable") or "cuInit" in line]
    assert len(sequels) == 5 and _through_startup_filter(sequels) == sequels


# Runs `code` in a fresh process whose logger NAME has terminal.configure(False)'s filters, and prints
# the messages the logger was given and those its handlers got (what the terminal would show).
SEEN = """
import json, logging, sys
from absl import logging as absl_logging
from pipeline import terminal
name, code = sys.argv[1:]
logger = absl_logging.get_absl_logger() if name == "absl" else logging.getLogger(name)
given, shown = [], []
class Given(logging.Filter):  # the first filter: sees every message
    def filter(self, record):
        given.append(record.getMessage())
        return True
handler = logging.Handler()
handler.emit = lambda record: shown.append(record.getMessage())
logger.addFilter(Given())
logger.addHandler(handler)
terminal.configure(False)
exec(code)
print(json.dumps({"given": given, "shown": shown}))
"""


def _logged(logger: str, code: str) -> tuple[list[str], list[str]]:
    """(messages the logger was given, messages shown) while `code` runs, quiet, in a fresh process."""
    import json
    result = subprocess.run([sys.executable, "-c", SEEN, logger, code], capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])})
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.splitlines()[-1])
    return out["given"], out["shown"]


@pytest.mark.slow
def test_retracing_notices_of_short_synthetic_runs_are_produced_and_hidden():
    """Runs of one epoch trace the study's per-run tf.functions more often than TensorFlow expects:
    its real notices, produced here, are hidden (a rename of those functions breaks this test)."""
    given, shown = _logged("tensorflow", """
from pipeline.synthetic.data import generate
from pipeline.synthetic.training import RunSpec, train_runs
data = generate(tasks=4, clusters=2, input_dim=3, cluster_hidden=3, train_size=64, val_size=16, test_size=16)
spec = RunSpec(num_experts=4, expert_units=(4,), tower_units=(), max_epochs=1, batch_size=64, jit_compile=False,
               min_epochs=1, patience=1)
for _ in range(6):
    train_runs(data, spec, {"type": "softmax"}, 0.01, [0])
""")
    retracing = [m for m in given if "triggered tf.function retracing" in m]
    for function in ("train_runs.<locals>.run_epoch", "TaskRoutedMoE.expert_weights", "TaskRoutedMoE.row_diagnostics"):
        assert any(function in m for m in retracing), (function, retracing)
    assert [m for m in shown if "retracing" in m] == []


@pytest.mark.slow
def test_retracing_notice_of_models_trained_one_after_another_is_hidden_only_there():
    """Keras' per-model train functions, traced for one short fit after another (tune's trials,
    compare's runs): TensorFlow's real notice is shown outside models_one_after_another, hidden inside."""
    given, shown = _logged("tensorflow", """
import numpy as np
import tensorflow as tf
def fits(n):
    for _ in range(n):
        model = tf.keras.Sequential([tf.keras.layers.Dense(1)])
        model.compile(optimizer="sgd", loss="mse")
        model.fit(np.zeros((4, 2)), np.zeros((4, 1)), epochs=1, verbose=0)
fits(5)  # the first notice: shown
with terminal.models_one_after_another():
    fits(5)  # the second (TensorFlow gives two per function): hidden
""")
    notices = [m for m in given if "Model.make_train_function.<locals>.train_function" in m and "retracing" in m]
    assert len(notices) == 2 and [m for m in shown if "retracing" in m] == notices[:1]


@pytest.mark.slow
def test_tf_transform_cache_key_notice_of_our_analyzer_is_produced_and_hidden(tmp_path):
    """tf.Transform's notice about our named z_score analyzer (KuaiRand's rates are z-scored after their
    own analyzer), produced by a real preprocess, is hidden."""
    given, shown = _logged("absl", f"""
from pipeline.stages import preprocess
from pipeline.config import load_config
from kuairand_files import write_kuairand
write_kuairand({str(tmp_path / "kuairand")!r}, "pure", users=8, videos=12, per_user=8, random_per_user=1)
preprocess.run(load_config(None, ["workdir={tmp_path}", "data.source=kuairand", "data.path={tmp_path / 'kuairand'}",
                                  "data.num_shards=1"]))
""")
    notices = [m for m in given if "node's cache key varies on repeated tracing" in m]
    assert notices and all("(z_score/" in m for m in notices)
    assert [m for m in shown if "cache key" in m] == []


@pytest.mark.parametrize("users, verbose, level", [(None, False, "2"), (None, True, "0"), ("1", False, "1"),
                                                   ("3", True, "3")])
def test_tensorflow_cpp_log_level_is_the_users_when_set(users, verbose, level):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env.update({"PYTHONPATH": str(REPO), **({"TF_CPP_MIN_LOG_LEVEL": users} if users else {})})
    script = (f"import os; from pipeline import terminal; terminal.configure({verbose}); "
              f"print(os.environ['TF_CPP_MIN_LOG_LEVEL'])")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert result.stdout.strip() == level, result.stderr


def test_verbose_goes_before_or_after_the_subcommand():
    from pipeline.cli import build_parser
    parse = build_parser().parse_args
    assert parse(["-v", "train"]).verbose and parse(["train", "--verbose"]).verbose
    assert parse(["--verbose", "export", "--sparse"]).verbose and not parse(["export", "--sparse"]).verbose

"""Our packages must bind tf.keras to Keras 2 (tf-keras), or fail clearly."""
import subprocess
import sys

import pytest


def _python(code):
    env = {"PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "3"}  # no TF_USE_LEGACY_KERAS
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.slow
def test_importing_our_package_selects_keras_2():
    result = _python("import models, tensorflow as tf; print(tf.keras.Model.__module__)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith("tf_keras")


@pytest.mark.slow
def test_importing_a_sub_package_first_selects_keras_2():
    """A sub-package module that needs no TensorFlow (pipeline/stats/metrics.py) still runs pipeline's
    __init__ first, so TensorFlow imported afterwards gets Keras 2."""
    result = _python("import pipeline.stats.metrics, tensorflow as tf; print(tf.keras.Model.__module__)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith("tf_keras")


@pytest.mark.slow
def test_keras_3_already_loaded_fails_clearly():
    result = _python("import tensorflow as tf; tf.keras.Model; import pipeline")
    assert result.returncode != 0
    assert "KerasVersionError" in result.stderr and "TF_USE_LEGACY_KERAS=1" in result.stderr

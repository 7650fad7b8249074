"""Shared test set-up: Keras 2 before TensorFlow, quiet logs, seeded randomness."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import features  # noqa: E402,F401  (selects tf-keras before TensorFlow loads)
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402


@pytest.fixture(autouse=True)
def _seed_and_policy():
    """Each test starts seeded and with the float32 policy, whatever the last one set."""
    tf.keras.utils.set_random_seed(0)
    yield
    tf.keras.mixed_precision.set_global_policy("float32")

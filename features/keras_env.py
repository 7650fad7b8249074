"""Make TensorFlow load Keras 2 (tf-keras), which TFRS 0.7.x needs.

TensorFlow >= 2.16 picks Keras 3 unless TF_USE_LEGACY_KERAS=1 is set before
`tf.keras` is first touched, so every package of this project calls
`use_legacy_keras()` in its __init__, before anything imports TensorFlow.
"""
import os
import sys

_FIX = (
    "set TF_USE_LEGACY_KERAS=1 in the environment (or import pipeline/models/features "
    "before tensorflow) and restart Python"
)


class KerasVersionError(ImportError):
    """TensorFlow was already bound to Keras 3 before our packages were imported."""


def use_legacy_keras() -> None:
    """Select tf-keras for `tf.keras`; fail clearly if Keras 3 is already bound."""
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    tf = sys.modules.get("tensorflow")
    if tf is None:
        return  # TensorFlow not loaded yet: the variable above is enough.
    # tf.keras is loaded lazily; touching it now resolves it with the variable above,
    # unless it was already resolved to Keras 3 earlier in this process.
    module = getattr(tf.keras.Model, "__module__", "")
    if not module.startswith("tf_keras"):
        raise KerasVersionError(
            f"TensorFlow was imported with Keras 3 ({module}); this project needs Keras 2 "
            f"(tf-keras) for tensorflow-recommenders: {_FIX}."
        )

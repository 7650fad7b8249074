"""Pipeline stages (preprocess, train, evaluate, compare) and the `mtlrec` CLI."""
from features.keras_env import use_legacy_keras

use_legacy_keras()

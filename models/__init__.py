"""Keras layers and the TFRS multi-task model: experts, gates, MMoE, towers."""
from features.keras_env import use_legacy_keras

use_legacy_keras()

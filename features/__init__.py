"""The one declaration of features and tasks, read by the pipeline and the model."""
from features.keras_env import use_legacy_keras

use_legacy_keras()

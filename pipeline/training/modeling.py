"""The Keras model a config describes, on the data folder it trains on.

Shared by `mtlrec train` (a new model) and pipeline/artifacts/runs.py (a trained run's model,
restored): both must build the same layers from the same config and manifest, or the
checkpoint would not load.
"""
from __future__ import annotations

import tensorflow as tf
from typing import TYPE_CHECKING, Any

from features.datasets import dataset_of_manifest
from features.transform import categorical_sizes
from models.recommender import ModelSpec, MultiTaskRecommender
from pipeline.artifacts.atomic import ArtifactError

if TYPE_CHECKING:  # names in annotations only
    from pipeline.config.schema import Config
    from pipeline.training.dataset import InputPipeline


def set_precision(mixed_precision: str) -> None:
    """The Keras dtype policy for models built from here on ("none" = float32)."""
    tf.keras.mixed_precision.set_global_policy("float32" if mixed_precision == "none" else mixed_precision)


def model_spec(config: Config, manifest: dict, tft_output: Any) -> ModelSpec:
    """The model section of `config` on the data of `manifest`.

    Args:
      config: the resolved Config (its `model` section is used).
      manifest: the data folder's manifest (pipeline/artifacts/manifest.py): the features it provides.
      tft_output: the data folder's tft.TFTransformOutput: vocabulary and bucket sizes.
    """
    m = config.model
    missing = sorted(set(m.features or ()) - set(manifest["features"]))
    if missing:
        raise ArtifactError(f"model.features: the data has no {', '.join(missing)} "
                            f"(it provides {', '.join(manifest['features'])})")
    features = [f for f in manifest["features"] if m.features is None or f in m.features]
    dataset = dataset_of_manifest(manifest)
    return ModelSpec(
        features=features, categorical_sizes=categorical_sizes(dataset, tft_output, features),
        tasks={t: c.weight for t, c in m.tasks.items()}, dataset=dataset.name,
        gates={t: m.gate_for(t).model_dump() for t in m.tasks}, architecture=m.architecture,
        id_embedding_dim=m.id_embedding_dim, side_embedding_dim=m.side_embedding_dim, num_experts=m.num_experts,
        expert_units=m.expert_units, expert_dropout=m.expert_dropout, tower_units=m.tower_units)


def build_model(config: Config, manifest: dict, inputs: InputPipeline) -> MultiTaskRecommender:
    """A new, untrained model of `config` on the data `inputs` (a pipeline.training.dataset.InputPipeline) reads."""
    return MultiTaskRecommender(model_spec(config, manifest, inputs.tft_output))

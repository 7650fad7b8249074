"""The TFRS multi-task model: features -> x -> experts + a gate per task -> towers -> outputs.

    transformed features --FeatureEncoder--> x [B, d]
      mmoe:          StackedExperts(x) [B, n, h] --gate_t--> [B, h] --tower_t--> output_t
      shared_bottom: MLP(x) [B, h] ----------------------------------tower_t--> output_t

`compute_loss` sums task_weight * loss_t over the tfrs.tasks.Ranking tasks; each task loss
is the weighted mean over the GLOBAL batch (the rating task has weight 0 on sampled items),
so it is the same on one device or many. The gates' regularization losses (DSelect-k's
entropy and unreachable-code penalty, Top-k's load balancing) are added in train_step.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import tensorflow as tf
import tensorflow_recommenders as tfrs

from features.datasets import dataset_named
from models.experts import MMoE
from models.randomness import Dropout

keras = tf.keras


@dataclass
class ModelSpec:
    """Everything that shapes the network; built by the trainer from config + data.

    No field has a default: the defaults are the config's (pipeline/config/schema.py, ModelConfig),
    written once there; pipeline/training/modeling.py fills every field from a resolved config.
    """
    features: list[str]  # active feature names, from the data manifest
    categorical_sizes: dict[str, int]  # indices per categorical feature (vocabularies + OOV)
    tasks: dict[str, float]  # task -> loss weight
    dataset: str  # the declaration (features/datasets/) of the features and tasks
    gates: dict[str, dict]  # task -> gate config (mmoe only)
    architecture: str  # "mmoe" or "shared_bottom"
    id_embedding_dim: int
    side_embedding_dim: int
    num_experts: int
    expert_units: list[int]
    expert_dropout: float
    tower_units: list[int]


def to_predictions(logits: dict, tasks: dict) -> dict:
    """{task: [B, 1] tower output} -> {task: [B]}: sigmoid for binary tasks, as is for regression.
    tasks: the dataset's declared tasks (features.spec.Task by name)."""
    return {t: tf.squeeze(tf.sigmoid(v) if tasks[t].kind == "binary" else v, axis=-1) for t, v in logits.items()}


@keras.utils.register_keras_serializable(package="mtlrec")
class FeatureEncoder(keras.layers.Layer):
    """Transformed features -> x: embeddings for categoricals, mean-pooled multi-valued
    categoricals (padding index -1), and the numeric features, concatenated."""

    def __init__(self, features: Sequence[str], categorical_sizes: dict[str, int], id_embedding_dim: int,
                 side_embedding_dim: int, dataset: str = "movielens",
                 **kwargs: Any):
        super().__init__(**kwargs)
        self.dataset = dataset
        declared = dataset_named(dataset).features
        self.kinds = {name: declared[name].kind for name in features}
        self.features = list(features)
        self.categorical_sizes = dict(categorical_sizes)
        self.id_embedding_dim, self.side_embedding_dim = id_embedding_dim, side_embedding_dim
        self.numeric = [f for f in self.features if self.kinds[f] == "numeric"]
        self.embeddings = {}
        for name in self.features:
            if self.kinds[name] != "numeric":
                dim = id_embedding_dim if declared[name].id_like else side_embedding_dim
                self.embeddings[name] = keras.layers.Embedding(categorical_sizes[name], dim, name=f"{name}_embedding")

    def call(self, features: dict[str, tf.Tensor]) -> tf.Tensor:
        parts = []
        for name, embedding in self.embeddings.items():
            ids = features[name]
            if self.kinds[name] == "multi_categorical":  # [B, L] padded with -1
                mask = tf.cast(ids >= 0, self.compute_dtype)[..., None]
                summed = tf.reduce_sum(embedding(tf.maximum(ids, 0)) * mask, axis=1)
                parts.append(summed / tf.maximum(tf.reduce_sum(mask, axis=1), 1.0))
            else:
                parts.append(embedding(ids))
        if self.numeric:
            parts.append(tf.cast(tf.stack([features[n] for n in self.numeric], axis=1), self.compute_dtype))
        return tf.concat(parts, axis=1)

    def get_config(self) -> dict:
        return {**super().get_config(), "features": self.features, "categorical_sizes": self.categorical_sizes,
                "id_embedding_dim": self.id_embedding_dim, "side_embedding_dim": self.side_embedding_dim,
                "dataset": self.dataset}


def _mlp(units, dropout, name):
    layers = []
    for i, u in enumerate(units):
        layers.append(keras.layers.Dense(u, activation="relu", name=f"{name}_dense_{i}"))
        if dropout > 0:
            layers.append(Dropout(dropout))
    return keras.Sequential(layers, name=name)


class MultiTaskRecommender(tfrs.Model):
    """MMoE (one gate per task) or shared-bottom multi-task ranking model."""

    def __init__(self, spec: ModelSpec, **kwargs: Any):
        super().__init__(**kwargs)
        self.spec = spec
        self.task_names = list(spec.tasks)
        self.declared_tasks = {t: dataset_named(spec.dataset).tasks[t] for t in self.task_names}
        self.encoder = FeatureEncoder(spec.features, spec.categorical_sizes, spec.id_embedding_dim,
                                      spec.side_embedding_dim, spec.dataset, name="encoder")
        if spec.architecture == "mmoe":
            self.mmoe = MMoE(spec.num_experts, spec.expert_units, {t: spec.gates[t] for t in self.task_names},
                             expert_dropout=spec.expert_dropout, name="mmoe")
        elif spec.architecture == "shared_bottom":
            self.bottom = _mlp(spec.expert_units, spec.expert_dropout, "shared_bottom")
        else:
            raise ValueError(f"unknown architecture {spec.architecture!r}; known: mmoe, shared_bottom")
        # Towers end in one float32 logit, so mixed precision never reaches the loss.
        self.towers = {t: keras.Sequential([_mlp(spec.tower_units, 0.0, f"{t}_hidden"),
                                            keras.layers.Dense(1, dtype="float32", name=f"{t}_logit")],
                                           name=f"{t}_tower") for t in self.task_names}
        self.ranking_tasks, self.loss_trackers, self.task_metrics = {}, {}, {}
        for t in self.task_names:
            # Per-example losses (reduction NONE): compute_loss does the weighted global mean.
            if self.declared_tasks[t].kind == "binary":
                loss = keras.losses.BinaryCrossentropy(from_logits=True, reduction=keras.losses.Reduction.NONE)
                self.task_metrics[t] = [keras.metrics.AUC(name=f"{t}_auc", from_logits=True)]
            else:
                loss = keras.losses.MeanSquaredError(reduction=keras.losses.Reduction.NONE)
                self.task_metrics[t] = [keras.metrics.RootMeanSquaredError(name=f"{t}_rmse")]
            self.ranking_tasks[t] = tfrs.tasks.Ranking(loss=loss, metrics=self.task_metrics[t], name=f"{t}_task")
            # It has no weights to create: built now, a model restored only to be exported (never
            # called on a loss) saves it whole instead of warning that it is skipped.
            self.ranking_tasks[t].build(None)
            self.loss_trackers[t] = keras.metrics.Mean(name=f"{t}_loss")
        self.regularization_tracker = keras.metrics.Mean(name="regularization_loss")

    def get_config(self) -> dict:
        """The spec as plain data (Keras saves it with the model; ModelSpec itself is not serializable)."""
        return {"spec": asdict(self.spec), "name": self.name}

    @classmethod
    def from_config(cls, config: dict) -> MultiTaskRecommender:
        return cls(ModelSpec(**config["spec"]), name=config["name"])

    # ------------------------------------------------------------ forward
    def logits(self, features: dict[str, tf.Tensor], training: bool = False) -> dict[str, tf.Tensor]:
        """{task: [B, 1] logit (binary) or prediction (regression)}."""
        x = self.encoder(features)
        if self.spec.architecture == "mmoe":
            mixtures = self.mmoe(x, training=training)
        else:
            shared = self.bottom(x, training=training)
            mixtures = {t: shared for t in self.task_names}
        return {t: self.towers[t](mixtures[t], training=training) for t in self.task_names}

    def call(self, features: dict[str, tf.Tensor], training: bool = False) -> dict[str, tf.Tensor]:
        """{task: [B] prediction}: a probability for binary tasks, the value for regression."""
        return to_predictions(self.logits(features, training=training), self.declared_tasks)

    # ------------------------------------------------------------ losses
    def compute_loss(self, features: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        logits = self.logits(features, training=training)
        replica = tf.distribute.get_replica_context()
        total = 0.0
        for t in self.task_names:
            task = self.declared_tasks[t]
            labels = tf.cast(features[task.label], tf.float32)[:, None]
            weight = (tf.cast(features[task.weight], tf.float32) if task.weight
                      else tf.ones_like(labels[:, 0]))
            per_example = self.ranking_tasks[t](labels, logits[t], sample_weight=weight, training=training)
            # Weighted mean over the global batch: local sum / all replicas' weight. The
            # optimizer sums gradients over replicas, so this is exact under any strategy.
            local_sum, local_weight = tf.reduce_sum(per_example), tf.reduce_sum(weight)
            global_weight = replica.all_reduce("sum", local_weight) if replica else local_weight
            loss = local_sum / tf.maximum(global_weight, 1e-9)
            self.loss_trackers[t].update_state(local_sum / tf.maximum(local_weight, 1e-9), sample_weight=local_weight)
            total += self.spec.tasks[t] * loss
        return total

    def train_step(self, features: dict[str, tf.Tensor]) -> dict:
        loss_scaling = isinstance(self.optimizer, keras.mixed_precision.LossScaleOptimizer)
        with tf.GradientTape() as tape:
            task_loss = self.compute_loss(features, training=True)
            # Gate regularization (add_loss), averaged over replicas like the task losses.
            reg = tf.add_n([tf.cast(x, tf.float32) for x in self.losses]) if self.losses else tf.constant(0.0)
            total = task_loss + reg / tf.distribute.get_strategy().num_replicas_in_sync
            scaled = self.optimizer.get_scaled_loss(total) if loss_scaling else total
        grads = tape.gradient(scaled, self.trainable_variables)
        if loss_scaling:
            grads = self.optimizer.get_unscaled_gradients(grads)
        self.optimizer.apply_gradients(zip(grads, self.trainable_variables))
        self.regularization_tracker.update_state(reg)
        return self._results()

    def test_step(self, features: dict[str, tf.Tensor]) -> dict:
        self.compute_loss(features, training=False)
        return self._results(training=False)

    def _results(self, training=True):
        # Gates add no regularization at inference: no val_regularization_loss.
        results = {m.name: m.result() for m in self.metrics if training or m is not self.regularization_tracker}
        # "loss" (train and val_loss) is the weighted sum of the tasks' mean losses.
        results["loss"] = tf.add_n([self.spec.tasks[t] * self.loss_trackers[t].result() for t in self.task_names])
        return results

    @property
    def metrics(self) -> list:
        """Everything Keras resets each epoch and reports: per-task losses and metrics."""
        tracked = [*self.loss_trackers.values(), self.regularization_tracker]
        for t in self.task_names:
            tracked += self.task_metrics[t]
        return tracked

"""Synthetic multi-task regression data with a known task-cluster structure.

T tasks fall into C clusters of (near-)equal size; the task -> cluster map is a seeded
random permutation, so a task's index says nothing about its cluster. Every task shares
the inputs x ~ N(0, I_d) (one row of x, one target per task), and

    y_t(x) = cluster_scale * f_c(t)(x) + u_t . x + noise_std * eps,

where f_c(x) = v_c . tanh(W_c x + b_c) is the cluster's own random one-hidden-layer
network, standardized to mean 0 and variance 1 over all generated inputs, and
u_t ~ N(0, task_scale^2 / d I) is a small task-specific linear term (variance
task_scale^2 over x). The data are a pure function of the arguments, so a seed
reproduces them bit for bit, and `clusters` records the ground truth the gates should
recover.

numpy only: the generator is used (and tested) without TensorFlow.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SyntheticData:
    """Inputs [N, d] and targets [N, T] per split, plus the true cluster of every task."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    clusters: np.ndarray  # [T] int, the true cluster of each task
    noise_std: float

    @property
    def num_tasks(self) -> int:
        return int(self.clusters.shape[0])

    @property
    def num_clusters(self) -> int:
        return int(self.clusters.max()) + 1

    @property
    def input_dim(self) -> int:
        return int(self.x_train.shape[1])


def assign_clusters(tasks: int, clusters: int, rng: np.random.Generator) -> np.ndarray:
    """Balanced clusters (sizes differ by at most 1) in a random task order."""
    if not 1 <= clusters <= tasks:
        raise ValueError(f"clusters must be in [1, tasks={tasks}], got {clusters}")
    return rng.permutation(np.arange(tasks) % clusters)


def generate(tasks: int = 128, clusters: int = 8, input_dim: int = 16, cluster_hidden: int = 8,
             cluster_scale: float = 1.0, task_scale: float = 0.1, noise_std: float = 0.2,
             train_size: int = 2000, val_size: int = 1000, test_size: int = 2000,
             seed: int = 0) -> SyntheticData:
    """Draw one synthetic multi-task data set (see the module docstring)."""
    for name, value in [("tasks", tasks), ("input_dim", input_dim), ("cluster_hidden", cluster_hidden),
                        ("train_size", train_size), ("val_size", val_size), ("test_size", test_size)]:
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if min(cluster_scale, task_scale, noise_std) < 0:
        raise ValueError("cluster_scale, task_scale and noise_std must be >= 0")
    rng = np.random.default_rng(seed)
    assignment = assign_clusters(tasks, clusters, rng)

    # Each cluster's function. W_c ~ N(0, 1/d) and b_c ~ N(0, 1/4) put the pre-activations
    # at ~N(0, 1.25): tanh works in its curved range, neither linear nor saturated.
    weights = rng.normal(0.0, 1.0 / np.sqrt(input_dim), size=(clusters, input_dim, cluster_hidden))
    biases = rng.normal(0.0, 0.5, size=(clusters, cluster_hidden))
    heads = rng.normal(0.0, 1.0, size=(clusters, cluster_hidden))
    task_linear = rng.normal(0.0, task_scale / np.sqrt(input_dim), size=(tasks, input_dim))

    sizes = [train_size, val_size, test_size]
    x = rng.normal(size=(sum(sizes), input_dim))
    hidden = np.tanh(np.einsum("nd,cdh->nch", x, weights) + biases)  # [N, C, H]
    f = np.einsum("nch,ch->nc", hidden, heads)
    f = (f - f.mean(axis=0)) / f.std(axis=0)  # unit variance: the scales mean what they say
    y = cluster_scale * f[:, assignment] + x @ task_linear.T
    y = y + noise_std * rng.normal(size=y.shape)

    x, y = x.astype(np.float32), y.astype(np.float32)
    cut = np.cumsum(sizes)[:-1]
    (x_train, x_val, x_test), (y_train, y_val, y_test) = np.split(x, cut), np.split(y, cut)
    return SyntheticData(x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val,
                         x_test=x_test, y_test=y_test, clusters=assignment.astype(np.int64),
                         noise_std=float(noise_std))

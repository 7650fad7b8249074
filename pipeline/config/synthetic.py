"""The `synthetic` section: `mtlrec synthetic`, the expert-selection study (pipeline/synthetic/)."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from models.gates import parse_gate_config
from pipeline.config.base import GateSettings, Section


class SyntheticDataConfig(Section):
    """The generator of pipeline/synthetic/data.py: T tasks in C clusters."""
    tasks: int = Field(128, ge=2)
    clusters: int = Field(8, ge=1)
    input_dim: int = Field(16, ge=1)
    cluster_hidden: int = Field(8, ge=1)      # tanh units of each cluster's true function
    cluster_scale: float = Field(1.0, ge=0)   # std of the cluster function
    task_scale: float = Field(0.1, ge=0)      # std of the task-specific linear term
    noise_std: float = Field(0.2, ge=0)
    train_size: int = Field(2000, ge=1)
    val_size: int = Field(1000, ge=1)
    test_size: int = Field(2000, ge=1)
    seed: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _clusters_fit(self):
        if self.clusters > self.tasks:
            raise ValueError(f"clusters={self.clusters} exceeds tasks={self.tasks}")
        return self


class SyntheticTuningConfig(Section):
    """Equal-budget tuning of every variant (pipeline/tuning/studies.py): Optuna TPE, pruning on the
    per-epoch validation MSE, the same number of trials per variant; the learning rate is searched
    beside the gate's own settings (its config class's `search_space`). The test split is never read."""
    trials: int = Field(6, ge=1)                  # finished trials per variant
    oracle_trials: int = Field(2, ge=1)           # the oracle reference: only its learning rate to tune
    seed: int = Field(100, ge=0)                  # the sampler's, and the training seed of every trial
    pruner: Literal["median", "successive_halving", "none"] = "median"
    startup_trials: int = Field(3, ge=1)          # random trials before TPE models the history
    learning_rate: list[Annotated[float, Field(gt=0)]] = Field(  # [low, high], log-uniform
        default_factory=lambda: [1e-3, 0.1], min_length=2, max_length=2)

    @model_validator(mode="after")
    def _range(self):
        if self.learning_rate[0] >= self.learning_rate[1]:
            raise ValueError(f"learning_rate: low {self.learning_rate[0]} must be below high {self.learning_rate[1]}")
        return self


def _synthetic_gates() -> dict:
    return {
        "softmax": parse_gate_config({"type": "softmax", "per_example": False}),
        "topk_1": parse_gate_config({"type": "topk", "k": 1, "per_example": False}),
        "topk_2": parse_gate_config({"type": "topk", "k": 2, "per_example": False}),
        "dselect_k_1": parse_gate_config({"type": "dselect_k", "k": 1}),
        "dselect_k_2": parse_gate_config({"type": "dselect_k", "k": 2}),
        "dselect_k_1_robust": parse_gate_config({"type": "dselect_k", "k": 1, "restarts": 3, "restart_steps": 300,
                                                 "permutation_start": 200, "permutation_steps": 300}),
    }


class SyntheticConfig(Section):
    """`mtlrec synthetic`: static gates per task on clustered synthetic tasks (see pipeline/synthetic/)."""
    data: SyntheticDataConfig = SyntheticDataConfig()
    num_experts: int = Field(16, ge=2)
    # ReLU hidden layers, a linear output (models/synthetic.py: one output unit makes an expert one
    # function, so two clusters sharing it cost MSE and recovery is identifiable).
    expert_units: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [32, 1], min_length=1)
    tower_units: list[Annotated[int, Field(ge=1)]] = Field(default_factory=list)  # [] = linear tower
    tower_init: Literal["shared", "independent"] = "shared"  # shared: every task's tower starts from one draw
    max_epochs: int = Field(200, ge=1)            # training stops here if the selections have not converged
    min_epochs: int = Field(60, ge=1)             # ... and not before this
    patience: int = Field(10, ge=1)               # epochs without a change of selection that count as converged
    batch_size: int = Field(256, ge=1)
    seeds: int = Field(10, ge=1)                  # reported runs use seeds 0 .. seeds-1
    gates: dict[str, GateSettings] = Field(default_factory=_synthetic_gates)  # named static variants
    compare: list[str] = Field(default_factory=lambda: list(_synthetic_gates()), min_length=1)
    # Compared variants that are not tuned but take another variant's tuned settings (keeping their own
    # robust options): robust DSelect-k is DSelect-k's tuned settings plus restarts and the permutation search.
    tuned_with: dict[str, str] = Field(default_factory=lambda: {"dselect_k_1_robust": "dselect_k_1"})
    tuning: SyntheticTuningConfig = SyntheticTuningConfig()
    sweep_tasks: list[Annotated[int, Field(ge=2)]] = Field(default_factory=lambda: [8, 32])
    sweep_seeds: int = Field(3, ge=1)             # the sweep's runs use seeds 0 .. sweep_seeds-1 (a trend, not a test)
    oracle: bool = True                           # reference model with gates fixed to the true clusters
    jit_compile: bool = True                      # XLA-compile each training epoch

    @model_validator(mode="after")
    def _consistent(self):
        for name in self.compare:
            if name not in self.gates:
                raise ValueError(f"compare lists {name!r}, which is not in gates ({', '.join(self.gates)})")
        for name in self.compare:
            gate = self.gates[name]
            if gate.per_example:
                raise ValueError(f"gates.{name}.per_example must be false: the study compares static per-task gates")
            if (gate.selects() or 1) > self.num_experts:
                raise ValueError(f"gates.{name}.k={gate.k} exceeds num_experts={self.num_experts}")
        for name, source in self.tuned_with.items():  # entries of variants not compared are ignored
            if name in self.compare and (source not in self.compare or source in self.tuned_with):
                raise ValueError(f"tuned_with.{name}: {source!r} must be compared and tuned itself")
            if self.gates[name].type != self.gates[source].type:
                raise ValueError(f"tuned_with.{name}: a {self.gates[name].type} gate cannot take the settings "
                                 f"of a {self.gates[source].type} gate ({source!r})")
        if self.min_epochs > self.max_epochs:
            raise ValueError(f"min_epochs={self.min_epochs} exceeds max_epochs={self.max_epochs}")
        if self.oracle and self.data.clusters > self.num_experts:
            raise ValueError(f"oracle needs one expert per cluster: data.clusters={self.data.clusters} "
                             f"exceeds num_experts={self.num_experts}")
        return self

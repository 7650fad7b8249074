"""The run configuration: one typed schema, loaded from YAML plus `--set key=value` overrides.

pydantic validates it: unknown keys and wrong types are rejected, and `ConfigError` turns
the first problem into one line that names the key (e.g. `model.gate.k`). Every option
has a default, and the defaults are the embedded-data run (`configs/default.yaml` spells
them out).
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, GetPydanticSchema, ValidationError, model_validator
from pydantic_core import core_schema

from features.datasets import SOURCE_DATASET, dataset_of_source
from features.datasets.movielens import MOVIELENS
from models.gates import GATE_TYPE_ERROR, parse_gate_config
from pipeline.errors import MtlrecError
from pipeline.search_space import spec_error


class ConfigError(MtlrecError):
    """A config problem, as one line naming the file or key."""


class Section(BaseModel):
    # strict: "3" is not an int and "yes" is not a bool; extra="forbid": typos are errors.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


# ---------------------------------------------------------------- gates (models/gates/)
def _gate_schema(source, handler) -> core_schema.CoreSchema:
    """A gate's settings: validated by the gate registry on its `type` (not a static Union, so that a
    gate registered at run time is accepted too) into that gate's config model, e.g.
    DSelectKGateConfig (models/gates/dselect_k_config.py), and dumped as that model."""
    dump = core_schema.plain_serializer_function_ser_schema(
        lambda gate, info: gate.model_dump(mode=info.mode), info_arg=True)
    return core_schema.no_info_plain_validator_function(parse_gate_config, serialization=dump)


GateSettings = Annotated[Any, GetPydanticSchema(_gate_schema)]


Units = list[Annotated[int, Field(ge=1)]]


class TaskConfig(Section):
    weight: float = Field(1.0, ge=0)  # this task's share of the summed loss


class ModelConfig(Section):
    """The TFRS multi-task model (models/recommender.py)."""
    architecture: Literal["mmoe", "shared_bottom"] = "mmoe"
    tasks: dict[str, TaskConfig] = Field(  # tasks declared for the dataset of data.source (features/datasets/)
        default_factory=lambda: {"watch": TaskConfig(), "rating": TaskConfig(), "like": TaskConfig()},
        min_length=1)
    # Model inputs: null = every feature the data provides; or a subset, e.g. [user, item].
    features: Union[list[str], None] = None
    id_embedding_dim: int = Field(32, ge=1)  # user and item embeddings
    side_embedding_dim: int = Field(8, ge=1)  # every other categorical feature
    num_experts: int = Field(8, ge=2)
    expert_units: Units = Field(default_factory=lambda: [64], min_length=1)  # also the shared bottom's MLP
    expert_dropout: float = Field(0.0, ge=0, lt=1)
    tower_units: Units = Field(default_factory=lambda: [32])  # hidden layers of each task's tower
    # The gate every task uses, unless task_gates names another for that task.
    # entropy_weight 1: picked on validation loss (seed 0, {1e-3, 1e-2, 1e-1, 1}) for the embedded
    # default (README, Results); with 1e-3 static selectors did not all become binary within 4 epochs.
    gate: GateSettings = parse_gate_config({"type": "dselect_k", "entropy_weight": 1.0})
    task_gates: dict[str, GateSettings] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self):
        for where, gate in [("gate", self.gate), *((f"task_gates.{t}", g) for t, g in self.task_gates.items())]:
            if getattr(gate, "k", 1) > self.num_experts:
                raise ValueError(f"{where}.k={gate.k} exceeds num_experts={self.num_experts}")
        unknown = set(self.task_gates) - set(self.tasks)
        if unknown:
            raise ValueError(f"task_gates names tasks that are not trained: {', '.join(sorted(unknown))}")
        return self

    def gate_for(self, task: str):
        return self.task_gates.get(task, self.gate)


class TrainConfig(Section):
    """`mtlrec train` (pipeline/train.py)."""
    data: Union[str, None] = None  # preprocessed data folder; default: data.output or <workdir>/data
    run_dir: Union[str, None] = None  # default: <workdir>/models/default
    epochs: int = Field(4, ge=1)
    batch_size: int = Field(1024, ge=1)  # global batch, split across replicas
    optimizer: Literal["adam", "adagrad", "sgd"] = "adam"
    learning_rate: float = Field(2e-3, gt=0)
    lr_schedule: Literal["constant", "cosine", "exponential"] = "constant"
    lr_decay_rate: float = Field(0.5, gt=0, le=1)  # exponential: factor per epoch
    # Epochs without val loss improvement, counted once every gate has converged (DSelect-k: binary
    # selectors; pipeline/resume.py); 0 = off.
    early_stopping_patience: int = Field(1, ge=0)
    # A per-example gate has converged when its selection is final on this share of the validation
    # examples it is checked on (train.diagnostics_batches); a static gate on all of them.
    converged_share: float = Field(0.99, gt=0, le=1)
    shuffle_buffer: int = Field(1_000_000, ge=1)  # examples permuted together (capped at the split: a full shuffle)
    cache: bool = True  # keep the parsed train/validation blocks in memory after the first epoch (pipeline/dataset.py)
    seed: int = 0
    # Same command, same bytes: tf.config.experimental.enable_op_determinism() (some GPU ops get slower).
    deterministic: bool = True
    steps_per_epoch: Union[int, None] = Field(None, ge=1)  # default: one pass over the train split
    # tf.distribute: auto = one device -> default strategy, several GPUs -> MirroredStrategy.
    strategy: Literal["auto", "default", "mirrored", "tpu", "multi_worker"] = "auto"
    tpu: Union[str, None] = None  # TPU name or grpc:// address, for strategy tpu
    cpu_devices: int = Field(1, ge=1)  # split the CPU into N logical devices (multi-device path without GPUs)
    mixed_precision: Literal["none", "mixed_float16", "mixed_bfloat16"] = "none"
    jit_compile: bool = False  # XLA-compile the train step
    diagnostics_batches: int = Field(8, ge=1)  # validation batches averaged for per-example gate weights

    @model_validator(mode="after")
    def _tpu_needs_address(self):
        if self.strategy == "tpu" and not self.tpu:
            raise ValueError("strategy tpu needs train.tpu (a TPU name or grpc:// address)")
        return self


# ---------------------------------------------------------------- data (pipeline/preprocess.py)
Count = Annotated[int, Field(ge=1)]
Fraction = Annotated[float, Field(gt=0, lt=1)]


class SplitConfig(Section):
    """mode temporal (the default): per user by time, the latest interactions go to test, the
    ones before to validation, the rest to train; an int is a count, a float in (0, 1) a fraction
    (at least 1); users with fewer than min_interactions stay in train only.

    mode random (pipeline/random_split.py): the examples -- observed interactions and their
    sampled negatives, drawn before the split as the COMET authors do -- are split at random,
    test and validation being fractions of ALL examples, stratified on the label of the binary
    task `stratify` (null: not stratified); min_interactions does not apply."""
    mode: Literal["temporal", "random"] = "temporal"
    stratify: Union[str, None] = None  # random: the binary task whose label keeps its rate in every split
    test: Union[Count, Fraction] = 0.1
    validation: Union[Count, Fraction] = 0.1
    min_interactions: int = Field(5, ge=3)

    @model_validator(mode="after")
    def _random_takes_fractions(self):
        if self.mode == "temporal":
            if self.stratify is not None:
                raise ValueError(f"stratify={self.stratify!r} needs mode: random (the temporal split is per user "
                                 f"by time)")
            return self
        for key in ("test", "validation"):
            if not isinstance(getattr(self, key), float):
                raise ValueError(f"{key}={getattr(self, key)}: mode random takes a fraction of all examples "
                                 f"in (0, 1), not a count")
        if self.test + self.validation >= 1:
            raise ValueError(f"test + validation = {self.test + self.validation:g} leaves no train examples")
        return self


class SamplingConfig(Section):
    """Items the user never interacted with (in any split), drawn seeded per user."""
    distribution: Literal["uniform", "popularity"] = "uniform"  # popularity = train interaction counts


class NegativesConfig(SamplingConfig):
    per_positive: int = Field(2, ge=0)  # sampled items per observed interaction (watch = 0)


class CandidatesConfig(SamplingConfig):
    negatives: int = Field(100, ge=1)  # sampled items added to each test user's list


class KuaiRandConfig(Section):
    """The kuairand source (pipeline/kuairand.py)."""
    # The random-policy log (log_random_*.csv) as each user's test list, an unbiased test set as
    # its authors intend; the standard logs then make train and validation only.
    random_log_test: bool = False


class DataConfig(Section):
    source: Literal["embedded", "grouplens", "tfds", "kuairand"] = "embedded"
    path: Union[str, None] = None  # grouplens / kuairand: the folder holding the dataset's files
    tfds_name: str = "movielens/100k-ratings"
    tfds_data_dir: Union[str, None] = None
    output: Union[str, None] = None  # default: <workdir>/data
    user_fraction: float = Field(1.0, gt=0, le=1)  # keep a seeded share of users (small runs)
    like_threshold: float = 4.0
    split: SplitConfig = SplitConfig()
    negatives: NegativesConfig = NegativesConfig()
    candidates: CandidatesConfig = CandidatesConfig()
    kuairand: KuaiRandConfig = KuaiRandConfig()
    num_shards: int = Field(4, ge=1)  # TFRecord files per split
    seed: int = 42
    beam_args: list[str] = Field(default_factory=list)  # Beam pipeline options, e.g. --runner=DataflowRunner

    @model_validator(mode="after")
    def _source_needs(self):
        if self.source == "grouplens" and not self.path:
            raise ValueError("source grouplens needs data.path (a folder with the GroupLens files)")
        if self.source == "kuairand" and not self.path:
            raise ValueError("source kuairand needs data.path (the data folder of KuaiRand-Pure, -1K or -27K)")
        return self

    @model_validator(mode="after")
    def _random_split_fits(self):
        """The random split draws negatives before splitting (pipeline/random_split.py): only for a
        dataset of sampled negatives, with a sampler that needs no train split, stratified on a
        binary task of that dataset."""
        split = self.split
        if split.mode != "random":
            return self
        dataset = dataset_of_source(self.source)
        if not dataset.sampled_negatives:
            raise ValueError(f"split.mode random: {dataset.name} examples are logged exposures, not sampled "
                             f"negatives; its split stays temporal")
        if self.negatives.distribution == "popularity":
            raise ValueError("split.mode random draws negatives before the split, when no train counts exist: "
                             "set data.negatives.distribution to uniform")
        if split.stratify is not None:
            task = dataset.tasks.get(split.stratify)
            if task is None or task.kind != "binary":
                binary = [t.name for t in dataset.tasks.values() if t.kind == "binary"]
                raise ValueError(f"split.stratify: {split.stratify!r} is not a binary task of {dataset.name}; "
                                 f"one of {', '.join(binary)} or null")
        return self


# ---------------------------------------------------------------- compare (pipeline/compare.py)
def _compare_variants() -> dict:
    # Each variant's learning rate and gate settings as `mtlrec tune` chose them on validation loss only
    # (20 feasible trials per variant: DSelect-k trials whose selectors did not become binary would not
    # count; none occurred), embedded data, rounded to 3 digits (README "Results").
    return {
        "softmax": {"model": {"gate": {"type": "softmax", "per_example": True}},
                    "train": {"learning_rate": 0.00932}},
        "topk": {"model": {"gate": {"type": "topk", "k": 2, "per_example": True, "noise": True,
                                    "load_balance_weight": 0.0}},
                 "train": {"learning_rate": 0.00396}},
        "dselect_k_static": {"model": {"gate": {"type": "dselect_k", "k": 2, "per_example": False,
                                                "gamma": 2.04, "entropy_weight": 0.135,
                                                "entropy_schedule": "constant", "entropy_doubling_steps": 27}},
                             "train": {"learning_rate": 0.0083}},
        "dselect_k_per_example": {"model": {"gate": {"type": "dselect_k", "k": 2, "per_example": True,
                                                     "gamma": 2.95, "entropy_weight": 3.59,
                                                     "entropy_schedule": "delayed", "entropy_warmup_steps": 146,
                                                     "entropy_doubling_steps": 56}},
                                  "train": {"learning_rate": 0.00706}},
        "shared_bottom": {"model": {"architecture": "shared_bottom"}, "train": {"learning_rate": 0.00888}},
    }


class CompareConfig(Section):
    """`mtlrec compare`: every variant x seed trained and evaluated on the same data and lists."""
    # name -> config changes applied on top of this config (any section; a gate mapping replaces).
    variants: dict[str, dict[str, Any]] = Field(default_factory=_compare_variants, min_length=2)
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    # Variants tested against every other variant: seed-aware test over seeds and users, Holm-corrected
    # (pipeline/compare_results.py).
    focus: list[str] = Field(default_factory=lambda: ["dselect_k_static", "dselect_k_per_example"])
    # Per-user metrics that get a paired test, per task.
    test_metrics: dict[str, list[str]] = Field(default_factory=lambda: dict(MOVIELENS.default_test_metrics))
    output: Union[str, None] = None  # report folder; default <workdir>/report

    @model_validator(mode="after")
    def _focus_known(self):
        unknown = [f for f in self.focus if f not in self.variants]
        if unknown:
            raise ValueError(f"focus names unknown variant(s) {', '.join(unknown)}; variants: {', '.join(self.variants)}")
        return self


# ---------------------------------------------------------------- tune (pipeline/tune.py)
class TuneConfig(Section):
    """`mtlrec tune`: the same Optuna budget for every compare variant, on validation loss only."""
    trials: int = Field(20, ge=1)  # finished trials (complete + pruned) per variant
    variants: Union[list[str], None] = Field(None, min_length=2)  # null = every compare.variants entry
    # On the per-epoch val_loss. Successive halving (rungs at epochs 1, 3, 9: the best third goes on)
    # by measurement on the embedded data: epoch 1's val_loss ordered 18 of 20 pairs of trials of
    # one variant as their best epoch did (the other two were within 0.011 at epoch 1), and a
    # trial stopped after epoch 1 cost half the CPU time of a complete one (16.5 s against 34 s).
    pruner: Literal["successive_halving", "median", "none"] = "successive_halving"
    seed: int = 0  # seeds the sampler (per variant and trial); trials train with train.seed
    learning_rate: list[Annotated[float, Field(gt=0)]] = Field(  # [low, high], log scale, every variant
        default_factory=lambda: [3e-4, 1e-2], min_length=2, max_length=2)
    storage: Union[str, None] = None  # the SQLite study file (local disk); default <workdir>/tune/study.db
    # Gate hyperparameter -> {low, high, log} or {choices: [...]}: replaces that parameter's default range
    # in its gate's search_space (pipeline/search_space.py); {} = the gates' own ranges.
    space: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _ranges(self):
        if self.learning_rate[0] >= self.learning_rate[1]:
            raise ValueError(f"learning_rate must be [low, high] with low < high, got {self.learning_rate}")
        for name, spec in self.space.items():
            problem = spec_error(spec)
            if problem:
                raise ValueError(f"space.{name}: {problem}")
        if self.variants and len(set(self.variants)) != len(self.variants):
            raise ValueError(f"variants lists a name twice: {self.variants}")
        return self


# ---------------------------------------------------------------- synthetic benchmark (issue #6)
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
    """Equal-budget tuning of every variant (pipeline/tuning.py): Optuna TPE, pruning on the
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
    # ReLU hidden layers, a linear output (pipeline/synthetic/model.py: one output unit makes an expert one
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
            if getattr(gate, "k", 1) > self.num_experts:
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


# ---------------------------------------------------------------- export (pipeline/export.py)
class ExportConfig(Section):
    """The exported model's `rank` signature: its defaults, which a request can override
    (rank_with_options)."""
    # task -> weight of its score in rank's combined score (tasks left out: 0);
    # null = the model's loss weights (model.tasks.<task>.weight)
    rank_weights: Union[dict[str, float], None] = None
    top_k: int = Field(10, ge=1)  # candidates returned in rank's top_k (fewer if fewer were sent)


class Config(Section):
    workdir: str = "runs/default"
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    compare: CompareConfig = CompareConfig()
    tune: TuneConfig = TuneConfig()
    synthetic: SyntheticConfig = SyntheticConfig()
    export: ExportConfig = ExportConfig()

    @model_validator(mode="before")
    @classmethod
    def _dataset_defaults(cls, tree):
        """model.tasks and compare.test_metrics left at their defaults (MovieLens's) on a source of
        another dataset become that dataset's defaults, so `--set data.source=kuairand` alone runs.
        (MovieLens's task names are not declared for another dataset: nothing explicit is replaced.)"""
        source = tree.get("data", {}).get("source") if isinstance(tree, dict) and isinstance(
            tree.get("data"), dict) else None
        if source not in SOURCE_DATASET or dataset_of_source(source) is MOVIELENS:
            return tree
        dataset, tree = dataset_of_source(source), dict(tree)
        model, compare = tree.get("model"), tree.get("compare")
        if isinstance(model, dict) and isinstance(model.get("tasks"), dict) and \
                list(model["tasks"]) == list(MOVIELENS.default_tasks):
            tree["model"] = {**model, "tasks": {t: {"weight": 1.0} for t in dataset.default_tasks}}
        if isinstance(compare, dict) and compare.get("test_metrics") == MOVIELENS.default_test_metrics:
            tree["compare"] = {**compare, "test_metrics": dict(dataset.default_test_metrics)}
        return tree

    @model_validator(mode="after")
    def _rank_weights_name_trained_tasks(self):
        unknown = sorted(set(self.export.rank_weights or ()) - set(self.model.tasks))
        if unknown:
            raise ValueError(f"export.rank_weights names tasks that are not trained: {', '.join(unknown)}")
        return self

    @model_validator(mode="after")
    def _declared_for_the_dataset(self):
        """Tasks and features are the declaration's of the dataset that data.source reads."""
        dataset = dataset_of_source(self.data.source)
        undeclared = [t for t in self.model.tasks if t not in dataset.tasks]
        if undeclared:
            raise ValueError(f"model.tasks: {', '.join(undeclared)} not declared for {dataset.name} "
                             f"(data.source {self.data.source}); known: {', '.join(dataset.tasks)}")
        unknown_features = sorted(set(self.model.features or ()) - set(dataset.features))
        if unknown_features:
            raise ValueError(f"model.features: {', '.join(unknown_features)} not declared for {dataset.name} "
                             f"(features/datasets/{dataset.name}.py)")
        return self


# ---------------------------------------------------------------- loading
class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, reading floats as YAML 1.2 does: PyYAML follows YAML 1.1, where `1e-3`
    (no dot) is a string, so `learning_rate: 1e-3` would be refused as "not a number"."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def load_yaml(text: str):
    """YAML text -> Python values: safe (no object tags), with YAML 1.2 floats such as 1e-3."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506  (_Loader is a SafeLoader)


def _parse_override(item: str) -> tuple[list[str], Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set train.epochs=3")
    try:
        value = load_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: cannot parse value {raw!r}: {exc}") from None
    return key.strip().split("."), value


def merge(base: dict, update: dict, section: type[BaseModel] = None) -> dict:
    """Deep-merge `update` into a copy of `base`, following the schema of `section`.

    Sections (e.g. `train`, `data.split`) merge key by key. Every other value is replaced as a
    whole -- lists, and mappings such as `model.tasks` or `compare.variants`, whose keys are
    the user's to choose, and gates, so that a new gate type does not inherit parameters of
    the previous one.
    """
    section = section or Config
    out = copy.deepcopy(base)
    for key, value in update.items():
        field = section.model_fields.get(key)
        kind = field.annotation if field else None
        if isinstance(kind, type) and issubclass(kind, Section) and isinstance(value, dict) \
                and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value, kind)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _set_path(tree: dict, path: list[str], value: Any) -> None:
    node = tree
    for i, part in enumerate(path[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {'.'.join(path)}: {'.'.join(path[: i + 1])} is not a section")
        node = child
    if path[-1] == "type" and node.get("type") != value:
        node.clear()  # a new gate type starts from its own defaults, as merge() replaces gates
    node[path[-1]] = value


def _read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        tree = load_yaml(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return tree


def _describe(error: dict) -> str:
    # Union members are named in the path (e.g. "constrained-int"); keep the field only.
    loc = [str(p) for p in error["loc"]]
    loc = [p for p in loc if not (p.startswith("constrained-") or p in ("int", "float", "str", "none"))]
    key = ".".join(loc) or "<top level>"
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"unknown key {key}"
    if kind == GATE_TYPE_ERROR:  # a missing or unknown gate type: the message says it all
        return f"{key}: {error['msg']}"
    if kind == "value_error":  # from a cross-field check; the input would be a whole section
        return f"{key}: {error['msg'].removeprefix('Value error, ')}"
    return f"{key}: {error['msg']} (got {error.get('input')!r})"


def validate(tree: dict, source: str = "config") -> Config:
    try:
        return Config.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_describe(exc.errors()[0])}") from None


def load_config(path: str | Path | None = None, overrides: list[str] | tuple = ()) -> Config:
    """Defaults <- YAML file <- `--set` overrides, validated into a Config."""
    tree = Config().model_dump(mode="json")
    file_error = None
    if path:
        tree = merge(tree, _read_yaml(path))
        try:
            config = validate(tree, source=str(path))  # blame the file for its own mistakes
        except ConfigError as error:
            if not overrides:
                raise
            # A file may leave a value to the command line (configs/kuairand_pure.yaml: data.path).
            file_error = error
    if not overrides:
        return config if path else Config()
    for item in overrides:
        keys, value = _parse_override(item)
        _set_path(tree, keys, value)
    try:
        return validate(tree, source="--set")
    except ConfigError:
        if file_error is not None:
            raise file_error from None
        raise


def with_overrides(config: Config, update: dict) -> Config:
    """A copy of `config` with a nested dict of changes merged in (and validated)."""
    return validate(merge(config.model_dump(mode="json"), update))


def to_yaml(config: Config) -> str:
    """The whole resolved config as YAML, in schema order: `load_config` of it gives `config` back."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def config_hash(section: BaseModel | dict) -> str:
    """Stable hash of a config (section): sha256 of its canonical JSON."""
    tree = section.model_dump(mode="json") if isinstance(section, BaseModel) else section
    blob = json.dumps(tree, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()

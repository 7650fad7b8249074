"""The run configuration's schema: every section, its keys, their types, bounds and defaults.

pydantic validates it: unknown keys and wrong types are rejected (pipeline/config/load.py turns
the first problem into one line that names the key, e.g. `model.gate.k`). Every option has its
default here, once; the defaults are the embedded-data run (`configs/default.yaml` spells them
out, and a test keeps the two equal).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import Field, field_validator, model_validator

from features.datasets import TABLE, dataset_named, dataset_of_data, dataset_of_source, load_dataset
from models.gates import parse_gate_config
from pipeline.config.base import GateSettings, Section, Units
from pipeline.config.synthetic import SyntheticConfig
from pipeline.stats.registry import per_user_names
from pipeline.tuning.search_space import spec_error

if TYPE_CHECKING:  # names in annotations only
    from models.gates.registry import GateConfig


class TaskConfig(Section):
    weight: float = Field(1.0, ge=0)  # this task's share of the summed loss


class ModelConfig(Section):
    """The TFRS multi-task model (models/recommender.py)."""
    architecture: Literal["mmoe", "shared_bottom"] = "mmoe"
    tasks: dict[str, TaskConfig] = Field(  # tasks declared for the dataset (data.dataset / data.source), its defaults
        default_factory=lambda: {t: TaskConfig(weight=dataset_named("movielens").declaration.tasks[t].weight)
                                 for t in dataset_named("movielens").default_tasks},
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
            if (gate.selects() or 1) > self.num_experts:
                raise ValueError(f"{where}.k={gate.k} exceeds num_experts={self.num_experts}")
        unknown = set(self.task_gates) - set(self.tasks)
        if unknown:
            raise ValueError(f"task_gates names tasks that are not trained: {', '.join(sorted(unknown))}")
        return self

    def gate_for(self, task: str) -> GateConfig:
        return self.task_gates.get(task, self.gate)


class TrainConfig(Section):
    """`mtlrec train` (pipeline/stages/train.py)."""
    data: Union[str, None] = None  # preprocessed data folder; default: data.output or <workdir>/data
    run_dir: Union[str, None] = None  # default: <workdir>/models/default
    epochs: int = Field(4, ge=1)
    batch_size: int = Field(1024, ge=1)  # global batch, split across replicas
    optimizer: Literal["adam", "adagrad", "sgd"] = "adam"
    learning_rate: float = Field(2e-3, gt=0)
    lr_schedule: Literal["constant", "cosine", "exponential"] = "constant"
    lr_decay_rate: float = Field(0.5, gt=0, le=1)  # exponential: factor per epoch
    # Epochs without val loss improvement, counted once every gate has converged (DSelect-k: binary
    # selectors; pipeline/artifacts/resume.py); 0 = off.
    early_stopping_patience: int = Field(1, ge=0)
    # A per-example gate has converged when its selection is final on this share of the validation
    # examples it is checked on (train.diagnostics_batches); a static gate on all of them.
    converged_share: float = Field(0.99, gt=0, le=1)
    shuffle_buffer: int = Field(1_000_000, ge=1)  # examples permuted together (capped at the split: a full shuffle)
    # Keep the parsed train/validation blocks in memory after the first epoch (pipeline/training/dataset.py).
    cache: bool = True
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
    # strategy multi_worker (pipeline/training/cluster.py): a worker silent this long counts as lost (the
    # others stop with one line naming it), and every worker must have joined the cluster within the second.
    worker_timeout_seconds: float = Field(30.0, gt=0)
    worker_start_timeout_seconds: float = Field(600.0, gt=0)

    @model_validator(mode="after")
    def _tpu_needs_address(self):
        if self.strategy == "tpu" and not self.tpu:
            raise ValueError("strategy tpu needs train.tpu (a TPU name or grpc:// address)")
        return self


# ---------------------------------------------------------------- data (pipeline/stages/preprocess.py)
Count = Annotated[int, Field(ge=1)]
Fraction = Annotated[float, Field(gt=0, lt=1)]


class SplitConfig(Section):
    """mode temporal (the default): per user by time, the latest interactions go to test, the
    ones before to validation, the rest to train; an int is a count, a float in (0, 1) a fraction
    (at least 1); users with fewer than min_interactions stay in train only.

    mode random (pipeline/examples/random_split.py): the examples -- observed interactions and their
    sampled negatives, drawn before the split as the COMET authors do -- are split at random,
    test and validation being fractions of ALL examples, stratified on the label of the binary
    task `stratify` (null: not stratified); min_interactions does not apply."""
    mode: Literal["temporal", "random", "column"] = "temporal"
    stratify: Union[str, None] = None  # random: the binary task whose label keeps its rate in every split
    column: Union[str, None] = None  # column: the declared column naming each row's split (train/validation/test)
    test: Union[Count, Fraction] = 0.1
    validation: Union[Count, Fraction] = 0.1
    min_interactions: int = Field(5, ge=3)

    @model_validator(mode="after")
    def _random_takes_fractions(self):
        if (self.mode == "column") != (self.column is not None):
            raise ValueError("mode column needs `column` (the column naming each row's split), and only it does")
        if self.mode == "column":
            return self
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
    """The kuairand source (pipeline/sources/kuairand.py)."""
    # The random-policy log (log_random_*.csv) as each user's test list, an unbiased test set as
    # its authors intend; the standard logs then make train and validation only.
    random_log_test: bool = False


class DataConfig(Section):
    # A reader of a built-in declaration (configs/datasets/: embedded, grouplens, tfds, kuairand), or
    # `table`: the files of the declaration data.dataset names (docs/DATASETS.md).
    source: str = "embedded"
    # A dataset declared in one YAML file (local or gs://); null: the built-in declaration of data.source.
    dataset: Union[str, None] = None
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
    # Beam runner (pipeline/stages/beam_runner.py): direct (in-process) or portable: a Beam job server at
    # job_endpoint (host:port) running the SDK workers of the worker pool at worker_pool (host:port;
    # null: the job server's own default environment). Dataflow, Flink, Spark: options in beam_args.
    runner: Literal["direct", "portable"] = "direct"
    job_endpoint: Union[str, None] = None
    worker_pool: Union[str, None] = None
    # portable: how long the job server, the worker pool and a started worker may take to answer
    runner_timeout_seconds: float = Field(60.0, gt=0)

    @field_validator("source")
    @classmethod
    def _source_declared(cls, source: str) -> str:
        if source != TABLE:
            dataset_of_source(source)  # ValueError naming the known sources
        return source

    @field_validator("dataset")
    @classmethod
    def _dataset_declared(cls, path):
        """The file as an absolute path (artifacts record it), read and checked now: a problem is one
        line naming the file's key."""
        if path is None:
            return path
        from pipeline.artifacts.storage import absolute
        path = absolute(path)
        load_dataset(path)
        return path

    @model_validator(mode="after")
    def _runner_needs(self):
        if self.runner == "portable" and not self.job_endpoint:
            raise ValueError("runner portable needs data.job_endpoint (host:port of a Beam job server)")
        if self.runner != "portable" and (self.job_endpoint or self.worker_pool):
            raise ValueError("data.job_endpoint and data.worker_pool are settings of data.runner=portable")
        return self

    @model_validator(mode="after")
    def _source_needs(self):
        if self.source == TABLE and not self.dataset:
            raise ValueError("source table reads the files of a declaration: set data.dataset (docs/DATASETS.md)")
        dataset = dataset_of_data(self)
        needs = dataset.sources[self.source].path
        if needs and not self.path:
            raise ValueError(f"source {self.source} needs data.path ({needs})")
        if self.split.column is not None:
            column = dataset.declaration.columns.get(self.split.column)
            if column is None or column.entity != "label":
                raise ValueError(f"split.column: {self.split.column!r} is not a column of {dataset.name} that is read "
                                 f"only (entity label)")
        return self

    @model_validator(mode="after")
    def _random_split_fits(self):
        """The random split draws negatives before splitting (pipeline/examples/random_split.py): only for a
        dataset of sampled negatives, with a sampler that needs no train split, stratified on a
        binary task of that dataset."""
        split = self.split
        if split.mode != "random":
            return self
        dataset = dataset_of_data(self)
        if self.negatives.distribution == "popularity" and dataset.sampled_negatives:
            raise ValueError("split.mode random draws negatives before the split, when no train counts exist: "
                             "set data.negatives.distribution to uniform")
        if split.stratify is not None:
            task = dataset.tasks.get(split.stratify)
            if task is None or task.kind != "binary":
                binary = [t.name for t in dataset.tasks.values() if t.kind == "binary"]
                raise ValueError(f"split.stratify: {split.stratify!r} is not a binary task of {dataset.name}; "
                                 f"one of {', '.join(binary)} or null")
        return self


# Settings of how a stage runs, not of what it computes: data or a run made with other values of
# these is the same data or run. They are left out of the data hash (pipeline/artifacts/manifest.py), of
# a run's settings (pipeline/artifacts/runs.py) and of tune's study names (pipeline/stages/tune.py).
EXECUTION_FIELDS = {"data": ("runner", "job_endpoint", "worker_pool", "runner_timeout_seconds"),
                    "train": ("worker_timeout_seconds", "worker_start_timeout_seconds")}


def without_execution_fields(section: str, values: dict) -> dict:
    """A section's values (a config tree's) without its EXECUTION_FIELDS."""
    return {k: v for k, v in values.items() if k not in EXECUTION_FIELDS.get(section, ())}


# ---------------------------------------------------------------- compare (pipeline/stages/compare.py)
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
    # (pipeline/reports/compare_results.py).
    focus: list[str] = Field(default_factory=lambda: ["dselect_k_static", "dselect_k_per_example"])
    # Per-user metrics that get a paired test, per task.
    test_metrics: dict[str, list[str]] = Field(
        default_factory=lambda: dict(dataset_named("movielens").default_test_metrics))
    output: Union[str, None] = None  # report folder; default <workdir>/report

    @model_validator(mode="after")
    def _focus_known(self):
        unknown = [f for f in self.focus if f not in self.variants]
        if unknown:
            raise ValueError(f"focus names unknown variant(s) {', '.join(unknown)}; "
                             f"variants: {', '.join(self.variants)}")
        return self


# ---------------------------------------------------------------- tune (pipeline/stages/tune.py)
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
    # in its gate's search_space (pipeline/tuning/search_space.py); {} = the gates' own ranges.
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


# ---------------------------------------------------------------- export (pipeline/stages/export.py)
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
        """What a declaration says about runs on it, for the keys the config leaves at their defaults
        (MovieLens's): model.tasks (its default tasks and their loss weights), compare.test_metrics,
        data.split (mode, stratify, column), data.negatives (per_positive, distribution) and
        data.source (the declaration's first reader: `table` for one of its own files). So
        `--set data.dataset=mydata.yaml` alone runs; nothing set explicitly is replaced."""
        if not isinstance(tree, dict) or not isinstance(tree.get("data", {}), dict):
            return tree
        data = tree.get("data", {})
        try:
            dataset = (load_dataset(data["dataset"]) if data.get("dataset") else
                       dataset_of_source(data.get("source", DataConfig().source)))
        except Exception:  # noqa: BLE001  (an unknown source or a bad file: its field says why)
            return tree
        default, tree = dataset_named("movielens"), dict(tree)
        if data.get("dataset") and data.get("source", DataConfig().source) == DataConfig().source \
                and DataConfig().source not in dataset.sources:  # data.source left alone: the file's own reader
            data = {**data, "source": next(iter(dataset.sources))}
            tree["data"] = data
        if dataset is default:
            return tree
        decl = dataset.declaration
        model, compare = tree.get("model"), tree.get("compare")
        if isinstance(model, dict) and isinstance(model.get("tasks"), dict) and \
                list(model["tasks"]) == list(default.default_tasks):
            tree["model"] = {**model, "tasks": {t: {"weight": decl.tasks[t].weight} for t in dataset.default_tasks}}
        if isinstance(compare, dict) and compare.get("test_metrics") == default.default_test_metrics:
            tree["compare"] = {**compare, "test_metrics": dict(dataset.default_test_metrics)}
        split, negatives = data.get("split"), data.get("negatives")
        base = DataConfig()
        if isinstance(split, dict) and split.get("mode", "temporal") == "temporal" and split.get("stratify") is None \
                and split.get("column") is None:
            split = {**split, "mode": decl.split.mode, "stratify": decl.split.stratify, "column": decl.split.column}
        if isinstance(negatives, dict) and negatives == base.negatives.model_dump(mode="json"):
            negatives = {"per_positive": decl.negatives.per_positive, "distribution": decl.negatives.distribution}
        tree["data"] = {**data, **({"split": split} if split is not None else {}),
                        **({"negatives": negatives} if negatives is not None else {})}
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
        dataset = dataset_of_data(self.data)
        where = self.data.dataset or f"data.source {self.data.source}"
        undeclared = [t for t in self.model.tasks if t not in dataset.tasks]
        if undeclared:
            raise ValueError(f"model.tasks: {', '.join(undeclared)} not declared for {dataset.name} "
                             f"({where}); known: {', '.join(dataset.tasks)}")
        unknown_features = sorted(set(self.model.features or ()) - set(dataset.features))
        if unknown_features:
            raise ValueError(f"model.features: {', '.join(unknown_features)} not declared for {dataset.name} "
                             f"({dataset.path})")
        # Before any training: a misspelt metric would otherwise fail only once every run is done.
        for task, names in self.compare.test_metrics.items():
            if task not in dataset.tasks:
                raise ValueError(f"compare.test_metrics: {task!r} is not a task of {dataset.name}; "
                                 f"known: {', '.join(dataset.tasks)}")
            kind = dataset.tasks[task].kind
            known = per_user_names(kind)
            for name in names:
                if name not in known:
                    raise ValueError(f"compare.test_metrics.{task}: {name!r} is not a per-user metric of a {kind} "
                                     f"task; known: {', '.join(known)}")
        return self

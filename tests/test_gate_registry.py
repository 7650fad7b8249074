"""The gate registry: configs dispatch on `type` through it, each gate's search space, and a gate that
exists only in this file, registered at run time, validated and trained through `mtlrec train`."""
import json
import math
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
import tensorflow as tf
from pydantic import Field, ValidationError

from models.gates import (
    ENTROPY_SCHEDULES, GATES, DSelectKGateConfig, Gate, GateConfig, SoftmaxGateConfig, TopKGateConfig, build_gate,
    gate_class, gate_types, parse_gate_config, register_gate, unregister_gate)
from pipeline.config import ConfigError, load_config
from test_train import SMALL

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- a gate defined here only
class FirstKConfig(GateConfig):
    type: Literal["first_k"]
    k: int = Field(1, ge=1)
    per_example: Literal[False] = False


class FirstKGate(Gate):
    """Softmax over trained logits of the first k experts; every other expert gets exactly 0. The
    whole contract of models/gates/base.py: static, and per-example (how the synthetic study packs
    static gates, routed on one-hot task ids)."""

    config_class = FirstKConfig
    exactly_sparse = True

    def __init__(self, num_experts: int, k: int = 1, per_example: bool = False, **kwargs):
        super().__init__(num_experts, per_example, **kwargs)
        self.k = int(k)
        if per_example:
            self.logits_dense = tf.keras.layers.Dense(self.k, dtype="float32", name="logits")
        else:
            self.logits = self.add_weight(name="logits", shape=[self.k], initializer="zeros")

    @property
    def selects(self) -> int:
        return self.k

    def routing_layers(self):
        return [self.logits_dense] if self.per_example else []

    def initialize_static_rows(self):
        self.logits_dense.kernel.assign(tf.zeros(self.logits_dense.kernel.shape))  # as static logits start

    def _gate(self, routing_inputs, training):
        logits = self.logits_dense(routing_inputs) if self.per_example else self.logits  # [b, k] or [k]
        weights = tf.nn.softmax(logits, axis=-1)
        return tf.pad(weights, [[0, 0]] * (weights.shape.rank - 1) + [[0, self.num_experts - self.k]]), None

    def get_config(self):
        return {**super().get_config(), "k": self.k}


@pytest.fixture
def first_k():
    register_gate(layer=FirstKGate)(FirstKConfig)
    yield
    if "first_k" in gate_types():  # no other test sees it
        unregister_gate("first_k")


def test_a_gate_registered_at_run_time_validates_everywhere(first_k):
    assert gate_types()[-1] == "first_k" and gate_class("first_k") is FirstKGate and GATES["first_k"] is FirstKGate
    config = load_config(None, ["model.gate.type=first_k", "model.gate.k=2",
                                "model.task_gates.rating={type: first_k, k: 3}",
                                "synthetic.gates.first={type: first_k}"])
    assert config.model.gate == FirstKConfig(type="first_k", k=2)
    assert config.model.gate_for("rating").k == 3 and config.synthetic.gates["first"].k == 1
    assert config.model_dump(mode="json")["model"]["gate"] == {"type": "first_k", "per_example": False, "k": 2}
    for override, message in [
        ("model.gate.k=0", "model.gate.k: Input should be greater than or equal to 1 (got 0)"),
        ("model.gate.per_example=true", "model.gate.per_example: Input should be False (got True)"),
        ("model.gate.bogus=1", "unknown key model.gate.bogus"),
        ("model.gate.k=9", "model: gate.k=9 exceeds num_experts=8"),
    ]:
        with pytest.raises(ConfigError) as error:
            load_config(None, ["model.gate.type=first_k", override])
        assert str(error.value) == f"--set: {message}"


def test_unregistered_types_are_unknown(first_k):
    unregister_gate("first_k")
    known = "softmax, topk, dselect_k"
    with pytest.raises(ConfigError, match=rf"model.gate.type: unknown gate type 'first_k'; known: {known}$"):
        load_config(None, ["model.gate.type=first_k"])


@pytest.mark.slow
def test_the_test_gate_trains_through_mtlrec_train(embedded_data, tmp_path, first_k):
    from pipeline.cli import main
    data_dir, _ = embedded_data
    overrides = [*SMALL, f"train.data={data_dir}", f"train.run_dir={tmp_path}", "train.epochs=2",
                 "model.gate.type=first_k", "model.gate.k=2"]
    assert main(["train", *(a for o in overrides for a in ("--set", o))]) == 0
    summary = json.loads((tmp_path / "train.json").read_text())
    assert summary["epochs"] == 2 and math.isfinite(summary["best_val_loss"])
    exported = json.loads((tmp_path / "gates.json").read_text())["exported"]["tasks"]
    assert set(exported) == {"watch", "rating", "like"}
    for entry in exported.values():
        assert entry["type"] == "first_k" and entry["k"] == 2 and entry["nonzero_experts"] == 2
        weights = np.array(entry["weights"])
        assert weights.shape == (6,) and np.all(weights[2:] == 0) and weights[:2].sum() == pytest.approx(1)
        assert abs(weights[0] - 0.5) > 1e-4  # the logits were trained away from their start at 0
    # The sparse export reads the contract only: the two experts every task selects are kept.
    assert main(["export", "--run", str(tmp_path), "--sparse"]) == 0
    assert json.loads((tmp_path / "sparse_export.json").read_text())["kept"] == [0, 1]


@pytest.mark.slow
def test_the_test_gate_runs_the_synthetic_study(tmp_path, first_k):
    """The study packs the test gate's static gates into one per-example gate (initialize_static_rows),
    tunes it, trains it until converged and scores its selection, knowing nothing else of it."""
    from pipeline.cli import main
    tiny = ["synthetic.gates={first: {type: first_k, k: 1}}", "synthetic.compare=[first]", "synthetic.tuned_with={}",
            "synthetic.sweep_tasks=[]", "synthetic.seeds=1", "synthetic.oracle=false"]
    args = ["synthetic", "--config", str(REPO / "configs" / "synthetic_tiny.yaml"), "--output", str(tmp_path / "out"),
            *(a for o in tiny for a in ("--set", o))]
    assert main(args) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    first = summary["gates"]["first"]
    assert first["gate"]["type"] == "first_k" and first["num_seeds"] == 1 and first["converged_seeds"] == 1
    [run] = first["runs"]
    assert math.isfinite(run["test_mse"]) and 0 <= run["pair_agreement"] <= 1


# ---------------------------------------------------------------- validation through the registry
def test_parse_gate_config_names_the_bad_key():
    assert parse_gate_config({"type": "topk", "k": 3}) == TopKGateConfig(type="topk", k=3)
    cases = [({"k": 2}, (), "needs a 'type', one of softmax, topk, dselect_k"),
             ({"type": "nope"}, ("type",), "unknown gate type 'nope'; known: softmax, topk, dselect_k"),
             ({"type": "dselect_k", "gamma": 0.0}, ("gamma",), "Input should be greater than 0"),
             ({"type": "softmax", "k": 2}, ("k",), "Extra inputs are not permitted"),
             (7, (), "Input should be a valid dictionary or object to extract fields from")]
    for value, loc, message in cases:
        with pytest.raises(ValidationError) as error:
            parse_gate_config(value)
        [problem] = error.value.errors()
        assert (problem["loc"], problem["msg"]) == (loc, message)


def test_registration_checks_the_pairing():
    class Orphan(GateConfig):
        type: Literal["orphan"]

    with pytest.raises(TypeError, match="config_class = Orphan"):
        register_gate(layer=FirstKGate)(Orphan)  # FirstKGate belongs to FirstKConfig
    with pytest.raises(ValueError, match="'topk' is already registered"):
        register_gate(layer=FirstKGate)(type("Imposter", (TopKGateConfig,), {}))
    assert "orphan" not in gate_types() and "orphan" not in GATES
    with pytest.raises(ValueError, match="unknown gate type 'orphan'"):
        build_gate("orphan", 4)


def test_built_in_gates_are_found_by_name():
    assert gate_types()[:3] == ["softmax", "topk", "dselect_k"]
    gates = [build_gate("softmax", 4), build_gate("topk", 4, k=2), build_gate("dselect_k", 4, k=2)]
    assert [g.gate_type for g in gates] == ["softmax", "topk", "dselect_k"]
    assert [g.exactly_sparse for g in gates] == [False, True, True]


# ---------------------------------------------------------------- search spaces
class FakeTrial:
    """Answers like an optuna.Trial: each float or int at its low or high end, each categorical with
    `choices[pick]` (clamped), and records what was asked."""

    def __init__(self, end: str, pick: int):
        self.end, self.pick, self.asked = end, pick, {}

    def suggest_float(self, name, low, high, log=False):
        self.asked[name] = ("float", low, high, log)
        return low if self.end == "low" else high

    def suggest_int(self, name, low, high, log=False):
        self.asked[name] = ("int", low, high, log) if log else ("int", low, high)
        return low if self.end == "low" else high

    def suggest_categorical(self, name, choices):
        self.asked[name] = ("categorical", tuple(choices))
        return choices[min(self.pick, len(choices) - 1)]


CONTEXT = {"steps_per_epoch": 30, "epochs": 7}  # 210 steps


@pytest.mark.parametrize("end", ["low", "high"])
@pytest.mark.parametrize("pick", [0, 1, 2])
def test_search_spaces_ask_their_ranges_and_give_valid_configs(end, pick):
    for config in (SoftmaxGateConfig, TopKGateConfig, DSelectKGateConfig):
        trial = FakeTrial(end, pick)
        params = config.search_space(trial, CONTEXT)
        name = config.type_name()
        config.model_validate({"type": name, **params})  # every draw is a valid config of the gate
        assert set(trial.asked) - {"load_balance"} <= set(params) and "learning_rate" not in params
        if name == "softmax":
            assert params == {}
        elif name == "topk":
            assert trial.asked["noise"] == ("categorical", (True, False))
            assert trial.asked["load_balance"] == ("categorical", (False, True))
            if pick == 0:  # balancing off: no weight is drawn
                assert params["load_balance_weight"] == 0.0 and "load_balance_weight" not in trial.asked
            else:
                assert trial.asked["load_balance_weight"] == ("float", 1e-4, 1.0, True)
        else:
            assert trial.asked["gamma"] == ("float", 0.1, 10.0, True)
            assert trial.asked["entropy_weight"] == ("float", 1e-4, 10.0, True)
            assert trial.asked["entropy_schedule"] == ("categorical", ENTROPY_SCHEDULES)
            if params["entropy_schedule"] == "constant":  # a warm-up means nothing without a schedule
                assert "entropy_warmup_steps" not in trial.asked
            else:
                assert trial.asked["entropy_warmup_steps"] == ("int", 0, 105)  # half of 30 x 7 steps
            # Always drawn: 1/64 to 1/16 of the 210 steps, on a log scale (models/gates/dselect_k_config.py).
            assert trial.asked["entropy_doubling_steps"] == ("int", 3, 13, True)


def test_search_spaces_run_under_optuna():
    """The same spaces through a real optuna study: the calls are optuna's, and every draw is a valid config."""
    optuna = pytest.importorskip("optuna")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for config in (TopKGateConfig, DSelectKGateConfig):
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        drawn = []
        study.optimize(lambda trial: drawn.append(config.search_space(trial, CONTEXT)) or 0.0, n_trials=20)
        assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials) and len(drawn) == 20
        for params in drawn:
            config.model_validate({"type": config.type_name(), **params})
        if config is DSelectKGateConfig:
            assert {p["entropy_schedule"] for p in drawn} == set(ENTROPY_SCHEDULES)
            assert all(("entropy_warmup_steps" in p) == (p["entropy_schedule"] != "constant") for p in drawn)

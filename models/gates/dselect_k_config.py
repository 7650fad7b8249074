"""The settings of the DSelect-k gate, models/gates/dselect_k.py. No TensorFlow: see registry.py."""
from typing import Any, Literal

from pydantic import Field, model_validator

from models.gates.registry import GateConfig, register_gate

ENTROPY_SCHEDULES = ("constant", "linear", "delayed")


@register_gate(layer="models.gates.dselect_k.DSelectKGate")
class DSelectKGateConfig(GateConfig):
    type: Literal["dselect_k"]
    k: int = Field(2, ge=1)
    gamma: float = Field(1.0, gt=0)
    per_example: bool = False
    entropy_weight: float = Field(1e-3, ge=0)
    entropy_schedule: Literal[ENTROPY_SCHEDULES] = "constant"
    entropy_warmup_steps: int = Field(0, ge=0)
    # After the warm-up the weight doubles every this many training steps (0 = never), up to 2^20 times:
    # the regularizer then outweighs the data loss on the selectors, which end binary within the run
    # whatever weight the schedule started from (see DSelectKGate.current_entropy_weight). On by default:
    # the gate's defining property is that it ends k-sparse. (The layer's own default, 0, is the paper's
    # formula as published.)
    entropy_doubling_steps: int = Field(100, ge=0)
    unreachable_weight: float = Field(1.0, ge=0)
    # Robust selection (models/gates/restarts.py, dselect_k_permutation.py): off by default. Steps
    # count from the end of the entropy warm-up (0 for the constant schedule), when selectors lock.
    restarts: int = Field(1, ge=1)                  # selector initialisations tried; the best by training loss is kept
    restart_steps: int = Field(0, ge=0)             # steps each one trains after the warm-up
    permutation_start: int = Field(0, ge=0)         # steps after the warm-up at which the permutation search starts
    permutation_steps: int = Field(0, ge=0)         # its length (0 = no search); its last step folds it in
    permutation_temperature: float = Field(0.2, gt=0)  # Sinkhorn temperature at the start (annealed to 1%)

    @model_validator(mode="after")
    def _robust_options_fit(self):
        if self.restarts > 1 and self.restart_steps == 0:
            raise ValueError(f"restarts={self.restarts} needs restart_steps > 0 (the steps each initialisation trains)")
        if self.permutation_steps and self.per_example:
            raise ValueError("permutation_steps > 0 needs per_example: false (the search permutes a static "
                             "gate's experts; a per-example gate has no one selection to move)")
        return self

    search_parameters = {"gamma": "float", "entropy_weight": "float", "entropy_schedule": "categorical",
                         "entropy_warmup_steps": "int", "entropy_doubling_steps": "int"}

    @classmethod
    def search_space(cls, trial: Any, context: dict) -> dict:
        """gamma and the entropy weight on log scales, the entropy schedule, for the linear and
        delayed schedules the warm-up (up to half of the training steps), and the doubling period of
        the entropy weight (log scale, 1/64 to 1/16 of the training steps): always on, and at least 16
        doublings (x65,536) fit in a run, so that the selectors become binary within it also in the
        seeds the tuner did not try (a period of 1/8 left 1 seed of 10 at 86% binary in the synthetic
        study). A trial whose evaluated epoch is not converged is infeasible (pipeline/tuning/studies.py)."""
        steps = int(context["steps_per_epoch"]) * int(context["epochs"])
        params = {"gamma": trial.suggest_float("gamma", 0.1, 10.0, log=True),
                  "entropy_weight": trial.suggest_float("entropy_weight", 1e-4, 10.0, log=True),
                  "entropy_schedule": trial.suggest_categorical("entropy_schedule", list(ENTROPY_SCHEDULES))}
        if params["entropy_schedule"] != "constant":
            params["entropy_warmup_steps"] = trial.suggest_int("entropy_warmup_steps", 0, steps // 2)
        params["entropy_doubling_steps"] = trial.suggest_int(
            "entropy_doubling_steps", max(1, steps // 64), max(2, steps // 16), log=True)
        return params

"""The settings of the DSelect-k gate, models/gates/dselect_k.py. No TensorFlow: see registry.py."""
from typing import Literal

from pydantic import Field

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
    unreachable_weight: float = Field(1.0, ge=0)

    @classmethod
    def search_space(cls, trial, context):
        """gamma and the entropy weight on log scales, the entropy schedule, and for the linear and
        delayed schedules the warm-up: up to half of the training steps."""
        params = {"gamma": trial.suggest_float("gamma", 0.1, 10.0, log=True),
                  "entropy_weight": trial.suggest_float("entropy_weight", 1e-4, 10.0, log=True),
                  "entropy_schedule": trial.suggest_categorical("entropy_schedule", list(ENTROPY_SCHEDULES))}
        if params["entropy_schedule"] != "constant":
            steps = int(context["steps_per_epoch"]) * int(context["epochs"])
            params["entropy_warmup_steps"] = trial.suggest_int("entropy_warmup_steps", 0, steps // 2)
        return params

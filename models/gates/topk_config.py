"""The settings of the noisy Top-k gate, models/gates/topk.py. No TensorFlow: see registry.py."""
from typing import Any, Literal

from pydantic import Field

from models.gates.registry import GateConfig, register_gate


@register_gate(layer="models.gates.topk.TopKGate")
class TopKGateConfig(GateConfig):
    type: Literal["topk"]
    k: int = Field(2, ge=1)
    per_example: bool = True
    noise: bool = True
    load_balance_weight: float = Field(0.0, ge=0)

    search_parameters = {"load_balance": "categorical", "noise": "categorical", "load_balance_weight": "float"}

    @classmethod
    def search_space(cls, trial: Any, context: dict) -> dict:
        """Noise on or off; load balancing off, or a weight on a log scale in [1e-4, 1]."""
        balance = trial.suggest_categorical("load_balance", [False, True])
        return {"noise": trial.suggest_categorical("noise", [True, False]),
                "load_balance_weight": trial.suggest_float("load_balance_weight", 1e-4, 1.0, log=True)
                if balance else 0.0}

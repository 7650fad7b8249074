"""Restarts of DSelect-k's selectors: several initialisations trained briefly, the best by training loss kept.

A DSelect-k selector that has locked onto an expert has zero gradient, so where it locks depends
on where it started. Restarts give the selection several starts: every candidate begins from
the same model and optimizer state, except that candidate 0 keeps the gates' selectors as
they are and candidate r >= 1 redraws them (DSelectKGate.reinitialize_selectors, seeded by
(seed, r)). Each trains the same steps (`restart_plan`); the candidate with the lowest training loss (the data
loss, without the gates' regularizers) is kept -- its weights AND optimizer state -- and
training goes on from there. The validation data is never read.

The gates ask for it with their `restarts` and `restart_steps` settings (DSelectKGateConfig);
the training loop runs it before its first step: `best_of_restarts` for any loop, `keras_restarts`
for a compiled Keras model (pipeline/stages/train.py).
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import tensorflow as tf

from models.gates.base import Gate


def restart_plan(gates: Sequence[Gate]) -> tuple[list, int, int]:
    """(the gates that ask for restarts, how many candidates, steps each): the largest asked for
    (Gate.restart_plan; DSelect-k's candidates train through its entropy warm-up and restart_steps more)."""
    plans = {gate: gate.restart_plan() for gate in gates}
    asking = [gate for gate, (candidates, _) in plans.items() if candidates > 1]
    if not asking:
        return [], 1, 0
    return asking, max(plans[g][0] for g in asking), max(plans[g][1] for g in asking)


def best_of_restarts(variables: Sequence[tf.Variable], gates: Sequence[Gate],
                     train_briefly: Callable[[], Sequence[float]],
                     restarts: int, seed: int, groups: int = 1) -> np.ndarray:
    """Train `restarts` selector initialisations from one state and keep, per group, the best.

    Args:
      variables: everything the brief training changes -- the model's variables and the
        optimizer's -- restored to their starting values before every candidate.
      gates: the DSelect-k gates whose selectors each candidate r >= 1 redraws.
      train_briefly: trains the candidate for the planned steps and returns its training loss,
        one value per group ([groups]).
      restarts: number of candidates (candidate 0 keeps the current selectors).
      seed: seeds the redraws: candidate r draws with (seed, r).
      groups: independent models laid out group-major on the leading axis of every variable that
        has one (the synthetic study's replicas); each group keeps its own best candidate. A
        variable without such an axis (a scalar, e.g. a step counter) is the same in every candidate.
    Returns:
      The training losses, [restarts, groups].
    """
    start = [v.numpy() for v in variables]
    best, best_loss, losses = None, np.full(groups, np.inf), []
    for candidate in range(restarts):
        if candidate:
            for variable, value in zip(variables, start):
                variable.assign(value)
            for gate in gates:
                gate.reinitialize_selectors((seed, candidate))
        loss = np.asarray(train_briefly(), dtype=np.float64).reshape(groups)
        losses.append(loss)
        better = loss < best_loss  # NaN never wins
        if best is None:
            best = [v.numpy() for v in variables]
        elif better.any():
            best = [_pick(old, v.numpy(), better) for old, v in zip(best, variables)]
        best_loss = np.where(better, loss, best_loss)
    for variable, value in zip(variables, best):
        variable.assign(value)
    return np.stack(losses)


def _pick(old: np.ndarray, new: np.ndarray, better: np.ndarray) -> np.ndarray:
    """`new` in the groups where `better`, else `old` (groups split the leading axis)."""
    groups = better.size
    if old.ndim == 0 or old.shape[0] % groups:
        return new  # no group axis: equal in every candidate
    mask = np.repeat(better, old.shape[0] // groups).reshape((-1,) + (1,) * (old.ndim - 1))
    return np.where(mask, new, old)


def keras_restarts(model: tf.keras.Model, make_dataset: Callable, seed: int,
                   log: Callable[[str], None] = lambda message: None) -> np.ndarray | None:
    """`best_of_restarts` for a compiled Keras model (the recommender), if any of its gates asks.

    Each candidate runs `model.fit` on a fresh `make_dataset(steps_per_epoch, epochs)` (so every
    candidate sees the same batches, and the caller's own training dataset is not touched) for the
    planned steps, in two halves (epochs=2), and is scored by the training loss ("loss", the data
    loss) of the second half. Call it before the model's first fit, not when resuming one (the kept
    state is then in the checkpoint).
    Returns the losses [restarts, 1], or None if no gate asks for restarts.
    """
    gates, restarts, steps = restart_plan([m for m in model.submodules if isinstance(m, Gate)])
    if not gates:
        return None
    half = max(1, steps // 2)

    def train_briefly():
        history = model.fit(make_dataset(half, 2), epochs=2, steps_per_epoch=half, verbose=0)
        return [history.history["loss"][-1]]

    if not model.optimizer.variables:  # the optimizer makes its slots on its first step: make them now
        model.optimizer.build(model.trainable_variables)
    variables = [*model.variables, *model.optimizer.variables]
    losses = best_of_restarts(variables, gates, train_briefly, restarts, seed)
    log(f"{restarts} selector initialisations x {2 * half} steps, training loss "
        f"{', '.join(f'{v:.4f}' for v in losses[:, 0])}: kept #{int(np.nanargmin(losses[:, 0]))}")
    return losses

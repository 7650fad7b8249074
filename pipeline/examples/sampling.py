"""Sampling items a user never interacted with, among items that existed at the time.

An item "exists" at time t once anybody has interacted with it at or before t. Sampling
a negative for an interaction at t only among items existing at t keeps the negatives
plausible: an item released after t would be told apart by its release year alone, which
would inflate every metric without teaching the model anything.
"""
from __future__ import annotations

import numpy as np
from collections.abc import Sequence
from typing import Any

_ROUNDS = 64  # rejection-sampling rounds before falling back to an exact draw
# Streams of per-user randomness: one per purpose, so changing one never shifts another.
STREAM = {"train": 1, "validation": 2, "test": 3, "candidates": 4, "user_sample": 5,
          "negatives": 6, "split": 7}  # the last two: the random split (pipeline/examples/random_split.py)


def user_rng(seed: Any, user_id: int, purpose: str) -> np.random.Generator:
    """The generator of one user's draws for one purpose: the same under any runner or order."""
    return np.random.default_rng([seed, user_id & 0xFFFFFFFF, user_id >> 32, STREAM[purpose]])


class Catalog:
    """Items sorted by first interaction time, with cumulative train counts for popularity."""

    def __init__(self, first_seen: dict[int, int], train_counts: dict[int, int]):
        order = sorted(first_seen, key=lambda item: (first_seen[item], item))
        self.items = np.array(order, dtype=np.int64)
        self.first_seen = np.array([first_seen[i] for i in order], dtype=np.int64)
        self.cumulative_counts = np.cumsum([train_counts.get(i, 0) for i in order]).astype(np.float64)

    def __len__(self):
        return len(self.items)

    def available(self, timestamps: Sequence[int], seen: int = 0, wanted: int = 1) -> np.ndarray:
        """How many catalog items (a prefix) to sample from at each timestamp.

        The items that existed then; when fewer than `wanted` of them are new to a user who has
        seen `seen` items (early in the data), the prefix grows to the next-earliest items
        until `wanted` new ones are guaranteed, so lists keep their size.
        """
        existed = np.searchsorted(self.first_seen, np.asarray(timestamps), side="right")
        return np.maximum(existed, min(len(self.items), seen + wanted))

    def sample(self, rng: np.random.Generator, limits: np.ndarray, interacted: set[int], distribution: str,
               distinct: bool = False) -> np.ndarray:
        """One item per entry of `limits` from the first `limit` items, never one in `interacted`.

        distribution "uniform" or "popularity" (train counts). With distinct=True no item is
        returned twice. An entry that cannot be filled (the user has seen every available
        item) is -1.
        """
        limits = np.asarray(limits, dtype=np.int64)
        seen = np.asarray(sorted(interacted), dtype=np.int64)
        picked = np.full(len(limits), -1, dtype=np.int64)
        todo = np.arange(len(limits))
        for _ in range(_ROUNDS):
            if not len(todo):
                break
            draws = self._draw(rng, limits[todo], distribution)
            ok = ~np.isin(draws, seen)
            if distinct:
                ok &= ~np.isin(draws, picked)
                ok &= _first_occurrence(draws)
            picked[todo[ok]] = draws[ok]
            todo = todo[~ok]
        for i in todo:  # rare: the available items are nearly all seen; draw exactly
            allowed = np.setdiff1d(self.items[: limits[i]], np.concatenate([seen, picked[picked >= 0]]))
            if len(allowed):
                picked[i] = rng.choice(allowed)
        return picked

    def _draw(self, rng, limits, distribution):
        limits = np.maximum(limits, 1)
        uniform = self.items[(rng.random(len(limits)) * limits).astype(np.int64)]
        if distribution != "popularity":
            return uniform
        # Inverse-CDF draw over the available prefix; a prefix with no train counts is uniform.
        totals = self.cumulative_counts[limits - 1]
        positions = np.searchsorted(self.cumulative_counts, rng.random(len(limits)) * totals, side="right")
        return np.where(totals > 0, self.items[np.minimum(positions, limits - 1)], uniform)


def _first_occurrence(values) -> np.ndarray:
    """True at the first occurrence of each value."""
    _, first = np.unique(values, return_index=True)
    mask = np.zeros(len(values), dtype=bool)
    mask[first] = True
    return mask

"""Tuning helpers shared by `mtlrec tune` and the synthetic study: Optuna studies and search spaces."""

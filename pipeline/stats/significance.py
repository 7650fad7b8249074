"""Significance of gate comparisons: a seed-aware test over training seeds and users, and Holm.

`mtlrec compare` trains each variant with S seeds and evaluates every run on the same test
users, so a variant is a table x[seed, user] of per-user metric values. Two variants differ
by more than their true difference for two reasons: which seeds trained them, and which
users are in the test set. Averaging over seeds and testing over users (a Wilcoxon signed-rank
test, the old procedure, kept in tests/test_significance.py to measure it) sees only the second,
so its p-values are far too small.

`seed_aware_test` estimates the variance of the mean difference D = mean(a) - mean(b) from
both sources. The model, per variant v, seed s and user u:
    x[v, s, u] = mu_v + user_u + interaction[v, u] + seed[v, s] + noise[v, s, u]
Users are paired between the variants (user_u cancels in D); seeds are not (seed 0 of A and
seed 0 of B are unrelated models). With seeds and users both random draws,
    Var(D) = Var(a per-seed mean) / S_a + Var(b per-seed mean) / S_b + Var(interaction diff) / U,
a per-seed mean (a run's mean over users) already holding noise / U. Estimated by the method
of moments on balanced data (users with a value in every run of both variants):
    seed part: sample variance of a's per-seed means / S_a, plus the same for b;
    user part: (sample variance over users of the seed-averaged difference
                - residual mean square of a / S_a - that of b / S_b) / U,
the subtraction removing the run noise the seed part already counts (the residual, seed x
user, mean square has (S-1)(U-1) degrees of freedom, so it is precise). A negative user part
is set to 0.
The interval is D +- sqrt((t_seeds * se_seeds)**2 + (t_users * se_users)**2): each part's
t quantile at its own Welch-Satterthwaite degrees of freedom (S-1 to 2(S-1) for seeds, ~U for
users), never narrower than either part's own interval; the p-value is the alpha whose
interval just reaches 0. It is conservative (rates below). Rejected alternatives, measured
in the same simulation at S = 3: one t on the Satterthwaite degrees of freedom of the whole
sum is right at 0.05 but liberal in the tails (x1.4 the nominal rate at 0.01, x2.4 at
0.0025, levels Holm needs over ~20 comparisons), as its degrees of freedom grow exactly
when the seed variance is underestimated; a percentile bootstrap over seeds and users sees
10 seed resamples and shrinks the seed variance by (S-1)/S: ~9% false positives at 0.05.

Assumptions: seeds are exchangeable draws (none cherry-picked) and per-seed means are
roughly normal, which 3 seeds cannot check; the test users are a sample of the users the
conclusion is about.

What 3 seeds can and cannot show (simulation of tests/test_significance.py: 650 users,
per-user std 0.3, seed effect std 0.004 on a run's mean, run noise std 0.04 per user,
variant x user interaction std 0.03):
  - false positives at alpha 0.05: 3.7% at S = 3, 4.2% at S = 5 (1000 replications), and
    below nominal at every level down to 0.001 (20000 replications); the old Wilcoxon
    procedure: 29% and 24%. The 95% interval covers a true difference 97.5% / 96% of the time;
  - the smallest difference found with 80% power is ~0.016 at S = 3 (~5% of an NDCG@10 of
    0.3) and ~0.010 at S = 5 (~3%); differences of 0.3-1% are out of reach of both;
  - "3 of 3 seeds agree in sign" happens with probability 1/4 when the variants are equal:
    sign agreement alone is weak evidence, the confidence interval is the finding.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import optimize, special


def _runs_table(x, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or 0 in x.shape:
        raise ValueError(f"{name} must be a 2-D array [seeds, users] of per-user values; got shape {x.shape}")
    if np.isinf(x).any():
        raise ValueError(f"{name} holds infinite values; per-user metrics must be finite, or NaN when missing")
    return x


def _residual_mean_square(x: np.ndarray) -> float:
    """Seed x user interaction mean square of x [S, U]: the run-level noise, (S-1)(U-1) dof."""
    residual = x - x.mean(axis=1, keepdims=True) - x.mean(axis=0, keepdims=True) + x.mean()  # [S, U]
    return float((residual ** 2).sum() / ((x.shape[0] - 1) * (x.shape[1] - 1)))


def seed_aware_test(a: np.ndarray, b: np.ndarray, confidence: float = 0.95) -> dict:
    """Variant A vs variant B over training seeds and users (model in the module docstring).

    Args:
      a: per-user values of variant A, [S_a, U]: one row per training seed, one column per
        test user. NaN marks a user without a value in that run.
      b: the same for variant B, [S_b, U], with the same users in the same column order.
        Seeds are not paired with a's.
      confidence: level of the confidence interval of the mean difference.

    Returns a dict:
      mean_diff: mean over seeds and users of a minus that of b (kept users only);
      ci_low, ci_high: its interval at `confidence`; p_value: two-sided, for "no difference"
        (p-values below 1e-15 are reported as 1e-15);
      se: standard error of mean_diff, se**2 = var_seeds + var_users, the seed and user
        parts, with their Welch-Satterthwaite degrees of freedom df_seeds, df_users;
      mean_a, mean_b, relative_diff = mean_diff / |mean_b| (NaN if mean_b is 0);
      n_seeds_a, n_seeds_b, n_users (kept: a value in every run of both variants),
        n_users_dropped;
      sign_agree: in how many seed indices i < sign_pairs = min(S_a, S_b) the sign of
        (mean of a's run i - mean of b's run i) equals the sign of mean_diff;
      seed_variance_estimable: False when a variant has a single seed. Its seed variance
        is then unknown, so p_value, the interval, se, the variance parts and their degrees
        of freedom are NaN rather than a falsely confident value from users alone.
    When the estimated variance is 0 (every run and user shifted by the same amount),
    p_value is 1 if mean_diff is 0 and 0 otherwise, and the interval is [mean_diff, mean_diff].

    Raises:
      ValueError: a or b not 2-D, different numbers of users, an infinite value, fewer than
        2 users with a value in every run, or confidence outside (0, 1).
    """
    a, b = _runs_table(a, "a"), _runs_table(b, "b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a and b must hold the same users (columns); got {a.shape[1]} and {b.shape[1]} users")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1); got {confidence}")
    kept = ~(np.isnan(a).any(axis=0) | np.isnan(b).any(axis=0))  # [U]
    a, b = a[:, kept], b[:, kept]
    n_seeds_a, n_seeds_b, n_users = a.shape[0], b.shape[0], a.shape[1]
    if n_users < 2:
        raise ValueError(f"{n_users} user(s) have a value in every run of both variants; at least 2 are needed")
    seed_means_a, seed_means_b = a.mean(axis=1), b.mean(axis=1)  # [S_a], [S_b]
    mean_a, mean_b = float(seed_means_a.mean()), float(seed_means_b.mean())
    mean_diff = mean_a - mean_b
    pairs = min(n_seeds_a, n_seeds_b)
    signs = np.sign(seed_means_a[:pairs] - seed_means_b[:pairs])  # [pairs]
    out = {
        "mean_diff": mean_diff, "ci_low": float("nan"), "ci_high": float("nan"), "confidence": confidence,
        "p_value": float("nan"), "se": float("nan"), "var_seeds": float("nan"), "var_users": float("nan"),
        "df_seeds": float("nan"), "df_users": float("nan"),
        "mean_a": mean_a, "mean_b": mean_b,
        "relative_diff": mean_diff / abs(mean_b) if mean_b != 0 else float("nan"),
        "n_seeds_a": n_seeds_a, "n_seeds_b": n_seeds_b, "n_users": n_users,
        "n_users_dropped": int(kept.size - n_users),
        "sign_agree": int((signs == np.sign(mean_diff)).sum()), "sign_pairs": pairs,
        "seed_variance_estimable": pairs >= 2,
    }
    if pairs < 2:
        return out

    seed_terms = [(seed_means_a.var(ddof=1) / n_seeds_a, n_seeds_a - 1),  # (variance, its dof)
                  (seed_means_b.var(ddof=1) / n_seeds_b, n_seeds_b - 1)]
    user_diff = a.mean(axis=0) - b.mean(axis=0)  # [U], seed-averaged paired difference
    user_terms = [(user_diff.var(ddof=1) / n_users, n_users - 1),
                  (-_residual_mean_square(a) / (n_seeds_a * n_users), (n_seeds_a - 1) * (n_users - 1)),
                  (-_residual_mean_square(b) / (n_seeds_b * n_users), (n_seeds_b - 1) * (n_users - 1))]
    var_seeds, df_seeds = _satterthwaite(seed_terms)
    var_users, df_users = _satterthwaite(user_terms)
    var_users = max(var_users, 0.0)  # the noise correction can overshoot when users barely differ
    out.update(var_seeds=var_seeds, var_users=var_users, df_seeds=df_seeds, df_users=df_users,
               se=float(np.sqrt(var_seeds + var_users)))

    # Below rounding noise of the data's scale the variance is 0, not a tiny positive number.
    scale = max(np.abs(a).max(), np.abs(b).max(), 1e-300)
    if out["se"] <= 1e-12 * scale:
        zero_diff = abs(mean_diff) <= 1e-12 * scale
        out.update(se=0.0, p_value=1.0 if zero_diff else 0.0, ci_low=mean_diff, ci_high=mean_diff)
        return out

    def half_width(alpha: float) -> float:
        """Each part's standard error times its own t quantile, added in quadrature."""
        parts = [special.stdtrit(dof, alpha / 2) ** 2 * var  # stdtrit: lower-tail t quantile
                 for var, dof in ((var_seeds, df_seeds), (var_users, df_users)) if var > 0]
        return float(np.sqrt(sum(parts)))

    width = half_width(1 - confidence)
    out.update(ci_low=mean_diff - width, ci_high=mean_diff + width, p_value=_p_value(abs(mean_diff), half_width))
    return out


def _satterthwaite(terms: list[tuple[float, int]]) -> tuple[float, float]:
    """Sum of variance terms and its Welch-Satterthwaite degrees of freedom (inf if all are 0),
    at least the fewest degrees of freedom of a nonzero term. With positive terms the formula
    never goes below that; a negative term (the user part's noise corrections) can drive it
    towards 0 when the corrections nearly cancel the paired variance, and a t quantile at 0.1
    degrees of freedom turned a 0.008 difference into an interval of +-6 million (KuaiRand's
    like task, 88 users with a like in their test list)."""
    total = float(sum(v for v, _ in terms))
    spread = sum(v ** 2 / dof for v, dof in terms)
    if not (spread > 0 and total > 0):
        return total, float("inf")
    return total, max(float(total ** 2 / spread), float(min(dof for v, dof in terms if v != 0)))


def _p_value(distance: float, half_width, smallest: float = 1e-15) -> float:
    """The alpha whose two-sided interval half_width(alpha) just reaches distance (>= 0).

    Below `smallest` the precision of the t quantiles ends; such p-values are reported as it.
    """
    if half_width(smallest) < distance:
        return smallest
    gap = lambda log_alpha: half_width(np.exp(log_alpha)) - distance  # noqa: E731, decreasing in alpha
    return float(np.exp(optimize.brentq(gap, np.log(smallest), 0.0, xtol=1e-10)))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input order.

    The i-th smallest of m p-values is scaled by (m - i + 1); a running maximum keeps
    the adjusted values monotone in the raw ones, and they are capped at 1. A NaN p-value
    (a comparison that could not be tested, e.g. one seed) stays NaN and is not counted in
    m: it can reject nothing, so it takes no share of the error rate.
    """
    p = np.asarray(p_values, dtype=np.float64)
    tested = ~np.isnan(p)
    if p.ndim != 1 or not ((p[tested] >= 0) & (p[tested] <= 1)).all():
        raise ValueError(f"p_values must be a flat sequence of numbers in [0, 1] or NaN; got {p_values!r}")
    m = int(tested.sum())
    order = np.flatnonzero(tested)[np.argsort(p[tested], kind="stable")]
    scaled = np.minimum(1.0, np.maximum.accumulate(p[order] * (m - np.arange(m))))
    adjusted = np.full(p.size, np.nan)
    adjusted[order] = scaled
    return adjusted.tolist()

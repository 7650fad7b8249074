"""Significance tests: the seed-aware test against a loop implementation, hand cases, a
two-level bootstrap and a false-positive simulation against the old procedure (paired_wilcoxon,
here; checked against scipy); Holm by hand."""
import math

import numpy as np
import pytest
from scipy import special, stats

from pipeline.stats.significance import holm, seed_aware_test


def paired_wilcoxon(a, b) -> dict:
    """Two-sided Wilcoxon signed-rank test of per-user metrics a vs b: compare's old procedure
    (on seed-averaged values), kept here to show how often it errs, as it ignores the variance
    between training seeds (pipeline/stats/significance.py); `seed_aware_test` replaced it.
    Only users with a value (non-NaN) in both arrays are paired; zero differences
    are dropped (zero_method="wilcox"). When every difference is zero there is no
    evidence either way, so p_value is 1.0 instead of scipy's error.
    relative_diff = (mean(a) - mean(b)) / |mean(b)| over the paired users.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"a and b must be 1-D per-user arrays of one length; got {a.shape}, {b.shape}")
    both = ~(np.isnan(a) | np.isnan(b))
    a, b = a[both], b[both]
    if a.size == 0:
        raise ValueError("no user has a value in both a and b")
    diff = a - b
    if not diff.any():
        statistic, p_value = 0.0, 1.0
    else:
        result = stats.wilcoxon(a, b, zero_method="wilcox", alternative="two-sided")
        statistic, p_value = float(result.statistic), float(result.pvalue)
    mean_b = float(b.mean())
    return {
        "statistic": statistic,
        "p_value": p_value,
        "n_users": int(a.size),
        "mean_diff": float(diff.mean()),
        "relative_diff": float(a.mean() - mean_b) / abs(mean_b) if mean_b != 0 else float("nan"),
    }


def test_wilcoxon_matches_scipy_on_users_present_in_both():
    rng = np.random.default_rng(0)
    a = rng.random(80)
    b = a - 0.05 + 0.1 * rng.random(80)
    b[:5] = a[:5]  # zero differences, dropped by zero_method="wilcox"
    a[10:13] = np.nan
    b[20:22] = np.nan
    both = ~(np.isnan(a) | np.isnan(b))
    ref = stats.wilcoxon(a[both], b[both], zero_method="wilcox", alternative="two-sided")
    out = paired_wilcoxon(a, b)
    assert out["n_users"] == 75
    assert out["statistic"] == pytest.approx(ref.statistic)
    assert out["p_value"] == pytest.approx(ref.pvalue)
    assert 0 < out["p_value"] < 1
    assert out["mean_diff"] == pytest.approx(np.mean(a[both] - b[both]))
    assert out["relative_diff"] == pytest.approx((a[both].mean() - b[both].mean()) / b[both].mean())


def test_wilcoxon_by_hand():
    # Differences a - b = 0.2, 0.4, 0.2, -0.1 (user 4 missing in b, so dropped).
    # mean(a) = 0.5, mean(b) = 0.325 -> relative_diff = 0.175 / 0.325.
    a = [0.5, 0.6, 0.3, 0.6, 0.9]
    b = [0.3, 0.2, 0.1, 0.7, np.nan]
    out = paired_wilcoxon(a, b)
    assert out["n_users"] == 4
    assert out["mean_diff"] == pytest.approx(0.175)
    assert out["relative_diff"] == pytest.approx(0.175 / 0.325)
    # The only negative difference, -0.1, has the smallest |d|, so rank 1: T = min(R+, R-) = 1.
    assert out["statistic"] == pytest.approx(1.0)


def test_wilcoxon_identical_inputs_give_p_one():
    a = np.array([0.1, 0.5, np.nan, 0.7])
    out = paired_wilcoxon(a, a.copy())
    assert out == {"statistic": 0.0, "p_value": 1.0, "n_users": 3, "mean_diff": 0.0, "relative_diff": 0.0}


def test_relative_diff_against_zero_baseline_is_nan():
    out = paired_wilcoxon([0.1, 0.2, 0.3], [0.0, 0.0, 0.0])
    assert np.isnan(out["relative_diff"])
    assert out["mean_diff"] == pytest.approx(0.2)


@pytest.mark.parametrize(
    "a, b",
    [([0.1, 0.2], [0.1, 0.2, 0.3]), ([np.nan, 0.2], [0.1, np.nan])],
)
def test_wilcoxon_rejects_unpaired_input(a, b):
    with pytest.raises(ValueError):
        paired_wilcoxon(a, b)


def test_holm_by_hand():
    # Sorted: 0.005 (x4) = 0.02, 0.01 (x3) = 0.03, 0.03 (x2) = 0.06, 0.04 (x1) = 0.04 -> 0.06
    # by the running maximum. Back in input order:
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])


def test_holm_caps_at_one_and_keeps_order():
    # 0.3 (x2) = 0.6, 0.5 (x1) = 0.5 -> 0.6; 0.6 (x2) = 1.2 -> capped at 1.
    assert holm([0.5, 0.3]) == pytest.approx([0.6, 0.6])
    assert holm([0.7, 0.6]) == [1.0, 1.0]
    assert holm([0.2]) == [0.2]
    assert holm([]) == []


def test_holm_leaves_untested_comparisons_out():
    # NaN (no seed variance, so no test) stays NaN and does not count in m: as holm([0.01, 0.04]).
    assert holm([0.01, np.nan, 0.04]) == pytest.approx([0.02, np.nan, 0.04], nan_ok=True)
    assert np.isnan(holm([np.nan])).all()


@pytest.mark.parametrize("p_values", [[0.1, -0.2], [0.1, 1.5], [[0.1, 0.2]]])
def test_holm_rejects_bad_input(p_values):
    with pytest.raises(ValueError):
        holm(p_values)


def _loop_reference(a, b, confidence):
    """The estimator of pipeline/stats/significance.py's docstring written out with plain loops."""
    a, b = [list(row) for row in a], [list(row) for row in b]
    users = [u for u in range(len(a[0])) if not any(math.isnan(row[u]) for row in a + b)]
    n_users = len(users)

    def mean(xs):
        return sum(xs) / len(xs)

    def sample_var(xs):
        return sum((x - mean(xs)) ** 2 for x in xs) / (len(xs) - 1)

    def residual_mean_square(x):
        rows = [mean([run[u] for u in users]) for run in x]
        cols = {u: mean([run[u] for run in x]) for u in users}
        grand = mean(rows)
        total = sum((run[u] - rows[s] - cols[u] + grand) ** 2 for s, run in enumerate(x) for u in users)
        return total / ((len(x) - 1) * (n_users - 1))

    def satterthwaite(terms):  # never fewer degrees of freedom than its least-informed term
        total = sum(v for v, _ in terms)
        return total, max(total ** 2 / sum(v ** 2 / dof for v, dof in terms), min(dof for v, dof in terms if v))

    seed_means_a = [mean([run[u] for u in users]) for run in a]
    seed_means_b = [mean([run[u] for u in users]) for run in b]
    user_diff = [mean([run[u] for run in a]) - mean([run[u] for run in b]) for u in users]
    var_seeds, df_seeds = satterthwaite([(sample_var(seed_means_a) / len(a), len(a) - 1),
                                         (sample_var(seed_means_b) / len(b), len(b) - 1)])
    var_users, df_users = satterthwaite([
        (sample_var(user_diff) / n_users, n_users - 1),
        (-residual_mean_square(a) / (len(a) * n_users), (len(a) - 1) * (n_users - 1)),
        (-residual_mean_square(b) / (len(b) * n_users), (len(b) - 1) * (n_users - 1))])
    assert var_users > 0, "the case must exercise the user part"

    def half_width(alpha):
        return math.sqrt(stats.t.ppf(1 - alpha / 2, df_seeds) ** 2 * var_seeds
                         + stats.t.ppf(1 - alpha / 2, df_users) ** 2 * var_users)

    mean_diff = mean(seed_means_a) - mean(seed_means_b)
    low, high = math.log(1e-12), 0.0  # bisection on log(alpha): half_width falls as alpha grows
    for _ in range(100):
        mid = (low + high) / 2
        low, high = (mid, high) if half_width(math.exp(mid)) > abs(mean_diff) else (low, mid)
    return {"mean_diff": mean_diff, "var_seeds": var_seeds, "var_users": var_users, "df_seeds": df_seeds,
            "df_users": df_users, "se": math.sqrt(var_seeds + var_users), "n_users": n_users,
            "ci_low": mean_diff - half_width(1 - confidence), "ci_high": mean_diff + half_width(1 - confidence),
            "p_value": math.exp(low), "mean_b": mean(seed_means_b)}


def test_seed_aware_matches_a_loop_implementation():
    rng = np.random.default_rng(3)
    interaction = rng.normal(0, 0.3, (2, 9))  # large, so the user part stays positive
    a = 0.5 + interaction[0] + rng.normal(0, 0.05, (3, 1)) + rng.normal(0, 0.1, (3, 9))
    b = 0.4 + interaction[1] + rng.normal(0, 0.05, (4, 1)) + rng.normal(0, 0.1, (4, 9))
    a[1, 2] = np.nan
    b[3, 6] = np.nan
    ref = _loop_reference(a, b, confidence=0.9)
    out = seed_aware_test(a, b, confidence=0.9)
    for key in ("mean_diff", "var_seeds", "var_users", "df_seeds", "df_users", "se", "ci_low", "ci_high"):
        assert out[key] == pytest.approx(ref[key], rel=1e-9), key
    assert out["p_value"] == pytest.approx(ref["p_value"], rel=1e-6)
    assert 0 < out["p_value"] < 1
    assert (out["n_users"], out["n_users_dropped"], out["n_seeds_a"], out["n_seeds_b"]) == (7, 2, 3, 4)
    assert out["relative_diff"] == pytest.approx(ref["mean_diff"] / abs(ref["mean_b"]))
    assert out["seed_variance_estimable"] and out["sign_pairs"] == 3


def test_seed_aware_by_hand_seed_part_only():
    # a's runs: seed means 2 and 4 (variance 2, / 2 seeds = 1); b's runs are identical (0).
    # Users: a's seed-averaged values 2, 4 minus b's 0, 2 = 2, 2: no user variance, no residual.
    # D = 3 - 1 = 2, se = 1 on 1 dof (a Cauchy): p = 1 - 2 atan(2) / pi, CI 2 +- tan(0.475 pi).
    a = [[1.0, 3.0], [3.0, 5.0]]
    b = [[0.0, 2.0], [0.0, 2.0]]
    out = seed_aware_test(a, b)
    assert out["mean_diff"] == pytest.approx(2.0)
    assert (out["var_seeds"], out["var_users"], out["df_seeds"]) == pytest.approx((1.0, 0.0, 1.0))
    assert out["p_value"] == pytest.approx(1 - 2 * math.atan(2) / math.pi)
    assert out["ci_low"] == pytest.approx(2 - math.tan(0.475 * math.pi))
    assert out["ci_high"] == pytest.approx(2 + math.tan(0.475 * math.pi))
    assert out["relative_diff"] == pytest.approx(2.0)
    assert (out["sign_agree"], out["sign_pairs"]) == (2, 2)  # 2 - 1 and 4 - 1, both > 0


def test_seed_aware_by_hand_user_part_only():
    # Both seeds of each variant are identical runs: no seed variance, no run noise. The
    # differences per user are 1, 2, 6 (user 4 has no value in b's second run: dropped).
    # D = 3, var_users = var(1, 2, 6) / 3 = 7 / 3 on 2 dof; with t = 3 / sqrt(7/3) the t(2)
    # two-sided tail is 1 - t / sqrt(t**2 + 2).
    a = [[1.0, 2.0, 6.0, 9.0], [1.0, 2.0, 6.0, 9.0]]
    b = [[0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, np.nan]]
    out = seed_aware_test(a, b)
    t = 3 / math.sqrt(7 / 3)
    assert (out["n_users"], out["n_users_dropped"]) == (3, 1)
    assert (out["mean_diff"], out["var_seeds"], out["var_users"]) == pytest.approx((3.0, 0.0, 7 / 3))
    assert out["df_users"] == pytest.approx(2.0)
    assert out["p_value"] == pytest.approx(1 - t / math.sqrt(t ** 2 + 2))
    assert np.isnan(out["relative_diff"])  # b's mean is 0


def test_seed_aware_one_seed_gives_no_p_value():
    rng = np.random.default_rng(0)
    a, b = rng.random((1, 50)), rng.random((3, 50))
    for x, y in ((a, b), (b, a), (a, a + 0.5)):
        out = seed_aware_test(x, y)
        assert not out["seed_variance_estimable"]
        assert all(np.isnan(out[k]) for k in ("p_value", "ci_low", "ci_high", "se", "var_seeds"))
        assert out["mean_diff"] == pytest.approx(x.mean() - y.mean())
        assert out["sign_pairs"] == 1


def test_seed_aware_zero_variance():
    a = np.tile([0.2, 0.4, 0.9], (3, 1))
    same = seed_aware_test(a, a.copy())
    assert (same["mean_diff"], same["p_value"], same["se"], same["ci_low"], same["ci_high"]) == (0, 1, 0, 0, 0)
    shifted = seed_aware_test(a + 0.1, a)  # every run and user exactly 0.1 better
    assert shifted["mean_diff"] == pytest.approx(0.1)
    assert (shifted["p_value"], shifted["se"]) == (0.0, 0.0)
    assert shifted["ci_low"] == shifted["ci_high"] == pytest.approx(0.1)


@pytest.mark.parametrize("a, b, match", [
    (np.zeros(5), np.zeros((2, 5)), r"a must be a 2-D array \[seeds, users\]"),
    (np.zeros((2, 5)), np.zeros((2, 5, 1)), r"b must be a 2-D array"),
    (np.zeros((2, 0)), np.zeros((2, 0)), r"a must be a 2-D array"),
    (np.zeros((2, 5)), np.zeros((2, 4)), r"same users \(columns\); got 5 and 4"),
    (np.full((2, 3), np.inf), np.zeros((2, 3)), r"a holds infinite values"),
    (np.array([[0.1, np.nan], [0.2, 0.3]]), np.zeros((2, 2)), r"1 user\(s\) have a value in every run"),
])
def test_seed_aware_rejects_bad_input(a, b, match):
    with pytest.raises(ValueError, match=match):
        seed_aware_test(a, b)
    with pytest.raises(ValueError, match="confidence"):
        seed_aware_test(np.zeros((2, 3)), np.zeros((2, 3)), confidence=95)


def _simulate(rng, reps, seeds, diff=0.0, users=650, seed_std=0.004, noise_std=0.04, interaction_std=0.03):
    """x[rep, variant, seed, user] = mu + user_u + interaction[v, u] + seed[v, s] + noise[v, s, u].

    Variant 0 is better by diff. Scales as measured on NDCG@10: per-user values with std ~0.3,
    per-seed means that differ by ~0.003-0.006 between seeds (seed_std and noise_std / sqrt(U)).
    """
    x = (0.3 + rng.normal(0, 0.3, (reps, 1, 1, users))
         + rng.normal(0, interaction_std, (reps, 2, 1, users))
         + rng.normal(0, seed_std, (reps, 2, seeds, 1))
         + rng.normal(0, noise_std, (reps, 2, seeds, users)))  # [reps, 2, seeds, users]
    x[:, 0] += diff
    return x


def _two_level_bootstrap_se(a, b, rng, resamples):
    """Resample a's seeds, b's seeds and the users (the same users for both: they are paired).

    Multinomial counts are the resampling weights: the mean of a resampled table is
    counts_seeds @ a @ counts_users / (S * U).
    """
    weights_a = rng.multinomial(len(a), np.full(len(a), 1 / len(a)), size=resamples) / len(a)  # [R, S_a]
    weights_b = rng.multinomial(len(b), np.full(len(b), 1 / len(b)), size=resamples) / len(b)  # [R, S_b]
    users = a.shape[1]
    weights_u = rng.multinomial(users, np.full(users, 1 / users), size=resamples) / users  # [R, U]
    diffs = np.einsum("rs,su,ru->r", weights_a, a, weights_u) - np.einsum("rs,su,ru->r", weights_b, b, weights_u)
    return diffs.std(ddof=1)


def test_seed_aware_se_agrees_with_a_two_level_bootstrap_when_seeds_are_many():
    # With 40 seeds the bootstrap is reliable. Crossing seeds and users, it counts the run
    # noise twice more than the unbiased estimate (McCullagh 2000), ~2.5% of the se here.
    rng = np.random.default_rng(1)
    for _ in range(2):
        x = _simulate(rng, 1, seeds=40)[0]  # [2, 40, 650]
        out = seed_aware_test(x[0], x[1])
        assert _two_level_bootstrap_se(x[0], x[1], rng, resamples=4000) / out["se"] == pytest.approx(1.0, abs=0.05)


def _run_seed_aware(x):
    results = [seed_aware_test(rep[0], rep[1]) for rep in x]
    return {k: np.array([r[k] for r in results]) for k in ("p_value", "ci_low", "ci_high", "se", "mean_diff")}


@pytest.mark.parametrize("seeds", [3, 5])
def test_false_positive_rate_of_seed_aware_and_old_tests(seeds):
    # Variants equal in expectation, 1000 replications. Figures in the module docstring.
    x = _simulate(np.random.default_rng(seeds), 1000, seeds)
    new = _run_seed_aware(x)
    assert (new["p_value"] < 0.05).mean() <= 0.07
    # The variance the test assumes is the variance mean_diff shows over replications.
    assert np.mean(new["se"] ** 2) == pytest.approx(new["mean_diff"].var(), rel=0.15)
    # The old procedure (seeds averaged per user, then Wilcoxon over users) fails: seed
    # variance is not in it. Here it calls ~25-30% of these comparisons significant.
    old = np.array([paired_wilcoxon(rep[0].mean(axis=0), rep[1].mean(axis=0))["p_value"] for rep in x])
    assert (old < 0.05).mean() > 0.15


@pytest.mark.parametrize("seeds", [3, 5])
def test_confidence_interval_covers_a_true_difference(seeds):
    x = _simulate(np.random.default_rng(10 + seeds), 1000, seeds, diff=0.01)
    new = _run_seed_aware(x)
    coverage = ((new["ci_low"] <= 0.01) & (0.01 <= new["ci_high"])).mean()
    assert 0.93 <= coverage <= 0.99  # at least 95% up to Monte Carlo slack, and not uselessly wide


def test_power_for_a_difference_large_against_seed_noise():
    # 0.025 is ~6 seed stds of a per-seed mean: 3 seeds find it nearly every time.
    x = _simulate(np.random.default_rng(20), 300, 3, diff=0.025)
    new = _run_seed_aware(x)
    assert (new["p_value"] < 0.05).mean() >= 0.9
    assert (new["ci_low"] > 0).mean() >= 0.9  # and with the right sign


def test_seed_aware_interval_stays_finite_when_noise_corrections_cancel_the_user_part():
    """Users that do not differ beyond each run's noise: the user part's corrections nearly
    cancel its paired variance. Its degrees of freedom stay those of its terms, so the
    interval is at most a t quantile at the seed part's 2+ degrees of freedom times the se
    (the formula alone gave 0.1 degrees of freedom and an interval of +-10^6 on real runs)."""
    rng = np.random.default_rng(5)
    worst = 0.0
    for _ in range(200):
        a = 0.6 + rng.normal(0, 0.004, (3, 1))[:, [0] * 90] + rng.normal(0, 0.3, (3, 90))
        b = 0.6 + rng.normal(0, 0.004, (3, 1))[:, [0] * 90] + rng.normal(0, 0.3, (3, 90))
        result = seed_aware_test(a, b)
        assert result["df_users"] >= 89
        worst = max(worst, (result["ci_high"] - result["mean_diff"]) / result["se"])
    assert worst <= special.stdtrit(2, 0.975) + 1e-9

"""Paired Wilcoxon against scipy directly, and Holm against hand-worked examples."""
import numpy as np
import pytest
from scipy import stats

from pipeline.significance import holm, paired_wilcoxon


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


@pytest.mark.parametrize("p_values", [[0.1, np.nan], [0.1, 1.5], [[0.1, 0.2]]])
def test_holm_rejects_bad_input(p_values):
    with pytest.raises(ValueError):
        holm(p_values)

"""Ranking and pointwise metrics against sklearn, brute-force tie enumeration and hand-worked cases."""
import itertools
import math

import numpy as np
import pytest
from sklearn.metrics import log_loss, ndcg_score, roc_auc_score

from pipeline.stats.metrics import pointwise_metrics, ranking_metrics, regression_metrics, summarize

KS = (1, 3, 5, 20)


def random_lists(seed, num_users=60, num_cands=9, min_len=2, graded=True):
    """Padded lists with many ties (scores rounded to 1 decimal) and NaN/garbage in the padding."""
    rng = np.random.default_rng(seed)
    scores = np.round(rng.random((num_users, num_cands)), 1)
    high = 4 if graded else 2
    relevance = rng.integers(0, high, (num_users, num_cands)).astype(float)
    lengths = rng.integers(min_len, num_cands + 1, num_users)
    mask = np.arange(num_cands) < lengths[:, None]
    scores[~mask] = np.nan
    relevance[~mask] = 7.0  # must be ignored, as must the NaN scores
    return scores, relevance, mask, lengths


def brute_force(scores, relevance, k_values):
    """Expected recall@k and reciprocal rank over every score order consistent with the ties."""
    n = len(scores)
    rr, recall, count = 0.0, dict.fromkeys(k_values, 0.0), 0
    for perm in itertools.permutations(range(n)):
        if np.any(np.diff(scores[list(perm)]) > 0):
            continue  # not a descending order: not an outcome of tie-breaking
        rel = relevance[list(perm)] > 0
        rr += 1.0 / (np.argmax(rel) + 1)
        for k in k_values:
            recall[k] += rel[:k].sum() / rel.sum()
        count += 1
    return rr / count, {k: v / count for k, v in recall.items()}


def one_user(scores, relevance, ks=KS):
    out = ranking_metrics(np.array([scores], float), np.array([relevance], float),
                          np.ones((1, len(scores)), bool), ks=ks)
    return {name: value[0] for name, value in out.items()}


# ---------------------------------------------------------------- against references
@pytest.mark.parametrize("graded", [True, False])
def test_ndcg_matches_sklearn_with_ties_and_padding(graded):
    scores, relevance, mask, lengths = random_lists(0, graded=graded)
    out = ranking_metrics(scores, relevance, mask, ks=KS)
    checked = 0
    for u, n in enumerate(lengths):
        if (relevance[u, :n] == 0).all():
            continue
        for k in KS:
            ref = ndcg_score(relevance[u, :n][None], scores[u, :n][None], k=k, ignore_ties=False)
            assert out[f"ndcg@{k}"][u] == pytest.approx(ref, abs=1e-12), (u, k)
        checked += 1
    assert checked > 40


def test_random_data_has_the_cases_it_claims():
    scores, relevance, mask, lengths = random_lists(0)
    tied_users = sum(len(np.unique(scores[u, :n])) < n for u, n in enumerate(lengths))
    assert tied_users > 20
    assert len(set(lengths)) > 4


def test_gauc_matches_sklearn_per_user():
    scores, relevance, mask, lengths = random_lists(1)
    gauc = ranking_metrics(scores, relevance, mask)["gauc"]
    checked = 0
    for u, n in enumerate(lengths):
        labels = relevance[u, :n] > 0
        if labels.all() or not labels.any():
            assert np.isnan(gauc[u])
        else:
            assert gauc[u] == pytest.approx(roc_auc_score(labels, scores[u, :n]), abs=1e-12)
            checked += 1
    assert checked > 40


def test_recall_and_mrr_equal_expectation_over_tie_orders():
    scores, relevance, mask, lengths = random_lists(2, num_users=40, num_cands=6)
    out = ranking_metrics(scores, relevance, mask, ks=(1, 2, 3, 5))
    checked = 0
    for u, n in enumerate(lengths):
        if (relevance[u, :n] == 0).all():
            assert np.isnan(out["mrr"][u]) and np.isnan(out["recall@3"][u])
            continue
        rr, recall = brute_force(scores[u, :n], relevance[u, :n], (1, 2, 3, 5))
        assert out["mrr"][u] == pytest.approx(rr, abs=1e-12)
        for k, value in recall.items():
            assert out[f"recall@{k}"][u] == pytest.approx(value, abs=1e-12), (u, k)
        checked += 1
    assert checked > 25


def test_metrics_do_not_depend_on_candidate_order():
    """Tied items are averaged over, so shuffling the candidates changes nothing."""
    scores, relevance, mask, _ = random_lists(3)
    before = ranking_metrics(scores, relevance, mask)
    perm = np.random.default_rng(0).permuted(np.tile(np.arange(scores.shape[1]), (len(scores), 1)), axis=1)
    after = ranking_metrics(*(np.take_along_axis(a, perm, axis=1) for a in (scores, relevance, mask)))
    for name in before:
        np.testing.assert_allclose(after[name], before[name], rtol=0, atol=1e-12, err_msg=name)


def test_padding_is_ignored():
    """A padded candidate with the top score and relevance 1 must change nothing."""
    plain = ranking_metrics([[0.9, 0.2, 0.5]], [[0, 1, 0]], [[True, True, True]])
    padded = ranking_metrics([[0.9, 0.2, 5.0, 0.5]], [[0, 1, 1, 0]], [[True, True, False, True]])
    for name in plain:
        np.testing.assert_allclose(padded[name], plain[name], err_msg=name)
    assert plain["mrr"][0] == pytest.approx(1 / 3)


# ---------------------------------------------------------------- hand-worked cases
def test_single_positive_user():
    # The positive is ranked 3rd of 4: DCG = 1/log2(4) = 0.5, ideal DCG = 1.
    # It beats one of three negatives: gauc = 1/3.
    m = one_user([0.9, 0.8, 0.7, 0.6], [0, 0, 1, 0], ks=(2, 3, 5))
    assert m["ndcg@2"] == 0.0
    assert m["ndcg@3"] == pytest.approx(0.5)
    assert m["ndcg@5"] == pytest.approx(0.5)
    assert m["recall@2"] == 0.0
    assert m["recall@3"] == 1.0
    assert m["mrr"] == pytest.approx(1 / 3)
    assert m["gauc"] == pytest.approx(1 / 3)


def test_user_without_positive_is_nan_everywhere():
    m = one_user([0.9, 0.1, 0.5], [0, 0, 0])
    assert len(m) == 2 * len(KS) + 2
    assert all(np.isnan(v) for v in m.values())


def test_user_with_only_positives_has_nan_gauc():
    # Equal gains, so every order is ideal: ndcg = mrr = 1; recall@k = min(k, 3) / 3.
    m = one_user([0.3, 0.3, 0.9], [1, 1, 1], ks=(1, 5))
    assert np.isnan(m["gauc"])
    assert m["ndcg@1"] == pytest.approx(1.0) and m["ndcg@5"] == pytest.approx(1.0)
    assert m["mrr"] == 1.0
    assert m["recall@1"] == pytest.approx(1 / 3)
    assert m["recall@5"] == 1.0


def test_graded_relevance_by_hand():
    # Order by score: rel 0, rel 1, rel 3. DCG = 1/log2(3) + 3/log2(4); ideal = 3 + 1/log2(3).
    m = one_user([0.1, 0.9, 0.5], [3, 0, 1], ks=(3,))
    expected = (1 / math.log2(3) + 3 / 2) / (3 + 1 / math.log2(3))
    assert m["ndcg@3"] == pytest.approx(expected)
    assert m["mrr"] == pytest.approx(0.5)


def test_tie_straddling_the_recall_cutoff():
    # Ranks: 1 = negative (0.9); ranks 2..4 = a three-way tie (0.5) holding one positive;
    # rank 5 = the other positive (0.1). Top 2 holds the tied positive with probability 1/3,
    # so the expected count is 1/3 of 2 relevant: recall@2 = 1/6. The whole tie is in the top 4.
    # NDCG@2: the tied positive's expected discount is (1/log2(3) + 0 + 0) / 3.
    m = one_user([0.9, 0.5, 0.5, 0.5, 0.1], [0, 1, 0, 0, 1], ks=(2, 4, 5))
    assert m["recall@2"] == pytest.approx(1 / 6)
    assert m["recall@4"] == pytest.approx(1 / 2)
    assert m["recall@5"] == pytest.approx(1.0)
    assert m["ndcg@2"] == pytest.approx((1 / math.log2(3) / 3) / (1 + 1 / math.log2(3)))


@pytest.mark.parametrize(
    "scores, relevance, expected",
    [
        # Positive tied with one negative at the top: rank 1 or 2, RR = (1 + 1/2) / 2.
        ([0.8, 0.8, 0.3], [1, 0, 0], 0.75),
        # One better negative, then the positive uniform over ranks 2..4.
        ([0.9, 0.5, 0.5, 0.5], [0, 1, 0, 0], (1 / 2 + 1 / 3 + 1 / 4) / 3),
        # Two positives among three tied at the top: first relevant at rank 1 w.p. 2/3, else 2.
        ([0.5, 0.5, 0.5, 0.1], [1, 0, 1, 1], 2 / 3 + (1 / 3) / 2),
    ],
)
def test_mrr_with_ties(scores, relevance, expected):
    assert one_user(scores, relevance)["mrr"] == pytest.approx(expected)


def test_gauc_tie_counts_half():
    # Positive vs tied negative = 1/2, vs the lower negative = 1: gauc = 0.75.
    assert one_user([0.8, 0.8, 0.3], [1, 0, 0])["gauc"] == pytest.approx(0.75)


@pytest.mark.parametrize(
    "scores, relevance, mask, ks",
    [
        ([[0.1, np.nan]], [[1, 0]], [[True, True]], (5,)),  # NaN score on a real candidate
        ([[0.1, 0.2]], [[1, -1]], [[True, True]], (5,)),  # negative gain
        ([[0.1, 0.2]], [[1, 0, 0]], [[True, True]], (5,)),  # shapes differ
        ([[0.1, 0.2]], [[1, 0]], [[True, True]], (0,)),  # k must be >= 1
    ],
)
def test_ranking_metrics_rejects_bad_input(scores, relevance, mask, ks):
    with pytest.raises(ValueError):
        ranking_metrics(scores, relevance, mask, ks=ks)


# ---------------------------------------------------------------- pointwise and regression
def test_pointwise_matches_sklearn_with_ties_and_weights():
    rng = np.random.default_rng(4)
    # Rounded to 1 decimal for ties; kept in [0.1, 0.9] so no clipping convention matters.
    scores = np.round(rng.uniform(0.1, 0.9, 500), 1)
    labels = (rng.random(500) < 0.3).astype(float)
    weights = rng.uniform(0, 2, 500)
    out = pointwise_metrics(scores, labels)
    assert out["auc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert out["logloss"] == pytest.approx(log_loss(labels, scores, labels=[0, 1]), abs=1e-12)
    weighted = pointwise_metrics(scores.reshape(50, 10), labels.reshape(50, 10), weights.reshape(50, 10))
    assert weighted["auc"] == pytest.approx(roc_auc_score(labels, scores, sample_weight=weights), abs=1e-12)
    assert weighted["logloss"] == pytest.approx(
        log_loss(labels, scores, sample_weight=weights, labels=[0, 1]), abs=1e-12)


def test_pointwise_by_hand():
    # Pairs (pos, neg): (0.8, 0.8) tie = 1/2, (0.8, 0.2) = 1 -> auc 0.75.
    # A zero-weight row (e.g. padding) counts for nothing.
    out = pointwise_metrics([0.8, 0.8, 0.2, 0.99], [1, 0, 0, 0], weights=[1, 1, 1, 0])
    assert out["auc"] == pytest.approx(0.75)
    assert out["logloss"] == pytest.approx(-(math.log(0.8) + math.log(0.2) + math.log(0.8)) / 3)


def test_logloss_clips_probabilities():
    # p = 0 for a positive would be infinite loss; clipped to 1e-7 it is -log(1e-7).
    out = pointwise_metrics([0.0, 1.0], [1, 1])
    assert out["logloss"] == pytest.approx(-(math.log(1e-7) + math.log(1 - 1e-7)) / 2)
    assert np.isnan(out["auc"])  # a single class has no AUC


@pytest.mark.parametrize(
    "scores, labels",
    [([0.5, 1.5], [0, 1]), ([0.5, 0.4], [0, 2]), ([0.5], [0, 1])],
)
def test_pointwise_rejects_bad_input(scores, labels):
    with pytest.raises(ValueError):
        pointwise_metrics(scores, labels)


def test_regression_metrics():
    # User 0: errors 1, -3 -> rmse sqrt(5), mae 2. User 1: no rows -> NaN. The padding
    # (NaN target, large error) is ignored.
    pred = [[4.0, 2.0, 9.0], [3.0, 3.0, 3.0]]
    target = [[3.0, 5.0, np.nan], [1.0, 1.0, 1.0]]
    mask = [[True, True, False], [False, False, False]]
    out = regression_metrics(pred, target, mask)
    assert out["rmse"][0] == pytest.approx(math.sqrt(5))
    assert out["mae"][0] == pytest.approx(2.0)
    assert np.isnan(out["rmse"][1]) and np.isnan(out["mae"][1])


def test_regression_metrics_random_against_loop():
    rng = np.random.default_rng(5)
    pred, target = rng.normal(size=(30, 7)), rng.normal(size=(30, 7))
    mask = rng.random((30, 7)) < 0.6
    out = regression_metrics(pred, target, mask)
    for u in range(30):
        err = pred[u, mask[u]] - target[u, mask[u]]
        if err.size:
            assert out["rmse"][u] == pytest.approx(np.sqrt(np.mean(err**2)))
            assert out["mae"][u] == pytest.approx(np.mean(np.abs(err)))
        else:
            assert np.isnan(out["rmse"][u])


def test_summarize():
    out = summarize({"mrr": np.array([1.0, np.nan, 0.5]), "gauc": np.array([np.nan, np.nan])})
    assert out["mrr"] == {"mean": 0.75, "n_users": 2}
    assert np.isnan(out["gauc"]["mean"]) and out["gauc"]["n_users"] == 0

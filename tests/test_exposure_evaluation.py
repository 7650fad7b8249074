"""Evaluation of exposure data (KuaiRand): per task GAUC (unweighted mean over users and
impression-weighted, as in the DIN paper), pooled AUC and log loss, NDCG@K over each user's
impressions; against hand cases and scikit-learn."""
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import log_loss, mean_squared_error, ndcg_score, roc_auc_score

from features.datasets.kuairand import KUAIRAND
from pipeline.stages.evaluate import evaluation
from pipeline.stats.metrics import weighted_mean

LABELS = list(KUAIRAND.label_columns)


def _frame(users, labels: dict, predictions: dict) -> pd.DataFrame:
    n = len(users)
    columns = {"user_id": np.asarray(users), **{c: np.zeros(n) for c in LABELS}}
    columns.update({k: np.asarray(v, float) for k, v in labels.items()})
    columns.update({f"pred_{k}": np.asarray(v, float) for k, v in predictions.items()})
    return pd.DataFrame(columns)


def test_weighted_gauc_hand_case():
    # User 7: the positive above both negatives (AUC 1, 3 impressions). User 8: of the 4
    # positive/negative pairs only 0.4 > 0.3 is ordered right (AUC 1/4, 4 impressions). User 9:
    # no positive, no GAUC. Unweighted: (1 + 1/4) / 2; weighted: (3 * 1 + 4 * 1/4) / 7.
    frame = _frame([7, 7, 7, 8, 8, 8, 8, 9, 9], {"click": [1, 0, 0, 0, 1, 0, 1, 0, 0]},
                   {"click": [0.9, 0.5, 0.1, 0.8, 0.4, 0.3, 0.2, 0.6, 0.7]})
    result, per_user = evaluation(frame, KUAIRAND)
    click = result["tasks"]["click"]
    assert click["per_user"]["gauc"] == {"mean": pytest.approx(0.625), "n_users": 2}
    assert click["pooled"]["gauc_weighted"] == pytest.approx(4 / 7)
    assert per_user.set_index("user_id")["click/gauc"].tolist()[:2] == pytest.approx([1.0, 0.25])
    assert np.isnan(per_user.set_index("user_id").loc[9, "click/gauc"])
    assert weighted_mean([0.5, 1.0, np.nan], [2, 6, 10]) == pytest.approx((2 * 0.5 + 6 * 1.0) / 8)
    assert np.isnan(weighted_mean([np.nan], [3]))
    with pytest.raises(ValueError, match="weights"):
        weighted_mean([0.5], [-1])


def test_exposure_metrics_against_sklearn():
    rng = np.random.default_rng(0)
    sizes = rng.integers(2, 16, 40)
    users = np.repeat(np.arange(100, 140), sizes)
    n = len(users)
    labels = {"click": rng.random(n) < 0.35, "like": rng.random(n) < 0.08,
              "play_time": np.round(rng.gamma(2.0, 1.0, n), 3)}
    predictions = {"click": rng.random(n), "like": rng.random(n) * 0.2, "play_time": rng.normal(2, 1, n)}
    frame = _frame(users, labels, predictions).sample(frac=1.0, random_state=1)  # rows in any order
    result, per_user = evaluation(frame, KUAIRAND)
    per_user = per_user.set_index("user_id")
    for task in ("click", "like"):
        aucs, weights, ndcgs = [], [], []
        for user, rows in frame.groupby("user_id"):
            if rows[task].nunique() == 2:
                aucs.append(roc_auc_score(rows[task], rows[f"pred_{task}"]))
                weights.append(len(rows))
                assert per_user.loc[user, f"{task}/gauc"] == pytest.approx(aucs[-1], abs=1e-12)
            if rows[task].sum() > 0:
                ndcgs.append(ndcg_score([rows[task]], [rows[f"pred_{task}"]], k=10))
        values = result["tasks"][task]
        assert values["per_user"]["gauc"]["mean"] == pytest.approx(np.mean(aucs), abs=1e-12)
        assert values["per_user"]["gauc"]["n_users"] == len(aucs) > 5
        assert values["pooled"]["gauc_weighted"] == pytest.approx(np.average(aucs, weights=weights), abs=1e-12)
        assert values["pooled"]["auc"] == pytest.approx(roc_auc_score(frame[task], frame[f"pred_{task}"]), abs=1e-12)
        assert values["pooled"]["logloss"] == pytest.approx(log_loss(frame[task], frame[f"pred_{task}"]), rel=1e-6)
        assert values["per_user"]["ndcg@10"]["mean"] == pytest.approx(np.mean(ndcgs), abs=1e-9)
    # play_time (regression, no weight column): NDCG with relevance = the label over every impression, RMSE.
    ndcgs = [ndcg_score([rows.play_time], [rows.pred_play_time], k=10) for _, rows in frame.groupby("user_id")]
    play = result["tasks"]["play_time"]
    assert play["per_user"]["ndcg@10"]["mean"] == pytest.approx(np.mean(ndcgs), abs=1e-9)
    assert play["pooled"]["pooled_rmse"] == pytest.approx(
        np.sqrt(mean_squared_error(frame.play_time, frame.pred_play_time)), rel=1e-9)
    assert result["users"] == 40 and result["candidates"] == n

"""Adding a metric: one defined in this file, registered at run time, is computed by `mtlrec evaluate`,
may be named in `compare.test_metrics` (a misspelt one is refused when the config loads, before any
training), and appears with its direction in the compare report."""
import json

import numpy as np
import pandas as pd
import pytest

from conftest import copy_run
from pipeline.config import ConfigError, load_config, with_overrides
from pipeline.stats.registry import (
    METRICS, Metric, all_ks, label, lower_is_better, metric_of, per_user_names, register_metric, table_columns)


def hit_at(lists, k):
    """1 if one of the k best-scored candidates is relevant (ties in list order), NaN without a relevant one."""
    relevance = np.where(lists.mask, lists.relevance, 0.0)
    order = np.argsort(-np.where(lists.mask, lists.scores, -np.inf), axis=1, kind="stable")[:, :k]
    hit = (np.take_along_axis(relevance, order, axis=1) > 0).any(axis=1)
    return np.where((relevance > 0).any(axis=1), hit.astype(float), np.nan)


HIT = Metric("hit", "Hit", False, ("binary",), True, hit_at, ks=(1, 3), table={"binary": (3,)})


@pytest.fixture
def hit():
    register_metric(HIT)
    yield
    METRICS.pop("hit", None)  # no other test sees it


def test_a_registered_metric_is_known_with_its_direction_and_ks(hit):
    assert metric_of("hit@3") is HIT and not lower_is_better("hit@1") and label("hit@3") == "Hit@3"
    assert all_ks() == (1, 3, 5, 10, 20)
    assert per_user_names("binary")[:4] == ["hit@1", "hit@3", "ndcg@5", "recall@5"]  # interleaved by k
    assert "hit@3" not in per_user_names("regression")
    assert table_columns("binary", ["hit@1", "hit@3", "mrr"]) == ["mrr", "hit@3"]
    config = load_config(None, ["compare.test_metrics={watch: [hit@3], rating: [rmse]}"])
    assert config.compare.test_metrics["watch"] == ["hit@3"]


def test_misspelt_or_unknown_metrics_are_refused_when_the_config_loads(hit):
    for override, message in [
        ("compare.test_metrics={watch: [hit@4]}", "compare.test_metrics.watch: 'hit@4' is not a per-user metric"),
        ("compare.test_metrics={rating: [hit@3]}", "compare.test_metrics.rating: 'hit@3' is not a per-user metric "
                                                   "of a regression task"),
        ("compare.test_metrics={watch: [ndcg]}", "compare.test_metrics.watch: 'ndcg' is not a per-user metric"),
        ("compare.test_metrics={watch: [auc]}", "'auc' is not a per-user metric"),  # pooled: one value, no test
    ]:
        with pytest.raises(ConfigError, match=message):
            load_config(None, [override])
    with pytest.raises(ValueError, match="unknown metric 'nope'"):
        lower_is_better("nope")  # no silent "higher is better" for a name the registry does not know
    with pytest.raises(ValueError, match="'hit' is already registered"):
        register_metric(HIT)


def test_an_unregistered_metric_is_refused(hit):
    del METRICS["hit"]
    with pytest.raises(ConfigError, match="'hit@3' is not a per-user metric"):
        load_config(None, ["compare.test_metrics={watch: [hit@3]}"])


@pytest.mark.slow
def test_the_toy_metric_runs_through_evaluate_and_the_compare_report(tiny_run, tmp_path, hit):
    from pipeline.artifacts.runs import data_dir_of_run, read_config, read_train_summary
    from pipeline.cli import main
    from pipeline.reports.compare import write_report
    runs = {}
    first = copy_run(tiny_run, "hit")
    assert main(["evaluate", "--run", str(first)]) == 0
    evaluation = json.loads((first / "eval.json").read_text())
    watch = evaluation["tasks"]["watch"]["per_user"]
    assert list(watch)[:4] == ["hit@1", "hit@3", "ndcg@5", "recall@5"] and evaluation["ks"] == [1, 3, 5, 10, 20]
    assert "hit@1" not in evaluation["tasks"]["rating"]["per_user"]
    users = pd.read_csv(first / "eval_users.csv")
    assert (users["watch/hit@3"].dropna() >= users["watch/hit@1"].dropna()).all()
    assert watch["hit@3"]["mean"] == pytest.approx(users["watch/hit@3"].mean())
    # Two "variants" (copies of the run): the report tests and tabulates the metric.
    second = copy_run(first, "hit")
    config = load_config(None, [f"workdir={tmp_path}", "compare.variants={a: {}, b: {}}", "compare.focus=[a]",
                                "compare.seeds=[0]", "compare.test_metrics={watch: [hit@3]}"])
    for name, run_dir in (("a", first), ("b", second)):
        # The tiny run's 4 steps are too few for DSelect-k's selectors to become binary, and the report
        # leaves unconverged runs out of its tests (docs/SPARSITY.md); this test is about the metric.
        summary_file = run_dir / "train.json"
        summary_file.write_text(json.dumps({**json.loads(summary_file.read_text()), "converged": True}))
        runs[name, 0] = with_overrides(read_config(run_dir), {"train": {"run_dir": str(run_dir)}})
    data_dir = data_dir_of_run(str(first), read_train_summary(str(first)))
    output = write_report(config, runs, data_dir, str(tmp_path / "report"))
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    [test] = summary["significance"]
    assert (test["metric"], test["lower_is_better"], test["mean_diff"]) == ("hit@3", False, 0.0)
    assert "Hit@3 ↑" in (tmp_path / "report" / "report.md").read_text() and output == str(tmp_path / "report")

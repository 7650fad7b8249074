"""Evaluation and the gate comparison, end to end on small data."""
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.metrics import ndcg_score, roc_auc_score

from conftest import EMBEDDED_OVERRIDES
from fixtures import ratings, read_split, write_ml1m
from processes import foreign_lines, user_env
from pipeline import cli
from pipeline.artifacts.atomic import ArtifactError
from pipeline.config import load_config

MTLREC = Path(sys.executable).parent / "mtlrec"
PAPER = Path(__file__).resolve().parents[1] / "configs" / "movielens_1m_paper.yaml"
FAST = ["train.epochs=1", "train.steps_per_epoch=10", "train.batch_size=256", "train.diagnostics_batches=1",
        "model.expert_units=[16]", "model.tower_units=[8]", "model.num_experts=4", "model.id_embedding_dim=8"]
# DSelect-k with a narrow band (gamma 0.02: Adam crosses it in ~5 steps) and an entropy weight doubling
# every step: its selectors become binary within the 10 steps, so its runs count as DSelect-k at k=2.
TWO_GATES = ("compare.variants={softmax: {model: {gate: {type: softmax}}}, "
             "dselect_k_static: {model: {gate: {type: dselect_k, k: 2, gamma: 0.02, entropy_weight: 1, "
             "entropy_doubling_steps: 1}}}}")


def _compare_sets(workdir, data_dir, *overrides) -> list[str]:
    return [f"workdir={workdir}", f"data.output={data_dir}", *EMBEDDED_OVERRIDES, *FAST, TWO_GATES,
            "compare.focus=[dselect_k_static]", "compare.seeds=[0, 1]", *overrides]


def _compare_config(workdir, data_dir, *overrides):
    return load_config(None, _compare_sets(workdir, data_dir, *overrides))


def _mtlrec_compare(workdir, data_dir) -> tuple[bytes, str]:
    """`mtlrec compare` as a user runs it, in a fresh process and the user's environment: its summary.json
    and its stderr."""
    sets = sum([["--set", o] for o in _compare_sets(workdir, data_dir)], [])
    result = subprocess.run([str(MTLREC), "compare", *sets], capture_output=True, text=True, timeout=1800,
                            env=user_env())
    assert result.returncode == 0, result.stderr[-3000:]
    return (workdir / "report" / "summary.json").read_bytes(), result.stderr


def config_of(config, variant, seed):
    from pipeline.stages.compare import run_configs
    from pipeline.artifacts.runs import data_dir_of
    return run_configs(config, data_dir_of(config))[variant, seed].model_dump(mode="json")


# The summary.json and stderr of the `compared` fixture's fresh-process compare, before any test touched its workdir.
FIRST_SUMMARY, FIRST_STDERR = "first-summary.json", "first-stderr.txt"


@pytest.fixture(scope="module")
def compared(embedded_data, tmp_path_factory):
    """A finished compare, run in a fresh process (a run in this worker could depend on the tests it ran
    before); tests that write into its workdir leave its runs' results as they were."""
    data_dir, _ = embedded_data
    workdir = tmp_path_factory.mktemp("compare")
    summary, stderr = _mtlrec_compare(workdir, data_dir)
    (workdir.parent / f"{workdir.name}-{FIRST_SUMMARY}").write_bytes(summary)
    (workdir.parent / f"{workdir.name}-{FIRST_STDERR}").write_text(stderr)
    return _compare_config(workdir, data_dir), workdir, workdir / "report"


def _hand_made_users(rng, shift: dict, seeds=3, users=80):
    """variant -> per seed an eval_users frame (rows shuffled), and variant -> column -> [seeds, users]."""
    ids = np.arange(1000, 1000 + users)
    base = {"watch/ndcg@10": rng.uniform(0.2, 0.8, users), "rating/rmse": rng.uniform(0.5, 1.5, users)}
    frames, arrays = {}, {}
    for variant, offsets in shift.items():
        arrays[variant] = {c: np.stack([base[c] + offsets.get(c, 0.0) + rng.normal(0, 0.002)  # seed effect
                                        + rng.normal(0, 0.02, users) for _ in range(seeds)]) for c in base}
        frames[variant] = [pd.DataFrame({"user_id": ids, **{c: arrays[variant][c][s] for c in base}})
                           .sample(frac=1.0, random_state=int(rng.integers(1 << 30))).set_index("user_id")
                           for s in range(seeds)]
    return ids, frames, arrays


def test_significance_table_on_hand_made_per_user_values():
    from pipeline.reports.compare_results import significance_table
    from pipeline.stats.significance import seed_aware_test
    rng = np.random.default_rng(7)
    ids, frames, arrays = _hand_made_users(rng, {
        "dselect_k": {"watch/ndcg@10": 0.03, "rating/rmse": -0.05}, "softmax": {}, "topk": {}})
    # User 1003 is missing from one softmax run; user 1010 has no value in one dselect_k run.
    frames["softmax"][1] = frames["softmax"][1].drop(index=1003)
    frames["dselect_k"][2].loc[1010, "watch/ndcg@10"] = np.nan
    tests = significance_table(frames, ["dselect_k"], {"watch": ["ndcg@10"], "rating": ["rmse"]})
    assert [(t["baseline"], t["task"], t["metric"]) for t in tests] == [
        ("softmax", "watch", "ndcg@10"), ("softmax", "rating", "rmse"),
        ("topk", "watch", "ndcg@10"), ("topk", "rating", "rmse")]
    for t in tests:
        column = f"{t['task']}/{t['metric']}"
        # Independently: the generating arrays, without the users some run of the pair lacks.
        missing = ({1003} if t["baseline"] == "softmax" else set()) | ({1010} if t["task"] == "watch" else set())
        kept = ~np.isin(ids, list(missing))
        a, b = arrays["dselect_k"][column][:, kept], arrays[t["baseline"]][column][:, kept]
        assert t["n_users"] == kept.sum() and t["n_users_dropped"] == len(missing)
        assert t["mean_diff"] == pytest.approx(a.mean() - b.mean(), abs=1e-12)
        assert t["relative_diff"] == pytest.approx((a.mean() - b.mean()) / b.mean(), abs=1e-12)
        assert t["focus_mean"] == pytest.approx(a.mean()) and t["baseline_mean"] == pytest.approx(b.mean())
        expected = seed_aware_test(a, b)
        assert (t["ci_low"], t["p_value"]) == pytest.approx((expected["ci_low"], expected["p_value"]), rel=1e-9)
        true_shift = 0.03 if t["metric"] == "ndcg@10" else -0.05
        assert t["ci_low"] < true_shift < t["ci_high"]
        assert t["sign_agree"] == t["sign_pairs"] == 3
        assert t["significant"] and t["better"] == "focus"  # higher NDCG, lower RMSE
        assert t["lower_is_better"] == (t["metric"] == "rmse")
    # Holm over the 4 rows, checked by hand.
    p = np.array([t["p_value"] for t in tests])
    order = np.argsort(p)
    expected = np.minimum(1, np.maximum.accumulate(p[order] * (4 - np.arange(4))))
    np.testing.assert_allclose([tests[i]["p_holm"] for i in order], expected)


def test_significance_table_keeps_equal_variants_equal_and_names_missing_metrics():
    from pipeline.reports.compare_results import significance_table
    rng = np.random.default_rng(8)
    _, frames, _ = _hand_made_users(rng, {"dselect_k": {}, "softmax": {}, "dselect_k_per_example": {}}, seeds=2)
    # Two focus variants: their pair is tested once; nothing differs, so nothing is significant.
    tests = significance_table(frames, ["dselect_k", "dselect_k_per_example"], {"watch": ["ndcg@10"]})
    assert [(t["focus"], t["baseline"]) for t in tests] == [
        ("dselect_k", "softmax"), ("dselect_k", "dselect_k_per_example"), ("dselect_k_per_example", "softmax")]
    assert not any(t["significant"] for t in tests) and all(t["better"] is None for t in tests)
    assert all(0 <= t["p_value"] <= t["p_holm"] <= 1 for t in tests)
    with pytest.raises(ValueError, match="'watch/ndcg@11'"):
        significance_table(frames, ["dselect_k"], {"watch": ["ndcg@11"]})


@pytest.mark.slow
def test_summary_holds_every_gate_task_metric(compared):
    config, _, report = compared
    summary = json.loads((report / "summary.json").read_text())
    assert set(summary["variants"]) == {"softmax", "dselect_k_static"}
    for variant in summary["variants"].values():
        assert set(variant["tasks"]) == {"watch", "rating", "like"}
        for task, expected in [("watch", ["ndcg@5", "ndcg@10", "ndcg@20", "recall@10", "mrr", "gauc", "auc",
                                          "logloss"]),
                               ("like", ["ndcg@10", "gauc", "auc", "logloss"]),
                               ("rating", ["ndcg@10", "rmse", "mae", "pooled_rmse"])]:
            for metric in expected:
                stats = variant["tasks"][task][metric]
                assert stats["n_seeds"] == 2 and np.isfinite(stats["mean"]) and stats["std"] >= 0
        assert list(variant["gates"]) == ["watch", "rating", "like"]  # config order
        for task, gate in variant["gates"].items():  # one value per seed, never a mean over seeds
            assert len(gate["nonzero_experts"]) == len(gate["experts_used"]) == len(gate["weights"]) == 2
            assert all(1 <= n <= 4 for n in gate["nonzero_experts"])
            assert all(len(w) == 4 and sum(w) == pytest.approx(1, abs=1e-4) for w in gate["weights"])
    assert len(summary["variants"]["dselect_k_static"]["gates"]["watch"]["binary_selectors"]) == 2
    tests = summary["significance"]
    assert {(t["task"], t["metric"]) for t in tests} == {("watch", "ndcg@10"), ("rating", "ndcg@10"),
                                                         ("rating", "rmse"), ("like", "ndcg@10")}
    for t in tests:
        assert (t["focus"], t["baseline"]) == ("dselect_k_static", "softmax")
        assert 0 <= t["p_value"] <= t["p_holm"] <= 1 and t["n_users"] > 10
        assert t["ci_low"] <= t["mean_diff"] <= t["ci_high"]
        assert t["sign_pairs"] == 2 and 0 <= t["sign_agree"] <= 2
        assert t["n_seeds_focus"] == t["n_seeds_baseline"] == 2
        assert t["significant"] == (t["p_holm"] < 0.05)
        means = summary["variants"]
        assert t["mean_diff"] == pytest.approx(means["dselect_k_static"]["tasks"][t["task"]][t["metric"]]["mean"]
                                               - means["softmax"]["tasks"][t["task"]][t["metric"]]["mean"], abs=1e-9)
    assert summary["data"]["folder_in_workdir"] is None  # the shared test data lies outside this workdir


@pytest.mark.slow
def test_runs_that_did_not_converge_are_shown_but_left_out_of_the_tests(compared, tmp_path):
    """The report of the same runs, one DSelect-k seed's train.json saying its gates did not converge: that
    seed is flagged and left out of every test, with the count in the report; converged runs state the
    experts they use on the test examples."""
    import shutil
    from pipeline.stages.compare import run_configs
    from pipeline.reports.compare import write_report
    from pipeline.artifacts.runs import data_dir_of
    config, workdir, _ = compared
    summary = json.loads((workdir / "report" / "summary.json").read_text())
    static = summary["variants"]["dselect_k_static"]
    assert static["converged"] == [True, True]  # the fixture's DSelect-k converges within its 10 steps
    for gate in static["gates"].values():
        assert all(n <= 2 for n in gate["test"]["nonzero_experts"]) and all(gate["test"]["converged"])
    assert all(t["n_seeds_focus"] == 2 for t in summary["significance"])

    copy = tmp_path / "work"
    shutil.copytree(workdir, copy, ignore=shutil.ignore_patterns("*.lock"))
    moved = config.model_copy(update={"workdir": str(copy)})
    train_json = copy / "compare" / "dselect_k_static" / "seed1" / "train.json"
    train_json.write_text(json.dumps({**json.loads(train_json.read_text()), "converged": False}))
    data_dir = data_dir_of(moved)
    report = write_report(moved, run_configs(moved, data_dir), data_dir, tmp_path / "report")
    after = json.loads((report / "summary.json").read_text())
    assert after["left_out_of_tests"] == {"softmax": [], "dselect_k_static": [1]}
    assert after["variants"]["dselect_k_static"]["converged"] == [True, False]
    assert after["significance"] and all(t["n_seeds_focus"] == 1 for t in after["significance"])
    md = (report / "report.md").read_text()
    assert "Runs left out of the tests below, because their gates had not converged: 1 (dselect_k_static seed 1)" in md
    assert "dselect_k_static (NOT converged in 1/2 seeds: not k-sparse)" in md


@pytest.mark.slow
def test_report_files_and_plots(compared):
    _, _, report = compared
    md = (report / "report.md").read_text()
    html = (report / "report.html").read_text()
    for text in ("Task: watch", "Task: rating", "DSelect-k against each baseline (seed-aware test)", "p (Holm)",
                 "seeds agreeing", "difference [95% CI]", "training seeds", "What 2 seed(s) can and cannot show",
                 "Realized sparsity, per seed", "RMSE ↓", "NDCG@10 ↑", "Experts in use: the sparsity compared",
                 "watch: experts in use",
                 "Runs left out of the tests below, because their gates had not converged: 0."):
        assert text in md and text in html
    assert "**" in md and "<strong>" in html  # best values in bold
    pngs = sorted(report.glob("*.png"))
    assert {p.name for p in pngs} == {
        "differences_watch_ndcg10.png", "differences_rating_ndcg10.png", "differences_rating_rmse.png",
        "differences_like_ndcg10.png", "expert_weights_softmax.png", "expert_weights_dselect_k_static.png",
        "sparsity_per_epoch.png"}  # no bar charts from 0 any more
    for png in pngs:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"({png.name})" in md
    assert html.count("data:image/png;base64,") == len(pngs)
    assert "rating RMSE: differences with 95% confidence intervals" in md
    assert "expert weights by task, per seed" in md


@pytest.mark.slow
def test_report_has_the_test_split_table(compared):
    """The papers' metrics per variant: mean and std over seeds of each run's eval.json test_split."""
    config, workdir, report = compared
    summary = json.loads((report / "summary.json").read_text())["test_split"]
    assert list(summary) == ["softmax", "dselect_k_static"]
    for variant, entry in summary.items():
        assert entry["seeds"] == [0, 1] and entry["missing_seeds"] == []
        assert list(entry["metrics"]) == ["loss", "watch/accuracy", "watch/auc", "rating/mse", "like/accuracy",
                                          "like/auc"]
        runs = [json.loads((workdir / "compare" / variant / f"seed{s}" / "eval.json").read_text())["test_split"]
                for s in (0, 1)]
        for key, stats in entry["metrics"].items():
            task, _, metric = key.partition("/")
            values = [r["loss"] if key == "loss" else r["tasks"][task][metric] for r in runs]
            assert stats["per_seed"] == values
            assert stats["mean"] == pytest.approx(np.mean(values))
            assert stats["std"] == pytest.approx(np.std(values, ddof=1))
    md = (report / "report.md").read_text()
    assert "Test split: the papers' metrics" in md
    for header in ("test loss ↓", "watch accuracy ↑", "watch AUC ↑", "rating MSE ↓"):
        assert header in md


@pytest.mark.slow
def test_report_is_rebuilt_byte_identical(compared, tmp_path, monkeypatch):
    """write_report twice from the same finished runs, the second from another cwd: same summary.json."""
    from pipeline.stages.compare import run_configs
    from pipeline.reports.compare import write_report
    from pipeline.artifacts.runs import data_dir_of
    config, workdir, _ = compared
    data_dir = data_dir_of(config)
    first = write_report(config, run_configs(config, data_dir), data_dir, tmp_path / "one")
    monkeypatch.chdir(workdir)
    second = write_report(config, run_configs(config, data_dir), data_dir, tmp_path / "two")
    text = (first / "summary.json").read_bytes()
    assert (second / "summary.json").read_bytes() == text
    assert str(tmp_path).encode() not in text and str(workdir).encode() not in text  # no absolute paths
    for png in first.glob("*.png"):  # matplotlib's version stamp is left out, so the plots repeat too
        assert (second / png.name).read_bytes() == png.read_bytes()


@pytest.mark.slow
def test_second_compare_trains_nothing(compared):
    from pipeline.stages import compare
    config, workdir, _ = compared
    finished = {p: p.stat().st_mtime_ns for p in workdir.glob("compare/*/seed*/eval.json")}
    assert len(finished) == 4
    compare.run(config)
    assert {p: p.stat().st_mtime_ns for p in workdir.glob("compare/*/seed*/eval.json")} == finished
    assert all(p.stat().st_mtime_ns for p in workdir.glob("compare/*/seed*/train.json"))

    # A run made with other settings (as if the config had changed since) is never deleted silently:
    # compare stops before any work, naming it; with --force it is started over, alone.
    stale = workdir / "compare" / "softmax" / "seed1"
    saved = yaml.safe_load((stale / "config.yaml").read_text())
    saved["train"]["learning_rate"] *= 2
    (stale / "config.yaml").write_text(yaml.safe_dump(saved))
    with pytest.raises(ArtifactError, match=r"softmax/seed1: made with other settings; rerun with --force"):
        compare.run(config)
    assert {p: p.stat().st_mtime_ns for p in workdir.glob("compare/*/seed*/eval.json")} == finished
    compare.run(config, force=True)
    after = {p: p.stat().st_mtime_ns for p in workdir.glob("compare/*/seed*/eval.json")}
    assert {p for p in finished if after[p] != finished[p]} == {stale / "eval.json"}
    assert yaml.safe_load((stale / "config.yaml").read_text()) == config_of(config, "softmax", 1)
    # Other report settings do not invalidate finished runs.
    before = {p: p.stat().st_mtime_ns for p in workdir.glob("compare/*/seed*/eval.json")}
    compare.run(config.model_copy(update={"compare": config.compare.model_copy(update={"focus": ["softmax"]})}))
    assert {p: p.stat().st_mtime_ns for p in workdir.glob("compare/*/seed*/eval.json")} == before


@pytest.mark.slow
def test_evaluation_matches_sklearn_per_user(compared):
    """eval_users.csv against sklearn on the scored candidate lists: the grouping is right."""
    from pipeline.stages.evaluate import score_candidates
    _, workdir, _ = compared
    run_dir = workdir / "compare" / "softmax" / "seed0"
    per_user = pd.read_csv(run_dir / "eval_users.csv").set_index("user_id")
    scored = score_candidates(run_dir)
    checked = 0
    for user, rows in scored.groupby("user_id"):
        if rows.watch.nunique() < 2:
            continue
        assert per_user.loc[user, "watch/ndcg@10"] == pytest.approx(
            ndcg_score([rows.watch], [rows.pred_watch], k=10), abs=1e-9)
        assert per_user.loc[user, "watch/gauc"] == pytest.approx(roc_auc_score(rows.watch, rows.pred_watch), abs=1e-9)
        seen = rows[rows.watch == 1]
        if len(seen) > 1:
            assert per_user.loc[user, "rating/ndcg@10"] == pytest.approx(
                ndcg_score([seen.rating], [seen.pred_rating], k=10), abs=1e-6)
            assert per_user.loc[user, "rating/rmse"] == pytest.approx(
                np.sqrt(np.mean((seen.pred_rating - seen.rating) ** 2)), rel=1e-5)
        checked += 1
    assert checked > 10
    evaluation = json.loads((run_dir / "eval.json").read_text())
    assert evaluation["tasks"]["watch"]["per_user"]["ndcg@10"]["mean"] == pytest.approx(
        per_user["watch/ndcg@10"].mean())


def _assert_close(got, expected, where=""):
    """Nested results equal to 1e-5 (numbers) or exactly (the rest); JSON's null is NaN."""
    if isinstance(expected, dict):
        assert set(got) == set(expected), where
        for key in expected:
            _assert_close(got[key], expected[key], f"{where}/{key}")
    elif isinstance(expected, (float, int)) or expected is None:
        as_float = [np.nan if v is None else float(v) for v in (got, expected)]
        np.testing.assert_allclose(*as_float, atol=1e-5, rtol=0, err_msg=where)
    else:
        assert got == expected, where


@pytest.mark.slow
def test_evaluate_through_rank_equals_the_rows_scored_one_by_one(compared):
    """`mtlrec evaluate` ranks each test user's list with one `rank` call (ids only). Scoring the
    candidate rows (every raw column) with `serving_default` gives the same predictions to 1e-5
    in batches of any size, and, fed one list per call, the same bits and so the same metrics.

    (Items unknown to the train tables share every feature, so their scores tie; a 1-ulp
    difference between kernels of different batch shapes would break such ties one way or the
    other and move e.g. GAUC by ~1e-4, although no score moved by more than 1.2e-7.)
    """
    import tensorflow as tf

    from pipeline.training.dataset import split_files
    from pipeline.stages.evaluate import evaluation, score_candidates
    config, workdir, _ = compared
    run_dir = workdir / "compare" / "softmax" / "seed0"
    assert cli.main(["evaluate", "--run", str(run_dir)]) == 0
    evaluated = json.loads((run_dir / "eval.json").read_text())

    ranked = score_candidates(run_dir)
    serve = tf.saved_model.load(str(run_dir / "export")).signatures["serving_default"]
    records = np.array(list(tf.data.TFRecordDataset(split_files(config.data.output, "candidates"), "GZIP")
                            .as_numpy_iterator()), dtype=object)
    tasks = ("watch", "rating", "like")
    in_batches = {t: np.concatenate([serve(examples=tf.constant(records[i:i + 500]))[t].numpy()
                                     for i in range(0, len(records), 500)]) for t in tasks}
    per_list = {t: np.zeros(len(records), np.float32) for t in tasks}
    users = ranked["user_id"].to_numpy()
    for user in np.unique(users):
        rows = np.flatnonzero(users == user)
        scores = serve(examples=tf.constant(records[rows]))
        for t in tasks:
            per_list[t][rows] = scores[t].numpy()
    for t in tasks:
        np.testing.assert_allclose(ranked[f"pred_{t}"], in_batches[t], atol=1e-5, rtol=0)
        np.testing.assert_allclose(ranked[f"pred_{t}"], per_list[t], atol=1e-5, rtol=0)
    expected, _ = evaluation(ranked.assign(**{f"pred_{t}": per_list[t] for t in tasks}))
    assert evaluated["users"] == expected["users"] > 10
    _assert_close({k: v for k, v in evaluated.items() if k not in ("run_dir", "test_split", "gates")}, expected)


@pytest.mark.slow
def test_test_split_metrics_match_sklearn_on_the_exported_predictions(compared):
    """eval.json's test_split (the papers' metrics) against sklearn, on the test split read with pandas
    and scored by the export's serving_default in other batches."""
    import tensorflow as tf
    from sklearn.metrics import accuracy_score, log_loss, mean_squared_error

    from pipeline.training.dataset import split_files
    config, workdir, _ = compared
    run_dir = workdir / "compare" / "softmax" / "seed0"
    paper = json.loads((run_dir / "eval.json").read_text())["test_split"]
    frame = read_split(config.data.output, "test")
    records = np.array(list(tf.data.TFRecordDataset(split_files(config.data.output, "test"), "GZIP")
                            .as_numpy_iterator()), dtype=object)
    serve = tf.saved_model.load(str(run_dir / "export")).signatures["serving_default"]
    predicted = {t: np.concatenate([serve(examples=tf.constant(records[i:i + 700]))[t].numpy()
                                    for i in range(0, len(records), 700)]).astype(np.float64)
                 for t in ("watch", "rating", "like")}
    assert paper["examples"] == len(frame) == len(records) > 100
    expected = {}
    for task in ("watch", "like"):
        labels = frame[task].to_numpy()
        expected[task] = {"loss": log_loss(labels, np.clip(predicted[task], 1e-7, 1 - 1e-7)),
                          "accuracy": accuracy_score(labels, predicted[task] > 0.5),
                          "auc": roc_auc_score(labels, predicted[task])}
    observed = frame.rating_weight.to_numpy() > 0
    mse = mean_squared_error(frame.rating[observed], predicted["rating"][observed])
    expected["rating"] = {"loss": mse, "mse": mse, "rows": int(observed.sum())}
    assert 0 < expected["rating"]["rows"] < len(frame)  # sampled items carry no rating
    weights = {t: c.weight for t, c in config.model.tasks.items()}
    for task, values in expected.items():
        for name, value in values.items():
            assert paper["tasks"][task][name] == pytest.approx(value, rel=1e-5, abs=1e-6), (task, name)
    assert paper["loss"] == pytest.approx(sum(weights[t] * expected[t]["loss"] for t in weights), rel=1e-5)
    assert paper["task_weights"] == weights


@pytest.mark.slow
def test_bad_variant_is_rejected_before_training(embedded_data, tmp_path, capsys):
    data_dir, _ = embedded_data
    code = cli.main(["compare", "--set", f"workdir={tmp_path}", "--set", f"data.output={data_dir}",
                     *sum([["--set", o] for o in EMBEDDED_OVERRIDES], []),
                     "--set", "compare.variants={good: {model: {gate: {type: softmax}}}, "
                              "bad: {model: {gate: {type: top3}}}}",
                     "--set", "compare.focus=[good]"])
    stderr = capsys.readouterr().err
    assert code == 2
    assert "compare.variants.bad" in stderr and "unknown gate type 'top3'" in stderr
    assert not (tmp_path / "compare").exists()
    # Before any work: with no data yet, nothing is preprocessed either.
    code = cli.main(["compare", "--set", f"workdir={tmp_path / 'fresh'}",
                     *sum([["--set", o] for o in EMBEDDED_OVERRIDES], []),
                     "--set", "compare.variants={good: {model: {gate: {type: softmax}}}, "
                              "bad: {model: {gate: {k: 0, type: topk}}}}",
                     "--set", "compare.focus=[good]"])
    stderr = capsys.readouterr().err
    assert code == 2 and "compare.variants.bad" in stderr and "gate.k" in stderr
    assert len(stderr.strip().splitlines()) == 1 and not (tmp_path / "fresh").exists()


@pytest.mark.slow
def test_data_folder_of_other_settings_is_kept_without_force(embedded_data, tmp_path):
    """Pointing compare at a data folder made with other data settings stops before any work."""
    from pipeline.stages import compare
    data_dir, _ = embedded_data
    before = (data_dir / "manifest.json").read_bytes()
    config = _compare_config(tmp_path, data_dir, "data.candidates.negatives=31")
    with pytest.raises(ArtifactError, match="holds data made with other data settings.*--force"):
        compare.run(config)
    assert (data_dir / "manifest.json").read_bytes() == before and not (tmp_path / "compare").exists()


@pytest.mark.slow
def test_paper_config_runs_on_ml1m_layout(tmp_path):
    """A small version of the paper's MovieLens protocol (configs/movielens_1m_paper.yaml at the paper's
    model size, on generated ml-1m files, a few steps, 1 seed) runs `mtlrec compare` end to end and
    reports the papers' metrics per variant: test loss, watch accuracy and AUC, rating MSE."""
    folder = write_ml1m(tmp_path / "ml-1m", ratings(num_users=20, num_items=40, per_user=15))
    sets = [f"data.path={folder}", f"workdir={tmp_path / 'run'}", "data.candidates.negatives=10", "data.num_shards=1",
            "train.epochs=1", "train.steps_per_epoch=3", "train.batch_size=64", "train.diagnostics_batches=1",
            "compare.seeds=[0]",
            # DSelect-k whose selectors are binary after Adam's first step (a band far narrower than the step),
            # so that its run counts as DSelect-k at k=2 and enters the report's tests.
            "train.learning_rate=0.01", "compare.variants.dselect_k.model.gate.gamma=0.001",
            "compare.variants.dselect_k.model.gate.entropy_doubling_steps=1"]
    config = load_config(PAPER, sets)
    assert list(config.model.tasks) == ["watch", "rating"] and config.model.num_experts == 16
    assert list(config.compare.variants) == ["softmax", "topk", "dselect_k"]
    assert cli.main(["compare", "--config", str(PAPER), *sum([["--set", o] for o in sets], [])]) == 0
    report = tmp_path / "run" / "report"
    summary = json.loads((report / "summary.json").read_text())
    manifest = json.loads((tmp_path / "run" / "data" / "manifest.json").read_text())
    assert manifest["config"]["split"]["mode"] == "random"
    test_examples = manifest["splits"]["test"]["examples"]
    assert test_examples == round(0.1 * 300) + round(0.1 * (300 - manifest["unfilled"]["negatives"]))
    figures = {}
    for variant in ("softmax", "topk", "dselect_k"):
        metrics = {k: v["mean"] for k, v in summary["test_split"][variant]["metrics"].items()}
        assert set(metrics) == {"loss", "watch/accuracy", "watch/auc", "rating/mse"}
        assert all(np.isfinite(v) for v in metrics.values())
        assert 0 <= metrics["watch/accuracy"] <= 1 and 0 <= metrics["watch/auc"] <= 1
        assert 0 < metrics["rating/mse"] < 25  # ratings 1..5 against a barely trained prediction
        run = json.loads((tmp_path / "run" / "compare" / variant / "seed0" / "eval.json").read_text())["test_split"]
        assert run["examples"] == test_examples and run["task_weights"] == {"watch": 0.9, "rating": 0.1}
        assert metrics["loss"] == pytest.approx(0.9 * run["tasks"]["watch"]["loss"] + 0.1 * metrics["rating/mse"])
        assert 0 < metrics["loss"] < 0.9 * 3 + 0.1 * 25
        figures[variant] = metrics
    md = (report / "report.md").read_text()
    assert "Test split: the papers' metrics" in md and "not tested (1 seed)" in md
    for header in ("test loss ↓", "watch accuracy ↑", "watch AUC ↑", "rating MSE ↓"):
        assert header in md
    run_config = (tmp_path / "run" / "compare" / "dselect_k" / "seed0" / "config.yaml").read_text()
    assert "id_embedding_dim: 128" in run_config and "expert_dropout: 0.5" in run_config
    print(json.dumps(figures, indent=1))  # the smoke run's figures (pytest -s shows them)


@pytest.mark.slow
def test_same_compare_in_fresh_processes_gives_identical_summary(compared, embedded_data, tmp_path):
    """Issue 12: the same command gives the same bytes -- training (op determinism, seeded
    streams), evaluation and the report. A second fresh process in another workdir, so nothing is
    reused, against the fixture's."""
    _, workdir, _ = compared
    first = (workdir.parent / f"{workdir.name}-{FIRST_SUMMARY}").read_bytes()
    assert _mtlrec_compare(tmp_path / "second", embedded_data[0])[0] == first
    assert json.loads(first)["significance"]  # the statistics are part of what must repeat


@pytest.mark.slow
def test_compare_prints_its_own_lines_and_progress(compared):
    """Issue 18's rules (tests/test_terminal.py) on the fixture's fresh process: only compare's own lines,
    with per-run progress (i/N and, once a run has finished, the time left) and where the report went."""
    _, workdir, _ = compared
    stderr = (workdir.parent / f"{workdir.name}-{FIRST_STDERR}").read_text()
    assert foreign_lines(stderr) == [], "mtlrec compare printed library lines"
    assert re.search(r"^compare: \[4/4\] .*, ~\d+ (s|min) left\)$", stderr, re.M), stderr
    assert "compare: report in" in stderr

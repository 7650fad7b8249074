"""Tenrec QK-video, declared in YAML only (configs/datasets/tenrec_qk_video.yaml), on a file
generated in the published layout (tests/tenrec_files.py): no timestamp (file order within a
user), likes on unclicked rows, `\\N` for a missing value, exact duplicate lines."""
import json
from pathlib import Path

import pytest

from features.datasets import load_dataset
from fixtures import cli_sets, read_split
from tenrec_files import HEADER, write_qk_video

DECLARATION = str(Path(__file__).resolve().parents[1] / "configs" / "datasets" / "tenrec_qk_video.yaml")


def test_the_declaration_says_what_the_authors_say():
    dataset = load_dataset(DECLARATION)
    decl = dataset.declaration
    assert dataset.time_column is None and decl.time.order == "file"  # no timestamp column
    assert decl.files.interactions.null_values == ["\\N"]
    assert decl.duplicates.key == "all" and "exact duplicate" in decl.duplicates.reason
    assert all(t.rows == "all" for t in decl.tasks.values())  # no task implies another
    assert list(decl.columns) == HEADER.split(",")[:2] + ["video_category", "gender", "age", "click", "follow",
                                                          "like", "share", "watching_times"]
    assert set(HEADER.split(",")) == set(decl.columns)  # every published column, and only those
    assert dataset.sources == {"table": dataset.sources["table"]} and not decl.sources  # no reader in code


@pytest.mark.slow
def test_preprocess_keeps_file_order_unclicked_likes_and_rejects_exact_duplicates(tmp_path):
    from pipeline.cli import main
    written = write_qk_video(tmp_path / "qk", users=30, per_user=20, seed=1)
    assert written["duplicates"] > 0 and written["unclicked_likes"] > 0
    sets = cli_sets(f"data.dataset={DECLARATION}", f"data.path={tmp_path / 'qk'}", f"workdir={tmp_path / 'w'}",
                    "data.num_shards=1", "data.split.test=2", "data.split.validation=1")
    assert main(["preprocess", *sets]) == 0
    folder = tmp_path / "w" / "data"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["input_rows"] == written["rows"] == manifest["accepted_rows"] + manifest["rejected_rows"]
    rejected = [json.loads(line) for line in (folder / "rejected" / "rejected.jsonl").read_text().splitlines()]
    assert len(rejected) == written["duplicates"]
    assert {(r["kind"], r["reason"]) for r in rejected} == {
        ("exact_duplicate", "exact duplicate of another row")}
    # Per user, the test split is the last 2 distinct lines in file order, validation the one before.
    lines = (tmp_path / "qk" / "QK-video.csv").read_text().splitlines()[1:]
    test = read_split(folder, "test")
    for user, indexes in written["order"].items():
        distinct = list(dict.fromkeys(lines[i] for i in indexes))
        if len(distinct) < 5:
            continue
        expected = sorted(int(line.split(",")[1]) for line in distinct[-2:])
        assert sorted(test[test.user_id == user].item_id.tolist()) == expected, user
    train = read_split(folder, "train")
    assert ((train.like == 1) & (train.click == 0)).any()  # likes on unclicked rows are kept as they are
    assert -1 in set(train.video_category)  # \N: the declared default


@pytest.mark.slow
def test_compare_runs_end_to_end(tmp_path):
    """`mtlrec compare` on the declaration alone: two gates, one seed, tiny training, its report."""
    from pipeline.cli import main
    write_qk_video(tmp_path / "qk", users=40, per_user=25, seed=2)
    workdir = tmp_path / "w"
    sets = cli_sets(
        f"data.dataset={DECLARATION}", f"data.path={tmp_path / 'qk'}", f"workdir={workdir}", "data.num_shards=1",
        "data.split.test=2", "data.split.validation=1", "train.epochs=1", "train.steps_per_epoch=5",
        "train.batch_size=128", "train.diagnostics_batches=1", "model.expert_units=[8]", "model.tower_units=[4]",
        "model.num_experts=3", "model.id_embedding_dim=4",
        "compare.variants={softmax: {model: {gate: {type: softmax}}}, dselect_k_static: {model: {gate: "
        "{type: dselect_k, k: 2, gamma: 0.02, entropy_weight: 1, entropy_doubling_steps: 1}}}}",
        "compare.focus=[dselect_k_static]", "compare.seeds=[0]")
    assert main(["compare", *sets]) == 0
    report = workdir / "report"
    summary = json.loads((report / "summary.json").read_text())
    assert set(summary["variants"]) == {"softmax", "dselect_k_static"}
    for variant in summary["variants"].values():
        assert set(variant["tasks"]) == {"click", "like", "share"}  # the declaration's default tasks
        assert 0 <= variant["tasks"]["click"]["gauc"]["mean"] <= 1
    markdown = (report / "report.md").read_text()
    assert "click" in markdown and "share" in markdown and "watch" not in markdown

"""Sparse serving: only the experts static gates select are kept, with identical predictions."""
import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from features.transform import dense_model_inputs
from fixtures import read_split
from models.recommender import MultiTaskRecommender
from models.sparse import SparseRecommender
from pipeline.config import load_config
from pipeline.training.dataset import InputPipeline
from pipeline.stages.export import export_model, export_run
from pipeline.training.modeling import model_spec

# The experts each task is forced to select; 0, 2, 4, 6 and 7 are selected by nobody.
CHOICE = {"watch": [1, 3], "rating": [3, 5], "like": [1, 5]}
# Two independent groups of tasks (watch + like share 1 and 3; rating alone uses 5 and 6).
DISJOINT = {"watch": [1, 3], "rating": [5, 6], "like": [1, 3]}
STATIC_GATES = {
    "dselect_k": ["model.gate.type=dselect_k", "model.gate.k=2", "model.gate.gamma=1.0"],
    "topk": ["model.gate.type=topk", "model.gate.k=2", "model.gate.per_example=false"],
    "softmax": ["model.gate.type=softmax", "model.gate.per_example=false"],
}


def _force_selection(model, gate_type, choice):
    """Set each static gate's parameters so that it selects exactly choice[task]."""
    for task, gate in model.mmoe.gates.items():
        chosen = choice[task]
        if gate_type == "dselect_k":  # one selector per chosen expert, with binary bits
            bits = [[1.0 if (e >> j) & 1 else -1.0 for j in range(gate.num_bits)] for e in chosen]
            gate.z.assign(np.array(bits) * gate.gamma)
            gate.alpha.assign([0.3, -0.2])
        else:  # top-k keeps the 2 largest logits; softmax gives exp(-1e4) = 0.0 to the others
            logits = np.full(gate.num_experts, -1e4 if gate_type == "softmax" else -1.0)
            logits[chosen] = [1.0, 0.4]
            gate.logits.assign(logits)


def _raw(data_dir, manifest, n=200):
    frame = read_split(data_dir, "candidates").head(n)
    return {c: tf.constant(frame[c].to_numpy()) for c in manifest["raw_columns"]}


def test_tasks_sharing_no_expert_form_independent_groups():
    from models.sparse import expert_groups
    tasks = {"a": [1, 3], "b": [3, 5], "c": [7, 8], "d": [8, 9], "e": [2]}
    assert expert_groups(tasks, 5) == [(["a", "b"], [1, 3, 5]), (["c", "d"], [7, 8, 9]), (["e"], [2])]
    # At most max_groups: largest groups first, each into the bin with the fewest experts
    # (ties: the first); tasks keep their order.
    assert expert_groups(tasks, 2) == [(["a", "b", "e"], [1, 2, 3, 5]), (["c", "d"], [7, 8, 9])]
    assert expert_groups(tasks, 1) == [(["a", "b", "c", "d", "e"], [1, 2, 3, 5, 7, 8, 9])]
    # A task that bridges two groups merges them.
    assert expert_groups({"a": [1], "b": [2], "c": [2, 1]}, 2) == [(["a", "b", "c"], [1, 2])]


@pytest.mark.slow
@pytest.mark.parametrize("gate_type, choice", [(g, CHOICE) for g in STATIC_GATES] + [("dselect_k", DISJOINT)])
def test_sparse_export_matches_dense_and_drops_unselected_experts(embedded_data, tmp_path, gate_type, choice):
    data_dir, manifest = embedded_data
    config = load_config(None, ["model.num_experts=8", "model.expert_units=[16]", *STATIC_GATES[gate_type]])
    inputs = InputPipeline(data_dir, manifest["raw_columns"])
    model = MultiTaskRecommender(model_spec(config, manifest, inputs.tft_output))
    raw = _raw(data_dir, manifest)
    model(dense_model_inputs(inputs.transform(raw), inputs.declaration.max_values()))  # build
    _force_selection(model, gate_type, choice)

    sparse = SparseRecommender(model)
    kept = sorted({e for experts in choice.values() for e in experts})
    assert sparse.selection.kept == kept and sparse.selection.dropped == sorted(set(range(8)) - set(kept))
    assert len(sparse.mmoe.groups) == (2 if choice is DISJOINT else 1)
    dense_path = export_model(model, inputs, tmp_path / "dense")
    sparse_path = export_model(sparse, inputs, tmp_path / "sparse")
    dense_signatures = tf.saved_model.load(str(dense_path)).signatures
    sparse_signatures = tf.saved_model.load(str(sparse_path)).signatures
    assert set(sparse_signatures) == set(dense_signatures)
    dense_out, sparse_out = dense_signatures["serve_raw"](**raw), sparse_signatures["serve_raw"](**raw)
    assert set(sparse_out) == set(dense_out) == {"watch", "rating", "like"}
    for task in dense_out:
        np.testing.assert_allclose(sparse_out[task].numpy(), dense_out[task].numpy(), atol=1e-5, rtol=0)
    # A ranking request: the same scores, combined score and order from both.
    user = raw["user_id"][0]
    items = tf.boolean_mask(raw["item_id"], raw["user_id"] == user)
    request = {"user_id": user, "timestamp": tf.boolean_mask(raw["timestamp"], raw["user_id"] == user)[0],
               "item_ids": items}
    dense_rank, sparse_rank = dense_signatures["rank"](**request), sparse_signatures["rank"](**request)
    assert len(items) > 10 and set(dense_rank) == set(sparse_rank) == {"watch", "rating", "like", "score", "top_k"}
    for name in ("watch", "rating", "like", "score"):
        np.testing.assert_allclose(sparse_rank[name].numpy(), dense_rank[name].numpy(), atol=1e-5, rtol=0)
    assert sparse_rank["top_k"].numpy().tolist() == dense_rank["top_k"].numpy().tolist()

    # The dropped experts' weights are not in the sparse SavedModel's variables.
    def expert_kernels(path):  # the rank-3 variables: stacked expert kernels [experts, d_in, units]
        reader = tf.train.load_checkpoint(str(Path(path) / "variables" / "variables"))
        names = sorted(n for n, shape in reader.get_variable_to_shape_map().items() if len(shape) == 3)
        return np.concatenate([reader.get_tensor(n) for n in names])

    full, saved = expert_kernels(dense_path), expert_kernels(sparse_path)
    assert full.shape[0] == 8 and saved.shape[0] == len(kept)
    saved_experts = sorted(e for e in range(8) for k in saved if np.array_equal(full[e], k))
    assert saved_experts == kept  # each kept expert saved once, no dropped one


@pytest.mark.slow
def test_cli_sparse_export_of_a_trained_run(embedded_data, tmp_path, capsys):
    from pipeline.cli import main
    from pipeline.stages import train
    data_dir, manifest = embedded_data
    common = [f"train.data={data_dir}", "train.epochs=1", "train.steps_per_epoch=5", "train.batch_size=256",
              "model.expert_units=[16]", "model.num_experts=4", "train.diagnostics_batches=1"]
    train.run(load_config(None, [*common, f"train.run_dir={tmp_path / 'static'}", "model.gate.type=dselect_k"]))
    assert main(["export", "--run", str(tmp_path / "static"), "--sparse"]) == 0
    record = json.loads((tmp_path / "static" / "sparse_export.json").read_text())
    assert set(record["tasks"]) == {"watch", "rating", "like"} and record["kept"] and "why" in record
    raw = _raw(data_dir, manifest, n=100)
    dense = tf.saved_model.load(str(tmp_path / "static" / "export")).signatures["serve_raw"](**raw)
    sparse = tf.saved_model.load(str(tmp_path / "static" / "export_sparse")).signatures["serve_raw"](**raw)
    for task in dense:
        np.testing.assert_allclose(sparse[task].numpy(), dense[task].numpy(), atol=1e-5, rtol=0)

    # Per-example sparse gates take the per-example path: each expert computed only where chosen.
    train.run(load_config(None, [*common, f"train.run_dir={tmp_path / 'pe'}", "model.gate.type=topk",
                                 "model.gate.k=2", "model.gate.per_example=true"]))
    export_run(tmp_path / "pe", sparse=True)
    dense = tf.saved_model.load(str(tmp_path / "pe" / "export")).signatures
    sparse = tf.saved_model.load(str(tmp_path / "pe" / "export_sparse")).signatures
    request = {"user_id": raw["user_id"][0], "timestamp": raw["timestamp"][0], "item_ids": raw["item_id"]}
    for name, feed in (("serve_raw", raw), ("rank", request)):
        dense_out, sparse_out = dense[name](**feed), sparse[name](**feed)
        for task in ("watch", "rating", "like"):
            np.testing.assert_allclose(sparse_out[task].numpy(), dense_out[task].numpy(), atol=1e-5, rtol=0)

    # A per-example softmax gate is dense: refused with a clear message.
    train.run(load_config(None, [*common, f"train.run_dir={tmp_path / 'soft'}", "model.gate.type=softmax"]))
    capsys.readouterr()
    assert main(["export", "--run", str(tmp_path / "soft"), "--sparse"]) == 2
    assert "per-example softmax gate" in capsys.readouterr().err
    assert not (tmp_path / "soft" / "export_sparse").exists()


@pytest.mark.slow
def test_per_example_dselect_sparse_path_is_exact(embedded_data, tmp_path):
    """Also while selectors are not yet binary (more than k experts for some examples)."""
    data_dir, manifest = embedded_data
    config = load_config(None, ["model.num_experts=8", "model.expert_units=[16, 8]", "model.gate.type=dselect_k",
                                "model.gate.k=2", "model.gate.per_example=true"])
    inputs = InputPipeline(data_dir, manifest["raw_columns"])
    model = MultiTaskRecommender(model_spec(config, manifest, inputs.tft_output))
    raw = _raw(data_dir, manifest)
    features = dense_model_inputs(inputs.transform(raw), inputs.declaration.max_values())
    model(features)
    gate = model.mmoe.gates["watch"]
    gate.selector_dense.set_weights([w * 200 for w in gate.selector_dense.get_weights()])  # mostly binary
    counts = (gate.expert_weights(model.encoder(features)).numpy() > 0).sum(axis=1)
    assert counts.min() <= 2 < counts.max() or counts.max() <= 2
    sparse = SparseRecommender(model)
    expected, got = model(features), sparse(features)
    for task in expected:
        np.testing.assert_allclose(got[task].numpy(), expected[task].numpy(), atol=1e-5, rtol=0)

"""MMoE computes gates with the same settings as one group and mixes all tasks with one matmul:
it must give exactly what each task's gate gives on its own."""
import numpy as np
import pytest
import tensorflow as tf

from models.experts import MMoE

GATES = {
    "softmax": {"type": "softmax", "per_example": True},
    "softmax_static": {"type": "softmax", "per_example": False},
    "topk": {"type": "topk", "k": 2, "per_example": True, "noise": False, "load_balance_weight": 0.1},
    "topk_static": {"type": "topk", "k": 2, "per_example": False, "noise": False},
    "dselect_k": {"type": "dselect_k", "k": 2, "per_example": True, "entropy_weight": 0.1},
    "dselect_k_static": {"type": "dselect_k", "k": 2, "per_example": False, "entropy_weight": 0.1},
}
TASKS = ("a", "b", "c")


def _spread(block, x, rng):
    """Gate weights spread beyond DSelect-k's smooth-step band, so some selectors are binary.

    A DSelect-k selector that puts almost, but not exactly, all its mass on codes >= num_experts
    is redrawn: its unreachable-code penalty 1/reachable has gradients ~1/reachable^2 (up to 2e5
    seen here), which amplify the float32 rounding of the reachable sum, summed in a different
    order by the grouped and the per-gate matmuls, to 5e-4 relative: a test of the grouping would
    be one of rounding. Reachable mass exactly 0 (a binary selector on unreachable codes) stays:
    the penalty's clamp makes it exact.
    """
    for gate in block.gates.values():
        while True:
            for variable in gate.trainable_variables:
                variable.assign(rng.normal(size=variable.shape).astype(np.float32))
            if gate.gate_type != "dselect_k":
                break
            selectors = gate.selector_outputs(x if gate.per_example else None).numpy()
            reachable = selectors[..., :gate.num_experts].sum(axis=-1)
            if not np.any((reachable > 0) & (reachable < 0.05)):
                break


@pytest.mark.parametrize("num_experts", [6, 8])
@pytest.mark.parametrize("gates", [
    *[{t: GATES[name] for t in TASKS} for name in GATES],
    {"a": GATES["dselect_k"], "b": GATES["softmax"], "c": GATES["dselect_k"]},  # two groups, interleaved
    {"a": GATES["dselect_k"], "b": {**GATES["dselect_k"], "gamma": 2.0}, "c": GATES["dselect_k_static"]},
    {t: {**GATES["dselect_k"], "entropy_schedule": "linear", "entropy_warmup_steps": 4} for t in TASKS},
], ids=[*GATES, "mixed_types", "mixed_settings", "dselect_k_linear"])
def test_grouped_gates_match_each_gate_alone(gates, num_experts):
    rng = np.random.default_rng(0)
    block = MMoE(num_experts, [4], gates)
    x = tf.constant(rng.normal(size=(16, 5)).astype(np.float32))
    block(x)  # build
    _spread(block, x, rng)
    for training in (False, True):
        steps = [g.step.numpy() for g in block.gates.values() if hasattr(g, "step")]
        with tf.GradientTape(persistent=True) as tape:
            mixed = block(x, training=training)
            block_losses = list(block.losses)  # before the gates below add their own
            total = tf.add_n([tf.reduce_sum(v) for v in mixed.values()] + block_losses)
            for g, step in zip([g for g in block.gates.values() if hasattr(g, "step")], steps):
                g.step.assign(step)  # the entropy schedule sees the same step alone
            experts = block.experts(x)
            alone = {t: g(experts, x if g.per_example else None, training=training) for t, g in block.gates.items()}
            alone_losses = [loss for g in block.gates.values() for loss in g.losses]
            alone_total = tf.add_n([tf.reduce_sum(v) for v in alone.values()] + alone_losses)
        assert set(mixed) == set(TASKS)
        for t in TASKS:
            np.testing.assert_allclose(mixed[t].numpy(), alone[t].numpy(), atol=1e-5)
        if training:
            assert len(block_losses) <= len(alone_losses)  # one loss per group
            if alone_losses:
                np.testing.assert_allclose(float(tf.add_n(block_losses)), float(tf.add_n(alone_losses)), rtol=1e-5)
            gates = [v for v in block.trainable_variables if "experts" not in v.name]
            for got, expected in zip(tape.gradient(total, gates), tape.gradient(alone_total, gates)):
                assert (got is None) == (expected is None)
                if got is not None:
                    np.testing.assert_allclose(tf.convert_to_tensor(got).numpy(),
                                               tf.convert_to_tensor(expected).numpy(), rtol=1e-4, atol=1e-5)
        else:
            assert not block_losses


def test_dselect_steps_advance_once_per_training_call():
    block = MMoE(8, [4], {t: GATES["dselect_k"] for t in TASKS})
    x = tf.random.normal([4, 5])
    block(x, training=True)
    block(x, training=False)
    assert [int(g.step.numpy()) for g in block.gates.values()] == [1, 1, 1]

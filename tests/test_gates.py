"""The gate library against the numpy reference of DSelect-k (models/gates/reference.py), independent
numpy computations and hand-derived cases."""
import math
import tempfile

import numpy as np
import pytest
import tensorflow as tf

from models.gates import DSelectKGate, TopKGate, build_gate, reference, smooth_step


# ---------------------------------------------------------------- numpy helpers
def np_softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def dense_np(layer, x):
    kernel, bias = layer.get_weights()
    return x @ kernel + bias


# ---------------------------------------------------------------- smooth-step
def test_smooth_step_hand_values():
    gamma = 2.0
    t = tf.constant([-5.0, -1.0, -0.5, 0.0, 0.5, 1.0, 5.0])
    # -2 t^3/8 + 3 t/4 + 1/2 at t = 0.5: -0.03125 + 0.375 + 0.5 = 0.84375
    expected = [0.0, 0.0, 0.15625, 0.5, 0.84375, 1.0, 1.0]
    np.testing.assert_allclose(smooth_step(t, gamma).numpy(), expected, atol=1e-7)


def test_smooth_step_exact_outside_band_and_continuous():
    gamma = 0.7
    outside = tf.constant([-10.0, -0.35, -0.3500001, 0.35, 0.3500001, 3.0])
    np.testing.assert_array_equal(smooth_step(outside, gamma).numpy(), [0, 0, 0, 1, 1, 1])
    # Continuity at the band edges: the cubic meets 0 and 1.
    eps = 1e-4
    edges = tf.constant([-gamma / 2 + eps, gamma / 2 - eps])
    np.testing.assert_allclose(smooth_step(edges, gamma).numpy(), [0, 1], atol=1e-6)
    grid = np.linspace(-1, 1, 2001, dtype=np.float32)
    np.testing.assert_allclose(smooth_step(tf.constant(grid), gamma).numpy(), reference.smooth_step(grid, gamma),
                               atol=1e-6)
    assert np.all(np.diff(smooth_step(tf.constant(grid), gamma).numpy()) >= 0)


def test_smooth_step_derivative():
    gamma = 2.0
    t = tf.constant([-3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 3.0])
    with tf.GradientTape() as tape:
        tape.watch(t)
        y = smooth_step(t, gamma)
    grad = tape.gradient(y, t).numpy()
    # d/dt = -6 t^2 / g^3 + 3 / (2 g): 0.75 at 0, 0.5625 at +-0.5, 0 at the edges, 0 outside.
    np.testing.assert_allclose(grad, [0, 0, 0.5625, 0.75, 0.5625, 0, 0], atol=1e-6)


# ---------------------------------------------------------------- DSelect-k weights
CASES = [(n, k) for n in (2, 3, 4, 5, 8, 16, 128) for k in (1, 2, 4)]


@pytest.mark.parametrize("num_experts,k", CASES)
def test_dselect_static_weights_match_reference(num_experts, k):
    gamma = 1.3
    gate = DSelectKGate(num_experts, k, gamma=gamma)
    rng = np.random.default_rng(num_experts * 10 + k)
    m = max(1, math.ceil(math.log2(num_experts)))
    assert gate.z.shape == (k, m) and gate.alpha.shape == (k,)
    z = rng.uniform(-gamma, gamma, size=(k, m))
    alpha = rng.normal(size=k)
    gate.z.assign(z)
    gate.alpha.assign(alpha)
    weights = gate.expert_weights().numpy()
    expected = reference.weights(z, alpha, num_experts, gamma)
    np.testing.assert_allclose(weights, expected, atol=1e-6)
    assert weights.shape == (num_experts,) and np.all(weights >= 0)
    if num_experts == 2**m:
        np.testing.assert_allclose(weights.sum(), 1.0, atol=1e-6)
    else:  # the paper's formula: mass on unreachable codes is not renormalized away
        assert weights.sum() <= 1.0 + 1e-6
    # The mixture is the weighted sum of expert outputs.
    experts = rng.normal(size=(3, num_experts, 4)).astype(np.float32)
    np.testing.assert_allclose(gate(tf.constant(experts)).numpy(),
                               np.einsum("n,bnd->bd", expected, experts), atol=1e-5)


@pytest.mark.parametrize("num_experts,k", CASES)
def test_dselect_per_example_weights_match_reference(num_experts, k):
    gamma = 1.0
    gate = DSelectKGate(num_experts, k, gamma=gamma, per_example=True)
    rng = np.random.default_rng(num_experts * 10 + k)
    x = rng.normal(size=(6, 5)).astype(np.float32)
    gate(tf.zeros([6, num_experts, 2]), tf.constant(x))  # build
    layer = gate.selector_dense  # spread z over the band and beyond
    layer.set_weights([rng.normal(size=w.shape) for w in layer.get_weights()])
    m = max(1, math.ceil(math.log2(num_experts)))
    out = dense_np(layer, x)  # [z (k*m) | alpha (k)]
    z, alpha = out[:, : k * m].reshape(6, k, m), out[:, k * m:]
    weights = gate.expert_weights(tf.constant(x)).numpy()
    np.testing.assert_allclose(weights, reference.weights(z, alpha, num_experts, gamma), atol=1e-5)
    assert weights.shape == (6, num_experts) and np.all(weights >= 0)
    if num_experts == 2**m:
        np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-5)


def test_dselect_initialization_is_near_uniform():
    gate = DSelectKGate(16, 2, gamma=2.0)
    assert np.all(np.abs(gate.z.numpy()) <= 2.0 / 100)
    np.testing.assert_allclose(gate.expert_weights().numpy(), 1 / 16, rtol=0.05)


# ---------------------------------------------------------------- DSelect-k regularization
@pytest.mark.parametrize("num_experts,k", [(5, 2), (8, 2), (6, 1), (3, 3)])
def test_dselect_static_regularization_matches_reference(num_experts, k):
    gamma, weight = 1.0, 0.3
    gate = DSelectKGate(num_experts, k, gamma=gamma, entropy_weight=weight, unreachable_weight=0.7)
    z = np.random.default_rng(k).uniform(-0.7, 0.7, size=gate.z.shape)  # some bits past the band: exactly 0 or 1
    gate.z.assign(z)
    gate(tf.zeros([2, num_experts, 3]), training=True)
    expected = reference.regularizer(z, num_experts, gamma, weight, unreachable_weight=0.7)
    np.testing.assert_allclose(float(gate.losses[0]), expected, rtol=1e-5)
    # No regularization at inference.
    gate(tf.zeros([2, num_experts, 3]), training=False)
    assert not gate.losses


@pytest.mark.parametrize("schedule", ["constant", "linear"])
@pytest.mark.parametrize("num_experts,k", [(4, 2), (6, 2), (5, 1), (16, 2)])
def test_dselect_per_example_regularization_matches_reference(num_experts, k, schedule):
    """Per-example gating: the loss is the mean over the batch of each example's regularizer; under
    the linear schedule, the 5th training call of a 10-step warm-up has half the entropy weight."""
    gamma, weight = 2.0, 0.4
    gate = DSelectKGate(num_experts, k, gamma=gamma, per_example=True, entropy_weight=weight,
                        entropy_schedule=schedule, entropy_warmup_steps=10, unreachable_weight=0.5)
    rng = np.random.default_rng(num_experts * 10 + k)
    x = rng.normal(size=(7, 5)).astype(np.float32)
    gate.build_routing([None, 5])
    layer = gate.selector_dense
    # z mostly inside the band, some bits past it (exactly 0 or 1).
    layer.set_weights([0.25 * rng.normal(size=w.shape) for w in layer.get_weights()])
    gate.step.assign(4)  # training calls so far; this call counts itself before it weighs the entropy
    gate(tf.zeros([7, num_experts, 1]), tf.constant(x), training=True)
    m = gate.num_bits
    z = dense_np(layer, x)[:, : k * m].reshape(7, k, m)  # [batch, k, m]
    # Away from the fast gate's clamp of the reachable mass at 1e-6, where it departs from the formula.
    assert reference.selector(z, gamma)[..., :num_experts].sum(-1).min() > 1e-3
    entropy_weight = weight * (0.5 if schedule == "linear" else 1.0)
    expected = reference.regularizer(z, num_experts, gamma, entropy_weight, unreachable_weight=0.5).mean()
    np.testing.assert_allclose(float(gate.losses[0]), expected, rtol=1e-5)


def test_reference_hand_case():
    """3 experts (m = 2 bits, codes 0-3, code 3 unreachable), gamma 2, k = 2 selectors:
    selector 1 has z = (1, -1), past the band: S = (1, 0), all its mass on code 0b01 = expert 1;
    selector 2 has z = (0, 0): S = (1/2, 1/2), mass 1/4 on each of the 4 codes;
    alpha = (0, log 3): softmax = (1/4, 3/4).
    weights = 1/4 (0, 1, 0) + 3/4 (1/4, 1/4, 1/4) = (3/16, 7/16, 3/16), summing to 13/16: the 3/16
    on code 3 is not renormalized away. Entropy: 0 + log 4. Unreachable penalty: (1/1 - 1) + (1/(3/4) - 1)
    = 1/3."""
    z, alpha, gamma = np.array([[1.0, -1.0], [0.0, 0.0]]), np.array([0.0, np.log(3.0)]), 2.0
    np.testing.assert_allclose(reference.selector(z, gamma), [[0, 1, 0, 0], [0.25, 0.25, 0.25, 0.25]])
    np.testing.assert_allclose(reference.weights(z, alpha, 3, gamma), [3 / 16, 7 / 16, 3 / 16])
    assert reference.entropy(z, gamma) == pytest.approx(np.log(4.0))
    assert reference.unreachable_penalty(z, 3, gamma) == pytest.approx(1 / 3)
    # The smooth step inside the band: S(1/2) with gamma 2 is -2/64 + 3/8 + 1/2 = 0.84375.
    np.testing.assert_allclose(reference.selector(np.array([0.5, -1.0]), gamma), [0.15625, 0.84375, 0, 0])
    # The fast gate gives the same numbers, and exact zeros where the reference has them.
    gate = DSelectKGate(3, 2, gamma=gamma, entropy_weight=0.1, unreachable_weight=2.0)
    gate.z.assign(z)
    gate.alpha.assign(alpha)
    np.testing.assert_allclose(gate.expert_weights().numpy(), [3 / 16, 7 / 16, 3 / 16], rtol=1e-6)
    selectors = gate.selector_outputs().numpy()
    np.testing.assert_array_equal(selectors[0], [0, 1, 0, 0])
    gate(tf.zeros([1, 3, 1]), training=True)
    assert float(gate.losses[0]) == pytest.approx(0.1 * np.log(4.0) + 2.0 / 3, rel=1e-6)


def test_dselect_entropy_schedules():
    linear = DSelectKGate(8, 2, entropy_weight=0.5, entropy_schedule="linear", entropy_warmup_steps=10)
    delayed = DSelectKGate(8, 2, entropy_weight=0.5, entropy_schedule="delayed", entropy_warmup_steps=10)
    constant = DSelectKGate(8, 2, entropy_weight=0.5)
    for step, lin, dly in [(0, 0.0, 0.0), (5, 0.25, 0.0), (10, 0.5, 0.5), (40, 0.5, 0.5)]:
        for gate in (linear, delayed, constant):
            gate.step.assign(step)
        assert float(linear.current_entropy_weight()) == pytest.approx(lin)
        assert float(delayed.current_entropy_weight()) == pytest.approx(dly)
        assert float(constant.current_entropy_weight()) == pytest.approx(0.5)
    # Each training call advances the schedule; inference does not.
    gate = DSelectKGate(8, 2)
    gate(tf.zeros([1, 8, 1]), training=True)
    gate(tf.zeros([1, 8, 1]), training=False)
    assert int(gate.step.numpy()) == 1


def test_dselect_rejects_bad_arguments():
    with pytest.raises(ValueError, match="entropy_schedule"):
        DSelectKGate(8, 2, entropy_schedule="cosine")
    with pytest.raises(ValueError, match="gamma"):
        DSelectKGate(8, 2, gamma=0)
    with pytest.raises(ValueError, match="routing_inputs"):
        DSelectKGate(8, 2, per_example=True)(tf.zeros([1, 8, 1]))
    with pytest.raises(ValueError, match="unknown gate type 'mystery'"):
        build_gate("mystery", 8)


# ---------------------------------------------------------------- sparsity from training
def _train_static_gate(num_experts, steps=300):
    """Fit y = (f_2 + f_5) / 2 from fixed expert outputs with a static k=2 gate."""
    rng = np.random.default_rng(0)
    experts = rng.normal(size=(256, num_experts, 1)).astype(np.float32)
    target = tf.constant(0.5 * experts[:, 2, 0] + 0.5 * experts[:, 5, 0])
    experts = tf.constant(experts)
    gate = DSelectKGate(num_experts, 2, gamma=1.0, entropy_weight=0.01)
    optimizer = tf.keras.optimizers.Adam(0.05)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean((gate(experts, training=True)[:, 0] - target) ** 2) + tf.add_n(gate.losses)
        grads = tape.gradient(loss, gate.trainable_variables)
        optimizer.apply_gradients(zip(grads, gate.trainable_variables))

    for _ in range(steps):
        step()
    return gate


@pytest.mark.parametrize("num_experts", [8, 6])
def test_dselect_training_reaches_exact_sparsity(num_experts):
    gate = _train_static_gate(num_experts)
    weights = gate.expert_weights().numpy()
    others = np.delete(weights, [2, 5])
    np.testing.assert_array_equal(others, 0.0)  # exactly zero, not small
    np.testing.assert_allclose(weights[[2, 5]], [0.5, 0.5], atol=1e-3)
    np.testing.assert_allclose(weights.sum(), 1.0, atol=1e-6)
    selectors = gate.selector_outputs().numpy()
    assert set(np.unique(selectors)) <= {0.0, 1.0}  # binary: the choice is locked
    np.testing.assert_array_equal(selectors[:, num_experts:], 0.0)  # nothing on unreachable codes


# ---------------------------------------------------------------- Top-k
@pytest.mark.parametrize("k", [1, 2, 3])
def test_topk_weights_are_softmax_over_top_logits(k):
    gate = TopKGate(8, k)
    x = np.random.default_rng(k).normal(size=(32, 6)).astype(np.float32)
    weights = gate.expert_weights(tf.constant(x)).numpy()
    assert np.all((weights > 0).sum(axis=1) == k)
    logits = dense_np(gate.logits_dense, x)
    expected = np.zeros_like(logits)
    for b in range(len(x)):
        top = np.argsort(-logits[b])[:k]
        expected[b, top] = np_softmax(logits[b, top])
    np.testing.assert_allclose(weights, expected, atol=1e-6)


def test_topk_noise_only_in_training():
    gate = TopKGate(8, 2)
    x = tf.random.normal([64, 6])
    experts = tf.random.normal([64, 8, 3])
    inference = [gate(experts, x, training=False).numpy() for _ in range(2)]
    np.testing.assert_array_equal(inference[0], inference[1])
    clean = tf.einsum("bn,bnd->bd", gate.expert_weights(x), experts).numpy()
    np.testing.assert_allclose(inference[0], clean, atol=1e-6)
    assert not np.allclose(gate(experts, x, training=True).numpy(), clean, atol=1e-4)


@pytest.mark.parametrize("per_example", [True, False])
def test_topk_without_noise_has_only_weights_that_train(per_example, caplog):
    """noise=False: no noise-scale weights (they could get no gradient, and Keras warned about them
    on every trace); every weight gets a gradient through Keras' own training step, which is
    silent; with noise, the noise-scale weights exist and get gradients from the noisy logits."""
    import logging
    for noise in (False, True):
        tf.keras.utils.set_random_seed(0)
        x = tf.random.normal([32, 6])
        inputs = tf.keras.Input([6])
        gate = TopKGate(4, 2, per_example=per_example, noise=noise, load_balance_weight=0.1)
        experts = tf.keras.layers.Dense(4 * 3)(inputs)
        mixture = gate(tf.reshape(experts, [-1, 4, 3]), inputs if per_example else None)
        model = tf.keras.Model(inputs, mixture)
        model.compile(optimizer="sgd", loss="mse")
        with caplog.at_level(logging.WARNING, logger="tensorflow"):
            model.fit(x, tf.random.normal([32, 3]), epochs=1, verbose=0)
        names = [v.name for v in gate.trainable_weights]
        assert any("noise" in name for name in names) == noise, names
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(model(x, training=True) ** 2) + tf.add_n(model.losses)
        grads = tape.gradient(loss, gate.trainable_weights)
        assert all(g is not None for g in grads), [n for n, g in zip(names, grads) if g is None]
        assert "Gradients do not exist" not in caplog.text


def test_topk_static_has_k_nonzeros():
    gate = TopKGate(16, 3, per_example=False)
    weights = gate.expert_weights().numpy()
    assert weights.shape == (16,) and (weights > 0).sum() == 3
    np.testing.assert_allclose(weights.sum(), 1.0, atol=1e-6)


def test_topk_load_balance_loss():
    gate = TopKGate(8, 2, noise=False, load_balance_weight=0.5)
    x = np.random.default_rng(1).normal(size=(40, 6)).astype(np.float32)
    gate(tf.zeros([40, 8, 1]), tf.constant(x), training=True)
    importance = gate.expert_weights(tf.constant(x)).numpy().sum(axis=0)
    cv2 = importance.var() / importance.mean() ** 2
    np.testing.assert_allclose(float(gate.losses[0]), 0.5 * cv2, rtol=1e-4)
    gate(tf.zeros([40, 8, 1]), tf.constant(x), training=False)
    assert not gate.losses


def test_topk_load_estimate_matches_monte_carlo():
    """P(expert i in the top k | other experts' noisy logits fixed) by resampling i's noise."""
    gate = TopKGate(6, 2, noise=True)
    rng = np.random.default_rng(3)
    clean = rng.normal(size=(1, 6)).astype(np.float32)
    std = np.full((1, 6), 0.8, np.float32)
    noisy = clean + rng.normal(size=(1, 6)).astype(np.float32) * std
    prob = gate._load(tf.constant(clean), tf.constant(noisy), tf.constant(std)).numpy()[0]
    draws = 40000
    for i in range(6):
        resampled = np.repeat(noisy, draws, axis=0)
        resampled[:, i] = clean[0, i] + rng.normal(size=draws) * std[0, i]
        in_top = (np.argsort(-resampled, axis=1)[:, :2] == i).any(axis=1).mean()
        assert prob[i] == pytest.approx(in_top, abs=0.01)


# ---------------------------------------------------------------- all gates
ALL_GATES = [
    ("softmax", dict(per_example=True)), ("softmax", dict(per_example=False)),
    ("topk", dict(k=2, per_example=True, load_balance_weight=0.1)), ("topk", dict(k=2, per_example=False)),
    ("dselect_k", dict(k=2, per_example=False)), ("dselect_k", dict(k=2, per_example=True)),
]


def _call(gate, experts, x, training=False):
    return gate(experts, x if gate.per_example else None, training=training)


@pytest.mark.parametrize("gate_type,params", ALL_GATES)
def test_gradients_reach_every_variable(gate_type, params):
    gate = build_gate(gate_type, 5, **params)
    experts, x = tf.random.normal([16, 5, 3]), tf.random.normal([16, 4])
    with tf.GradientTape() as tape:
        out = _call(gate, experts, x, training=True)
        loss = tf.reduce_sum(out * tf.random.normal(out.shape)) + tf.add_n(gate.losses or [0.0])
    grads = tape.gradient(loss, gate.trainable_variables)
    assert gate.trainable_variables
    for var, grad in zip(gate.trainable_variables, grads):
        assert grad is not None, var.name
        assert np.any(tf.convert_to_tensor(grad).numpy() != 0), var.name


@pytest.mark.parametrize("gate_type,params", ALL_GATES)
def test_config_round_trip(gate_type, params):
    gate = build_gate(gate_type, 8, **params)
    experts, x = tf.random.normal([4, 8, 3]), tf.random.normal([4, 5])
    expected = _call(gate, experts, x).numpy()
    clone = type(gate).from_config(gate.get_config())
    _call(clone, experts, x)  # build
    clone.set_weights(gate.get_weights())
    assert clone.get_config() == gate.get_config()
    np.testing.assert_array_equal(_call(clone, experts, x).numpy(), expected)


@pytest.mark.parametrize("gate_type,params", ALL_GATES)
def test_savedmodel_round_trip(gate_type, params):
    gate = build_gate(gate_type, 8, **params)
    experts_in, x_in = tf.keras.Input([8, 3]), tf.keras.Input([5])
    model = tf.keras.Model([experts_in, x_in], _call(gate, experts_in, x_in))
    experts, x = tf.random.normal([4, 8, 3]), tf.random.normal([4, 5])
    with tempfile.TemporaryDirectory() as folder:
        model.save(folder)
        keras_loaded = tf.keras.models.load_model(folder)
        plain_loaded = tf.saved_model.load(folder)
        expected = model([experts, x]).numpy()
        np.testing.assert_array_equal(keras_loaded([experts, x]).numpy(), expected)
        np.testing.assert_array_equal(plain_loaded([experts, x], training=False).numpy(), expected)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("gate_type,params", ALL_GATES)
def test_mixed_precision(policy, gate_type, params):
    tf.keras.mixed_precision.set_global_policy(policy)
    gate = build_gate(gate_type, 8, **params)
    compute = tf.keras.mixed_precision.global_policy().compute_dtype
    experts, x = tf.cast(tf.random.normal([4, 8, 3]), compute), tf.cast(tf.random.normal([4, 5]), compute)
    with tf.GradientTape() as tape:
        out = _call(gate, experts, x, training=True)
    assert np.all(np.isfinite(out.numpy()))
    assert all(g is not None for g in tape.gradient(out, gate.trainable_variables))
    assert all(v.dtype == tf.float32 for v in gate.trainable_variables)
    weights = gate.expert_weights(x if gate.per_example else None)
    assert weights.dtype == tf.float32
    np.testing.assert_allclose(tf.reduce_sum(weights, axis=-1).numpy(), 1.0, atol=1e-6)

"""DSelect-k as the paper writes it (Hazimeh et al., NeurIPS 2021, section 3), in plain numpy.

Read this to learn the maths; models/gates/dselect_k.py computes the same numbers fast (flat
rows, 0/1 exponent matrices, custom gradients), and tests/test_gates.py checks it against
this file. Shapes: `...` is any batch of gates (e.g. [batch] for per-example gating, [] for a
static gate); k selectors; m = ceil(log2 n) bits per selector; 2^m codes, of which the first n
name experts.
"""
import numpy as np


def smooth_step(t: np.ndarray, gamma: float) -> np.ndarray:
    """S(t): 0 for t <= -gamma/2, 1 for t >= gamma/2, a cubic with zero end slopes between."""
    t = np.asarray(t, dtype=np.float64)
    cubic = -2 * t**3 / gamma**3 + 3 * t / (2 * gamma) + 0.5
    return np.where(t <= -gamma / 2, 0.0, np.where(t >= gamma / 2, 1.0, cubic))


def selector(z: np.ndarray, gamma: float) -> np.ndarray:
    """r(z)_i = prod_j (S(z_j) if bit j of code i is 1 else 1 - S(z_j)): [..., m] -> [..., 2^m]."""
    m = z.shape[-1]
    bits = (np.arange(2**m)[:, None] >> np.arange(m)[None, :]) & 1  # [2^m, m]: bit j of code i
    s = smooth_step(z, gamma)[..., None, :]  # [..., 1, m]
    return np.prod(np.where(bits == 1, s, 1 - s), axis=-1)  # [..., 2^m]


def weights(z: np.ndarray, alpha: np.ndarray, num_experts: int, gamma: float) -> np.ndarray:
    """q = sum_l softmax(alpha)_l r(z_l), on the first n codes (not renormalized): [..., n].

    z: [..., k, m] selector logits; alpha: [..., k] selector mixing logits."""
    r = selector(z, gamma)  # [..., k, 2^m]
    a = np.exp(alpha - alpha.max(axis=-1, keepdims=True))  # [..., k]
    a = a / a.sum(axis=-1, keepdims=True)  # softmax(alpha)
    return np.sum(a[..., None] * r, axis=-2)[..., :num_experts]  # [..., n]


def entropy(z: np.ndarray, gamma: float) -> np.ndarray:
    """sum_l H(r(z_l)), with 0 log 0 = 0: 0 exactly when every selector is binary. [..., k, m] -> [...]"""
    r = selector(z, gamma)  # [..., k, 2^m]
    plogp = np.where(r > 0, r * np.log(np.where(r > 0, r, 1.0)), 0.0)  # [..., k, 2^m]
    return -plogp.sum(axis=(-2, -1))  # [...]


def unreachable_penalty(z: np.ndarray, num_experts: int, gamma: float) -> np.ndarray:
    """sum_l (1 / sum_{i<n} r(z_l)_i - 1): 0 exactly when no mass is on codes >= n. [..., k, m] -> [...]"""
    reachable = selector(z, gamma)[..., :num_experts].sum(axis=-1)  # [..., k]
    return np.sum(1.0 / reachable - 1.0, axis=-1)  # [...]


def regularizer(z: np.ndarray, num_experts: int, gamma: float, entropy_weight: float,
                unreachable_weight: float = 1.0) -> np.ndarray:
    """The training loss DSelect-k adds for each gate: [..., k, m] -> [...] (per-example gating averages
    it over the batch). The fast gate's entropy weight may follow a schedule; this is one step of it."""
    return entropy_weight * entropy(z, gamma) + unreachable_weight * unreachable_penalty(z, num_experts, gamma)

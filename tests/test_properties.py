"""Mathematical properties, checked by hypothesis on small random shapes (NumPy, float64)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import crossent

SETTINGS = settings(max_examples=60, deadline=None)
finite = st.floats(-30, 30, allow_nan=False, width=64)


@st.composite
def logits_and_targets(draw, max_rows=6, max_classes=7):
    n = draw(st.integers(1, max_rows))
    c = draw(st.integers(1, max_classes))
    x = draw(hnp.arrays(np.float64, (n, c), elements=finite))
    t = draw(hnp.arrays(np.int64, (n,), elements=st.integers(0, c - 1)))
    return x, t


@SETTINGS
@given(logits_and_targets(), st.floats(-50, 50, width=64))
def test_shift_invariance(xt, shift):
    x, t = xt
    a = crossent.cross_entropy(x, t, reduction="none")
    b = crossent.cross_entropy(x + shift, t, reduction="none")
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(crossent.softmax(x, 1), crossent.softmax(x + shift, 1), atol=1e-12)


@SETTINGS
@given(logits_and_targets())
def test_softmax_rows_sum_to_one_and_log_softmax_consistent(xt):
    x, _ = xt
    p = crossent.softmax(x, 1)
    np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-12)
    assert (p >= 0).all()
    np.testing.assert_allclose(np.exp(crossent.log_softmax(x, 1)), p, rtol=1e-12, atol=1e-300)
    lse = crossent.logsumexp(x, 1, keepdim=True)
    np.testing.assert_allclose(crossent.log_softmax(x, 1), x - lse, atol=1e-12)


@SETTINGS
@given(logits_and_targets(), st.floats(0, 1, width=64))
def test_losses_nonnegative(xt, eps):
    x, t = xt
    assert (crossent.cross_entropy(x, t, reduction="none", label_smoothing=eps) >= 0).all()
    p = crossent.softmax(x, 1)
    assert (crossent.cross_entropy(x, p, reduction="none") >= -1e-12).all()
    q = np.clip(p, 0, 1)
    assert (crossent.binary_cross_entropy(q, q, reduction="none") >= -1e-12).all()


@SETTINGS
@given(logits_and_targets(), st.sampled_from(["none", "sum"]))
def test_index_targets_equal_float_one_hot(xt, reduction):
    """Index targets and float one-hot targets agree exactly where torch says so: every
    reduction without weights; with weights 'none' and 'sum' only (the 'mean' denominators
    differ: sum of target weights vs number of rows)."""
    x, t = xt
    c = x.shape[1]
    onehot = np.eye(c)[t]
    w = np.linspace(0.5, 2.0, c)
    np.testing.assert_allclose(crossent.cross_entropy(x, t, reduction=reduction),
                               crossent.cross_entropy(x, onehot, reduction=reduction), rtol=1e-12)
    np.testing.assert_allclose(crossent.cross_entropy(x, t, weight=w, reduction=reduction),
                               crossent.cross_entropy(x, onehot, weight=w, reduction=reduction),
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(crossent.cross_entropy(x, t), crossent.cross_entropy(x, onehot),
                               rtol=1e-12)


@SETTINGS
@given(logits_and_targets(), st.floats(0, 1, width=64))
def test_label_smoothing_identity(xt, eps):
    """Smoothed loss = (1 - eps) * hard loss + eps * loss against the uniform distribution."""
    x, t = xt
    c = x.shape[1]
    hard = crossent.cross_entropy(x, t, reduction="none")
    uniform = crossent.cross_entropy(x, np.full(x.shape, 1.0 / c), reduction="none")
    smooth = crossent.cross_entropy(x, t, reduction="none", label_smoothing=eps)
    np.testing.assert_allclose(smooth, (1 - eps) * hard + eps * uniform, rtol=1e-10, atol=1e-10)


def _bce_sum(p, y):
    return float(crossent.binary_cross_entropy(p, y, reduction="sum"))


def _finite_difference(f, x, h=1e-6):
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[idx] = h
        g[idx] = (f(x + e) - f(x - e)) / (2 * h)
    return g


@SETTINGS
@given(logits_and_targets(max_rows=4, max_classes=5), st.floats(0, 1, width=64),
       st.sampled_from(["mean", "sum"]), st.booleans())
def test_cross_entropy_gradient_matches_finite_differences(xt, eps, reduction, weighted):
    x, t = xt
    w = np.linspace(0.3, 1.7, x.shape[1]) if weighted else None

    def f(z):
        return float(crossent.cross_entropy(z, t, weight=w, reduction=reduction,
                                            label_smoothing=eps))

    g = crossent.cross_entropy_and_grad(x, t, weight=w, reduction=reduction,
                                        label_smoothing=eps).grad_input
    np.testing.assert_allclose(g, _finite_difference(f, x), rtol=1e-5, atol=1e-6)


@SETTINGS
@given(hnp.arrays(np.float64, (3, 4), elements=st.floats(0.05, 0.95, width=64)),
       hnp.arrays(np.float64, (3, 4), elements=st.floats(0.01, 0.99, width=64)),
       hnp.arrays(np.float64, (3, 4), elements=st.floats(-5, 5, width=64)))
def test_binary_gradients_match_finite_differences(p, y, z):
    g = crossent.binary_cross_entropy_and_grad(p, y, reduction="sum")
    np.testing.assert_allclose(
        g.grad_input,
        _finite_difference(lambda a: _bce_sum(a, y), p),
        rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        g.grad_target,
        _finite_difference(lambda b: _bce_sum(p, b), y),
        rtol=1e-5, atol=1e-5)
    pw = np.array([0.5, 1.0, 2.0, 3.0])
    h = crossent.binary_cross_entropy_with_logits_and_grad(z, y, pos_weight=pw)
    np.testing.assert_allclose(
        h.grad_input,
        _finite_difference(
            lambda a: float(crossent.binary_cross_entropy_with_logits(a, y, pos_weight=pw)), z),
        rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(
        h.grad_target,
        _finite_difference(
            lambda b: float(crossent.binary_cross_entropy_with_logits(z, b, pos_weight=pw)), y),
        rtol=1e-5, atol=1e-7)


@SETTINGS
@given(logits_and_targets(max_rows=3, max_classes=4), st.floats(0, 0.9, width=64))
def test_probability_target_gradients_match_finite_differences(xt, eps):
    x, _ = xt
    q = crossent.softmax(x[::-1].copy(), 1)
    g = crossent.cross_entropy_and_grad(x, q, label_smoothing=eps)
    fx = _finite_difference(lambda a: float(crossent.cross_entropy(a, q, label_smoothing=eps)), x)
    fq = _finite_difference(lambda b: float(crossent.cross_entropy(x, b, label_smoothing=eps)), q)
    np.testing.assert_allclose(g.grad_input, fx, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g.grad_target, fq, rtol=1e-5, atol=1e-6)

"""Edge values where a formula's order of operations decides the last bits (found by fuzzing the
public API against torch): float64 values and gradients, torch tensors and NumPy arrays, must
equal torch's to 1e-12 relative, infinities included."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

import crossent  # noqa: E402

INF = math.inf


def _torch_grads(fn, input, target, **kwargs):
    x = torch.tensor(input, dtype=torch.float64, requires_grad=True)
    y = torch.tensor(target, dtype=torch.float64, requires_grad=True)
    loss = fn(x, y, **kwargs)
    gx, gy = torch.autograd.grad(loss, (x, y))
    return loss.detach(), gx, gy


def _assert_same(ours, ref):
    ours = torch.as_tensor(np.asarray(ours), dtype=torch.float64)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=0, equal_nan=True)


BCE_CASES = [
    # tiny p: log1p(-p) keeps the loss exact where log(1 - p) rounds 1 - p first
    ([1e-10], [0.0]),
    # (not p = 5e-324: torch's own vectorised log1p returns 0 for that subnormal, its scalar BCE
    # kernel 5e-324; crossent follows the torch op there, an absolute difference of 5e-324)
    ([1e-12, 3e-9], [0.25, 0.0]),
    # target gradient -logit(p) near p = 1/2 (cancellation), and at the ends
    ([0.5000001], [0.0]),
    ([0.4999999, 0.7], [1.0, 0.3]),
    ([1 - 1e-9], [0.5]),
]


@pytest.mark.parametrize(("p", "y"), BCE_CASES)
def test_binary_cross_entropy_edge_values(p, y):
    ref_loss, ref_gx, ref_gy = _torch_grads(F.binary_cross_entropy, p, y, reduction="sum")
    loss, gx, gy = _torch_grads(crossent.binary_cross_entropy, p, y, reduction="sum")
    for ours, ref in ((loss, ref_loss), (gx, ref_gx), (gy, ref_gy)):
        _assert_same(ours, ref)
    out = crossent.binary_cross_entropy_and_grad(np.array(p), np.array(y), reduction="sum")
    for ours, ref in ((out.loss, ref_loss), (out.grad_input, ref_gx), (out.grad_target, ref_gy)):
        _assert_same(ours, ref)


LOGIT_CASES = [
    # input gradient with pos_weight: torch's grouping (pw y + 1 - y) sigmoid(x) - pw y
    ([33.10197013164175], [1.0], [3.68881033496826]),
    ([-30.0, 12.5, 0.0], [0.0, 1.0, 0.5], [0.3, 2.0, 7.0]),
    # target gradient log_sigmoid(-x) - pw log_sigmoid(x): +inf at x = -inf with pw < 1
    ([-INF], [0.5], [0.5]),
    ([INF, -INF], [0.5, 0.2], [2.0, 1.0]),
]


@pytest.mark.parametrize(("x", "y", "pw"), LOGIT_CASES)
def test_binary_cross_entropy_with_logits_edge_values(x, y, pw):
    pos_weight = torch.tensor(pw, dtype=torch.float64)
    kwargs = dict(reduction="sum", pos_weight=pos_weight)
    ref = _torch_grads(F.binary_cross_entropy_with_logits, x, y, **kwargs)
    ours = _torch_grads(crossent.binary_cross_entropy_with_logits, x, y, **kwargs)
    for a, b in zip(ours, ref, strict=True):
        _assert_same(a, b)
    out = crossent.binary_cross_entropy_with_logits_and_grad(
        np.array(x), np.array(y), reduction="sum", pos_weight=np.array(pw)
    )
    for a, b in zip((out.loss, out.grad_input, out.grad_target), ref, strict=True):
        _assert_same(a, b)


NLL_CASES = [
    # the total kept weight is 0: the target entry is -0/0 = NaN, every other entry stays 0
    dict(target=[0], weight=[0.0, 1.0, 1.0], reduction="mean", upstream=1.0),
    # an infinite upstream gradient for one position touches only its target entry
    dict(target=[0, 2], weight=None, reduction="none", upstream=[INF, 1.0]),
    dict(target=[1, -100], weight=[0.5, 2.0, 1.0], reduction="none", upstream=[-INF, INF]),
]


@pytest.mark.parametrize("case", NLL_CASES, ids=str)
def test_nll_loss_writes_only_target_entries(case):
    logp = [[-0.5, -1.0, -2.0], [-1.0, -2.0, -0.1]][: len(case["target"])]
    target = torch.tensor(case["target"])
    weight = None if case["weight"] is None else torch.tensor(case["weight"], dtype=torch.float64)
    upstream = torch.tensor(case["upstream"], dtype=torch.float64)
    grads = []
    for fn in (F.nll_loss, crossent.nll_loss):
        x = torch.tensor(logp, dtype=torch.float64, requires_grad=True)
        loss = fn(x, target, weight, reduction=case["reduction"])
        grads.append(torch.autograd.grad(loss, x, upstream)[0])
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-12, atol=0, equal_nan=True)
    out = crossent.nll_loss_and_grad(
        np.array(logp), target.numpy(), None if weight is None else weight.numpy(),
        reduction=case["reduction"], grad_output=upstream.numpy(),
    )  # fmt: skip
    _assert_same(out.grad_input, grads[0])


ACCEPTED_ARGUMENTS = [
    dict(ignore_index=np.int64(1)),
    dict(ignore_index=np.int32(-100)),
    dict(ignore_index=torch.tensor(2)),
    dict(label_smoothing=np.float32(0.25)),
    dict(label_smoothing=np.float64(0.1)),
    dict(label_smoothing=True),
    dict(label_smoothing=torch.tensor(0.3)),
    dict(label_smoothing=np.int64(0)),
]


@pytest.mark.parametrize("kwargs", ACCEPTED_ARGUMENTS, ids=repr)
def test_argument_types_torch_accepts(kwargs):
    """NumPy scalars and 0-d tensors are accepted wherever torch's argument parser takes them."""
    x = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    target = torch.tensor([0, 1, 2, 1])
    expected = F.cross_entropy(x, target, **kwargs)
    torch.testing.assert_close(crossent.cross_entropy(x, target, **kwargs), expected, rtol=1e-12,
                               atol=0)  # fmt: skip
    ours = crossent.cross_entropy(x.numpy(), target.numpy(), **kwargs)
    _assert_same(ours, expected)


REJECTED_ARGUMENTS = [
    dict(ignore_index=True),
    dict(ignore_index=1.0),
    dict(ignore_index=np.float64(1.0)),
    dict(label_smoothing="0.1"),
    dict(label_smoothing=torch.tensor([0.1])),
]


@pytest.mark.parametrize("kwargs", REJECTED_ARGUMENTS, ids=repr)
def test_argument_types_torch_rejects(kwargs):
    x, target = torch.randn(4, 3), torch.tensor([0, 1, 2, 1])
    with pytest.raises(TypeError):
        F.cross_entropy(x, target, **kwargs)
    with pytest.raises(TypeError, match="must be"):
        crossent.cross_entropy(x, target, **kwargs)


@pytest.mark.parametrize("dim", [np.int64(1), torch.tensor(-1)], ids=repr)
def test_softmax_dim_as_numpy_or_tensor_integer(dim):
    x = torch.randn(2, 5, dtype=torch.float64)
    torch.testing.assert_close(crossent.softmax(x, dim), F.softmax(x, dim), rtol=1e-12, atol=0)
    torch.testing.assert_close(
        crossent.logsumexp(x, dim), torch.logsumexp(x, int(dim)), rtol=1e-12, atol=0
    )


@pytest.mark.parametrize("row", [[INF, 1.0, 0.0], [math.nan, 1.0, 0.0], [-INF, -INF, -INF]])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("impl", ["reference", "fused", "numpy"])
def test_ignored_rows_with_non_finite_logits_follow_torch(row, smoothing, impl):
    """Torch's log-softmax backward gives an ignored row 0 * softmax: NaN for non-finite logits,
    and an infinite upstream gradient at an ignored position changes nothing."""
    x = torch.tensor([row, [0.5, 1.0, -2.0], [0.1, 0.2, 0.3]], dtype=torch.float64)
    target = torch.tensor([0, 1, 0])
    upstream = torch.tensor([1.0, 2.0, INF], dtype=torch.float64)
    kwargs = dict(ignore_index=0, reduction="none", label_smoothing=smoothing)
    leaf = x.clone().requires_grad_()
    expected = torch.autograd.grad(F.cross_entropy(leaf, target, **kwargs), leaf, upstream)[0]
    if impl == "numpy":
        out = crossent.cross_entropy_and_grad(
            x.numpy(), target.numpy(), grad_output=upstream.numpy(), **kwargs
        )
        _assert_same(out.grad_input, expected)
        return
    leaf = x.clone().requires_grad_()
    loss = crossent.cross_entropy(leaf, target, impl=impl, **kwargs)
    (grad,) = torch.autograd.grad(loss, leaf, upstream)
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=0, equal_nan=True)


@pytest.mark.parametrize(
    ("q", "smoothing"),
    [
        ([0.2, 0.3, 0.5], 1.0),
        ([0.0, 0.3, 0.7], 0.5),
        ([0.0, 0.3, 0.7], 0.0),
        ([0.1, 0.2, 0.7], 0.2),
    ],
)
@pytest.mark.parametrize("impl", ["reference", "fused"])
def test_probability_targets_at_a_masked_logit(q, smoothing, impl):
    """A -inf logit (a masked class): torch smooths the target first, q' = q (1 - eps) + eps/C,
    so the loss is +inf where q' > 0 there and NaN where q' = 0 (0 * -inf)."""
    x = torch.tensor([[-INF, 1.0, 2.0], [0.5, -1.0, 0.0]], dtype=torch.float64)
    target = torch.tensor([q, [0.2, 0.2, 0.6]], dtype=torch.float64)
    kwargs = dict(reduction="none", label_smoothing=smoothing)
    results = []
    for fn in (F.cross_entropy, lambda *a, **k: crossent.cross_entropy(*a, impl=impl, **k)):
        leaf = x.clone().requires_grad_()
        loss = fn(leaf, target, **kwargs)
        results.append((loss.detach(), torch.autograd.grad(loss, leaf, torch.ones(2))[0]))
    (ref_loss, ref_grad), (loss, grad) = results
    torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=0, equal_nan=True)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-12, atol=1e-15, equal_nan=True)


@pytest.mark.parametrize("value", [2.0, math.nan, INF, -INF])
@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_zero_dim_softmax_of_non_finite_values(value, name):
    expected = getattr(torch, name)(torch.tensor(value, dtype=torch.float64), 0)
    _assert_same(getattr(crossent, name)(np.array(value), 0), expected)


@pytest.mark.parametrize("impl", ["reference", "fused"])
@pytest.mark.parametrize("targets", [[0], [0, -100], [-100, -100]], ids=str)
def test_smoothed_mean_with_zero_kept_weight_is_nan(impl, targets):
    """Every kept target has weight 0 (D = 0): torch's smoothed mean is NaN, not inf, and so is
    the gradient of every kept row; ignored rows stay 0."""
    x = torch.tensor([[0.0, 1.0], [2.0, 3.0]], dtype=torch.float64)[: len(targets)]
    target = torch.tensor(targets)
    weight = torch.tensor([0.0, 1.0], dtype=torch.float64)
    results = []
    for fn in (F.cross_entropy, lambda *a, **k: crossent.cross_entropy(*a, impl=impl, **k)):
        leaf = x.clone().requires_grad_()
        loss = fn(leaf, target, weight, label_smoothing=0.1)
        results.append((loss.detach(), torch.autograd.grad(loss, leaf)[0]))
    (ref_loss, ref_grad), (loss, grad) = results
    assert torch.isnan(ref_loss) and torch.isnan(loss)
    torch.testing.assert_close(grad, ref_grad, equal_nan=True)


def test_smoothed_linear_mean_with_zero_kept_weight_is_nan():
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 3, dtype=torch.float64)
    args = (x, w, torch.tensor([0, 0]))
    kwargs = dict(weight=torch.tensor([0.0, 1.0, 1.0, 1.0], dtype=torch.float64),
                  label_smoothing=0.1)  # fmt: skip
    assert torch.isnan(F.linear_cross_entropy(*args, **kwargs))
    assert torch.isnan(crossent.linear_cross_entropy(*args, **kwargs))


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool], ids=str)
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_probability_targets_accept_integer_and_bool_weights(dtype, smoothing):
    """torch promotes an integer or bool class weight on the probability path."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, generator=gen, dtype=torch.float64)
    q = torch.softmax(torch.randn(2, 3, generator=gen, dtype=torch.float64), 1)
    weight = torch.tensor([1, 0, 2]).to(dtype)
    expected = F.cross_entropy(x, q, weight, label_smoothing=smoothing)
    ours = crossent.cross_entropy(x, q, weight, label_smoothing=smoothing)
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=0)
    _assert_same(crossent.cross_entropy(x.numpy(), q.numpy(), weight.numpy(),
                                        label_smoothing=smoothing), expected)  # fmt: skip


@pytest.mark.parametrize("shape", [(0, 2, 2), (2, 2, 0)])
def test_empty_k_dim_input_accepts_uint8_targets(shape):
    x = torch.randn(shape, dtype=torch.float64)
    target = torch.zeros((shape[0], shape[2]), dtype=torch.uint8)
    expected = F.cross_entropy(x, target, reduction="sum")
    torch.testing.assert_close(crossent.cross_entropy(x, target, reduction="sum"), expected)


@pytest.mark.parametrize("shape", [(1, 3), (3, 1), (1, 1, 3)], ids=str)
@pytest.mark.parametrize("impl", ["reference", "fused", "numpy"])
def test_k_dim_input_takes_any_weight_of_c_elements(shape, impl):
    """torch accepts a class weight of any shape with C elements for (N, C, d...) inputs (without
    label smoothing); the fused path used to misread a (C, 1) weight."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 2, generator=gen, dtype=torch.float64)
    target = torch.tensor([[0, 1], [2, 0]])
    weight = torch.rand(3, generator=gen, dtype=torch.float64).reshape(shape)
    leaf = x.clone().requires_grad_()
    expected = F.cross_entropy(leaf, target, weight)
    (expected_grad,) = torch.autograd.grad(expected, leaf)
    if impl == "numpy":
        out = crossent.cross_entropy_and_grad(x.numpy(), target.numpy(), weight.numpy())
        _assert_same(out.loss, expected.detach())
        _assert_same(out.grad_input, expected_grad)
        return
    leaf = x.clone().requires_grad_()
    loss = crossent.cross_entropy(leaf, target, weight, impl=impl)
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(torch.autograd.grad(loss, leaf)[0], expected_grad, rtol=1e-12,
                               atol=1e-15)  # fmt: skip


@pytest.mark.parametrize("shape", [(0,), (0, 3), (2, 0)], ids=str)
@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_softmax_of_an_empty_integer_tensor_is_returned_unchanged(shape, name):
    """torch runs no kernel on an empty integer tensor (a non-empty one is NotImplementedError)."""
    x = torch.empty(shape, dtype=torch.long)
    expected = getattr(F, name)(x, -1)
    for ours in (getattr(crossent, name)(x, -1), getattr(crossent, name)(x.numpy(), -1)):
        assert tuple(ours.shape) == tuple(expected.shape)
        assert str(ours.dtype).endswith("int64")


def test_numpy_results_are_arrays_even_when_reduced():
    """The result has the input's array type: 0-d ndarrays, not NumPy scalars."""
    x = np.array([[0.1, 0.2, 0.7], [0.8, 0.1, 0.1]])
    t = np.array([2, 0])
    results = [
        crossent.cross_entropy(x, t), crossent.nll_loss(np.log(x), t),
        crossent.binary_cross_entropy(x, x), crossent.binary_cross_entropy_with_logits(x, x),
        crossent.softmax(np.array(2.0), 0), crossent.log_softmax(np.array(2.0), 0),
        crossent.logsumexp(x, (0, 1)), crossent.cross_entropy_and_grad(x, t).loss,
        *crossent.cross_entropy_with_extras(x, t, z_loss=1e-3),
    ]  # fmt: skip
    assert all(type(r) is np.ndarray for r in results), [type(r) for r in results]

"""Losses under ``torch.autocast`` (CPU) give what torch's own losses give there.

torch casts float16/bfloat16 arguments of its losses to float32 and returns a float32 loss;
crossent does the same at its boundary (``crossent._autocast``), the fused kernels reading the
half logits as they are. Tolerances: losses agree to float32 rounding (``assert_close``'s
float32 default); gradients reaching bfloat16/float16 logits are float32 values rounded once to
the half dtype by both, and the float32 values may differ in their last bits, so they agree to
one half-precision unit of the largest gradient.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

import crossent  # noqa: E402

HALF = [torch.bfloat16, torch.float16]


def half_logits(dtype, shape=(12, 9), seed=0):
    """Logits as a model under autocast makes them: a float32 layer's half-precision output."""
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(shape[0], 16, *shape[2:], generator=gen).movedim(1, -1)
    layer = torch.nn.Linear(16, shape[1])
    with torch.no_grad():
        layer.weight.copy_(torch.randn(shape[1], 16, generator=gen))
    return hidden, layer


def index_target(n, c, seed=1, ignored=2):
    gen = torch.Generator().manual_seed(seed)
    target = torch.randint(0, c, (n,), generator=gen)
    target[:ignored] = -100
    return target


def run_both(dtype, ours, theirs, layer, hidden):
    """(loss, weight gradient) of crossent's and torch's loss on the layer's autocast output."""
    results = []
    for loss_fn in (ours, theirs):
        layer.zero_grad()
        with torch.autocast("cpu", dtype=dtype):
            logits = layer(hidden)
            assert logits.dtype == dtype
            loss = loss_fn(logits)
        loss.sum().backward()
        results.append((loss.detach(), layer.weight.grad.clone()))
    return results


def assert_same(dtype, mine, torchs):
    (loss, grad), (ref_loss, ref_grad) = mine, torchs
    assert loss.dtype == ref_loss.dtype == torch.float32
    torch.testing.assert_close(loss, ref_loss)
    one_unit = torch.finfo(dtype).eps * ref_grad.abs().max().item()
    torch.testing.assert_close(grad, ref_grad, atol=one_unit, rtol=0)


CE_CASES = {
    "index": dict(),
    "weights+smoothing": dict(weight=torch.linspace(0.5, 1.5, 9), label_smoothing=0.1),
    "half class weights": dict(weight=torch.linspace(0.5, 1.5, 9).bfloat16()),
}


@pytest.mark.parametrize("impl", ["auto", "reference", "torch", "fused"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("case", CE_CASES, ids=str)
@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_cross_entropy_class_indices(dtype, case, reduction, impl):
    hidden, layer = half_logits(dtype)
    target = index_target(12, 9)
    kwargs = dict(CE_CASES[case], reduction=reduction)
    mine, torchs = run_both(
        dtype,
        lambda z: crossent.cross_entropy(z, target, impl=impl, **kwargs),
        lambda z: F.cross_entropy(z, target, **kwargs),
        layer,
        hidden,
    )
    assert_same(dtype, mine, torchs)


@pytest.mark.parametrize("impl", ["auto", "reference", "torch", "fused"])
@pytest.mark.parametrize("target_dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_cross_entropy_probabilities_and_k_dim(dtype, target_dtype, impl):
    hidden, layer = half_logits(dtype, shape=(4, 9, 3))
    gen = torch.Generator().manual_seed(5)
    probs = torch.softmax(torch.randn(4, 9, 3, generator=gen), 1).to(target_dtype)
    mine, torchs = run_both(
        dtype,
        lambda z: crossent.cross_entropy(z.movedim(-1, 1), probs, impl=impl, label_smoothing=0.05),
        lambda z: F.cross_entropy(z.movedim(-1, 1), probs, label_smoothing=0.05),
        layer,
        hidden,
    )
    assert_same(dtype, mine, torchs)


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_cross_entropy_in_place_and_with_extras(dtype):
    hidden, layer = half_logits(dtype)
    target = index_target(12, 9)
    mine, torchs = run_both(
        dtype,
        lambda z: crossent.cross_entropy(z * 1, target, inplace_backward=True),
        lambda z: F.cross_entropy(z, target),
        layer,
        hidden,
    )
    assert_same(dtype, mine, torchs)
    with torch.autocast("cpu", dtype=dtype):
        out = crossent.cross_entropy_with_extras(layer(hidden), target, z_loss=1e-3)
    assert out.loss.dtype == out.z_loss.dtype == out.lse.dtype == torch.float32


@pytest.mark.parametrize("impl", ["auto", "reference"])
@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_nll_and_binary_losses(dtype, impl):
    hidden, layer = half_logits(dtype)
    target = index_target(12, 9)
    gen = torch.Generator().manual_seed(9)
    soft = torch.rand(12, 9, generator=gen)
    pos_weight = torch.linspace(0.5, 2.0, 9).to(dtype)
    pairs = [
        (lambda z: crossent.nll_loss(torch.log_softmax(z, 1), target, impl=impl),
         lambda z: F.nll_loss(torch.log_softmax(z, 1), target)),
        (lambda z: crossent.binary_cross_entropy_with_logits(z, soft, pos_weight=pos_weight,
                                                             impl=impl),
         lambda z: F.binary_cross_entropy_with_logits(z, soft, pos_weight=pos_weight)),
        # z / 8 keeps float16's sigmoid below 1 (at 1 both gradients are inf - inf = NaN)
        (lambda z: crossent.binary_cross_entropy(torch.sigmoid(z / 8), soft, impl=impl),
         lambda z: F.binary_cross_entropy(torch.sigmoid(z / 8), soft)),
    ]  # fmt: skip
    for ours, theirs in pairs:
        mine, torchs = run_both(dtype, ours, theirs, layer, hidden)
        assert_same(dtype, mine, torchs)


def test_float32_logits_with_half_class_weights_as_torch():
    """Under autocast torch casts a half class weight to float32, so this mix is accepted."""
    x = torch.randn(6, 5)
    target = torch.tensor([0, 1, 2, 3, 4, 0])
    weight = torch.linspace(0.5, 1.5, 5).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = F.cross_entropy(x, target, weight)
        for impl in ("auto", "reference", "torch", "fused"):
            torch.testing.assert_close(crossent.cross_entropy(x, target, weight, impl=impl), ref)
    with pytest.raises(RuntimeError, match="dtype"):  # outside autocast: a dtype mismatch
        crossent.cross_entropy(x, target, weight)


def test_autocast_off_changes_nothing():
    x = torch.randn(6, 5).bfloat16()
    target = torch.tensor([0, 1, 2, 3, 4, 0])
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=False):
        assert crossent.cross_entropy(x, target).dtype == torch.bfloat16
    assert crossent.cross_entropy(x, target).dtype == torch.bfloat16


@pytest.mark.parametrize("impl", ["auto", "reference"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("probabilities", [False, True], ids=["index", "probabilities"])
@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_linear_cross_entropy_as_torch_composite(dtype, probabilities, reduction, impl):
    """torch's ``F.cross_entropy(F.linear(x, W, b), ...)`` under autocast: the linear in the
    autocast dtype, the loss in float32. The blocked path rounds dW once from a float32
    accumulator where torch's GEMM rounds it too, so gradients agree to one half-precision
    unit of their largest entry."""
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(10, 16, generator=gen, requires_grad=True)
    w = torch.randn(30, 16, generator=gen, requires_grad=True)
    b = torch.randn(30, generator=gen, requires_grad=True)
    if probabilities:
        target = torch.softmax(torch.randn(10, 30, generator=gen), 1)
        kwargs = dict(reduction=reduction, label_smoothing=0.05)
    else:
        target = index_target(10, 30)
        kwargs = dict(reduction=reduction, label_smoothing=0.1, weight=torch.rand(30) + 0.5)
    results = []
    for loss_fn in (
        lambda: crossent.linear_cross_entropy(x, w, target, linear_bias=b, impl=impl, **kwargs),
        lambda: F.cross_entropy(F.linear(x, w, b), target, **kwargs),
    ):
        with torch.autocast("cpu", dtype=dtype):
            loss = loss_fn()
        results.append((loss.detach(), *torch.autograd.grad(loss.sum(), (x, w, b))))
    (loss, *grads), (ref, *ref_grads) = results
    assert loss.dtype == ref.dtype == torch.float32
    torch.testing.assert_close(loss, ref)
    for grad, ref_grad in zip(grads, ref_grads, strict=True):
        assert grad.dtype == ref_grad.dtype == torch.float32
        one_unit = torch.finfo(dtype).eps * ref_grad.abs().max().item()
        torch.testing.assert_close(grad, ref_grad, atol=one_unit, rtol=0)


def test_compiled_step_under_autocast_equals_eager():
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(11)
    hidden = torch.randn(10, 16, generator=gen)
    weight = torch.randn(30, 16, generator=gen, requires_grad=True)
    target = index_target(10, 30)

    def step(h, y):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = F.linear(h, weight)
            return crossent.cross_entropy(logits, y), crossent.linear_cross_entropy(h, weight, y)

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    for got, expected in zip(compiled(hidden, target), step(hidden, target), strict=True):
        assert got.dtype == expected.dtype == torch.float32
        torch.testing.assert_close(got, expected)

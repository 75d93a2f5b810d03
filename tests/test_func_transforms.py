"""torch.func transforms (grad, vmap, jacrev; per-sample gradients) against torch's own losses.

The fused kernels compute their gradient in the forward pass, which the transforms cannot see
through: under a transform ``impl="auto"`` uses the reference (its autograd is written as
torch.func asks: ``setup_context`` and a generated vmap rule), an explicit fused choice raises.
Forward mode (jvp, jacfwd, hessian) comes from the same analytic gradients.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

import crossent  # noqa: E402

GEN = torch.Generator().manual_seed(3)
X = torch.randn(6, 5, generator=GEN, dtype=torch.float64)
Y = torch.tensor([0, 4, 2, -100, 1, 3])
Y_KEPT = torch.tensor([0, 4, 2, 2, 1, 3])
W = torch.linspace(0.5, 1.5, 5, dtype=torch.float64)
P = torch.softmax(torch.randn(6, 5, generator=GEN, dtype=torch.float64), 1)
B = torch.rand(6, 5, generator=GEN, dtype=torch.float64)

# (name, crossent loss of (input, target), torch loss of (input, target), target)
LOSSES = [
    ("index", crossent.cross_entropy, F.cross_entropy, Y),
    (
        "weights+smoothing",
        lambda x, y, **kw: crossent.cross_entropy(x, y, W, label_smoothing=0.1, **kw),
        lambda x, y, **kw: F.cross_entropy(x, y, W, label_smoothing=0.1, **kw),
        Y,
    ),
    ("probabilities", crossent.cross_entropy, F.cross_entropy, P),
    ("nll", crossent.nll_loss, F.nll_loss, Y),
    ("bce with logits", crossent.binary_cross_entropy_with_logits,
     F.binary_cross_entropy_with_logits, B),
]  # fmt: skip


@pytest.mark.parametrize(("name", "ours", "theirs", "target"), LOSSES, ids=[c[0] for c in LOSSES])
def test_grad_and_jacrev(name, ours, theirs, target):
    expected = torch.func.grad(lambda z: theirs(z, target))(X)
    torch.testing.assert_close(torch.func.grad(lambda z: ours(z, target))(X), expected)
    hessian = torch.func.jacrev(torch.func.jacrev(lambda z: theirs(z, target)))(X)
    ours_hessian = torch.func.jacrev(torch.func.jacrev(lambda z: ours(z, target)))(X)
    torch.testing.assert_close(ours_hessian, hessian)


@pytest.mark.parametrize(("name", "ours", "theirs", "target"), LOSSES, ids=[c[0] for c in LOSSES])
def test_per_sample_gradients(name, ours, theirs, target):
    """vmap over (input row, target row) of grad: the per-sample gradient recipe."""
    if name in ("index", "weights+smoothing", "nll"):
        target = Y_KEPT  # a single ignored sample has a 0/0 mean, NaN in both

    def per_sample(loss):
        return torch.vmap(torch.func.grad(lambda z, y: loss(z[None], y[None])))(X, target)

    torch.testing.assert_close(per_sample(ours), per_sample(theirs))


def test_vmap_of_the_loss_itself():
    batch = torch.stack([X, 2 * X, -X])
    ours = torch.vmap(lambda z: crossent.cross_entropy(z, Y, reduction="none"))(batch)
    theirs = torch.vmap(lambda z: F.cross_entropy(z, Y, reduction="none"))(batch)
    torch.testing.assert_close(ours, theirs)


def test_out_of_range_target_under_vmap_is_an_index_error():
    bad = torch.tensor([0, 1, 7, 3, 2, 1])
    with pytest.raises(IndexError, match="Target 7"):
        torch.vmap(torch.func.grad(lambda z, y: crossent.cross_entropy(z[None], y[None])))(X, bad)


def test_explicit_fused_choice_under_a_transform_raises():
    with pytest.raises(ValueError, match=r"torch.func transforms.*impl='reference'"):
        torch.func.grad(lambda z: crossent.cross_entropy(z, Y, impl="fused"))(X)


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize(("name", "ours", "theirs", "target"), LOSSES, ids=[c[0] for c in LOSSES])
def test_forward_mode_jvp_and_hessian(name, ours, theirs, target, reduction):
    def mine(z):
        return ours(z, target, reduction=reduction)

    def torchs(z):
        return theirs(z, target, reduction=reduction)

    tangent = torch.randn(X.shape, generator=torch.Generator().manual_seed(4), dtype=X.dtype)
    _, expected = torch.func.jvp(torchs, (X,), (tangent,))
    torch.testing.assert_close(torch.func.jvp(mine, (X,), (tangent,))[1], expected)
    torch.testing.assert_close(torch.func.hessian(mine)(X), torch.func.hessian(torchs)(X))


def test_forward_mode_k_dim_and_target_tangent():
    x = torch.randn(2, 5, 3, generator=GEN, dtype=torch.float64)
    y = torch.tensor([[0, 4, -100], [2, 2, 1]])
    jac = torch.func.jacfwd(lambda z: crossent.cross_entropy(z, y, reduction="none"))(x)
    torch.testing.assert_close(jac, torch.func.jacfwd(lambda z: F.cross_entropy(z, y,
                                                                    reduction="none"))(x))
    tangent = torch.randn(P.shape, generator=GEN, dtype=P.dtype)
    _, ours = torch.func.jvp(lambda q: crossent.cross_entropy(X, q, W), (P,), (tangent,))
    _, theirs = torch.func.jvp(lambda q: F.cross_entropy(X, q, W), (P,), (tangent,))
    torch.testing.assert_close(ours, theirs)


def test_linear_cross_entropy_under_transforms():
    weight = torch.randn(7, 5, generator=GEN, dtype=torch.float64)
    target = torch.tensor([0, 1, 6, -100, 2, 5])
    with pytest.raises(NotImplementedError, match=r"torch.func transforms.*impl='reference'"):
        torch.func.grad(lambda w: crossent.linear_cross_entropy(X, w, target))(weight)
    ours = torch.func.grad(
        lambda w: crossent.linear_cross_entropy(X, w, target, impl="reference")
    )(weight)
    theirs = torch.func.grad(lambda w: F.cross_entropy(X @ w.T, target))(weight)
    torch.testing.assert_close(ours, theirs)


def test_compiled_reference_traces_without_graph_breaks():
    """torch.compile cannot trace an autograd.Function that defines ``jvp``: compiled code takes
    the reference's variant without it (BCE with logits reads no values, so it traces whole)."""
    torch._dynamo.reset()
    x = X.clone().requires_grad_()

    def loss(z):
        return crossent.binary_cross_entropy_with_logits(z, B, reduction="sum")

    compiled = torch.compile(loss, backend="aot_eager", fullgraph=True)
    got = compiled(x)
    got.backward()
    expected = torch.func.grad(lambda z: F.binary_cross_entropy_with_logits(z, B, reduction="sum"))
    torch.testing.assert_close(got, F.binary_cross_entropy_with_logits(X, B, reduction="sum"))
    torch.testing.assert_close(x.grad, expected(X))


def test_vmap_over_binary_cross_entropy_checks_the_whole_batch():
    # the [0, 1] check reads the values underneath the vmap wrapper (it raised vmap's
    # data-dependent control flow error for every call)
    p = torch.rand(8, 3, dtype=torch.float64) * 0.9 + 0.05
    t = torch.rand(8, 3, dtype=torch.float64)
    ours = torch.func.vmap(torch.func.grad(crossent.binary_cross_entropy))(p, t)
    theirs = torch.func.vmap(torch.func.grad(torch.nn.functional.binary_cross_entropy))(p, t)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=0)
    bad = p.clone()
    bad[3, 1] = 1.5
    with pytest.raises(RuntimeError, match=r"got 1\.5 at position \(3, 1\)"):
        torch.func.vmap(crossent.binary_cross_entropy)(bad, t)


def test_forward_mode_dual_tensors_outside_torch_func():
    # torch.autograd.forward_ad: plain eager calls of the reference take a Function without jvp,
    # so a dual level must route to the one with it (impl="auto" would be torch's own kernel)
    import functools

    import torch.autograd.forward_ad as fwAD

    x = torch.randn(3, 4, dtype=torch.float64)
    v = torch.randn(3, 4, dtype=torch.float64)
    t = torch.tensor([0, 1, 2])
    tangents = []
    reference = functools.partial(crossent.nll_loss, impl="reference")
    for loss in (reference, torch.nn.functional.nll_loss):
        with fwAD.dual_level():
            tangents.append(fwAD.unpack_dual(loss(fwAD.make_dual(x, v), t)).tangent)
    torch.testing.assert_close(tangents[0], tangents[1], rtol=1e-12, atol=0)

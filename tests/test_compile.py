"""torch.compile(fullgraph=True) traces the reference paths too: their value checks (target
range, BCE's [0, 1] domain) run inside custom ops, so the graph holds no host read of tensor
values, and the checks still raise at run time. (The fused paths' compile tests are in
test_fused.py and test_linear.py.)"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

import crossent  # noqa: E402

GEN = torch.Generator().manual_seed(8)
X = torch.randn(6, 5, generator=GEN)
Y = torch.tensor([0, 4, -100, 2, 1, 3])
P = torch.rand(6, 5, generator=GEN)
H = torch.randn(6, 4, generator=GEN)
W = torch.randn(5, 4, generator=GEN)

CASES = {
    "cross_entropy reference": (
        lambda x: crossent.cross_entropy(x, Y, impl="reference", label_smoothing=0.1),
        lambda x: F.cross_entropy(x, Y, label_smoothing=0.1),
    ),
    "nll_loss": (
        lambda x: crossent.nll_loss(torch.log_softmax(x, 1), Y),
        lambda x: F.nll_loss(torch.log_softmax(x, 1), Y),
    ),
    "binary_cross_entropy": (
        lambda x: crossent.binary_cross_entropy(torch.sigmoid(x), P, reduction="none"),
        lambda x: F.binary_cross_entropy(torch.sigmoid(x), P, reduction="none"),
    ),
    "linear_cross_entropy reference": (
        lambda w: crossent.linear_cross_entropy(H, w, Y, impl="reference"),
        lambda w: F.cross_entropy(H @ w.T, Y),
    ),
}


@pytest.mark.parametrize("name", CASES)
def test_reference_paths_compile_whole(name):
    ours, theirs = CASES[name]
    torch._dynamo.reset()
    arg = W if name.startswith("linear") else X
    leaf = arg.clone().requires_grad_()
    loss = torch.compile(ours, backend="aot_eager", fullgraph=True)(leaf)
    loss.sum().backward()
    ref_leaf = arg.clone().requires_grad_()
    ref = theirs(ref_leaf)
    ref.sum().backward()
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(leaf.grad, ref_leaf.grad)


def test_value_checks_still_raise_when_compiled():
    torch._dynamo.reset()
    nll = torch.compile(lambda x, y: crossent.nll_loss(x, y), backend="aot_eager", fullgraph=True)
    with pytest.raises(IndexError, match="Target 7"):
        nll(X, torch.tensor([0, 1, 7, 2, 3, 4]))
    bce = torch.compile(crossent.binary_cross_entropy, backend="aot_eager", fullgraph=True)
    with pytest.raises(RuntimeError, match=r"between 0 and 1: got 1\.5"):
        bce(torch.tensor([0.5, 1.5]), torch.tensor([0.0, 1.0]))


@pytest.mark.parametrize("fullgraph", [True, False])
def test_inplace_into_a_parameter_is_refused_when_compiled_too(fullgraph):
    # the compiled graph copied the mutated logits back into the Parameter: silently corrupted
    torch._dynamo.reset()
    p = torch.nn.Parameter(torch.randn(4, 5))
    y = torch.tensor([0, 2, 4, 1])
    before = p.detach().clone()
    compiled = torch.compile(
        lambda: crossent.cross_entropy(p, y, inplace_backward=True),
        backend="aot_eager", fullgraph=fullgraph,
    )  # fmt: skip
    with pytest.raises(RuntimeError, match="leaf tensor"):
        compiled()
    assert torch.equal(p.detach(), before)


@pytest.mark.parametrize("dynamic", [None, True])
def test_a_label_smoothing_schedule_compiles_with_fullgraph(dynamic):
    # a float argument that changes between calls becomes symbolic: the checks compare it
    # instead of calling math.isnan/isfinite, which the compiler cannot trace
    torch._dynamo.reset()
    x = torch.randn(4, 5, requires_grad=True)
    y = torch.tensor([0, 2, 4, 1])
    compiled = torch.compile(
        lambda a, eps: crossent.cross_entropy_with_extras(
            a, y, label_smoothing=eps, z_loss=eps / 10, softcap=10 * eps + 1
        ).loss,
        backend="aot_eager", fullgraph=True, dynamic=dynamic,
    )  # fmt: skip
    for eps in (0.1, 0.2, 0.3):
        eager = crossent.cross_entropy_with_extras(
            x, y, label_smoothing=eps, z_loss=eps / 10, softcap=10 * eps + 1
        ).loss
        torch.testing.assert_close(compiled(x, eps), eager)


def test_inplace_with_dynamic_shapes_compiles():
    # the overlap check compares symbolic strides (sorting them broke dynamic=True)
    torch._dynamo.reset()
    compiled = torch.compile(
        lambda a, y: crossent.cross_entropy(a * 1, y, inplace_backward=True),
        backend="aot_eager", fullgraph=True, dynamic=True,
    )  # fmt: skip
    for n in (4, 6, 9):
        q = torch.randn(n, 5, requires_grad=True)
        y = torch.randint(0, 5, (n,))
        compiled(q, y).backward()
        expected = torch.autograd.grad(F.cross_entropy(q, y), q)[0]
        torch.testing.assert_close(q.grad, expected)


def test_target_check_device_compiles_whole():
    """target_check travels through the fused custom op and linear_cross_entropy's ops as a
    constant under torch.compile(fullgraph=True); on the CPU the check still raises."""
    torch._dynamo.reset()
    x = torch.randn(4, 5, requires_grad=True)
    y = torch.tensor([0, 2, 4, -100])
    w = torch.randn(5, 3)
    compiled = torch.compile(
        lambda a, t: crossent.cross_entropy(a, t, impl="fused", target_check="device")
        + crossent.linear_cross_entropy(a[:, :3], w, t, target_check="device"),
        backend="aot_eager", fullgraph=True,
    )  # fmt: skip
    eager = crossent.cross_entropy(x, y, impl="fused") + crossent.linear_cross_entropy(
        x[:, :3], w, y
    )
    torch.testing.assert_close(compiled(x, y), eager)
    with pytest.raises(IndexError, match="out of bounds"):
        compiled(x, torch.tensor([0, 2, 5, -100]))

"""The public fused-path API: cross_entropy_with_extras, impl selection, in-place, compile."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import crossent


def formula(x, t, weight=None, ignore_index=-100, reduction="mean", eps=0.0, zeta=0.0, cap=None):
    """The documented plain-PyTorch expression, in float64 autograd."""
    z = x if cap is None else cap * torch.tanh(x / cap)
    loss = F.cross_entropy(z, t, weight, ignore_index=ignore_index, reduction=reduction,
                           label_smoothing=eps)
    lse = torch.logsumexp(z, dim=1)
    if t.dtype.is_floating_point:
        kept_w = torch.ones_like(lse)
        lse_kept = lse
        denominator = lse.numel()
    else:
        kept = t != ignore_index
        lse_kept = torch.where(kept, lse, 0.0)
        w = torch.ones(x.shape[1], dtype=x.dtype) if weight is None else weight
        kept_w = torch.where(kept, w[torch.where(kept, t, 0)], 0.0)
        denominator = kept_w.sum()
    z_rows = zeta * lse_kept**2
    z_term = {"none": z_rows, "sum": z_rows.sum(), "mean": z_rows.sum() / denominator}[reduction]
    return loss + z_term, z_term, lse_kept


CASES = [
    dict(reduction="mean"),
    dict(reduction="sum", eps=0.1, zeta=1e-3),
    dict(reduction="none", zeta=0.01, cap=2.0),
    dict(reduction="mean", eps=0.2, zeta=1e-2, cap=3.0, weighted=True),
    dict(reduction="mean", soft=True, zeta=1e-2, cap=1.5),
]


@pytest.mark.parametrize("impl", ["fused", "reference", "triton"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_extras_match_the_documented_formula(case, impl):
    case = dict(case)
    soft, weighted = case.pop("soft", False), case.pop("weighted", False)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 7, generator=g, dtype=torch.float64) * 3
    if soft:
        t = torch.softmax(torch.randn(6, 7, generator=g, dtype=torch.float64), 1)
    else:
        t = torch.randint(0, 7, (6,), generator=g)
        t[1] = -100
    w = torch.rand(7, generator=g, dtype=torch.float64) + 0.5 if weighted else None
    xa = x.clone().requires_grad_()
    loss, z_term, lse = formula(xa, t, w, **case)
    upstream = torch.rand(loss.shape, generator=g, dtype=torch.float64) + 0.5
    loss.backward(upstream)
    xb = x.clone().requires_grad_()
    out = crossent.cross_entropy_with_extras(
        xb, t, w, reduction=case["reduction"], label_smoothing=case.get("eps", 0.0),
        z_loss=case.get("zeta", 0.0), softcap=case.get("cap"), impl=impl,
    )
    out.loss.backward(upstream)
    for got, want in [(out.loss, loss), (out.z_loss, z_term), (out.lse, lse), (xb.grad, xa.grad)]:
        torch.testing.assert_close(got, want.detach(), rtol=1e-12, atol=1e-14)
    assert not out.z_loss.requires_grad and not out.lse.requires_grad


def test_extras_on_numpy_match_torch():
    x = np.random.default_rng(0).normal(size=(5, 4)) * 2
    t = np.array([0, 3, -100, 1, 2])
    ours = crossent.cross_entropy_with_extras(x, t, z_loss=0.1, softcap=2.0, reduction="none")
    want = formula(torch.from_numpy(x), torch.from_numpy(t), zeta=0.1, cap=2.0,
                   reduction="none")
    for a, b in zip(ours, want, strict=True):
        np.testing.assert_allclose(a, b.numpy(), rtol=1e-12)


def test_extras_take_uint8_targets_on_array_api_strict():
    # a uint8 target compared with ignore_index=-100 overflows in array-api-strict
    xps = pytest.importorskip("array_api_strict")
    x = np.random.default_rng(1).normal(size=(4, 3))
    t = np.array([0, 2, 1, 1], dtype=np.uint8)
    ours = crossent.cross_entropy_with_extras(xps.asarray(x), xps.asarray(t), z_loss=0.1)
    want = formula(torch.from_numpy(x), torch.from_numpy(t).long(), zeta=0.1, cap=None,
                   reduction="mean")
    for a, b in zip(ours, want, strict=True):
        np.testing.assert_allclose(np.asarray(a), b.numpy(), rtol=1e-12)


def test_plain_extras_equal_cross_entropy_bitwise():
    x, t = torch.randn(33, 50), torch.randint(0, 50, (33,))
    for impl in ("fused", "reference"):
        assert torch.equal(crossent.cross_entropy_with_extras(x, t, impl=impl).loss,
                           crossent.cross_entropy(x, t, impl=impl))


@pytest.mark.parametrize("bad", [dict(z_loss=-1.0), dict(z_loss=float("nan")), dict(softcap=0.0),
                                 dict(softcap=-2.0), dict(softcap=float("inf"))])
def test_bad_extras_are_rejected(bad):
    with pytest.raises(ValueError, match=r"z_loss|softcap"):
        crossent.cross_entropy_with_extras(torch.randn(2, 3), torch.tensor([0, 1]), **bad)


def test_impl_selection_errors_list_the_available_ones():
    x, t = np.zeros((2, 3)), np.array([0, 1])
    with pytest.raises(
        ValueError, match=r"impl='fused' is not available for cross_entropy on numpy.*'reference'"
    ):
        crossent.cross_entropy(x, t, impl="fused")
    with pytest.raises(ValueError, match="'auto', 'reference', 'torch', 'fused'"):
        crossent.cross_entropy(torch.zeros(2, 3), torch.tensor([0, 1]), impl="cuda-magic")
    available = r"nll_loss on torch.*one of 'auto', 'reference', 'torch'$"
    with pytest.raises(ValueError, match=available):
        crossent.nll_loss(torch.zeros(2, 3), torch.tensor([0, 1]), impl="fused")


def test_triton_needs_cuda_or_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="Triton needs CUDA"):
        crossent.cross_entropy(torch.zeros(2, 3), torch.tensor([0, 1]), impl="triton")


def test_auto_falls_back_where_fused_cannot_serve_and_fused_says_why():
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    q = torch.softmax(torch.randn(3, 4, dtype=torch.float64), 1).requires_grad_()
    crossent.cross_entropy(x, q).backward()  # auto: reference, target gradient available
    assert q.grad is not None
    with pytest.raises(ValueError, match=r"requires grad.*impl='reference'"):
        crossent.cross_entropy(x, q, impl="fused")


def test_out_of_range_target_raises_index_error_on_the_fused_path():
    with pytest.raises(IndexError, match=r"Target 9 is out of bounds.*\[0, 4\).*\(2,\)"):
        crossent.cross_entropy(torch.randn(3, 4), torch.tensor([0, 1, 9]), impl="fused")


@pytest.mark.parametrize("form", ["function", "module"])
def test_inplace_backward_equals_out_of_place_and_refuses_leaves(form):
    g = torch.Generator().manual_seed(0)
    h = torch.randn(16, 8, generator=g, requires_grad=True)
    layer = torch.randn(8, 40, generator=g)
    t = torch.randint(0, 40, (16,), generator=g)

    def loss_fn(logits, inplace):
        if form == "module":
            criterion = crossent.nn.CrossEntropyLoss(label_smoothing=0.1, impl="fused",
                                                     inplace_backward=inplace)  # fmt: skip
            return criterion(logits, t)
        return crossent.cross_entropy(logits, t, label_smoothing=0.1, impl="fused",
                                      inplace_backward=inplace)  # fmt: skip

    grads = []
    for inplace in (False, True):
        h.grad = None
        logits = h @ layer
        loss = loss_fn(logits, inplace)
        loss.backward()
        grads.append((loss.detach(), h.grad.clone()))
        if inplace:  # the logits were consumed: their storage holds the gradient now
            assert not torch.equal(logits.detach(), (h @ layer).detach())
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])
    with pytest.raises(RuntimeError, match="leaf"):
        crossent.cross_entropy(torch.randn(2, 3, requires_grad=True), torch.tensor([0, 1]),
                               inplace_backward=True)
    with pytest.raises(RuntimeError, match="saved"):
        crossent.cross_entropy(torch.tanh(h @ layer), t, inplace_backward=True)
    with pytest.raises(ValueError, match=r"inplace_backward=True needs the fused"):
        crossent.cross_entropy(np.zeros((2, 3)), np.array([0, 1]), inplace_backward=True)


def test_compile_fullgraph_through_the_public_api():
    x = torch.randn(8, 5, requires_grad=True)
    t = torch.randint(0, 5, (8,))

    @torch.compile(fullgraph=True, backend="aot_eager")
    def f(x, t):
        return crossent.cross_entropy_with_extras(x, t, label_smoothing=0.1, z_loss=1e-3).loss

    loss = f(x, t)
    loss.backward()
    x2 = x.detach().clone().requires_grad_()
    want = crossent.cross_entropy_with_extras(x2, t, label_smoothing=0.1, z_loss=1e-3).loss
    want.backward()
    torch.testing.assert_close(loss, want, rtol=0, atol=0)
    torch.testing.assert_close(x.grad, x2.grad, rtol=0, atol=0)


def test_double_backward_on_the_fused_path_says_what_to_do():
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    loss = crossent.cross_entropy(x, torch.tensor([0, 1, 2]), impl="fused")
    with pytest.raises(RuntimeError, match="impl='reference'"):
        torch.autograd.grad(loss, x, create_graph=True)


@pytest.mark.parametrize("impl", ["reference", "fused", "triton"])
def test_a_positive_infinite_logit_gives_the_same_extras_on_every_path(impl):
    # torch's log_softmax row is NaN (inf - inf): the loss and lse are NaN, the unused z-term 0
    if impl == "triton":
        pytest.importorskip("triton")
    x, t = torch.tensor([[1.0, float("inf"), 0.0], [1.0, 2.0, 3.0]]), torch.tensor([0, 1])
    out = crossent.cross_entropy_with_extras(x, t, impl=impl, reduction="none")
    torch.testing.assert_close(out.loss, F.cross_entropy(x, t, reduction="none"), equal_nan=True)
    assert torch.isnan(out.lse[0]) and torch.isfinite(out.lse[1])
    assert torch.equal(out.z_loss, torch.zeros(2))

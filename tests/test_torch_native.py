"""impl="torch": torch's own kernels after crossent's checks, and when ``auto`` picks them."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import crossent
import crossent.nn as cnn
from crossent import _torch_native


def _leaf(*shape, transform=None, seed=0):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)
    return (x if transform is None else transform(x)).detach().requires_grad_()


def _loss_and_grad(fn, x, *args, **kwargs):
    leaf = x.detach().clone().requires_grad_()
    loss = fn(leaf, *args, **kwargs)
    (grad,) = torch.autograd.grad(loss, leaf, torch.ones_like(loss))
    return loss, grad


GEN = torch.Generator().manual_seed(1)
TARGET = torch.tensor([0, 4, -100, 2, 1, 3])
KDIM_TARGET = torch.randint(0, 5, (6, 2), generator=GEN)
PROBS = torch.softmax(torch.randn(6, 5, generator=GEN), 1)
SOFT = torch.rand(6, 5, generator=GEN)
W5 = torch.rand(5, generator=GEN) + 0.5

#: (crossent/torch function name, input, positional args, keyword args)
CASES = {
    "ce-index-w-ls": ("cross_entropy", _leaf(6, 5), (TARGET,),
                      dict(weight=W5, label_smoothing=0.1)),
    "ce-kdim-none": ("cross_entropy", _leaf(6, 5, 2), (KDIM_TARGET,), dict(reduction="none")),
    "ce-probs-sum": ("cross_entropy", _leaf(6, 5), (PROBS,), dict(reduction="sum",
                                                                   label_smoothing=0.2)),
    "ce-unbatched": ("cross_entropy", _leaf(5), (torch.tensor(3),), {}),
    "nll-w-ignore": ("nll_loss", _leaf(6, 5, transform=lambda x: x.log_softmax(1)), (TARGET,),
                     dict(weight=W5)),
    "bce-w": ("binary_cross_entropy", _leaf(6, 5, transform=torch.sigmoid), (SOFT,),
              dict(weight=W5)),
    "bcel-pw-none": ("binary_cross_entropy_with_logits", _leaf(6, 5), (SOFT,),
                     dict(pos_weight=W5, reduction="none")),
}  # fmt: skip


@pytest.mark.parametrize("impl", ["auto", "torch"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_small_cpu_calls_are_torchs_own_bit_for_bit(name, impl):
    op, x, args, kwargs = CASES[name]
    ours = _loss_and_grad(getattr(crossent, op), x, *args, impl=impl, **kwargs)
    theirs = _loss_and_grad(getattr(F, op), x, *args, **kwargs)
    for a, b in zip(ours, theirs, strict=True):
        assert a.dtype == b.dtype and torch.equal(a, b), name


def test_auto_switches_to_the_fused_kernel_at_the_threshold(monkeypatch):
    monkeypatch.setattr(_torch_native, "CROSS_ENTROPY_MAX_ELEMENTS", 16)
    t = torch.tensor([0, 1, 2, 3])
    small = crossent.cross_entropy(_leaf(3, 5), t[:3])  # 15 logits
    large = crossent.cross_entropy(_leaf(4, 4), t)  # 16 logits
    assert type(small.grad_fn).__name__ == "NllLossBackward0"  # torch's own graph
    assert type(large.grad_fn).__name__ != "NllLossBackward0"
    fused = crossent.cross_entropy(_leaf(4, 4), t, impl="fused")
    assert type(large.grad_fn) is type(fused.grad_fn)
    assert torch.equal(large, fused)
    kdim = crossent.cross_entropy(_leaf(2, 4, 3), torch.tensor([[0, 1, 2], [3, 2, 1]]))
    assert type(kdim.grad_fn).__name__.startswith("NllLoss")  # 24 logits, but K-dim: torch's


def test_auto_takes_the_column_layout_for_large_plain_k_dim_inputs(monkeypatch):
    """From KDIM_CROSS_ENTROPY_MAX_ELEMENTS logits a contiguous float32/float64 K-dim call with
    class indices runs the fused kernel (as (N, C, S), no copy); any other K-dim call keeps
    torch's kernel."""
    monkeypatch.setattr(_torch_native, "KDIM_CROSS_ENTROPY_MAX_ELEMENTS", 24)
    gen = torch.Generator().manual_seed(3)
    t = torch.randint(0, 4, (2, 3), generator=gen)
    soft = torch.softmax(torch.randn(2, 4, 3, generator=gen), 1)

    def graph(x, target, **kwargs):
        return type(crossent.cross_entropy(x, target, **kwargs).grad_fn).__name__

    fused = graph(_leaf(2, 4, 3), t, impl="fused")
    assert not fused.startswith("NllLoss")
    assert graph(_leaf(2, 4, 3), t) == fused  # 24 logits: the column layout
    assert graph(_leaf(2, 4, 3), t, weight=torch.rand(4), ignore_index=1) == fused
    assert graph(_leaf(2, 4, 3), t, label_smoothing=0.1) == fused
    assert graph(_leaf(2, 4, 3).double(), t) == fused
    # torch's kernel (torch's graph, torch's bits): below the threshold, with probabilities, in
    # half precision, channels-last
    channels_last = _leaf(2, 4, 3, 1).detach().to(memory_format=torch.channels_last)
    for x, target, kwargs in ((_leaf(2, 4, 2), t[:, :2], {}), (_leaf(2, 4, 3), soft, {}),
                              (_leaf(2, 4, 3).bfloat16(), t, {}),
                              (channels_last.requires_grad_(), t[..., None], {})):
        ours = crossent.cross_entropy(x, target, **kwargs)
        theirs = F.cross_entropy(x, target, **kwargs)
        assert type(ours.grad_fn) is type(theirs.grad_fn) and torch.equal(ours, theirs), kwargs
    # the extras have no torch kernel: the fused kernel, as columns
    from crossent.backends import cpu

    shapes = []
    original = cpu.cross_entropy_rows

    def spy(x, *args, **kwargs):
        shapes.append(x.shape)
        return original(x, *args, **kwargs)

    monkeypatch.setattr(cpu, "cross_entropy_rows", spy)
    crossent.cross_entropy_with_extras(_leaf(2, 4, 3), t, z_loss=1e-3)
    crossent.cross_entropy_with_extras(_leaf(2, 4, 3), t, softcap=5.0)
    assert shapes == [(2, 4, 3), (2, 4, 3)]
    x = _leaf(2, 4, 3)
    torch.testing.assert_close(crossent.cross_entropy(x, t), F.cross_entropy(x, t))


@pytest.mark.parametrize("impl", ["auto", "torch"])
def test_crossents_checks_come_first(impl):
    x = torch.randn(4, 3)
    with pytest.raises(IndexError, match=r"Target 7 is out of bounds.*\[0, 3\).*position \(2,\)"):
        crossent.cross_entropy(x, torch.tensor([0, 1, 7, -100]), impl=impl)
    with pytest.raises(IndexError, match=r"got -1 at position \(1,\)"):
        crossent.nll_loss(x, torch.tensor([0, -1, 2, 1]), impl=impl)
    with pytest.raises(RuntimeError, match=r"between 0 and 1: got nan at position \(1,\)"):
        crossent.binary_cross_entropy(torch.tensor([0.5, float("nan")]), torch.ones(2),
                                      impl=impl)  # fmt: skip
    with pytest.raises(RuntimeError, match=r"target.*between 0 and 1: got 1.5"):
        crossent.binary_cross_entropy(torch.full((2,), 0.5), torch.tensor([0.0, 1.5]),
                                      impl=impl)  # fmt: skip
    with pytest.raises(ValueError, match="label_smoothing"):
        crossent.cross_entropy(x, torch.tensor([0, 1, 2, 0]), label_smoothing=-0.1, impl=impl)


def test_the_quick_range_checks_still_find_the_offender():
    # the one-reduction test (min/max) passes only when every entry is plainly valid; an
    # ignored entry or an offender (among ignored ones, or in a uint8 target) takes the full
    # check, which names the offender
    x = torch.randn(5, 3)
    assert torch.isfinite(crossent.cross_entropy(x, torch.tensor([-100, 0, 2, -100, 1])))
    with pytest.raises(IndexError, match=r"got -5 at position \(3,\)"):
        crossent.cross_entropy(x, torch.tensor([-100, 0, 2, -5, 1]))
    with pytest.raises(IndexError, match=r"got 3 at position \(4,\)"):
        crossent.cross_entropy(x, torch.tensor([0, 1, 2, 0, 3], dtype=torch.uint8))
    with pytest.raises(RuntimeError, match=r"got -0.25 at position \(0, 1\)"):
        crossent.binary_cross_entropy(torch.tensor([[0.5, -0.25]]), torch.ones(1, 2))


def test_weights_that_require_grad_are_refused_or_differentiated_as_torch_does():
    # class-index losses refuse them (as torch does); probability targets differentiate them
    w = (torch.rand(5) + 0.5).requires_grad_()
    with pytest.raises(RuntimeError, match="not differentiable with respect to argument 'weight'"):
        crossent.nll_loss(_leaf(4, 5), torch.tensor([0, 1, 2, 3]), w)
    x, q = torch.randn(4, 5), torch.softmax(torch.randn(4, 5), 1)
    grads = []
    for impl in ("auto", "reference"):  # eager auto: torch's own graph
        w.grad = None
        crossent.cross_entropy(x, q, w, impl=impl).backward()
        grads.append(w.grad)
    torch.testing.assert_close(grads[0], grads[1])
    w.grad = None
    F.cross_entropy(x, q, w).backward()
    assert torch.equal(grads[0], w.grad)


def test_auto_falls_back_where_torchs_kernel_cannot_serve():
    # an unbatched (C,) input with a (1,) target: torch's backward fails, crossent's does not
    v = _leaf(5)
    crossent.cross_entropy(v, torch.tensor([2])).backward()
    torch.testing.assert_close(v.grad, torch.func.grad(
        lambda z: F.cross_entropy(z[None], torch.tensor([2])))(v.detach()))
    # in place and the extras: the fused kernel (the logits' storage holds the gradient after)
    h = _leaf(4, 5)
    logits = h * 2
    crossent.cross_entropy(logits, torch.tensor([0, 1, 2, 3]), inplace_backward=True).backward()
    torch.testing.assert_close(h.grad, torch.func.grad(
        lambda z: F.cross_entropy(z * 2, torch.tensor([0, 1, 2, 3])))(h.detach()))
    torch.testing.assert_close(logits.detach(), h.grad / 2)
    x = _leaf(4, 5)
    out = crossent.cross_entropy_with_extras(x, torch.tensor([0, 1, 2, 3]), z_loss=1e-3)
    torch.testing.assert_close(out.lse, torch.logsumexp(x.detach(), 1))
    # torch.func transforms: the reference, which checks targets inside the transform
    z, t = torch.randn(3, 5), torch.tensor([0, 4, 2])
    grads = torch.func.vmap(torch.func.grad(lambda a, b: crossent.cross_entropy(a, b)))(z, t)
    torch.testing.assert_close(grads, torch.func.vmap(torch.func.grad(F.cross_entropy))(z, t))


T01 = torch.tensor([0, 1])

# (call(impl), the reason an explicit impl="torch" gives, what torch computes for the call;
# _leaf is seeded: the same values each time)
@pytest.mark.parametrize(
    ("call", "why", "expected"),
    [
        (lambda impl: crossent.cross_entropy(_leaf(3), torch.tensor([1]), impl=impl),
         r"unbatched \(C,\) input with a \(1,\) target",
         lambda: F.cross_entropy(_leaf(3)[None], torch.tensor([1]))),
        (lambda impl: crossent.cross_entropy(_leaf(2, 3) * 1, T01, impl=impl,
                                             inplace_backward=True),
         "inplace_backward=True", lambda: F.cross_entropy(_leaf(2, 3), T01)),
        (lambda impl: crossent.cross_entropy_with_extras(_leaf(2, 3), T01, impl=impl).loss,
         "extras", lambda: F.cross_entropy(_leaf(2, 3), T01)),
        (lambda impl: torch.func.grad(lambda z: crossent.cross_entropy(z, T01, impl=impl))(
            _leaf(2, 3).detach()), "torch.func transform",
         lambda: torch.func.grad(lambda z: F.cross_entropy(z, T01))(_leaf(2, 3).detach())),
    ],
    ids=["unbatched-1", "in-place", "extras", "transform"],
)  # fmt: skip
def test_explicit_torch_impl_says_why_it_cannot_serve(call, why, expected):
    with pytest.raises(ValueError, match=rf"impl='torch' cannot serve this .*{why}.*impl='auto'"):
        call("torch")
    torch.testing.assert_close(call("auto"), expected())  # the advice holds


def test_torch_impl_is_for_torch_tensors_and_not_for_linear_cross_entropy():
    with pytest.raises(ValueError, match="not available for nll_loss on numpy arrays"):
        crossent.nll_loss(np.zeros((2, 3)), np.array([0, 1]), impl="torch")
    with pytest.raises(ValueError, match="not available for linear_cross_entropy"):
        crossent.linear_cross_entropy(torch.randn(2, 3), torch.randn(4, 3),
                                      torch.tensor([0, 1]), impl="torch")  # fmt: skip


def test_under_autocast_torchs_kernel_gets_float32_as_torchs_would():
    x = torch.randn(6, 5).bfloat16()
    t = torch.tensor([0, 1, 2, 3, 4, 0])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = crossent.cross_entropy(x, t, impl="torch")
        theirs = F.cross_entropy(x, t)
    assert ours.dtype == theirs.dtype == torch.float32 and torch.equal(ours, theirs)


@pytest.mark.parametrize(
    ("module", "args"),
    [(cnn.NLLLoss, (torch.randn(2, 3).log_softmax(1), torch.tensor([0, 2]))),
     (cnn.BCELoss, (torch.rand(2, 3), torch.rand(2, 3))),
     (cnn.BCEWithLogitsLoss, (torch.randn(2, 3), torch.rand(2, 3))),
     (cnn.CrossEntropyLoss, (torch.randn(2, 3), torch.tensor([0, 2])))],
    ids=lambda v: getattr(v, "__name__", ""),
)  # fmt: skip
def test_modules_pass_impl_through(module, args):
    with pytest.raises(ValueError, match="impl='magic' is not available"):
        module(impl="magic")(*args)
    torch.testing.assert_close(module(impl="reference")(*args), module()(*args))


def test_which_devices_and_ops_auto_sends_to_torchs_kernel():
    from types import SimpleNamespace

    def tensor(device, dim, numel=6, dtype=torch.float32):
        return SimpleNamespace(device=SimpleNamespace(type=device), dim=lambda: dim,
                               numel=lambda: numel, dtype=dtype)  # fmt: skip

    big = _torch_native.CROSS_ENTROPY_MAX_ELEMENTS
    half_big = _torch_native.HALF_CROSS_ENTROPY_MAX_ELEMENTS
    cuda_big = _torch_native.CUDA_CROSS_ENTROPY_MAX_ELEMENTS
    assert half_big > big
    for dtype in (torch.float16, torch.bfloat16):  # half logits switch later (float32 blocks)
        assert _torch_native.auto_serves("cross_entropy", tensor("cpu", 2, big, dtype))
        assert _torch_native.auto_serves("cross_entropy", tensor("cpu", 2, half_big - 1, dtype))
        assert not _torch_native.auto_serves("cross_entropy", tensor("cpu", 2, half_big, dtype))
    served = {
        ("cpu", "cross_entropy", 2, 6): True, ("cpu", "cross_entropy", 2, big): False,
        ("cpu", "cross_entropy", 2, big - 1): True,
        ("cpu", "cross_entropy", 3, big): True,  # K-dim: torch's kernel at any size
        ("cpu", "nll_loss", 4, big): True, ("cpu", "binary_cross_entropy", 1, big): True,
        # CUDA: deterministic torch kernels only; cross_entropy has the Triton kernel from
        # CUDA_CROSS_ENTROPY_MAX_ELEMENTS logits on, and for K-dim inputs at any size
        ("cuda", "cross_entropy", 2, 6): True, ("cuda", "cross_entropy", 1, 6): True,
        ("cuda", "cross_entropy", 2, cuda_big - 1): True,
        ("cuda", "cross_entropy", 2, cuda_big): False,
        ("cuda", "cross_entropy", 3, 6): False, ("cuda", "nll_loss", 2, 6): True,
        ("cuda", "nll_loss", 3, 6): False, ("cuda", "binary_cross_entropy", 3, 6): True,
        ("cuda", "binary_cross_entropy_with_logits", 4, 6): True,
        ("meta", "nll_loss", 2, 6): False,
    }  # fmt: skip
    for (device, op, dim, numel), expected in served.items():
        for dtype in (torch.float32, torch.bfloat16) if device == "cuda" else (torch.float32,):
            got = _torch_native.auto_serves(op, tensor(device, dim, numel, dtype))
            assert got is expected, (device, op, dim, numel, dtype)
    # K-dim: the fused kernel's column layout from KDIM_CROSS_ENTROPY_MAX_ELEMENTS logits, for
    # float32/float64 only, and only where that layout serves the call (``columns``)
    kdim = _torch_native.KDIM_CROSS_ENTROPY_MAX_ELEMENTS
    for dtype in (torch.float32, torch.float64):
        assert not _torch_native.auto_serves("cross_entropy", tensor("cpu", 4, kdim, dtype),
                                             columns=True)  # fmt: skip
        assert _torch_native.auto_serves("cross_entropy", tensor("cpu", 4, kdim - 1, dtype),
                                         columns=True)  # fmt: skip
        assert _torch_native.auto_serves("cross_entropy", tensor("cpu", 4, kdim, dtype))
    assert _torch_native.auto_serves("cross_entropy", tensor("cpu", 3, kdim, torch.bfloat16),
                                     columns=True)  # fmt: skip


def test_modules_pickled_before_they_had_impl_still_run():
    x, t, p, y = torch.randn(2, 3), torch.tensor([0, 2]), torch.rand(2, 3), torch.rand(2, 3)
    for name, args in (("NLLLoss", (x.log_softmax(1), t)), ("BCELoss", (p, y)),
                       ("BCEWithLogitsLoss", (x, y)), ("CrossEntropyLoss", (x, t))):  # fmt: skip
        module = getattr(cnn, name)()
        del module.impl  # as unpickled from an older crossent: no instance attribute
        if isinstance(module, cnn.CrossEntropyLoss):
            del module.inplace_backward
        torch.testing.assert_close(module(*args), getattr(torch.nn, name)()(*args))


@pytest.mark.parametrize("op", ["cross_entropy", "nll_loss"])
def test_inputs_torchs_backward_refuses_are_differentiated(op):
    # channels-last activations (torch: "grad_input must be contiguous") and an empty K-dim
    # input with a uint8 target (torch: "expected scalar type Long"); the reference's gradient
    conv = torch.nn.Conv2d(2, 3, 1).to(memory_format=torch.channels_last)
    images = torch.randn(2, 2, 4, 5).to(memory_format=torch.channels_last)
    target = torch.randint(0, 3, (2, 4, 5))
    for impl in ("auto", "torch", "reference"):
        conv.zero_grad()
        z = conv(images)
        z = z - z.logsumexp(1, keepdim=True) if op == "nll_loss" else z
        getattr(crossent, op)(z, target, impl=impl).backward()
        if impl == "auto":
            expected = conv.weight.grad.clone()
        else:
            torch.testing.assert_close(conv.weight.grad, expected)
    empty = torch.randn(2, 3, 0, requires_grad=True)
    loss = getattr(crossent, op)(empty, torch.zeros(2, 0, dtype=torch.uint8), reduction="sum")
    loss.backward()
    assert loss.item() == 0.0 and empty.grad.shape == (2, 3, 0)


def test_forward_mode_ad_gets_torchs_tangent_and_large_calls_the_reference(monkeypatch):
    import torch.autograd.forward_ad as fwAD

    gen = torch.Generator().manual_seed(5)
    x, dx = (torch.randn(4, 3, dtype=torch.float64, generator=gen) for _ in range(2))
    t = torch.tensor([0, 2, 1, -100])

    def tangent(fn):
        with fwAD.dual_level():
            return fwAD.unpack_dual(fn(fwAD.make_dual(x, dx), t)).tangent

    expected = tangent(F.cross_entropy)
    assert torch.equal(tangent(crossent.cross_entropy), expected)  # torch's own kernel
    monkeypatch.setattr(_torch_native, "CROSS_ENTROPY_MAX_ELEMENTS", 4)  # auto: fused, declines
    torch.testing.assert_close(tangent(crossent.cross_entropy), expected, rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="forward-mode AD"):
        tangent(functools.partial(crossent.cross_entropy, impl="fused"))


def test_weights_that_require_grad_are_fine_where_autograd_does_not_record():
    w = torch.nn.Parameter(torch.rand(3) + 0.5)
    x, t, y = torch.randn(4, 3), torch.tensor([0, 2, 1, 1]), torch.rand(4, 3)
    for context in (torch.no_grad, torch.inference_mode):
        with context():
            for impl in ("auto", "reference", "torch", "fused"):
                torch.testing.assert_close(crossent.cross_entropy(x, t, w, impl=impl),
                                           F.cross_entropy(x, t, w))  # fmt: skip
            for impl in ("auto", "reference"):
                torch.testing.assert_close(
                    crossent.binary_cross_entropy_with_logits(x, y, w, pos_weight=w, impl=impl),
                    F.binary_cross_entropy_with_logits(x, y, w, pos_weight=w),
                )
    with pytest.raises(RuntimeError, match="not differentiable with respect to argument 'weight'"):
        crossent.cross_entropy(x, t, w)


@pytest.mark.parametrize("op", ["binary_cross_entropy", "binary_cross_entropy_with_logits",
                                "nll_loss", "cross_entropy"])  # fmt: skip
def test_under_torch_compile(op):
    # auto: nll_loss and the binary losses trace torch's ops (torch's bits), cross_entropy its
    # fused op; an explicit impl="torch" compiles for all; checks still raise
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(64, 10, generator=gen)
    target = torch.randint(0, 10, (64,), generator=gen)
    if op == "nll_loss":
        x = x.log_softmax(1)
    elif op.startswith("binary"):
        target = torch.rand(64, 10, generator=gen)
        x = torch.sigmoid(x) if op == "binary_cross_entropy" else x

    def run(fn):
        leaf = x.clone().requires_grad_()
        loss = torch.compile(fn, backend="eager", fullgraph=True)(leaf, target)
        loss.backward()
        return loss.detach(), leaf.grad

    theirs = run(getattr(F, op))
    for impl in ("auto", "torch"):
        ours = run(functools.partial(getattr(crossent, op), impl=impl))
        torch.testing.assert_close(ours, theirs)
        if impl == "torch" or op != "cross_entropy":
            assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True)), impl
    bad = target.clone()
    bad[3] = 10 if not op.startswith("binary") else 2.0
    if op != "binary_cross_entropy_with_logits":  # (its targets are not range-checked)
        error = RuntimeError if op == "binary_cross_entropy" else IndexError
        with pytest.raises(error):
            torch.compile(functools.partial(getattr(crossent, op), impl="torch"),
                          backend="eager", fullgraph=True)(x, bad)  # fmt: skip


@pytest.mark.parametrize("impl", ["auto", "torch", "reference"])
def test_nll_loss_target_check_device_on_the_cpu_raises_as_host(impl):
    """nll_loss(target_check='device') changes only CUDA calls: on the CPU an out-of-range
    target raises crossent's IndexError in both modes (the module too), valid targets give the
    same bits, and an unknown mode is a ValueError."""
    logp = torch.log_softmax(torch.randn(5, 4, dtype=torch.float64), 1)
    good, bad = torch.tensor([0, 3, -100, 1, 2]), torch.tensor([0, 3, -100, 4, 2])
    values = [crossent.nll_loss(logp, good, impl=impl, target_check=m) for m in ("host", "device")]
    assert torch.equal(values[0], values[1])
    for mode in ("host", "device"):
        with pytest.raises(IndexError, match=r"got 4 at position \(3,\)"):
            crossent.nll_loss(logp, bad, impl=impl, target_check=mode)
        with pytest.raises(IndexError, match=r"got 4 at position \(3,\)"):
            cnn.NLLLoss(impl=impl, target_check=mode)(logp, bad)
    with pytest.raises(ValueError, match="target_check must be one of"):
        crossent.nll_loss(logp, good, impl=impl, target_check="never")


def test_auto_falls_back_to_the_fused_kernel_of_the_device(monkeypatch):
    """Where auto's first choice, torch's kernel, cannot serve a call (inplace_backward, the
    extras), the fused kernel serves it: Triton's on CUDA when Triton is installed."""
    from types import SimpleNamespace

    from crossent import _dispatch

    def tensor(device):
        return SimpleNamespace(device=SimpleNamespace(type=device))

    monkeypatch.setattr(_dispatch, "_triton_installed", lambda: True)
    assert _dispatch.fused_impl(tensor("cuda")) == "triton"
    assert _dispatch.fused_impl(tensor("cpu")) == "fused"
    monkeypatch.setattr(_dispatch, "_triton_installed", lambda: False)
    assert _dispatch.fused_impl(tensor("cuda")) == "fused"


def test_torch_kernel_checks_targets_itself_only_on_cuda_when_asked_or_captured(monkeypatch):
    """crossent's host-side range check is left to torch's kernel (a device-side assertion)
    with target_check='device' on CUDA, and while a CUDA graph is captured, where a host read
    cannot run; nowhere else."""
    from types import SimpleNamespace

    from crossent.functional import _torch_kernel_checks

    cuda, cpu = SimpleNamespace(is_cuda=True), SimpleNamespace(is_cuda=False)
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    assert _torch_kernel_checks(cuda, "device")
    assert not _torch_kernel_checks(cuda, "host")
    assert not _torch_kernel_checks(cpu, "device")
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    assert _torch_kernel_checks(cuda, "host")
    assert not _torch_kernel_checks(cpu, "host")
    monkeypatch.setattr(torch.version, "hip", "6.0")  # kernel assertions may be compiled out
    assert not _torch_kernel_checks(cuda, "host")


def test_calls_torchs_kernel_cannot_serve_go_to_the_devices_fused_kernel(monkeypatch):
    """cross_entropy: where auto's first choice, torch's kernel, refuses (inplace_backward, the
    extras), the dispatch asks :func:`crossent._dispatch.fused_impl` (Triton on CUDA) for the
    kernel instead of naming the CPU one."""
    import crossent
    import crossent.functional as functional

    asked = []

    def spy(input):
        asked.append(input.device.type)
        return "fused"

    monkeypatch.setattr(functional, "fused_impl", spy)
    x = torch.randn(4, 5, requires_grad=True)  # small: auto's first choice is torch's kernel
    t = torch.tensor([0, 1, 2, 3])
    crossent.cross_entropy(x.clone(), t, inplace_backward=True)
    crossent.cross_entropy_with_extras(x, t)
    assert asked == ["cpu", "cpu"]
    crossent.cross_entropy(x, t)  # served by torch's kernel: no fused kernel asked for
    assert asked == ["cpu", "cpu"]

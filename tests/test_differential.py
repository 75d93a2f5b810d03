"""crossent against torch 2.13 over the case table: torch tensors, NumPy, array-api-strict."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cases import CASES, Case
from oracle import (
    assert_close_rel,
    crossent_and_grad,
    crossent_torch,
    make_grad_output,
    torch_oracle,
)

#: float64 contract of the core issue: values and gradients within 1e-12 relative of torch.
F64_RTOL = 1e-12


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
@pytest.mark.parametrize("backend", ["torch", "numpy", "strict", "strict-device1"])
def test_float64_matches_torch(case: Case, backend: str) -> None:
    t = case.tensors()
    g = make_grad_output(case.op, t, case.kwargs)
    expected = torch_oracle(case.op, t, case.kwargs, g, case.torch_backward)
    if backend == "torch":
        got = crossent_torch(case.op, t, case.kwargs, g, impl="reference")
    else:
        got = crossent_and_grad(case.op, t, case.kwargs, g, backend)
    if not case.torch_backward:
        got, expected = got[:1], expected[:1]
    names = ("loss", "grad_input", "grad_target")[: len(got)]
    for what, a, e in zip(names, got, expected, strict=True):
        assert_close_rel(a, e, F64_RTOL, f"{case.id}/{backend}/{what}")


@pytest.mark.parametrize(
    "case", [c for c in CASES if c.op == "cross_entropy"], ids=lambda c: c.id
)
def test_float64_auto_impl_matches_torch(case: Case, monkeypatch) -> None:
    """The default (auto) path for torch tensors, whatever of crossent's own kernels it picks
    (the fused kernel, or the reference where that cannot serve). Its first choice at these
    sizes, torch's own kernel, is torch itself: turned off here."""
    from crossent import _torch_native

    monkeypatch.setattr(_torch_native, "auto_serves", lambda op, input, **kw: False)
    t = case.tensors()
    g = make_grad_output(case.op, t, case.kwargs)
    expected = torch_oracle(case.op, t, case.kwargs, g, case.torch_backward)
    got = crossent_torch(case.op, t, case.kwargs, g)
    if not case.torch_backward:
        got, expected = got[:1], expected[:1]
    names = ("loss", "grad_input", "grad_target")[: len(got)]
    for what, a, e in zip(names, got, expected, strict=True):
        assert_close_rel(a, e, F64_RTOL, f"{case.id}/auto/{what}")


def _error(a, ref):
    """max |a - ref| / max |ref| over reference entries representable in ``a``'s dtype.

    Entries whose exact value overflows the dtype (e.g. BCE's -1e12 gradient in float16) are
    left out: any implementation returns inf (or NaN) there.
    """
    if ref is None:
        return 0.0
    limit = torch.finfo(a.dtype).max
    a = a.to(torch.float64)
    finite = torch.isfinite(ref) & (ref.abs() <= limit)
    if not finite.any():
        return 0.0
    scale = ref[finite].abs().max()
    scale = scale if scale > 0 else torch.ones_like(scale)  # all-zero reference: absolute
    err = float((a[finite] - ref[finite]).abs().max() / scale)
    return math.inf if math.isnan(err) else err  # NaN where the truth is finite: a failure


#: Cases with a finite, non-empty result (NaN/empty results are compared in float64 above).
NO_FINITE_RESULT = ("nll-unbatched", "ce-empty", "ce-soft-empty", "bce-empty")
LOW_PRECISION_CASES = [
    c for c in CASES
    if c.torch_backward and not c.id.startswith(NO_FINITE_RESULT)
    and "all-ignored-mean" not in c.id
]


def _fused_serves(case: Case) -> bool:
    """Class-index cross-entropy (the fused path has no gradient for a probability target,
    which these cases differentiate)."""
    return case.op == "cross_entropy" and not case.tensors()["target"].is_floating_point()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize(
    ("case", "impl"),
    [(c, impl) for c in LOW_PRECISION_CASES
     for impl in (("reference", "fused") if _fused_serves(c) else ("reference",))],
    ids=lambda v: v if isinstance(v, str) else v.id,
)  # fmt: skip
def test_low_precision_no_worse_than_torch(case: Case, dtype: torch.dtype, impl: str) -> None:
    """Error against float64 no larger than torch's own in the same dtype, plus a slack.

    Slack, in units roundoff ``u`` of the dtype (relative to the result's scale): float16 and
    bfloat16 are computed in float32 and rounded once, so ``u`` (one rounding of the output,
    which either implementation may land on differently). float32 is computed in float32 by the
    fused kernels (max, exp, sum, log, the reduction: a handful of roundings of at most ``u``
    each), so ``4 u``: on a given small case torch's roundings may happen to cancel (its error
    varies from 0 to a few ``u`` from case to case) while ours do not. (``impl="auto"``
    runs torch's own kernel on these small CPU cases: its error is torch's, nothing to test.)
    """
    t64 = case.tensors()
    t = {k: (v.to(dtype) if v.dtype.is_floating_point else v) for k, v in t64.items()}
    exact_inputs = {
        k: (v.to(torch.float64) if v.dtype.is_floating_point else v) for k, v in t.items()
    }
    g = make_grad_output(case.op, t, case.kwargs)
    truth = torch_oracle(case.op, exact_inputs, case.kwargs, g.to(torch.float64))
    theirs = torch_oracle(case.op, t, case.kwargs, g)
    ours = crossent_torch(case.op, t, case.kwargs, g, impl=impl)
    slack = torch.finfo(dtype).eps / 2 * (4 if dtype == torch.float32 else 1)
    _assert_no_worse_than_torch(ours, theirs, truth, slack, f"{case.id} {dtype}")


def _assert_no_worse_than_torch(ours, theirs, truth, slack: float, label: str) -> None:
    """Each result (loss, gradients) has torch's dtype and an error against the float64
    ``truth`` at most torch's own plus ``slack``."""
    for i, what in enumerate(("loss", "grad_input", "grad_target")):
        if truth[i] is None:
            continue
        assert ours[i].dtype == theirs[i].dtype, f"{what}: dtype"
        err_ours, err_torch = _error(ours[i], truth[i]), _error(theirs[i], truth[i])
        assert err_ours <= err_torch + slack, (
            f"{label} {what}: crossent error {err_ours:.3g} > torch {err_torch:.3g}"
        )


@pytest.mark.parametrize("case", LOW_PRECISION_CASES, ids=lambda c: c.id)
def test_float32_on_a_device_without_float64_no_worse_than_torch(case: Case) -> None:
    """On a device without float64 (array-api-strict's model of one; Apple's MPS is another)
    float32 is computed in float32 instead of one step wider, so the slack is the fused
    kernels' ``4 u`` (see :func:`test_low_precision_no_worse_than_torch`); results stay on
    that device (checked by ``crossent_and_grad``)."""
    t = {k: (v.float() if v.dtype.is_floating_point else v) for k, v in case.tensors().items()}
    exact_inputs = {k: (v.double() if v.dtype.is_floating_point else v) for k, v in t.items()}
    g = make_grad_output(case.op, t, case.kwargs)
    truth = torch_oracle(case.op, exact_inputs, case.kwargs, g.double())
    theirs = torch_oracle(case.op, t, case.kwargs, g)
    ours = crossent_and_grad(case.op, t, case.kwargs, g, "strict-no-float64")
    _assert_no_worse_than_torch(ours, theirs, truth, 4 * torch.finfo(torch.float32).eps / 2,
                                f"{case.id} no_float64")  # fmt: skip


@pytest.mark.parametrize("device", ["device1", "no_float64"])
@pytest.mark.parametrize("fn", ["softmax", "log_softmax", "logsumexp"])
def test_softmax_family_on_another_device(fn: str, device: str) -> None:
    """Arrays on a non-default device (and on one without float64) stay there, with torch's
    values in float32 (an all ``-inf`` row and an empty reduction included)."""
    import array_api_strict as xs

    import crossent

    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(0))
    x[1] = -math.inf
    dev = xs.Device(device)
    for a, dim in ((x, 1), (x, 0), (x[:, :0], 1)):
        got = getattr(crossent, fn)(xs.asarray(a.numpy(), device=dev), dim)
        assert got.device == dev
        expected = getattr(torch, fn)(a, dim)
        got = torch.from_numpy(np.asarray(got.to_device(xs.Device("CPU_DEVICE"))))
        torch.testing.assert_close(got, expected, equal_nan=True)


def test_logsumexp_of_a_0d_array_is_a_new_array() -> None:
    """torch returns a new tensor; so does crossent (the input was returned, aliased)."""
    import crossent

    a = np.array(2.0)
    result = crossent.logsumexp(a, 0)
    assert result is not a and not np.shares_memory(result, a)
    assert float(result) == 2.0

"""Running a case through torch (the oracle) and through crossent, and comparing results."""

from __future__ import annotations

import array_api_strict
import numpy as np
import torch

import crossent

TENSOR_ARGS = ("input", "target", "weight", "pos_weight")


def loss_shape(case_op: str, t: dict, reduction: str) -> tuple[int, ...]:
    if reduction != "none":
        return ()
    x = t["input"]
    if case_op in ("cross_entropy", "nll_loss"):
        return () if x.ndim <= 1 else (x.shape[0], *x.shape[2:])
    return tuple(x.shape)


def make_grad_output(case_op, t, kwargs, seed=1):
    shape = loss_shape(case_op, t, kwargs.get("reduction", "mean"))
    g = torch.Generator().manual_seed(seed)
    dtype = t["target"].dtype if case_op == "binary_cross_entropy_with_logits" else t["input"].dtype
    if case_op == "cross_entropy" and t["target"].dtype.is_floating_point:
        dtype = torch.promote_types(t["input"].dtype, t["target"].dtype)
    return torch.rand(shape, generator=g, dtype=torch.float64).to(dtype) + 0.5


def run_torch_autograd(fn, t: dict, kwargs: dict, grad_output, backward: bool = True):
    """(loss, grad_input, grad_target) of ``fn`` through torch autograd."""
    x = t["input"].detach().clone().requires_grad_(True)
    target = t["target"].detach().clone()
    if target.dtype.is_floating_point:
        target.requires_grad_(True)
    args = {**t, "input": x, "target": target}
    loss = fn(**args, **kwargs)
    if not backward:
        return loss.detach(), None, None
    loss.backward(grad_output)
    return loss.detach(), x.grad, target.grad


def torch_oracle(op, t, kwargs, grad_output, backward=True):
    return run_torch_autograd(getattr(torch.nn.functional, op), t, kwargs, grad_output, backward)


def crossent_torch(op, t, kwargs, grad_output, impl=None):
    fn = getattr(crossent, op)
    if impl is not None:
        kwargs = {**kwargs, "impl": impl}
    return run_torch_autograd(fn, t, kwargs, grad_output)


def to_backend(a, backend):
    if a is None:
        return None
    if backend == "numpy":
        return a.detach().numpy()
    if backend == "strict":
        return array_api_strict.asarray(a.detach().numpy())
    if backend in STRICT_DEVICES:  # array-api-strict's models of a second device
        return array_api_strict.asarray(a.detach().numpy(), device=STRICT_DEVICES[backend])
    raise ValueError(backend)


#: Backends on array-api-strict's extra devices: another device than the default (constants
#: must be made on the input's device), and one without float64.
STRICT_DEVICES = {
    "strict-device1": array_api_strict.Device("device1"),
    "strict-no-float64": array_api_strict.Device("no_float64"),
}


def to_torch(a):
    if a is None:
        return None
    if isinstance(a, torch.Tensor):
        return a.detach()
    if hasattr(a, "to_device") and not isinstance(a, np.ndarray):  # array-api-strict
        # (read on its default device)
        a = a.to_device(array_api_strict.Device("CPU_DEVICE"))
    return torch.from_numpy(np.asarray(a))


def crossent_and_grad(op, t, kwargs, grad_output, backend):
    args = {k: to_backend(v, backend) for k, v in t.items()}
    out = getattr(crossent, op + "_and_grad")(
        **args, **kwargs, grad_output=to_backend(grad_output, backend)
    )
    if backend in STRICT_DEVICES:
        for result in (out.loss, out.grad_input, out.grad_target):
            assert result is None or result.device == STRICT_DEVICES[backend], result.device
    return to_torch(out.loss), to_torch(out.grad_input), to_torch(out.grad_target)


def assert_close_rel(actual, expected, rtol, what=""):
    """Elementwise |a - e| <= rtol * max|e| (NaN must match NaN, shapes and dtypes must match)."""
    if expected is None:
        assert actual is None, f"{what}: expected no gradient, got one"
        return
    assert actual is not None, f"{what}: missing"
    actual = to_torch(actual)
    assert tuple(actual.shape) == tuple(expected.shape), (
        f"{what}: shape {actual.shape} != {expected.shape}"
    )
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    a = actual.to(torch.float64)
    e = expected.to(torch.float64)
    assert torch.equal(torch.isnan(a), torch.isnan(e)), f"{what}: NaN pattern differs: {a} vs {e}"
    finite = torch.isfinite(e)
    assert torch.equal(a[~finite & ~torch.isnan(e)], e[~finite & ~torch.isnan(e)]), f"{what}: inf"
    if finite.any():
        scale = e[finite].abs().max()
        scale = scale if scale > 0 else torch.ones_like(scale)  # all-zero reference: absolute
        err = (a[finite] - e[finite]).abs().max()
        assert err <= rtol * scale, f"{what}: max error {err:.3g} > {rtol:g} * {scale:.3g}"

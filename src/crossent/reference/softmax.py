"""softmax, log_softmax and logsumexp over one axis (or several, for logsumexp).

With ``m = max_c x_c`` along the axis:

* ``softmax(x)_c = exp(x_c - m) / sum_j exp(x_j - m)``
* ``log_softmax(x)_c = (x_c - m) - log(sum_j exp(x_j - m))`` -- in this order, as PyTorch's
  CPU kernel does (it does not fold ``m + log(sum)`` first).
* ``logsumexp(x) = log(sum exp(x - m')) + m'`` with ``m' = 0`` where ``m`` is infinite, so
  that an all ``-inf`` slice gives ``-inf`` and a ``+inf`` entry gives ``+inf``.

float16/bfloat16 are computed in float32 and rounded once.
"""

from __future__ import annotations

from typing import Any

from crossent._array import compute_dtype, device_of


def constant(x: Any) -> Any:
    """Cut autograd's view of a stabilising shift (torch); identity for other arrays."""
    detach = getattr(x, "detach", None)  # (not callable(): torch.compile cannot trace it here)
    return x if detach is None else detach()


def _shifted(xp: Any, x: Any, axis: int) -> Any:
    return x - constant(xp.max(x, axis=axis, keepdims=True))


def log_softmax(xp: Any, x: Any, axis: int) -> Any:
    """``(x - max) - log(sum(exp(x - max)))`` along ``axis``; input dtype out."""
    if x.ndim == 0:
        return x - x  # 0, or NaN for a non-finite x (as torch)
    if x.shape[axis] == 0:
        return x
    work = xp.astype(x, compute_dtype(xp, x.dtype, device_of(x)))
    shifted = _shifted(xp, work, axis)
    out = shifted - xp.log(xp.sum(xp.exp(shifted), axis=axis, keepdims=True))
    return xp.astype(out, x.dtype)


def softmax(xp: Any, x: Any, axis: int) -> Any:
    """``exp(x - max) / sum(exp(x - max))`` along ``axis``; input dtype out."""
    if x.ndim == 0:
        return xp.ones_like(x) + (x - x)  # 1, or NaN for a non-finite x (as torch)
    if x.shape[axis] == 0:
        return x
    work = xp.astype(x, compute_dtype(xp, x.dtype, device_of(x)))
    e = xp.exp(_shifted(xp, work, axis))
    return xp.astype(e / xp.sum(e, axis=axis, keepdims=True), x.dtype)


def logsumexp(xp: Any, x: Any, axes: tuple[int, ...], keepdims: bool = False) -> Any:
    """``log(sum(exp(x)))`` over ``axes``, stable and with PyTorch's infinity rules."""
    if x.ndim == 0:
        return xp.astype(x, x.dtype, copy=True)  # (a new array, as torch's)
    work = xp.astype(x, compute_dtype(xp, x.dtype, device_of(x)))
    if any(x.shape[a] == 0 for a in axes):
        shape = _reduced_shape(x.shape, axes, keepdims)
        out = xp.full(shape, -xp.inf, dtype=work.dtype, device=device_of(x))
        return xp.astype(out, x.dtype)
    m = constant(xp.max(work, axis=axes, keepdims=True))
    m = xp.where(xp.isinf(m), xp.zeros_like(m), m)
    out = xp.log(xp.sum(xp.exp(work - m), axis=axes, keepdims=True)) + m
    if not keepdims:
        out = xp.reshape(out, _reduced_shape(x.shape, axes, False))
    return xp.astype(out, x.dtype)


def _reduced_shape(shape: tuple[int, ...], axes: tuple[int, ...], keepdims: bool) -> tuple:
    if keepdims:
        return tuple(1 if i in axes else s for i, s in enumerate(shape))
    return tuple(s for i, s in enumerate(shape) if i not in axes)

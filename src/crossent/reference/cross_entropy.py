"""cross_entropy and nll_loss: forward and analytic backward, side by side.

Shapes: the input is ``(C,)``, ``(N, C)`` or ``(N, C, d1, ..., dk)`` with classes in dim 1
(dim 0 when unbatched). Internally every function moves the class dim last and flattens to
``M`` rows of ``C`` classes, then moves the gradient back.

Notation (per row ``i``): ``l = log_softmax(x_i)``, ``p = softmax(x_i)``, class weights ``w``
(ones if None), ``W = sum(w)``, ``m_i = [y_i != ignore_index]``, smoothing ``eps``, upstream
scale ``s_i`` (``G_i`` for ``none``, ``G`` for ``sum``, ``G / D`` for ``mean``).

class-index target (PyTorch's ``nll_loss(log_softmax(x), y)`` plus smoothing)::

    L_i  = (1 - eps) m_i w[y_i] (-l[y_i]) + (eps / C) m_i sum_c w_c (-l_c)
    D    = sum_i m_i w[y_i]                                  (mean denominator)
    dL/dx_i = s_i m_i [(1 - eps) w[y_i] (p - e_{y_i}) + (eps / C)(W p - w)]

probability target ``q`` with ``q' = (1 - eps) q + eps / C``::

    L_i  = -sum_c w_c q'_c l_c
    D    = M                                                 (rows, not weights)
    dL/dx_i = s_i [p sum_c w_c q'_c - w q'],   dL/dq_i = -s_i (1 - eps) w l,
    dL/dw   = -sum_i s_i q'_i l_i

nll_loss (input already log-probabilities ``a``)::

    L_i = -m_i w[y_i] a[i, y_i],   D = sum_i m_i w[y_i],   dL/da_i = -s_i m_i w[y_i] e_{y_i}
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from crossent._array import compute_dtype, device_of, result_type
from crossent._reduction import kept_weight, reduce, smoothed_index_mean, smoothed_index_sum
from crossent.reference.softmax import constant


class LossGrads(NamedTuple):
    """A loss and the gradients of (upstream-weighted) loss; None where not requested/defined."""

    loss: Any
    grad_input: Any = None
    grad_target: Any = None
    grad_weight: Any = None


def to_rows(xp: Any, a: Any) -> Any:
    """(C,) -> (1, C); (N, C) stays; (N, C, d1..dk) -> (N*d1*..*dk, C)."""
    if a.ndim == 1:
        return xp.reshape(a, (1, a.shape[0]))
    if a.ndim == 2:
        return a
    # permute_dims, not moveaxis: the core Array API (and torch.vmap has a rule for it)
    moved = xp.permute_dims(a, (0, *range(2, a.ndim), 1))
    positions = math.prod((a.shape[0], *a.shape[2:]))  # (not -1: ambiguous with 0 classes)
    return xp.reshape(moved, (positions, a.shape[1]))


def from_rows(xp: Any, rows: Any, shape: tuple[int, ...]) -> Any:
    """Inverse of :func:`to_rows` for an array of the input's ``shape``."""
    if len(shape) <= 2:
        return xp.reshape(rows, shape)
    moved = xp.reshape(rows, (shape[0], *shape[2:], shape[1]))
    return xp.permute_dims(moved, (0, len(shape) - 1, *range(1, len(shape) - 1)))


def position_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Shape of the ``reduction='none'`` output: the input shape without its class dim."""
    if len(shape) <= 1:
        return ()
    return (shape[0], *shape[2:])


def upstream_scale(
    xp: Any, reduction: str, grad_output: Any, denominator: Any, num_rows: int, dtype: Any,
    device: Any,
) -> Any:  # fmt: skip
    """Per-row scale ``s_i`` as an (M, 1) array (or a 0-d array broadcasting to it)."""
    if grad_output is None:
        shape = () if reduction != "none" else (num_rows,)
        g = xp.ones(shape, dtype=dtype, device=device)
    else:
        g = xp.astype(grad_output, dtype)
    if reduction == "none":
        return xp.reshape(g, (num_rows, 1))
    if reduction == "mean":
        g = g / (denominator if isinstance(denominator, int) else xp.astype(denominator, dtype))
    return xp.reshape(g, (1, 1))


def _log_softmax_rows(xp: Any, x: Any) -> Any:
    if x.shape[1] == 0:
        return x  # no classes: nothing to normalise (and no max to shift by)
    shifted = x - constant(xp.max(x, axis=1, keepdims=True))
    return shifted - xp.log(xp.sum(xp.exp(shifted), axis=1, keepdims=True))


def _gather(xp: Any, rows: Any, index: Any) -> Any:
    """rows[i, index[i]] for every row (zeros when there are no classes: every row is then
    ignored, the target check having rejected any kept one)."""
    if rows.shape[1] == 0:
        return xp.zeros((rows.shape[0],), dtype=rows.dtype, device=device_of(rows))
    return xp.take_along_axis(rows, xp.reshape(index, (-1, 1)), axis=1)[:, 0]


def _onehot(xp: Any, index: Any, num_classes: int, dtype: Any) -> Any:
    classes = xp.arange(num_classes, dtype=index.dtype, device=device_of(index))
    return xp.astype(xp.reshape(index, (-1, 1)) == classes, dtype)


def _class_weight(xp: Any, weight: Any | None, num_classes: int, dtype: Any, device: Any) -> Any:
    """The ``(C,)`` class weights in ``dtype``: ones without ``weight``."""
    if weight is None:
        return xp.ones((num_classes,), dtype=dtype, device=device)
    return xp.astype(weight, dtype)


def _zeros(xp: Any, like: Any) -> Any:
    return xp.zeros_like(like)


def smoothing_share(label_smoothing: float, num_classes: int) -> float:
    """``eps / C``, the uniform part of a smoothed target; ``inf`` with no classes (torch
    divides by ``C = 0`` too, so that a smoothed loss over zero classes is NaN, never 0)."""
    return label_smoothing / num_classes if num_classes else math.inf


def cross_entropy(
    xp: Any,
    input: Any,
    target: Any,
    weight: Any | None,
    *,
    probabilities: bool,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
    want_grad: bool = False,
    grad_output: Any | None = None,
) -> LossGrads:
    """Cross-entropy loss and (when ``want_grad``) its analytic gradients.

    Arguments are validated: ``probabilities`` says which target form applies.
    """
    if probabilities:
        return _soft_cross_entropy(
            xp, input, target, weight, reduction, label_smoothing, want_grad, grad_output
        )
    return _index_cross_entropy(
        xp, input, target, weight, ignore_index, reduction, label_smoothing, want_grad,
        grad_output,
    )  # fmt: skip


def _index_cross_entropy(
    xp, input, target, weight, ignore_index, reduction, eps, want_grad, grad_output
) -> LossGrads:
    ct = compute_dtype(xp, input.dtype, device_of(input))
    x = to_rows(xp, xp.astype(input, ct))
    num_rows, num_classes = x.shape
    t = xp.reshape(xp.astype(target, xp.int64), (-1,))
    kept = t != ignore_index
    safe = xp.where(kept, t, xp.zeros_like(t))
    w_row = kept_weight(xp, t, weight, ignore_index, ct)  # m_i * w[y_i]

    logp = _log_softmax_rows(xp, x)
    zero = xp.zeros((), dtype=ct, device=device_of(x))
    losses = xp.where(kept, -w_row * _gather(xp, logp, safe), zero)
    if eps > 0:
        w = _class_weight(xp, weight, num_classes, ct, device_of(x))
        smooth = xp.where(kept, -xp.sum(w * logp, axis=1), zero)
        losses = (1 - eps) * losses + smoothing_share(eps, num_classes) * smooth
    denominator = xp.sum(w_row)
    loss = reduce(xp, xp.reshape(losses, position_shape(input.shape)), reduction, denominator)
    if reduction == "mean":
        loss = smoothed_index_mean(xp, loss, denominator, eps)
    elif reduction == "sum":
        loss = smoothed_index_sum(loss, num_classes, eps)
    loss = xp.astype(loss, input.dtype)
    if not want_grad:
        return LossGrads(loss)

    s = upstream_scale(xp, reduction, grad_output, denominator, num_rows, ct, device_of(x))
    if reduction == "mean":
        # D = 0: torch's gradient of every kept row is NaN (its nll part is 0/0 at the target).
        s = xp.where(denominator == 0, denominator * math.nan, s)
    p = xp.exp(logp)
    g = (1 - eps) * xp.reshape(w_row, (-1, 1)) * (p - _onehot(xp, safe, num_classes, ct))
    if eps > 0:
        g = g + smoothing_share(eps, num_classes) * (xp.sum(w) * p - w)
    # An ignored row's gradient is 0 * p, as torch's log-softmax backward computes it: NaN where
    # the row's logits are not finite (p is NaN), 0 otherwise, whatever its upstream gradient.
    g = xp.where(xp.reshape(kept, (-1, 1)), s * g, zero * p)
    return LossGrads(loss, xp.astype(from_rows(xp, g, input.shape), input.dtype))


def _soft_cross_entropy(
    xp, input, target, weight, reduction, eps, want_grad, grad_output
) -> LossGrads:
    # An integer or bool weight (torch promotes it) does not change the floating result type.
    float_weight = weight is not None and xp.isdtype(weight.dtype, "real floating")
    out_dtype = result_type(xp, input.dtype, target.dtype, weight.dtype if float_weight else None)
    ct = compute_dtype(xp, out_dtype, device_of(input))
    x = to_rows(xp, xp.astype(input, ct))
    q = to_rows(xp, xp.astype(target, ct))
    num_rows, num_classes = x.shape
    w = _class_weight(xp, weight, num_classes, ct, device_of(x))
    q_smooth = (1 - eps) * q + smoothing_share(eps, num_classes) if eps > 0 else q

    logp = _log_softmax_rows(xp, x)
    losses = -xp.sum(w * q_smooth * logp, axis=1)
    # torch's mean divides by numel / C: 0/0 (NaN) with no classes, else the M positions
    denominator = num_rows if num_classes else math.nan
    loss = reduce(xp, xp.reshape(losses, position_shape(input.shape)), reduction, denominator)
    loss = xp.astype(loss, out_dtype)
    if not want_grad:
        return LossGrads(loss)

    s = upstream_scale(xp, reduction, grad_output, num_rows, num_rows, ct, device_of(x))
    p = xp.exp(logp)
    wq = w * q_smooth
    grad_x = s * (p * xp.sum(wq, axis=1, keepdims=True) - wq)
    grad_q = -s * (1 - eps) * w * logp if eps > 0 else -s * w * logp
    grad_w = -xp.sum(s * q_smooth * logp, axis=0)
    return LossGrads(
        loss,
        xp.astype(from_rows(xp, grad_x, input.shape), input.dtype),
        xp.astype(from_rows(xp, grad_q, target.shape), target.dtype),
        xp.astype(grad_w, weight.dtype) if float_weight else None,
    )


def nll_loss(
    xp: Any,
    input: Any,
    target: Any,
    weight: Any | None,
    *,
    ignore_index: int,
    reduction: str,
    want_grad: bool = False,
    grad_output: Any | None = None,
) -> LossGrads:
    """Negative log-likelihood of log-probabilities ``input`` and its analytic gradient."""
    ct = compute_dtype(xp, input.dtype, device_of(input))
    a = to_rows(xp, input)  # (only the target entries are read: widened after the gather)
    num_rows, num_classes = a.shape
    t = xp.reshape(xp.astype(target, xp.int64), (-1,))
    kept = t != ignore_index
    safe = xp.where(kept, t, xp.zeros_like(t))
    w_row = kept_weight(xp, t, weight, ignore_index, ct)
    zero = xp.zeros((), dtype=ct, device=device_of(a))
    losses = xp.where(kept, -w_row * xp.astype(_gather(xp, a, safe), ct), zero)
    denominator = xp.sum(w_row)
    loss = reduce(xp, xp.reshape(losses, position_shape(input.shape)), reduction, denominator)
    loss = xp.astype(loss, input.dtype)
    if not want_grad:
        return LossGrads(loss)
    s = upstream_scale(xp, reduction, grad_output, denominator, num_rows, ct, device_of(a))
    # Only the target entries are written (as in torch): a non-finite scale (a zero total weight,
    # an infinite upstream gradient) leaves the other entries 0 instead of multiplying them.
    classes = xp.arange(num_classes, dtype=safe.dtype, device=device_of(safe))
    hit = (xp.reshape(safe, (-1, 1)) == classes) & xp.reshape(kept, (-1, 1))
    # built in the input's dtype (each value rounded once, as before): no widened (M, C) copy
    value = xp.astype(-s * xp.reshape(w_row, (-1, 1)), input.dtype)
    g = xp.where(hit, value, xp.zeros((), dtype=input.dtype, device=device_of(a)))
    return LossGrads(loss, from_rows(xp, g, input.shape))

"""binary_cross_entropy and binary_cross_entropy_with_logits: forward and analytic backward.

Elementwise, with weight ``w`` broadcast to the input (ones if None), upstream scale ``s``
(``G`` elementwise for ``none``, ``G`` for ``sum``, ``G / numel`` for ``mean``: the weights
never enter the denominator).

binary_cross_entropy on probabilities ``p`` (PyTorch clamps each log term at -100)::

    L     = -w [y max(log p, -100) + (1 - y) max(log1p(-p), -100)]
    dL/dp = s w (p - y) / max(p (1 - p), 1e-12)        (1e-12 as float32, as in PyTorch)
    dL/dy = -s w logit(p) = -s w log(p / (1 - p))      (not clamped: +-inf at p in {0, 1})

binary_cross_entropy_with_logits on logits ``x`` with ``pos_weight`` ``pw`` (ones if None),
``log_sigmoid(x) = min(x, 0) - log1p(exp(-|x|))``::

    L     = w [(1 - y) x - (1 + (pw - 1) y) log_sigmoid(x)]
    dL/dx = s w [(pw y + 1 - y) sigmoid(x) - pw y]
    dL/dy = s w [log_sigmoid(-x) - pw log_sigmoid(x)]   (= -x without pos_weight)

Every formula is evaluated in PyTorch's order and with its functions (``log1p``, ``logit``), so
float64 results agree with it to the last bits, including its cancellations (confident negatives,
e.g. x = -30, y = 0) and its infinities (e.g. dL/dy at x = -inf with pw < 1 is +inf, not NaN).
"""

from __future__ import annotations

import math
from typing import Any

from crossent._array import compute_dtype, device_of, result_type
from crossent._reduction import reduce
from crossent.reference.cross_entropy import LossGrads

#: PyTorch's BCE backward clamps ``p (1 - p)`` at this float32 constant, even in float64.
BCE_GRAD_EPSILON = 9.999999960041972e-13


def _scale(
    xp: Any, reduction: str, grad_output: Any, shape: tuple[int, ...], dtype: Any, device: Any
) -> Any:
    if grad_output is None:
        g = xp.ones((), dtype=dtype, device=device)
    else:
        g = xp.astype(grad_output, dtype)
    if reduction == "mean":
        g = g / math.prod(shape)
    return g


def _weight(xp: Any, weight: Any | None, dtype: Any, device: Any) -> Any:
    return xp.ones((), dtype=dtype, device=device) if weight is None else xp.astype(weight, dtype)


def binary_cross_entropy(
    xp: Any,
    input: Any,
    target: Any,
    weight: Any | None,
    *,
    reduction: str,
    want_grad: bool = False,
    grad_output: Any | None = None,
) -> LossGrads:
    """BCE on probabilities and (when ``want_grad``) its gradients w.r.t. input and target."""
    ct = compute_dtype(xp, input.dtype, device_of(input))
    p = xp.astype(input, ct)
    y = xp.astype(target, ct)
    w = _weight(xp, weight, ct, device_of(input))
    floor = xp.asarray(-100.0, dtype=ct, device=device_of(p))
    log_p = xp.log(p)
    log_1mp = xp.log1p(-p)  # exact for tiny p, where log(1 - p) would round 1 - p first
    losses = w * ((y - 1) * xp.maximum(log_1mp, floor) - y * xp.maximum(log_p, floor))
    loss = xp.astype(reduce(xp, losses, reduction), input.dtype)
    if not want_grad:
        return LossGrads(loss)
    s = _scale(xp, reduction, grad_output, tuple(input.shape), ct, device_of(input))
    eps = xp.asarray(BCE_GRAD_EPSILON, dtype=ct, device=device_of(p))
    grad_p = s * w * (p - y) / xp.maximum(p * (1 - p), eps)
    grad_y = -(s * w * xp.log(p / (1 - p)))  # torch: -logit(p), one rounding
    shape = tuple(input.shape)
    return LossGrads(
        loss,
        xp.astype(xp.broadcast_to(grad_p, shape), input.dtype),
        xp.astype(xp.broadcast_to(grad_y, shape), target.dtype),
    )


def log_sigmoid(xp: Any, x: Any) -> Any:
    """``min(x, 0) - log1p(exp(-|x|))``, PyTorch's stable log-sigmoid."""
    return xp.minimum(x, xp.zeros_like(x)) - xp.log1p(xp.exp(-xp.abs(x)))


def sigmoid(xp: Any, x: Any) -> Any:
    """Stable logistic function."""
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1 / (1 + e), e / (1 + e))


def binary_cross_entropy_with_logits(
    xp: Any,
    input: Any,
    target: Any,
    weight: Any | None,
    pos_weight: Any | None,
    *,
    reduction: str,
    want_grad: bool = False,
    grad_output: Any | None = None,
) -> LossGrads:
    """BCE on logits and (when ``want_grad``) its gradients w.r.t. input and target.

    The output takes the *target's* dtype, as in PyTorch.
    """
    ct = compute_dtype(
        xp, result_type(xp, input.dtype, target.dtype), device_of(input)
    )
    x = xp.astype(input, ct)
    y = xp.astype(target, ct)
    w = _weight(xp, weight, ct, device_of(input))
    ls = log_sigmoid(xp, x)
    if pos_weight is None:
        losses = (1 - y) * x - ls
    else:
        pw = xp.astype(pos_weight, ct)
        losses = (1 - y) * x - (1 + (pw - 1) * y) * ls
    losses = losses * w if weight is not None else losses
    loss = xp.astype(reduce(xp, losses, reduction), target.dtype)
    if not want_grad:
        return LossGrads(loss)
    s = _scale(xp, reduction, grad_output, tuple(input.shape), ct, device_of(input))
    sig = sigmoid(xp, x)
    if pos_weight is None:
        grad_x = s * w * (sig - y)
        grad_y = -s * w * x
    else:
        pw_y = pw * y
        grad_x = s * w * ((pw_y + 1 - y) * sig - pw_y)
        grad_y = s * w * (log_sigmoid(xp, -x) - pw * ls)
    shape = tuple(input.shape)
    return LossGrads(
        loss,
        xp.astype(xp.broadcast_to(grad_x, shape), input.dtype),
        xp.astype(xp.broadcast_to(grad_y, shape), target.dtype),
    )

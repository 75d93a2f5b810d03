"""The row-block contract that every cross-entropy kernel implements.

A kernel sees a plain 2-D block of logits, ``(R, C)`` with unit stride along the class
dimension, and one target per row; the CPU and Triton kernels also take the column layout of a
K-dim input, its contiguous ``(N, C, S)`` view, whose ``R = N * S`` rows are its positions (row
``n * S + s`` is ``logits[n, :, s]``; see :func:`num_rows`). A kernel knows nothing of
reductions, modules or argument validation: the functional layer reshapes, validates and
reduces; the kernel turns rows into per-row losses, per-row log-sum-exps and (optionally) the
gradient of the *sum* of the row losses. Reduction scaling (``1/D`` for ``mean``, the upstream
gradient) is applied afterwards by the caller, so a kernel never needs a global quantity.

Per row ``i`` (softcapped logits ``z = cap * tanh(x / cap)`` when ``softcap`` is set, else
``z = x``), with ``lse_i = logsumexp(z_i)``, ``p_i = softmax(z_i)``, class weights ``w`` (ones if
None), ``W = sum(w)``, smoothing ``eps`` and z-loss coefficient ``zeta``:

class-index target ``y_i`` (row kept when ``y_i != ignore_index``)::

    loss_i = (1 - eps) * w[y_i] * (lse_i - z[y_i]) + (eps / C) * sum_c w_c * (lse_i - z_c)
             + zeta * lse_i**2
    grad_i = (1 - eps) * w[y_i] * (p_i - e_{y_i}) + (eps / C) * (W * p_i - w)
             + 2 * zeta * lse_i * p_i                               (then times dz/dx)

ignored rows: ``loss_i = 0``, ``lse_i = 0``, ``grad_i = 0``.

probability target ``q_i`` (every row kept; ``q'_i = (1 - eps) * q_i + eps / C``)::

    loss_i = sum_c w_c * q'_ic * (lse_i - z_ic) + zeta * lse_i**2
    grad_i = p_i * sum_c w_c * q'_ic - w * q'_i + 2 * zeta * lse_i * p_i   (then times dz/dx)

with ``dz/dx = 1 - (z / cap)**2`` under soft-capping. Losses and lse are float32 (float64 for
float64 logits); the gradient has the logits' dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True, slots=True)
class RowOptions:
    """Per-row loss options shared by every kernel.

    ``ignore_index`` applies to class-index targets only. ``z_loss`` is the coefficient of
    ``lse**2`` added to each kept row's loss; ``softcap`` (None = off) replaces the logits by
    ``softcap * tanh(logits / softcap)`` before anything else.
    """

    ignore_index: int = -100
    label_smoothing: float = 0.0
    z_loss: float = 0.0
    softcap: float | None = None


def num_rows(logits: torch.Tensor) -> int:
    """``R``: the rows of ``(R, C)`` logits, the ``N * S`` positions of the column layout
    ``(N, C, S)`` (a probability target of that layout counts the same)."""
    return logits.shape[0] * logits.shape[2] if logits.dim() == 3 else logits.shape[0]


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; every other floating dtype accumulates in float32."""
    import torch

    return torch.float64 if dtype == torch.float64 else torch.float32


def rows_without_classes(
    logits: torch.Tensor, target: torch.Tensor, options: RowOptions, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row losses and log-sum-exps of a block with no classes (``C = 0``), which no kernel
    needs to read: with class indices every row is ignored (the target check rejected any kept
    index), loss 0, or NaN when smoothed (torch's ``0 * eps / C``); with probabilities torch's
    ``-sum`` over no classes, ``-0``. lse 0, as for an ignored row; no gradient to write."""
    import torch

    if target.is_floating_point():
        fill = -0.0
    else:
        fill = math.nan if options.label_smoothing > 0 else 0.0
    rows = torch.full((num_rows(logits),), fill, dtype=dtype, device=logits.device)
    return rows, torch.zeros_like(rows)


def cross_entropy_rows(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    options: RowOptions,
    grad: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference implementation of the row contract (readable, unfused, any device).

    Args:
        logits: ``(R, C)`` floating tensor.
        target: ``(R,)`` int64 class indices, or ``(R, C)`` floating probabilities.
        weight: ``(C,)`` class weights or None.
        options: the per-row options.
        grad: None, or an ``(R, C)`` tensor of the logits' dtype that receives the gradient of
            ``loss.sum()`` with respect to ``logits``; it may be ``logits`` itself.

    Returns:
        ``(loss, lse)``: two ``(R,)`` tensors in the accumulation dtype.
    """
    import torch

    acc = accumulation_dtype(logits.dtype)
    x = logits.to(acc)
    num_classes = x.shape[1]
    eps = options.label_smoothing
    if options.softcap is not None:
        z = options.softcap * torch.tanh(x / options.softcap)
    else:
        z = x
    lse = torch.logsumexp(z, dim=1)
    # log p from log_softmax, (z - max) - log(sum), not z - lse: lse rounded to the
    # accumulation dtype carries an error of ulp(|lse|), which z - lse would pass on to every
    # log-probability and gradient (1e-4 relative in float32 for logits near 1e4)
    logp = torch.log_softmax(z, dim=1)
    p = torch.exp(logp)
    w = torch.ones(num_classes, dtype=acc, device=x.device) if weight is None else weight.to(acc)
    neg_logp = -logp

    if target.dtype.is_floating_point:
        q = target.to(acc)
        if eps > 0:
            q = (1 - eps) * q + eps / num_classes
        loss = (w * q * neg_logp).sum(dim=1)
        g = p * (w * q).sum(dim=1, keepdim=True) - w * q
        kept = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    else:
        kept = target != options.ignore_index
        safe = torch.where(kept, target, 0)
        w_y = w[safe]
        onehot = torch.nn.functional.one_hot(safe, num_classes).to(acc)
        loss = (1 - eps) * w_y * neg_logp.gather(1, safe[:, None]).squeeze(1)
        g = (1 - eps) * w_y[:, None] * (p - onehot)
        if eps > 0:
            loss = loss + (eps / num_classes) * (w * neg_logp).sum(dim=1)
            g = g + (eps / num_classes) * (w.sum() * p - w)
    if options.z_loss:
        loss = loss + options.z_loss * lse * lse
        g = g + (2 * options.z_loss) * lse[:, None] * p
    if options.softcap is not None:
        g = g * (1 - (z / options.softcap) ** 2)

    zero = torch.zeros((), dtype=acc, device=x.device)
    loss = torch.where(kept, loss, zero)
    lse = torch.where(kept, lse, zero)
    if grad is not None:
        grad.copy_(torch.where(kept[:, None], g, zero))
    return loss, lse

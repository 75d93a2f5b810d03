"""Reductions and their exact ``mean`` denominators, in one place.

Every implementation of crossent's own (the Array API reference, the fused torch ops, the linear
path) reduces per-position losses through these functions, so the denominators cannot drift
apart (``impl="torch"`` is torch's kernel, whose denominators these are; the tests hold both to
torch):

========================  ==========================================================
loss / target             ``mean`` denominator
========================  ==========================================================
class-index targets       ``sum_i m_i * w[y_i]`` (total weight of the kept targets;
(cross_entropy, nll)      the count of kept targets when there is no class weight)
probability targets       ``M``, the number of positions (class weights ignored)
binary losses             ``numel``, the number of elements (weights ignored)
========================  ==========================================================

The functions take the array namespace ``xp`` explicitly (NumPy, torch through
array-api-compat, any Array API library) and never synchronise a device: the denominator stays
an array.
"""

from __future__ import annotations

import math
from typing import Any, Literal

Reduction = Literal["none", "mean", "sum"]
REDUCTIONS: tuple[str, ...] = ("none", "mean", "sum")


def kept_weight(xp: Any, target: Any, weight: Any | None, ignore_index: int, dtype: Any) -> Any:
    """Per-position weight ``m_i * w[y_i]`` of class-index targets, in ``dtype``.

    ``target`` holds class indices (any shape); positions equal to ``ignore_index`` get 0 and are
    never used to index ``weight`` (so an out-of-range ignore_index is harmless).
    """
    kept = target != ignore_index
    if weight is None or weight.shape[0] == 0:
        # no class weights, or no classes (every position is then ignored: weight is unused)
        return xp.astype(kept, dtype)
    safe = xp.where(kept, target, xp.zeros_like(target))
    flat = xp.reshape(safe, (-1,))
    w = xp.reshape(xp.take(xp.astype(weight, dtype), flat, axis=0), target.shape)
    return xp.where(kept, w, xp.zeros_like(w))


def index_mean_denominator(
    xp: Any, target: Any, weight: Any | None, ignore_index: int, dtype: Any
) -> Any:
    """``sum_i m_i * w[y_i]``: the ``mean`` denominator for class-index targets (0-d array)."""
    return xp.sum(kept_weight(xp, target, weight, ignore_index, dtype))


def reduce(xp: Any, losses: Any, reduction: str, denominator: Any | None = None) -> Any:
    """Apply ``reduction`` to per-position ``losses``.

    ``denominator`` is used for ``mean`` when given (a 0-d array or a Python number); otherwise
    ``mean`` divides by ``losses.size``. An empty or all-ignored ``mean`` is ``0/0 = nan``, as in
    PyTorch.
    """
    if reduction == "none":
        return losses
    total = xp.sum(losses)
    if reduction == "sum":
        return total
    if denominator is None:
        denominator = math.prod(losses.shape)
    return total / denominator


def smoothed_index_mean(xp: Any, mean: Any, denominator: Any, label_smoothing: float) -> Any:
    """The smoothed class-index ``mean`` with torch's value at a zero denominator: NaN.

    torch adds ``(1 - eps) * hard_sum / D`` and ``(eps / C) * smooth_sum / D``; with ``D = 0``
    (every kept target has weight 0) the first is ``0/0``, so the mean is NaN even where
    ``(hard_sum + smooth_sum) / D`` alone would be ``inf``. Unchanged without smoothing.
    """
    if label_smoothing <= 0:
        return mean
    # denominator * nan: a NaN on the right device without creating an array (no host copy, so
    # the fused ops stay capturable in a CUDA graph) and outside the loss's autograd graph (the
    # class weights of the index path never require grad)
    return xp.where(denominator == 0, denominator * math.nan, mean)


def smoothed_index_sum(total: Any, num_classes: int, label_smoothing: float) -> Any:
    """The smoothed class-index ``sum`` with torch's value over no classes: NaN, rows or not.

    torch multiplies the reduced smoothing sum by ``eps / C``, ``inf`` for ``C = 0``; a sum of
    per-row losses is NaN only when there is a row. Unchanged otherwise."""
    if label_smoothing > 0 and num_classes == 0:
        return total * math.nan
    return total

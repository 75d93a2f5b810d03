"""Catch the classic cross-entropy mistakes: :func:`diagnose` and the opt-in warning mode.

:func:`diagnose` looks at the arguments of a loss call (its values too) and returns
:class:`Finding` objects; each says what was seen, why it matters and how to fix it. It never
raises for the mistakes it describes (an out-of-range target is a finding, not an IndexError).

The warning mode makes the loss functions report the same findings as :class:`DiagnosticWarning`
at the call site. It is off by default and switched per process (not per thread)::

    crossent.diagnostics.enable_warnings()          # ... and disable_warnings()
    with crossent.diagnostics.diagnostic_warnings():  # or for one block
        loss = crossent.cross_entropy(logits, target)

When off, the hook :func:`maybe_warn` costs one flag check. When on, it reads the shapes and
dtypes and the values of a bounded sample (at most 64 positions and 65,536 elements, the first
ones), so its cost does not grow with the batch; for device arrays the sample is copied to the
host (one synchronisation). Value checks then judge by the sample (an all-ignored sample is
confirmed on every target); checks that need every value (targets out of range, for which the
loss raises its own IndexError anyway) run only in :func:`diagnose`. Python's warning filters
apply as usual: by default each call site warns once.

Finding codes (stable; ``Finding.code``):

=======================================  ==================================================
code                                     seen
=======================================  ==================================================
``probabilities-as-logits``              cross_entropy rows in [0, 1] summing to 1;
                                         binary_cross_entropy_with_logits inputs in [0, 1]
``probabilities-as-log-probabilities``   nll_loss rows in [0, 1] summing to 1 (softmax + NLL)
``logits-as-log-probabilities``          nll_loss rows whose logsumexp is not 0
``logits-as-probabilities``              binary_cross_entropy input outside [0, 1]
``log-probabilities-as-probabilities``   binary_cross_entropy input <= 0, some < 0
``one-hot-with-class-weights``           float one-hot target + class weights, 'mean'
``class-dim-last``                       (N, L, C) input where (N, C, L) is meant
``all-targets-ignored``                  every target is ignore_index, 'mean' is NaN
``zero-weight-denominator``              kept targets' class weights sum to 0, 'mean' is NaN
``target-out-of-range``                  class indices outside [0, C), which and where
``float-class-indices``                  integer-valued float class indices
``float16-overflow``                     a float16 loss sum or kept count above 65504
``low-precision-count``                  torch rounds the kept count (bf16 > 256, f16 > 2048)
``label-smoothing-with-probabilities``   label_smoothing > 0 with probability targets
``soft-targets-not-normalized``          probability targets whose rows do not sum to 1
``single-class``                         cross_entropy with C = 1 (always 0)
``unusual-class-weights``                negative, non-finite or all-zero class weights
``binary-target-out-of-range``           with_logits targets outside [0, 1]
=======================================  ==================================================
"""

from __future__ import annotations

import contextlib
import math
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from array_api_compat import array_namespace

from crossent._array import check_not_masked, dtype_name, is_torch

__all__ = [
    "LOSSES",
    "DiagnosticWarning",
    "Finding",
    "diagnose",
    "diagnostic_warnings",
    "disable_warnings",
    "enable_warnings",
    "maybe_warn",
    "warnings_enabled",
]

#: The loss names :func:`diagnose` and :func:`maybe_warn` understand.
LOSSES: tuple[str, ...] = (
    "cross_entropy",
    "nll_loss",
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
)

Severity = Literal["error", "warning", "info"]

#: Bounds of the sample :func:`maybe_warn` reads: positions, and elements in all.
SAMPLE_POSITIONS = 64
SAMPLE_ELEMENTS = 65_536

#: float16's largest finite value.
FLOAT16_MAX = 65504.0


class DiagnosticWarning(UserWarning):
    """A likely mistake in the arguments of a loss call (see :mod:`crossent.diagnostics`)."""


@dataclass(frozen=True)
class Finding:
    """One diagnosed problem: what was seen, why it matters, and the fix.

    ``severity`` is ``"error"`` (the call raises, or returns NaN/inf), ``"warning"`` (almost
    certainly not what was meant) or ``"info"`` (legitimate, but worth knowing).
    """

    code: str
    what: str
    why: str
    fix: str
    severity: Severity = "warning"

    @property
    def message(self) -> str:
        """The finding as one paragraph: what, why, fix, and the code in brackets."""
        return f"{self.what} {self.why} Fix: {self.fix} [{self.code}]"

    def __str__(self) -> str:
        return self.message


# ------------------------------------------------------------------------------------------
# the switch and the hook

_warnings_on = False


def enable_warnings() -> None:
    """Make every crossent loss call report its findings as :class:`DiagnosticWarning`."""
    global _warnings_on
    _warnings_on = True


def disable_warnings() -> None:
    """Switch the warning mode off again (the default)."""
    global _warnings_on
    _warnings_on = False


def warnings_enabled() -> bool:
    """True while the warning mode is on."""
    return _warnings_on


@contextlib.contextmanager
def diagnostic_warnings(enabled: bool = True) -> Iterator[None]:
    """Turn the warning mode on (or off) inside a ``with`` block; the previous state returns.

    >>> import warnings, numpy as np, crossent.diagnostics as dx
    >>> with dx.diagnostic_warnings(), warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     dx.maybe_warn("cross_entropy", np.array([[0.1, 0.2, 0.7]]), np.array([2]))
    >>> [w.category.__name__ for w in caught]
    ['DiagnosticWarning']
    """
    global _warnings_on
    previous = _warnings_on
    _warnings_on = enabled
    try:
        yield
    finally:
        _warnings_on = previous


def maybe_warn(
    op: str,
    input: Any,
    target: Any,
    weight: Any = None,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    pos_weight: Any = None,
) -> None:
    """The hook at the top of each public loss: warn about likely mistakes when the mode is on.

    Off (the default): returns after one flag check. On: runs the cheap checks on shapes, dtypes
    and a bounded sample of values, and issues each finding with ``warnings.warn(message,
    DiagnosticWarning)`` attributed to the first caller outside crossent and torch. Arguments
    it cannot read never make it raise (the loss's own validation reports them, with torch's
    exception types); only an unknown ``op`` is a ValueError.
    """
    if not _warnings_on:
        return
    if op not in _CHECKS:
        raise ValueError(f"op must be one of {', '.join(map(repr, LOSSES))}, got {op!r}")
    try:
        findings = _findings(
            op,
            input,
            target,
            weight,
            ignore_index,
            reduction,
            label_smoothing,
            pos_weight,
            sample=True,
        )
    except Exception:  # bad arguments: the loss's validation reports them with torch's types
        return
    for finding in findings:
        warnings.warn(finding.message, DiagnosticWarning, stacklevel=_caller_stacklevel())


def _caller_stacklevel() -> int:
    """stacklevel for ``warnings.warn`` called from the caller of this function: the first frame
    outside crossent and torch (so nn.Module and functional calls point at user code)."""
    frame = sys._getframe(1)
    level = 1
    while frame is not None:
        module = str(frame.f_globals.get("__name__", ""))
        if module.split(".")[0] not in ("crossent", "torch"):
            break
        frame = frame.f_back
        level += 1
    return level


# ------------------------------------------------------------------------------------------
# diagnose


def diagnose(
    input: Any,
    target: Any,
    weight: Any = None,
    *,
    loss: str = "cross_entropy",
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    pos_weight: Any = None,
) -> tuple[Finding, ...]:
    """Look for the classic mistakes in the arguments of a ``loss`` call; return the findings.

    Takes the arguments the loss would take (torch tensors, NumPy or any Array API arrays, or
    nested lists), reads all their values, and returns the findings, most severe first (an
    empty tuple when nothing looks wrong). ``loss`` is one of :data:`LOSSES`.

    >>> import numpy as np
    >>> from crossent.diagnostics import diagnose     # also crossent.diagnose
    >>> x = np.array([[0.1, 0.2, 0.7], [0.8, 0.1, 0.1]])     # softmax already applied
    >>> [f.code for f in diagnose(x, np.array([2, 0]))]
    ['probabilities-as-logits']
    >>> diagnose(np.array([[2.0, 4.0, 0.5]]), np.array([1]))
    ()
    """
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(map(repr, LOSSES))}, got {loss!r}")
    findings = _findings(
        loss,
        input,
        target,
        weight,
        ignore_index,
        reduction,
        label_smoothing,
        pos_weight,
        sample=False,
    )
    order = {"error": 0, "warning": 1, "info": 2}
    return tuple(sorted(findings, key=lambda f: order[f.severity]))


@dataclass(frozen=True)
class _Call:
    """A loss call seen through NumPy: values of all positions, or of a leading sample."""

    op: str
    x: np.ndarray  # input values (float64); for class losses the leading positions' rows
    t: np.ndarray  # target values (its own dtype: int64 or float64)
    w: np.ndarray | None
    input_shape: tuple[int, ...]
    target_shape: tuple[int, ...]
    input_dtype: str
    target_dtype: str
    ignore_index: int
    reduction: str
    label_smoothing: float
    sample: bool  # True: x and t hold a leading sample only
    positions: int  # M, positions of the full call (rows of C classes, or elements)
    raw_target: Any

    @property
    def eps(self) -> float:
        """The machine epsilon of the input's dtype."""
        return {"float16": 2.0**-10, "bfloat16": 2.0**-7, "float32": 2.0**-23}.get(
            self.input_dtype, 2.0**-52
        )

    @property
    def tol(self) -> float:
        """How far from 1 a row sum of probabilities may be, given the input's precision."""
        classes = self.x.shape[-1] if self.x.ndim else 1
        return min(max(10 * classes * self.eps, 1e-6), 1e-2)


def _findings(
    op, input, target, weight, ignore_index, reduction, label_smoothing, pos_weight, *, sample
) -> list[Finding]:
    with np.errstate(all="ignore"):  # inf/NaN in the arguments are findings, not warnings
        call = _read(op, input, target, weight, ignore_index, reduction, label_smoothing, sample)
        found = [check(call) for check in _CHECKS[op]]
    return [f for f in found if f is not None]


def _dtype_of(a: Any) -> str:
    return dtype_name(a.dtype) if hasattr(a, "dtype") else dtype_name(np.asarray(a).dtype)


def to_numpy(a: Any, dtype: Any = None) -> np.ndarray:
    """Any array (torch, NumPy, Array API, nested list) as a NumPy array on the host."""
    if a is None:
        return None
    check_not_masked(a)
    if is_torch(a):
        a = a.detach().cpu()
        if dtype_name(a.dtype) == "bfloat16":  # NumPy has no bfloat16; float32 holds it exactly
            a = a.float()
        return np.asarray(a.numpy(), dtype=dtype)
    if isinstance(a, (np.ndarray, np.generic, list, tuple, int, float)):
        return np.asarray(a, dtype=dtype)
    get = getattr(a, "get", None)  # CuPy
    if callable(get) and type(a).__module__.startswith("cupy"):
        return np.asarray(get(), dtype=dtype)
    try:
        return np.asarray(a, dtype=dtype)
    except (TypeError, ValueError, RuntimeError):
        return np.asarray(np.from_dlpack(a), dtype=dtype)


def _position_shape(op: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    if op in ("binary_cross_entropy", "binary_cross_entropy_with_logits"):
        return shape
    if len(shape) <= 1:
        return ()
    return (shape[0], *shape[2:])


def _head_index(shape: tuple[int, ...], limit: int) -> tuple[slice, ...]:
    """Index of a leading block of ``shape`` with at most ``limit`` elements (at least one)."""
    index: list[slice] = []
    for d in range(len(shape)):
        rest = math.prod(shape[d + 1 :])
        if rest <= limit:
            index.append(slice(0, max(1, limit // max(rest, 1))))
            index.extend(slice(None) for _ in shape[d + 1 :])
            return tuple(index)
        index.append(slice(0, 1))
    return tuple(index)


def _read(op, input, target, weight, ignore_index, reduction, label_smoothing, sample) -> _Call:
    if not hasattr(input, "shape"):
        input = np.asarray(input, dtype=np.float64)
    if not hasattr(target, "shape"):
        target = np.asarray(target)
    input_shape = tuple(int(s) for s in input.shape)
    target_shape = tuple(int(s) for s in target.shape)
    binary = op.startswith("binary")
    positions = math.prod(_position_shape(op, input_shape))
    x_src, t_src = input, target
    if sample:
        if binary:
            index = _head_index(input_shape, SAMPLE_ELEMENTS)
            x_src = input[index]
            t_src = target[index] if target_shape == input_shape else target
        elif len(input_shape) >= 2:
            classes = input_shape[1]
            limit = max(1, min(SAMPLE_POSITIONS, SAMPLE_ELEMENTS // max(classes, 1)))
            pos = _head_index(_position_shape(op, input_shape), limit)
            x_src = input[(pos[0], slice(None), *pos[1:])]
            if target_shape == input_shape:
                t_src = target[(pos[0], slice(None), *pos[1:])]
            elif len(target_shape) == len(pos):
                t_src = target[pos]
            elif len(target_shape) >= 1:
                t_src = target[: pos[0].stop]
    x = to_numpy(x_src, np.float64)
    t = to_numpy(t_src)
    if t.dtype.kind in "biu":
        t = t.astype(np.int64)
    elif t.dtype.kind == "f":
        t = t.astype(np.float64)
    return _Call(
        op=op,
        x=x,
        t=t,
        w=None if weight is None else to_numpy(weight, np.float64),
        input_shape=input_shape,
        target_shape=target_shape,
        input_dtype=_dtype_of(input),
        target_dtype=_dtype_of(target),
        ignore_index=ignore_index,
        reduction=reduction,
        label_smoothing=float(label_smoothing),
        sample=sample,
        positions=positions,
        raw_target=target,
    )


# ------------------------------------------------------------------------------------------
# helpers on the NumPy view


def _rows(a: np.ndarray) -> np.ndarray:
    """(C,) -> (1, C); (N, C) stays; (N, C, d...) -> (N*d..., C): class dim last."""
    if a.ndim <= 1:
        return a.reshape(1, -1)
    if a.ndim == 2:
        return a
    return np.moveaxis(a, 1, -1).reshape(-1, a.shape[1])


def _is_probability_rows(rows: np.ndarray, tol: float) -> bool:
    """Every row lies in [0, 1] and sums to 1 (within ``tol``)."""
    if rows.size == 0 or rows.shape[-1] < 2 or not np.all(np.isfinite(rows)):
        return False
    inside = bool(np.all((rows >= -tol) & (rows <= 1 + tol)))
    return inside and bool(np.all(np.abs(rows.sum(axis=-1) - 1) <= tol))


def _fmt(values: Any, digits: int = 4) -> str:
    """A short list of numbers: [0.1, 0.2, 0.7]; at most 6 shown."""
    flat = np.asarray(values, dtype=np.float64).reshape(-1)
    shown = ", ".join(f"{v:.{digits}g}" for v in flat[:6])
    return f"[{shown}{', ...' if flat.size > 6 else ''}]"


def _shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def _log_softmax(rows: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        shifted = rows - np.max(rows, axis=-1, keepdims=True)
        return shifted - np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))


def _probability_path(call: _Call) -> bool:
    return call.op == "cross_entropy" and call.target_shape == call.input_shape


def _index_path(call: _Call) -> bool:
    return call.op in ("cross_entropy", "nll_loss") and not _probability_path(call)


def _num_classes(call: _Call) -> int:
    shape = call.input_shape
    return shape[0] if len(shape) == 1 else (shape[1] if len(shape) >= 2 else 0)


def _index_targets(call: _Call) -> np.ndarray | None:
    """Integer class-index targets, flat, or None when the target is not one."""
    if not _index_path(call) or call.t.dtype != np.int64:
        return None
    return call.t.reshape(-1)


def _sample_note(call: _Call) -> str:
    return " (in the leading sample the warning mode reads)" if call.sample else ""


# ------------------------------------------------------------------------------------------
# the checks: each takes the call, returns a Finding or None


def _check_probabilities_as_logits(call: _Call) -> Finding | None:
    if call.op != "cross_entropy" or call.x.ndim == 0:
        return None
    rows = _rows(call.x)
    if not _is_probability_rows(rows, call.tol):
        return None
    c = rows.shape[1]
    if c == 2 and rows.shape[0] < 4:  # two logits summing to 1: too likely by chance
        return None
    floor = math.log(math.e + c - 1) - 1
    what = (
        f"Every row of the input lies in [0, 1] and sums to 1 (row 0: {_fmt(rows[0])}): these "
        f"are probabilities, not logits{_sample_note(call)}."
    )
    why = (
        f"cross_entropy applies log_softmax itself, so softmax runs twice and squashes the "
        f"prediction toward uniform: with C = {c} classes the loss can never go below "
        f"log(e + C - 1) - 1 = {floor:.4f}, even for a perfect prediction, and the gradients "
        f"shrink, so training stalls.{_as_given_vs_meant(call, rows)}"
    )
    fix = (
        "pass the logits, the raw scores from before the softmax (drop the softmax layer); if only "
        "probabilities are available, use nll_loss(log(p), target)."
    )
    return Finding("probabilities-as-logits", what, why, fix, "warning")


def _as_given_vs_meant(call: _Call, rows: np.ndarray) -> str:
    """' Here the loss is A; the cross-entropy of these probabilities is B.' (index targets)."""
    t = _index_targets(call)
    if t is None or call.sample or call.label_smoothing or t.size != rows.shape[0]:
        return ""
    ok = (t != call.ignore_index) & (t >= 0) & (t < rows.shape[1])
    if not bool(np.any(ok)):
        return ""
    safe = np.where(ok, t, 0)[ok]
    w = np.ones(rows.shape[1]) if call.w is None else call.w.reshape(-1)
    if w.size != rows.shape[1]:
        return ""
    picked = np.arange(rows.shape[0])[ok], safe
    with np.errstate(all="ignore"):
        given = -w[safe] * _log_softmax(rows)[picked]
        meant = -w[safe] * np.log(rows[picked])
    denominator = float(np.sum(w[safe]))
    if call.reduction == "sum" or denominator == 0:
        denominator = 1.0
    return (
        f" Here the loss is {float(np.sum(given)) / denominator:.6g}; the cross-entropy of "
        f"these probabilities themselves is {float(np.sum(meant)) / denominator:.6g}."
    )


def _check_bce_logits_given_probabilities(call: _Call) -> Finding | None:
    if call.op != "binary_cross_entropy_with_logits" or call.x.size == 0:
        return None
    x = call.x
    if not (np.all(np.isfinite(x)) and np.all((x >= 0) & (x <= 1))):
        return None
    # Logits land in [0, 1] by chance too: all zeros from a zero-initialised head, one small
    # score, a few small positive ones. Probabilities from a sigmoid spread out over a batch.
    if x.size < 16 or float(np.max(x) - np.min(x)) < 0.5:
        return None
    what = (
        f"Every input value lies in [0, 1] ({_fmt(x)}): these look like probabilities, but "
        f"binary_cross_entropy_with_logits expects logits{_sample_note(call)}."
    )
    why = (
        "The loss applies sigmoid itself; sigmoid of a value in [0, 1] lies in [0.5, 0.731], "
        "so the prediction can never fall below 0.5: a negative (y = 0) costs at least "
        "log 2 = 0.693 and a positive at least 0.313, however good the model."
    )
    fix = (
        "pass the scores from before the sigmoid (drop the sigmoid layer); if only "
        "probabilities are available, use binary_cross_entropy(p, target)."
    )
    return Finding("probabilities-as-logits", what, why, fix, "warning")


def _check_nll_given_probabilities(call: _Call) -> Finding | None:
    if call.op != "nll_loss" or call.x.ndim == 0:
        return None
    rows = _rows(call.x)
    if not _is_probability_rows(rows, call.tol):
        return None
    what = (
        f"Every row of the input lies in [0, 1] and sums to 1 (row 0: {_fmt(rows[0])}): "
        f"nll_loss got probabilities (softmax), not log-probabilities{_sample_note(call)}."
    )
    why = (
        "nll_loss only picks -input[target]; it takes no log. With probabilities it returns "
        "-p[target], a value in [-1, 0] that is not a cross-entropy, whose gradient is a "
        "constant -1 at the target and which never punishes confident mistakes."
    )
    fix = (
        "use log_softmax instead of softmax before nll_loss, or pass the logits to "
        "cross_entropy, which does both."
    )
    return Finding("probabilities-as-log-probabilities", what, why, fix, "warning")


def _check_nll_given_logits(call: _Call) -> Finding | None:
    if call.op != "nll_loss" or call.x.ndim == 0 or call.x.size == 0:
        return None
    rows = _rows(call.x)
    if _is_probability_rows(rows, call.tol):
        return None  # reported as probabilities-as-log-probabilities
    with np.errstate(all="ignore"):
        top = np.max(rows, axis=1, keepdims=True)
        lse = (top + np.log(np.sum(np.exp(rows - top), axis=1, keepdims=True)))[:, 0]
        # log-probabilities rounded to the input's dtype move the logsumexp by up to
        # sum_j p_j |log p_j| * eps / 2 (about 0.02 for bfloat16 over thousands of classes)
        p = np.exp(rows - lse[:, None])
        rounding = call.eps * np.sum(np.where(p > 0, p * np.abs(rows), 0.0), axis=1)
    finite = np.isfinite(lse)
    if not np.any(finite):
        return None
    bad = np.flatnonzero(finite & (np.abs(lse) > max(call.tol, 1e-3) + rounding))
    if bad.size == 0:
        return None
    i = int(bad[0])
    what = (
        f"The input rows are not log-probabilities: logsumexp(row {i}) = {lse[i]:.4g}, not 0 "
        f"(row {i}: {_fmt(rows[i])}){_sample_note(call)}."
    )
    why = (
        "nll_loss only picks -input[target] and normalises nothing; given logits it returns "
        "an unbounded score (it can be negative) that ignores every other class."
    )
    fix = (
        "pass log_softmax(logits, dim=1) to nll_loss, or the logits to cross_entropy, which "
        "does both."
    )
    return Finding("logits-as-log-probabilities", what, why, fix, "warning")


def _check_bce_given_logits(call: _Call) -> Finding | None:
    if call.op != "binary_cross_entropy" or call.x.size == 0:
        return None
    x = call.x
    finite = x[np.isfinite(x)]
    if finite.size == 0 or bool(np.all((finite >= 0) & (finite <= 1))):
        return None
    log_probs = bool(np.all(finite <= 0))
    seen = f"min {finite.min():.4g}, max {finite.max():.4g}"
    if log_probs:
        what = (
            f"The input lies outside [0, 1] and is never positive ({seen}): these look like "
            f"log-probabilities, but binary_cross_entropy expects probabilities"
            f"{_sample_note(call)}."
        )
        code = "log-probabilities-as-probabilities"
        fix = (
            "pass the logits to binary_cross_entropy_with_logits (stable, no clamp), or "
            "exp(input) to binary_cross_entropy."
        )
    else:
        what = (
            f"The input lies outside [0, 1] ({seen}): these look like logits, but "
            f"binary_cross_entropy expects probabilities{_sample_note(call)}."
        )
        code = "logits-as-probabilities"
        fix = (
            "use binary_cross_entropy_with_logits(logits, target): it applies the sigmoid "
            "itself, stably (sigmoid + binary_cross_entropy saturates at a loss of 100)."
        )
    why = (
        "binary_cross_entropy takes log(p) and log(1 - p) of the input: torch and crossent "
        "raise RuntimeError 'all elements of input should be between 0 and 1'."
    )
    return Finding(code, what, why, fix, "error")


def _check_one_hot_with_weights(call: _Call) -> Finding | None:
    if not _probability_path(call) or call.w is None or call.reduction != "mean":
        return None
    if call.w.size == 0 or bool(np.all(call.w == 1)) or call.t.dtype.kind != "f":
        return None
    q = _rows(call.t)
    one_hot = q.size > 0 and bool(np.all((q == 0) | (q == 1))) and bool(np.all(q.sum(1) == 1))
    if not one_hot:
        return None
    w = call.w.reshape(-1)
    positions = q.shape[0]
    total = float(np.sum(q @ w))  # sum_i w[y_i]
    ratio = total / positions
    what = (
        f"The target is a float one-hot ({_shape(call.target_shape)}, the input's shape) and "
        f"class weights are given with reduction='mean'{_sample_note(call)}."
    )
    why = (
        f"A target with the input's shape is read as class probabilities, and that 'mean' "
        f"divides by the number of positions ({positions} here), whereas the same targets as "
        f"class indices divide by the total weight of the targets, sum_i w[y_i] "
        f"({total:.6g} here): the one-hot loss is {ratio:.6g} times the class-index loss "
        f"(pytorch/pytorch#107680)."
    )
    fix = (
        "pass class indices, target.argmax(dim=1), to get the weighted mean; or keep the "
        "one-hot target with reduction='sum' and divide by (target * weight).sum() yourself."
    )
    return Finding("one-hot-with-class-weights", what, why, fix, "warning")


def _check_class_dim_last(call: _Call) -> Finding | None:
    if call.op not in ("cross_entropy", "nll_loss") or len(call.input_shape) < 3:
        return None
    shape, tshape = call.input_shape, call.target_shape
    classes_last = (shape[0], *shape[1:-1])
    expected = (shape[0], *shape[2:])
    if tshape == shape and call.t.dtype.kind == "f":  # probabilities: which dim sums to 1?
        q = call.t
        if q.size == 0:
            return None
        sums_last = np.abs(q.sum(axis=-1) - 1) <= call.tol
        sums_dim1 = np.abs(q.sum(axis=1) - 1) <= call.tol
        if not (bool(np.all(sums_last)) and not bool(np.all(sums_dim1))):
            return None
        what = (
            f"The probability target {_shape(tshape)} sums to 1 over its last dim, not over "
            f"dim 1: the classes look like they are in the last dim{_sample_note(call)}."
        )
    elif tshape == classes_last and tshape != expected:
        what = (
            f"The input {_shape(shape)} and target {_shape(tshape)}: the target matches the "
            f"input without its last dim, so the classes look like they are in the last dim "
            f"({shape[-1]} classes)."
        )
    else:
        return None
    why = (
        f"{call.op} reads the classes from dim 1 (size {shape[1]} here) and expects a target "
        f"of shape {_shape(expected)}: with (N, L, C) given where (N, C, L) is meant it raises "
        f"'Expected target size', or, when L == C, silently mixes up positions and classes."
    )
    fix = (
        "move the classes to dim 1: input.movedim(-1, 1) (torch) or np.moveaxis(input, -1, 1); "
        "or flatten: input.reshape(-1, C) with target.reshape(-1)."
    )
    return Finding("class-dim-last", what, why, fix, "error")


def _check_all_ignored(call: _Call) -> Finding | None:
    t = _index_targets(call)
    if t is None or t.size == 0 or call.reduction != "mean":
        return None
    if bool(np.any(t != call.ignore_index)):
        return None
    if call.sample and t.size < call.positions:
        # The sample is all ignored (rare): confirm on every target, O(M) on the target only.
        raw = call.raw_target
        xp = array_namespace(raw)
        if bool(xp.any(raw != call.ignore_index)):
            return None
    what = f"All {call.positions} targets equal ignore_index={call.ignore_index}."
    why = (
        "'mean' divides by the number (or total weight) of the kept targets, which is 0: the "
        "loss is NaN (0/0, as in PyTorch) although its gradient is zero, and one NaN poisons "
        "running averages, loss scalers and logs."
    )
    fix = (
        "skip such batches (if (target != ignore_index).any(): ...), or use reduction='sum' "
        "and divide by max(number of kept targets, 1)."
    )
    return Finding("all-targets-ignored", what, why, fix, "error")


def _check_zero_weight_denominator(call: _Call) -> Finding | None:
    t = _index_targets(call)
    if t is None or call.w is None or call.reduction != "mean" or call.sample:
        return None
    c = _num_classes(call)
    kept = t[(t != call.ignore_index) & (t >= 0) & (t < c)]
    w = call.w.reshape(-1)
    if kept.size == 0 or w.size != c:
        return None
    total = float(np.sum(w[kept]))
    if total != 0:
        return None
    what = (
        f"The class weights of the {kept.size} kept targets sum to 0 (classes "
        f"{sorted(set(kept.tolist()))[:10]} have weight 0)."
    )
    why = (
        "'mean' divides by sum_i w[y_i] = 0: the loss is NaN, and unlike the all-ignored case "
        "its gradient is NaN too."
    )
    fix = "give the target classes a positive weight, or skip the batch, or use reduction='sum'."
    return Finding("zero-weight-denominator", what, why, fix, "error")


def _check_target_out_of_range(call: _Call) -> Finding | None:
    t = _index_targets(call)
    if t is None or call.sample or t.size == 0:
        return None
    c = _num_classes(call)
    bad_mask = (t != call.ignore_index) & ((t < 0) | (t >= c))
    if not bool(np.any(bad_mask)):
        return None
    bad = np.flatnonzero(bad_mask)
    values = sorted(set(t[bad].tolist()))
    shape = call.target_shape
    where = ", ".join(
        str(tuple(int(i) for i in np.unravel_index(b, shape))) if shape else "()" for b in bad[:5]
    )
    more = f" and {bad.size - 5} more" if bad.size > 5 else ""
    what = (
        f"{bad.size} target{'s are' if bad.size > 1 else ' is'} outside the class range "
        f"[0, {c}): value{'s' if len(values) > 1 else ''} {values[:10]} at position"
        f"{'s' if bad.size > 1 else ''} {where}{more} (ignore_index={call.ignore_index})."
    )
    why = (
        "torch raises IndexError 'Target ... is out of bounds' on CPU and a device-side assert "
        "on CUDA, which ends the CUDA context with no hint of the value; crossent raises the "
        "IndexError on every device."
    )
    kept = t[t != call.ignore_index]
    if all(v == c for v in values) and kept.size and int(kept.min()) >= 1:
        fix = f"the labels look 1-based (1..{c}): subtract 1."
    elif len(values) == 1 and values[0] < 0:
        fix = f"{values[0]} looks like a padding label: pass ignore_index={values[0]}."
    else:
        fix = (
            f"check the number of classes: the input has C = {c} in dim "
            f"{0 if len(call.input_shape) == 1 else 1} (the model's output size must cover "
            f"every label; a (N, L, C) output must be permuted to (N, C, L))."
        )
    return Finding("target-out-of-range", what, why, fix, "error")


def _check_float_class_indices(call: _Call) -> Finding | None:
    if call.op not in ("cross_entropy", "nll_loss") or call.t.dtype.kind != "f":
        return None
    if call.target_shape == call.input_shape:
        return None
    if call.target_shape != _position_shape(call.op, call.input_shape):
        return None
    t = call.t
    if t.size and not (bool(np.all(np.isfinite(t))) and bool(np.all(t == np.round(t)))):
        return None
    what = (
        f"The target {_shape(call.target_shape)} holds class indices stored as "
        f"{call.target_dtype} ({_fmt(t)})."
    )
    why = (
        "class-index targets must be int64 (uint8 for 1-D/2-D inputs): torch and crossent raise "
        "RuntimeError 'expected target dtype to be Long or Byte'; a float target is read as "
        "class probabilities only when it has the input's shape."
    )
    fix = "convert the target: target.long() (torch) or target.astype(np.int64)."
    return Finding("float-class-indices", what, why, fix, "error")


def _kept_count_and_sum(call: _Call) -> tuple[float, float] | None:
    """Kept positions and the sum of their losses, in float32 (scaled up from the sample)."""
    if call.x.ndim == 0 or call.x.size == 0:
        return None
    x = call.x.astype(np.float32)
    with np.errstate(all="ignore"):
        if call.op.startswith("binary"):
            t = call.t.astype(np.float32)
            if t.shape != x.shape:
                return None
            if call.op == "binary_cross_entropy":
                log_p, log_1mp = np.maximum(np.log(x), -100), np.maximum(np.log1p(-x), -100)
                losses = -(t * log_p + (1 - t) * log_1mp)
            else:
                losses = (1 - t) * x - (np.minimum(x, 0) - np.log1p(np.exp(-np.abs(x))))
            kept = float(losses.size)
        elif _probability_path(call):
            q = _rows(call.t.astype(np.float32))
            logp = _log_softmax(_rows(x))
            if q.shape != logp.shape:
                return None
            w = 1 if call.w is None else call.w.reshape(-1).astype(np.float32)
            losses = -np.sum(w * q * logp, axis=1)
            kept = float(losses.size)
        else:
            t = _index_targets(call)
            rows = _rows(x)
            if t is None or t.size != rows.shape[0]:
                return None
            ok = (t != call.ignore_index) & (t >= 0) & (t < rows.shape[1])
            safe = np.where(ok, t, 0)
            a = rows if call.op == "nll_loss" else _log_softmax(rows)
            w = 1 if call.w is None else call.w.reshape(-1).astype(np.float32)[safe]
            losses = np.where(ok, -w * a[np.arange(t.size), safe], 0)
            kept = float(np.sum(ok))
        total = float(np.sum(losses[np.isfinite(losses)], dtype=np.float64))
    if call.sample and losses.size:
        scale = call.positions / losses.size
        return kept * scale, total * scale
    return kept, total


def _check_float16_overflow(call: _Call) -> Finding | None:
    if call.input_dtype != "float16" or call.reduction == "none":
        return None
    binary = call.op.startswith("binary")
    if binary and call.reduction != "sum":
        return None  # torch's binary 'mean' is accumulated in float32
    estimate = _kept_count_and_sum(call)
    if estimate is None:
        return None
    kept, total = estimate
    about = "about " if call.sample else ""
    count_overflow = (
        _index_path(call) and call.w is None and call.reduction == "mean" and kept > FLOAT16_MAX
    )
    if abs(total) <= FLOAT16_MAX and not count_overflow:
        return None
    if abs(total) > FLOAT16_MAX:
        what = (
            f"float16 input: the summed loss is {about}{total:.4g}, above 65504, float16's "
            f"largest finite value."
        )
        if binary or call.reduction == "sum":
            why = "the 'sum' does not fit in float16: it is inf, in torch and in crossent."
        else:
            mean = "NaN (inf / inf: the kept count overflows too)" if count_overflow else "inf"
            why = (
                f"torch's CPU cross_entropy/nll_loss accumulate the sum in float16, so its "
                f"'sum' is inf and its 'mean' {mean} although the mean is small; so does "
                f"crossent's default impl='auto' where it runs torch's kernel (on the CPU: "
                f"half-precision cross_entropy below 2**23 logits, K-dim at any size, and "
                f"nll_loss), while impl='fused' and impl='reference' accumulate in float32 "
                f"(a finite 'mean', the 'sum' still inf)."
            )
    else:
        what = f"float16 input with {about}{kept:.0f} kept targets, more than 65504."
        why = (
            "torch's CPU cross_entropy/nll_loss cast the count of kept targets to float16, "
            "where it becomes inf: 'mean' divides by inf and returns 0.0 (so does crossent's "
            "impl='auto' where it runs torch's kernel; impl='fused' and impl='reference' "
            "count in float32 and are not affected)."
        )
    fix = (
        "compute the loss in float32: cross_entropy(logits.float(), target) (autocast does "
        "this for the losses), or reduce in smaller chunks."
    )
    return Finding("float16-overflow", what, why, fix, "error")


def _check_low_precision_count(call: _Call) -> Finding | None:
    if not _index_path(call) or call.w is not None or call.reduction != "mean":
        return None
    exact = {"bfloat16": 256, "float16": 2048}.get(call.input_dtype)
    if exact is None or call.sample:
        return None
    t = _index_targets(call)
    if t is None:
        return None
    kept = int(np.sum(t != call.ignore_index))
    if kept > FLOAT16_MAX:
        return None  # float16: reported as float16-overflow; bfloat16: no practical count
    rounded = float(np.float16(kept)) if call.input_dtype == "float16" else _round_bf16(kept)
    if kept <= exact or rounded == kept or math.isinf(rounded):
        return None
    what = (
        f"{call.input_dtype} input with {kept} kept targets: torch's CPU 'mean' divides by the "
        f"count cast to {call.input_dtype}, {rounded:.0f}."
    )
    why = (
        f"{call.input_dtype} holds integers exactly only up to {exact}: the mean is off by "
        f"{abs(rounded - kept) / kept:.2%} (also through crossent's impl='auto' where it runs "
        f"torch's kernel; impl='fused' and impl='reference' count in float32 and are exact)."
    )
    fix = "compute the loss in float32: cross_entropy(logits.float(), target)."
    return Finding("low-precision-count", what, why, fix, "info")


def _round_bf16(value: int) -> float:
    bits = np.array([value], dtype=np.float32).view(np.uint32)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & np.uint32(0xFFFF0000)
    return float(rounded.view(np.float32)[0])


def _check_label_smoothing_with_probabilities(call: _Call) -> Finding | None:
    if not _probability_path(call) or call.label_smoothing <= 0 or call.t.size == 0:
        return None
    eps = call.label_smoothing
    q = _rows(call.t)
    c = q.shape[1]
    smoothed = (1 - eps) * q[0] + eps / c
    what = (
        f"label_smoothing={eps:g} is given together with probability targets: torch smooths "
        f"the given probabilities, q' = (1 - {eps:g}) q + {eps:g}/{c} (row 0: {_fmt(q[0])} -> "
        f"{_fmt(smoothed)})."
    )
    why = (
        "targets that are already soft (smoothed by hand, mixup/cutmix, distillation) get "
        "smoothed a second time; the loss is the plain cross-entropy against q', so the model "
        "is pulled further toward uniform than intended."
    )
    fix = (
        "smooth once: pass class indices with label_smoothing, or pass the soft targets with "
        "label_smoothing=0."
    )
    return Finding("label-smoothing-with-probabilities", what, why, fix, "warning")


def _check_soft_targets_not_normalized(call: _Call) -> Finding | None:
    if not _probability_path(call) or call.t.dtype.kind != "f" or call.t.size == 0:
        return None
    if len(call.input_shape) >= 3 and _check_class_dim_last(call) is not None:
        return None  # the rows do sum to 1, over the wrong dim
    q = _rows(call.t)
    if q.shape[1] < 2:
        return None
    sums = q.sum(axis=1)
    off = np.flatnonzero(~(np.abs(sums - 1) <= call.tol))
    negative = bool(np.any(q < 0))
    if off.size == 0 and not negative:
        return None
    i = int(off[0]) if off.size else int(np.flatnonzero(np.any(q < 0, axis=1))[0])
    what = (
        f"The probability targets are not distributions: row {i} is {_fmt(q[i])}, summing to "
        f"{sums[i]:.4g}{_sample_note(call)}."
    )
    why = (
        "Neither torch nor crossent checks soft targets: the loss is -sum_c q_c log p_c as "
        "given, so a row summing to 2 counts twice and negative entries reward mistakes "
        "(and the loss can be negative)."
    )
    fix = "normalise the targets (q / q.sum(dim=1, keepdim=True)), or pass class indices."
    return Finding("soft-targets-not-normalized", what, why, fix, "info")


def _check_single_class(call: _Call) -> Finding | None:
    if call.op != "cross_entropy" or _num_classes(call) != 1:
        return None
    what = f"The input {_shape(call.input_shape)} has a single class."
    why = (
        "softmax over one class is always 1: the loss and its gradient are exactly 0 whatever "
        "the input, so nothing is learnt."
    )
    fix = (
        "for a yes/no target use binary_cross_entropy_with_logits(input.squeeze(1), "
        "target.float()); for C classes the model must output C scores."
    )
    return Finding("single-class", what, why, fix, "error")


def _check_unusual_class_weights(call: _Call) -> Finding | None:
    if call.op not in ("cross_entropy", "nll_loss") or call.w is None or call.w.size == 0:
        return None
    w = call.w.reshape(-1)
    if not bool(np.all(np.isfinite(w))):
        what = f"The class weights contain NaN or inf ({_fmt(w)})."
        why = "every loss that touches such a class, and the weighted mean, becomes NaN or inf."
    elif bool(np.any(w < 0)):
        what = f"Some class weights are negative ({_fmt(w)})."
        why = (
            "a negative weight turns the loss of that class into a reward for being wrong, "
            "and the 'mean' denominator sum_i w[y_i] can reach 0 or change sign."
        )
    else:
        return None
    fix = (
        "use positive, finite weights, e.g. inverse class frequencies "
        "w_c = N / (C * count_c); their scale cancels in the class-index 'mean'."
    )
    return Finding("unusual-class-weights", what, why, fix, "warning")


def _check_binary_target_range(call: _Call) -> Finding | None:
    if call.op != "binary_cross_entropy_with_logits" or call.t.dtype.kind != "f":
        return None
    t = call.t
    if t.size == 0 or bool(np.all((t >= 0) & (t <= 1))):
        return None
    what = (
        f"Targets outside [0, 1] (min {np.nanmin(t):.4g}, max {np.nanmax(t):.4g})"
        f"{_sample_note(call)}."
    )
    why = (
        "binary_cross_entropy_with_logits does not check its targets: y > 1 or y < 0 gives "
        "a loss that is unbounded below (e.g. y = 2 rewards ever larger logits)."
    )
    fix = "use targets in [0, 1]: 0/1 labels or probabilities (for C classes, cross_entropy)."
    return Finding("binary-target-out-of-range", what, why, fix, "warning")


_CHECKS = {
    "cross_entropy": (
        _check_single_class,
        _check_class_dim_last,
        _check_float_class_indices,
        _check_target_out_of_range,
        _check_all_ignored,
        _check_zero_weight_denominator,
        _check_float16_overflow,
        _check_probabilities_as_logits,
        _check_one_hot_with_weights,
        _check_label_smoothing_with_probabilities,
        _check_unusual_class_weights,
        _check_low_precision_count,
        _check_soft_targets_not_normalized,
    ),
    "nll_loss": (
        _check_class_dim_last,
        _check_float_class_indices,
        _check_target_out_of_range,
        _check_all_ignored,
        _check_zero_weight_denominator,
        _check_float16_overflow,
        _check_nll_given_probabilities,
        _check_nll_given_logits,
        _check_unusual_class_weights,
        _check_low_precision_count,
    ),
    "binary_cross_entropy": (_check_bce_given_logits, _check_float16_overflow),
    "binary_cross_entropy_with_logits": (
        _check_bce_logits_given_probabilities,
        _check_binary_target_range,
        _check_float16_overflow,
    ),
}

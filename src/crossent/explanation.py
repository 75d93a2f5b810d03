"""Explain a loss on your own numbers: every step of the computation, as tables.

:func:`explain` takes the arguments of a loss call and returns an :class:`Explanation`: the
steps as data (:class:`Table` of :class:`Row`), crossent's own loss and gradient, the loss at
chance, a float32 (or float16) comparison and the :func:`crossent.diagnose` findings.
``str(explanation)`` renders it as text. The final numbers come from crossent's public functions
(``*_and_grad``, in float64); the intermediate steps use the very formulas of
:mod:`crossent.reference`, so every printed number is crossent's.

:func:`write_plots` draws the pictures (matplotlib, the ``plot`` extra); :func:`add_arguments`
and :func:`run` are the ``crossent explain`` command.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from crossent import functional as F
from crossent._array import dtype_name
from crossent.diagnostics import LOSSES, Finding, diagnose, to_numpy
from crossent.reference.binary import BCE_GRAD_EPSILON
from crossent.reference.cross_entropy import to_rows

__all__ = [
    "Explanation",
    "Row",
    "Table",
    "add_arguments",
    "explain",
    "run",
    "write_plots",
]

#: The default example: logits [2, 4, 0.5] (and matching examples for the other losses).
DEFAULT_LOGITS = (2.0, 4.0, 0.5)
DEFAULT_BCE_PROBABILITIES = (0.9, 0.2, 0.0)  # the last one shows the clamp at -100
DEFAULT_BINARY_TARGET = (1.0, 0.0, 1.0)

#: Tables show at most this many classes (sums always run over all of them).
MAX_COLUMNS = 12
#: Overflow thresholds of exp, per dtype: exp(x) is inf above these.
EXP_OVERFLOW = {"float64": 709.78, "float32": 88.72, "float16": 11.09}


@dataclass(frozen=True)
class Row:
    """One step: a label (with its formula), its values (one per column) and why it is there."""

    label: str
    values: tuple[Any, ...]  # floats, ints or short strings
    note: str = ""


@dataclass(frozen=True)
class Table:
    """A titled table of steps; ``key`` names it for :meth:`Explanation.table`."""

    key: str
    title: str
    columns: tuple[str, ...]
    rows: tuple[Row, ...]
    notes: tuple[str, ...] = ()

    def row(self, label_start: str) -> Row:
        """The first row whose label starts with ``label_start``."""
        for row in self.rows:
            if row.label.startswith(label_start):
                return row
        raise KeyError(f"table {self.key!r} has no row starting with {label_start!r}")

    def to_text(self) -> str:
        """The table as aligned text: label column, value columns, notes below."""
        labels = [r.label for r in self.rows]
        width = max([len(s) for s in labels] + [0]) + 2
        cells = [[_cell(v) for v in r.values] for r in self.rows]
        ncols = max([len(self.columns)] + [len(c) for c in cells])
        col_w = [0] * ncols
        for i, name in enumerate(self.columns):
            col_w[i] = len(name)
        for row in cells:
            for i, c in enumerate(row):
                col_w[i] = max(col_w[i], len(c))
        header = "  ".join(name.rjust(col_w[i]) for i, name in enumerate(self.columns))
        if len(self.title) <= width:
            lines = [(self.title.ljust(width + 2) + header).rstrip()]
        else:
            lines = [self.title] + ([" " * (width + 2) + header] if header else [])
        for r, row in zip(self.rows, cells, strict=True):
            text = (
                "  "
                + r.label.ljust(width)
                + "  ".join(c.rjust(col_w[i]) for i, c in enumerate(row))
            )
            if r.note:
                text = text.rstrip() + "   <- " + r.note
            lines.append(text.rstrip())
        for note in self.notes:
            lines.extend(_wrap(note, "  * "))
        return "\n".join(lines)


@dataclass(frozen=True)
class Explanation:
    """The computation of one loss call, step by step; ``str()`` renders it.

    ``loss`` (the result for ``reduction``), ``losses`` (per position, ``reduction='none'``)
    and ``grad_input`` are crossent's own float64 results as NumPy arrays; ``denominator`` is
    the exact ``mean`` denominator (None for ``sum``/``none``); ``chance_loss`` the ``mean``
    loss of a model at chance (uniform prediction; log C for cross-entropy).
    """

    loss_name: str
    call: str
    input: np.ndarray
    target: np.ndarray
    loss: np.ndarray
    losses: np.ndarray
    grad_input: np.ndarray
    denominator: float | None
    chance_loss: float
    tables: tuple[Table, ...]
    findings: tuple[Finding, ...] = ()
    notes: tuple[str, ...] = field(default=())

    def table(self, key: str) -> Table:
        """The table named ``key`` ('sample 0', 'reduction', 'gradient 0', 'chance', ...)."""
        for t in self.tables:
            if t.key == key:
                return t
        raise KeyError(f"no table {key!r}; tables: {', '.join(t.key for t in self.tables)}")

    def to_text(self) -> str:
        """Everything, as text: the call, each step table, the result, the findings."""
        parts = [self.call]
        parts.extend("\n".join(_wrap(n, "")) for n in self.notes)
        parts.extend(t.to_text() for t in self.tables)
        result = f"Result: {self.loss_name} = {_full(self.loss)}"
        parts.append(result)
        if self.findings:
            lines = ["Diagnose (crossent.diagnose found likely mistakes):"]
            for f in self.findings:
                lines.extend(_wrap(f"{f.severity}: {f.message}", "  - "))
            parts.append("\n".join(lines))
        return "\n\n".join(parts) + "\n"

    def __str__(self) -> str:
        return self.to_text()


# ------------------------------------------------------------------------------------------
# formatting


def _wrap(text: str, first: str) -> list[str]:
    """Lines of at most 98 characters; words, codes and formulas are never split."""
    return textwrap.wrap(
        text,
        98,
        initial_indent=first,
        subsequent_indent=" " * len(first),
        break_on_hyphens=False,
        break_long_words=False,
    )


def _cell(v: Any) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    v = float(v)
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if v == 0:
        return "0"  # -0.0 too: equal to 0, and less puzzling in a table
    return f"{v:.8g}"


def _full(a: Any) -> str:
    """Every digit: repr of a float, or a list of reprs."""
    arr = np.asarray(a)
    if arr.ndim == 0:
        return repr(float(arr))
    return "[" + ", ".join(repr(float(v)) for v in arr.reshape(-1)) + "]"


def _short(values: Any) -> str:
    arr = np.asarray(values)
    if arr.ndim == 0:
        return _cell(arr.item())
    if arr.ndim == 1:
        return "[" + ", ".join(_cell(v) for v in arr.tolist()) + "]"
    return "[" + ", ".join(_short(r) for r in arr) + "]"


def _position_label(index: tuple[int, ...]) -> str:
    if not index:
        return "the sample"
    if len(index) == 1:
        return f"sample {index[0]}"
    return "position (" + ", ".join(str(i) for i in index) + ")"


def _positions(shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    return [tuple(int(i) for i in idx) for idx in np.ndindex(*shape)] if shape else [()]


def _index_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    return () if len(shape) <= 1 else (shape[0], *shape[2:])


def _pick_columns(num_classes: int, keep: Sequence[int]) -> list[int]:
    if num_classes <= MAX_COLUMNS:
        return list(range(num_classes))
    chosen = {int(k) for k in keep if 0 <= int(k) < num_classes}
    for c in range(num_classes):
        if len(chosen) >= MAX_COLUMNS:
            break
        chosen.add(c)
    return sorted(chosen)


# ------------------------------------------------------------------------------------------
# explain


def _as_float_array(a: Any, what: str) -> np.ndarray:
    arr = to_numpy(a)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{what} must hold numbers, got dtype {arr.dtype}")
    return arr


def _source_dtype(a: Any) -> str:
    if a is None or isinstance(a, (list, tuple, int, float)):
        return "float64"
    return dtype_name(a.dtype) if hasattr(a, "dtype") else "float64"


def _coerce_target(target: Any, input64: np.ndarray, loss: str) -> np.ndarray:
    """Target as NumPy: class indices int64; probability and binary targets float64.

    Arrays keep their dtype's kind (an integer one-hot stays integer, and crossent rejects it
    as torch does); Python lists with the input's shape are read as probabilities.
    """
    from_list = isinstance(target, (list, tuple, int, float))
    t = to_numpy(target)
    if t.dtype.kind not in "biuf":
        raise TypeError(f"target must hold numbers, got dtype {t.dtype}")
    if loss.startswith("binary"):
        return t.astype(np.float64)
    if t.shape == input64.shape and (from_list or t.dtype.kind == "f"):
        return t.astype(np.float64)
    if t.dtype.kind in "biu":
        return t.astype(np.int64)
    if from_list and np.all(np.isfinite(t)) and np.all(t == np.round(t)):
        return t.astype(np.int64)
    return t.astype(np.float64)


def explain(
    input: Any = None,
    target: Any = None,
    weight: Any = None,
    *,
    loss: str = "cross_entropy",
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    pos_weight: Any = None,
    compare: str | None = "auto",
    max_rows: int = 8,
) -> Explanation:
    """Explain one loss call step by step; the default example is the logits ``[2, 4, 0.5]``.

    ``input`` holds logits (``cross_entropy``, ``binary_cross_entropy_with_logits``),
    log-probabilities (``nll_loss``) or probabilities (``binary_cross_entropy``); the other
    arguments are the loss's own. Arrays of any kind are accepted (torch tensors, NumPy, Array
    API arrays, nested lists) and explained in float64. ``compare`` adds a table of the results
    in another precision next to float64 (``"auto"``: the input's own float16/bfloat16, else
    float32; None: no comparison). At most ``max_rows`` positions get their own tables; the
    reduction always covers all.

    >>> from crossent.explanation import explain     # also crossent.explain
    >>> e = explain()                                 # logits [2, 4, 0.5], target 1
    >>> float(e.loss), e.table("sample").row("softmax").values
    (0.1531782, (0.1161145, 0.8579768, 0.0259087))
    >>> e.table("gradient").row("gradient").values
    (0.1161145, -0.1420232, 0.0259087)
    """
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(map(repr, LOSSES))}, got {loss!r}")
    if input is None:
        if target is not None:
            raise ValueError("input is required when target is given")
        input, target = _default_example(loss)
    elif target is None:
        raise ValueError("target is required when input is given")
    source_dtype = _source_dtype(input)
    x = _as_float_array(input, "input").astype(np.float64)
    t = _coerce_target(target, x, loss)
    w = None if weight is None else _as_float_array(weight, "weight").astype(np.float64)
    pw = None if pos_weight is None else _as_float_array(pos_weight, "pos_weight")
    pw = None if pw is None else pw.astype(np.float64)
    if compare == "auto":
        compare = source_dtype if source_dtype in ("float16", "bfloat16") else "float32"
    if compare not in (None, "float32", "float16", "bfloat16"):
        raise ValueError(
            f"compare must be 'auto', 'float32', 'float16', 'bfloat16' or None, got {compare!r}"
        )
    args = _Args(loss, x, t, w, pw, ignore_index, reduction, label_smoothing, max_rows)
    builder = {
        "cross_entropy": _explain_cross_entropy,
        "nll_loss": _explain_nll,
        "binary_cross_entropy": _explain_bce,
        "binary_cross_entropy_with_logits": _explain_bce_logits,
    }[loss]
    parts = builder(args)
    tables = list(parts.tables)
    chance_table, chance = _chance_table(args)
    tables.append(chance_table)
    if compare is not None:
        tables.append(_precision_table(args, parts, compare))
    findings = diagnose(
        input if hasattr(input, "dtype") else x,
        t,
        w,
        loss=loss,
        ignore_index=ignore_index,
        reduction=reduction,
        label_smoothing=label_smoothing,
        pos_weight=pw,
    )
    return Explanation(
        loss_name=loss,
        call=_describe_call(args, source_dtype),
        input=x,
        target=t,
        loss=parts.loss,
        losses=parts.losses,
        grad_input=parts.grad_input,
        denominator=parts.denominator,
        chance_loss=chance,
        tables=tuple(tables),
        findings=findings,
        notes=parts.notes,
    )


def _default_example(loss: str) -> tuple[Any, Any]:
    logits = np.array(DEFAULT_LOGITS)
    if loss == "cross_entropy":
        return logits, np.array(1)
    if loss == "nll_loss":
        return F.log_softmax(logits, 0), np.array(1)
    if loss == "binary_cross_entropy":
        return np.array(DEFAULT_BCE_PROBABILITIES), np.array(DEFAULT_BINARY_TARGET)
    return logits, np.array(DEFAULT_BINARY_TARGET)


@dataclass(frozen=True)
class _Args:
    loss: str
    x: np.ndarray
    t: np.ndarray
    w: np.ndarray | None
    pw: np.ndarray | None
    ignore_index: int
    reduction: str
    label_smoothing: float
    max_rows: int

    def kwargs(self, reduction: str | None = None) -> dict[str, Any]:
        r = self.reduction if reduction is None else reduction
        if self.loss == "cross_entropy":
            return {
                "weight": self.w,
                "ignore_index": self.ignore_index,
                "reduction": r,
                "label_smoothing": self.label_smoothing,
            }
        if self.loss == "nll_loss":
            return {"weight": self.w, "ignore_index": self.ignore_index, "reduction": r}
        if self.loss == "binary_cross_entropy":
            return {"weight": self.w, "reduction": r}
        return {"weight": self.w, "reduction": r, "pos_weight": self.pw}


@dataclass(frozen=True)
class _Parts:
    tables: tuple[Table, ...]
    loss: np.ndarray
    losses: np.ndarray
    grad_input: np.ndarray
    denominator: float | None
    notes: tuple[str, ...] = ()


_LOSS_AND_GRAD = {
    "cross_entropy": F.cross_entropy_and_grad,
    "nll_loss": F.nll_loss_and_grad,
    "binary_cross_entropy": F.binary_cross_entropy_and_grad,
    "binary_cross_entropy_with_logits": F.binary_cross_entropy_with_logits_and_grad,
}


def _crossent(
    args: _Args, x: Any = None, t: Any = None, reduction: str | None = None, **override: Any
):
    """crossent's own loss and gradient for these arguments (float64 unless overridden)."""
    kwargs = args.kwargs(reduction)
    kwargs.update(override)
    fn = _LOSS_AND_GRAD[args.loss]
    out = fn(args.x if x is None else x, args.t if t is None else t, **kwargs)
    return to_numpy(out.loss), to_numpy(out.grad_input)  # torch bfloat16 via float32, exactly


def _describe_call(args: _Args, source_dtype: str) -> str:
    shown = {
        "cross_entropy": "logits",
        "nll_loss": "log-probabilities",
        "binary_cross_entropy": "probabilities",
        "binary_cross_entropy_with_logits": "logits",
    }[args.loss]
    extra = []
    if args.w is not None:
        extra.append(f"weight={_short(args.w)}")
    if args.pw is not None:
        extra.append(f"pos_weight={_short(args.pw)}")
    if args.loss in ("cross_entropy", "nll_loss") and args.ignore_index != -100:
        extra.append(f"ignore_index={args.ignore_index}")
    if args.loss == "cross_entropy" and args.label_smoothing:
        extra.append(f"label_smoothing={args.label_smoothing:g}")
    extra.append(f"reduction={args.reduction!r}")
    head = f"crossent explain: {args.loss}(input, target, {', '.join(extra)})"
    inp = _short(args.x) if args.x.size <= 12 else f"an array of shape {args.x.shape}"
    tgt = _short(args.t) if args.t.size <= 12 else f"an array of shape {args.t.shape}"
    precision = "float64" if source_dtype == "float64" else f"float64 (given as {source_dtype})"
    return f"{head}\ninput ({shown}) = {inp}\ntarget = {tgt}\ncomputed in {precision}"


# ------------------------------------------------------------------------------------------
# cross_entropy and nll_loss


def _shift_note(x_row: np.ndarray, m: float) -> str:
    top = float(np.max(x_row))
    overflow = [name for name in ("float16", "float32", "float64") if top > EXP_OVERFLOW[name]]
    if overflow:
        here = (
            f"here exp({_cell(top)}) itself would overflow to inf in {', '.join(overflow)} "
            f"and the softmax would be NaN without the shift"
        )
    else:
        here = (
            "here exp(x) would still fit, but it overflows for logits above 11.1 in float16, "
            "88.7 in float32 and 709.8 in float64"
        )
    return (
        f"Why subtract the max m = {_cell(m)}: every exponent becomes <= 0, so exp(x - m) <= 1 "
        f"never overflows and the largest term is exactly 1, so S >= 1 and log S is safe; "
        f"{here}. Softmax is unchanged: exp(x - m) / sum exp(x - m) = exp(x) / sum exp(x)."
    )


def _softmax_steps(x_row: np.ndarray, cols: list[int]) -> tuple[list[Row], dict[str, Any]]:
    """The log-softmax of one row in the reference's order, as rows of the table."""
    m = np.max(x_row)
    shifted = x_row - m
    e = np.exp(shifted)
    s = np.sum(e)
    p = e / s
    logp = shifted - np.log(s)
    pick = np.asarray(cols)
    rows = [
        Row("logits x", tuple(x_row[pick].tolist())),
        Row("max m = max_c x_c", (float(m),), "for numerical stability"),
        Row("x - m", tuple(shifted[pick].tolist())),
        Row("exp(x - m)", tuple(e[pick].tolist())),
        Row("sum S = sum_c exp(x_c - m)", (float(s),)),
        Row("softmax p = exp(x - m) / S", tuple(p[pick].tolist())),
        Row("log-prob l = (x - m) - log S", tuple(logp[pick].tolist())),
    ]
    return rows, {"m": m, "p": p, "logp": logp, "s": s}


def _explain_cross_entropy(args: _Args) -> _Parts:
    x, t = args.x, args.t
    probabilities = t.shape == x.shape
    loss, grad = _crossent(args)
    losses, _ = _crossent(args, reduction="none")
    if x.ndim == 0 or x.shape[0 if x.ndim == 1 else 1] == 0:
        raise ValueError("explain needs at least one class")
    rows = to_rows(np, x)
    grad_rows = to_rows(np, grad)
    num_rows, c = rows.shape
    eps = args.label_smoothing
    w = np.ones(c) if args.w is None else args.w
    pos_shape = _index_shape(x.shape)
    positions = _positions(pos_shape)
    flat_losses = np.asarray(losses).reshape(-1)
    q_rows = to_rows(np, t) if probabilities else None
    flat_t = None if probabilities else t.reshape(-1)
    denominator, reduction_table, scale = _reduction_table_ce(
        args, probabilities, flat_losses, flat_t, w, num_rows, loss
    )
    tables: list[Table] = []
    gradients: list[Table] = []
    for i in range(min(num_rows, args.max_rows)):
        label = _position_label(positions[i])
        key = "sample" if num_rows == 1 else f"sample {i}"
        grad_key = "gradient" if num_rows == 1 else f"gradient {i}"
        if probabilities:
            q = q_rows[i]
            cols = _pick_columns(c, [int(np.argmax(q)), int(np.argmax(rows[i]))])
            steps, v = _softmax_steps(rows[i], cols)
            qs = (1 - eps) * q + eps / c if eps > 0 else q
            steps.append(Row("target q", tuple(q[cols].tolist())))
            if eps > 0:
                steps.append(
                    Row(f"smoothed q' = (1 - {eps:g}) q + {eps:g}/{c}", tuple(qs[cols].tolist()))
                )
            if args.w is not None:
                steps.append(Row("class weight w", tuple(w[cols].tolist())))
            terms = -(w * qs * v["logp"])
            steps.append(
                Row("-w_c q'_c l_c" if eps > 0 else "-w_c q_c l_c", tuple(terms[cols].tolist()))
            )
            steps.append(Row("loss L = sum_c of that", (float(flat_losses[i]),), "crossent"))
            title = f"{label.capitalize()}: probability target"
            notes = [_shift_note(rows[i], v["m"])] if i == 0 else []
            tables.append(
                Table(key, title, tuple(f"class {k}" for k in cols), tuple(steps), tuple(notes))
            )
            grad_table = _grad_table_soft(
                grad_key, label, v["p"], qs, w, cols, scale, grad_rows[i], args.w is not None
            )
        else:
            y = int(flat_t[i])
            kept = y != args.ignore_index
            cols = _pick_columns(c, [y] if kept else [])
            steps, v = _softmax_steps(rows[i], cols)
            if kept:
                wy = float(w[y])
                hard = -wy * v["logp"][y]
                steps.append(Row(f"target y = {y}: l_y", (float(v["logp"][y]),)))
                if args.w is not None:
                    steps.append(Row(f"class weight w_y = w[{y}]", (wy,)))
                if eps > 0:
                    uniform = -np.sum(w * v["logp"])
                    steps.append(Row("hard loss -w_y l_y", (float(hard),)))
                    steps.append(Row("uniform loss -sum_c w_c l_c / C", (float(uniform / c),)))
                    steps.append(
                        Row(
                            f"loss L = (1 - {eps:g}) hard + {eps:g} uniform",
                            (float(flat_losses[i]),),
                            "crossent",
                        )
                    )
                else:
                    formula = "loss L = -w_y l_y" if args.w is not None else "loss L = -l_y"
                    steps.append(Row(formula, (float(flat_losses[i]),), "crossent"))
                title = f"{label.capitalize()}: target {y}"
            else:
                steps.append(Row("loss L (ignored)", (float(flat_losses[i]),), "crossent"))
                title = f"{label.capitalize()}: target {y} = ignore_index, ignored"
            notes = []
            if i == 0:
                notes.append(_shift_note(rows[i], v["m"]))
            if eps > 0 and kept and i == 0:
                notes.append(
                    f"Label smoothing eps = {eps:g}: the loss is (1 - eps) * the hard loss "
                    f"against the target + eps * the loss against the uniform distribution "
                    f"(1/C to every class, the target included)."
                )
            if not kept:
                notes.append(
                    "An ignored target adds 0 to the sum and 0 to the mean denominator; its "
                    "logits still go through softmax (ignore_index masks targets, not logits)."
                )
            if c > len(cols):
                notes.append(f"Showing {len(cols)} of {c} classes; every sum runs over all.")
            tables.append(
                Table(key, title, tuple(f"class {k}" for k in cols), tuple(steps), tuple(notes))
            )
            grad_table = _grad_table_index(
                grad_key,
                label,
                v["p"],
                y,
                kept,
                w,
                eps,
                cols,
                scale,
                grad_rows[i],
                args.w is not None,
            )
        gradients.append(grad_table)
    notes = []
    if num_rows > args.max_rows:
        notes.append(
            f"{num_rows} positions: the first {args.max_rows} are shown step by step; "
            f"the reduction covers all."
        )
    ordered = (*tables, reduction_table, *gradients)
    return _Parts(ordered, loss, np.asarray(losses), grad, denominator, tuple(notes))


def _reduction_table_ce(args, probabilities, flat_losses, flat_t, w, num_rows, loss):
    """The reduction and its exact denominator; returns (D or None, table, gradient scale)."""
    r = args.reduction
    rows = [Row("sum of losses sum_i L_i", (float(np.sum(flat_losses)),))]
    notes = []
    if r == "none":
        rows = [
            Row(
                "per-position losses (crossent)",
                tuple(np.asarray(loss).reshape(-1).tolist()[:MAX_COLUMNS]),
            )
        ]
        notes.append(
            "reduction='none': no sum, no denominator; the gradient scale is the "
            "upstream gradient of each position (1 here)."
        )
        table = Table("reduction", "Reduction 'none'", (), tuple(rows), tuple(notes))
        return None, table, NONE_SCALE
    if r == "sum":
        rows.append(Row("loss = sum_i L_i", (float(loss),), "crossent"))
        notes.append("reduction='sum': no denominator; the gradient scale is 1.")
        return (
            None,
            Table("reduction", "Reduction 'sum'", (), tuple(rows), tuple(notes)),
            (SUM_SCALE),
        )
    if probabilities:
        d = float(num_rows)
        rows.append(Row("denominator D = M positions", (int(num_rows),)))
        notes.append(
            "Probability targets: 'mean' divides by the number of positions M, never by class "
            "weights or target sums (a float one-hot with class weights therefore differs from "
            "class-index targets)."
        )
    else:
        kept = flat_t != args.ignore_index
        safe = np.where(kept, flat_t, 0)
        w_row = np.where(kept, w[safe], 0.0)
        d = float(np.sum(w_row))
        ignored = int(np.sum(~kept))
        if args.w is None:
            rows.append(Row("denominator D = kept targets", (d,)))
            notes.append(
                f"Class-index targets: 'mean' divides by the number of kept targets: "
                f"{num_rows} position{'s' if num_rows != 1 else ''} - {ignored} ignored = "
                f"{int(d)}."
            )
        else:
            rows.append(Row("denominator D = sum_i m_i w[y_i]", (d,)))
            terms = [f"w[{int(y)}]" for y in flat_t[kept][:8]]
            more = " + ..." if int(np.sum(kept)) > 8 else ""
            shown = " + ".join(terms) + more if terms else "0"
            notes.append(
                f"Class-index targets with class weights: 'mean' divides by the total weight "
                f"of the kept targets, D = {shown} = {_cell(d)} ({ignored} ignored), not by "
                f"the count, so it is not none.mean()."
            )
        if d == 0:
            notes.append(
                "D = 0: the mean is 0/0 = NaN, as in PyTorch (the gradient is zero "
                "when every target is ignored)."
            )
    rows.append(Row("loss = sum_i L_i / D", (float(loss),), "crossent"))
    return (
        d,
        Table("reduction", "Reduction 'mean'", (), tuple(rows), tuple(notes)),
        (_mean_scale(d)),
    )


def _mean_scale(d: float) -> str:
    """The gradient's scale s for 'mean': the upstream gradient (1 here) over D."""
    if d == 0:
        return "1/D = 1/0 (the gradient of an all-ignored mean is 0)"
    return f"1/D = 1/{_cell(d)} = {_cell(1.0 / d)}"


SUM_SCALE = "1 (the upstream gradient; 'sum' has no denominator)"
NONE_SCALE = "1 (the upstream gradient of each position, ones here)"


def _grad_table_index(key, label, p, y, kept, w, eps, cols, scale, grad_row, weighted):
    c = p.shape[0]
    pick = np.asarray(cols)
    onehot = np.zeros(c)
    if kept:
        onehot[y] = 1.0
    rows = [Row("softmax p", tuple(p[pick].tolist()))]
    if eps > 0 and not weighted:
        target = (1 - eps) * onehot + eps / c
        rows.append(
            Row(f"target q' = (1 - {eps:g}) e_y + {eps:g}/{c}", tuple(target[pick].tolist()))
        )
    else:
        target = onehot
        rows.append(Row("target e_y (one-hot)", tuple(target[pick].tolist())))
    rows.append(Row("softmax - target", tuple((p - target)[pick].tolist())))
    if weighted and kept:
        wy = float(w[y])
        inner = (1 - eps) * wy * (p - onehot) + (eps / c) * (np.sum(w) * p - w)
        label_inner = (
            "(1-eps) w_y (p - e_y) + (eps/C)(W p - w)"
            if eps > 0
            else f"w_y (p - e_y), w_y = {_cell(wy)}"
        )
        rows.append(Row(label_inner, tuple(inner[pick].tolist())))
    rows.append(Row("gradient (crossent)", tuple(grad_row[pick].tolist()), "crossent"))
    if not kept:
        notes = ("Ignored target: its gradient row is zero.",)
    else:
        form = (
            "s * w_y * (softmax - target)"
            if weighted and eps == 0
            else (
                "s * [(1-eps) w_y (p - e_y) + (eps/C)(W p - w)]"
                if weighted
                else "s * (softmax - target)"
            )
        )
        notes = (
            f"d loss / d x = {form}, with scale s = {scale}. Each row sums to 0 "
            f"when the target sums to 1: raising every logit by the same amount changes "
            f"nothing.",
        )
    title = f"Gradient, {label}"
    return Table(
        key,
        title,
        tuple(f"class {k}" for k in cols),
        tuple(rows),
        notes,
    )


def _grad_table_soft(key, label, p, qs, w, cols, scale, grad_row, weighted):
    pick = np.asarray(cols)
    rows = [
        Row("softmax p", tuple(p[pick].tolist())),
        Row("target q'", tuple(qs[pick].tolist())),
        Row("softmax - target", tuple((p - qs)[pick].tolist())),
    ]
    general = weighted or abs(float(np.sum(qs)) - 1) > 1e-12  # target rows not summing to 1
    if general:
        inner = p * np.sum(w * qs) - w * qs
        rows.append(Row("p sum_c(w_c q'_c) - w q'", tuple(inner[pick].tolist())))
    rows.append(Row("gradient (crossent)", tuple(grad_row[pick].tolist()), "crossent"))
    form = "s * (p sum_c w_c q'_c - w q')" if general else "s * (softmax - target)"
    notes = (f"d loss / d x = {form}, with scale s = {scale}.",)
    return Table(
        key,
        f"Gradient, {label}",
        tuple(f"class {k}" for k in cols),
        tuple(rows),
        notes,
    )


def _explain_nll(args: _Args) -> _Parts:
    x, t = args.x, args.t
    loss, grad = _crossent(args)
    losses, _ = _crossent(args, reduction="none")
    rows = to_rows(np, x)
    grad_rows = to_rows(np, grad)
    num_rows, c = rows.shape
    w = np.ones(c) if args.w is None else args.w.reshape(-1)
    positions = _positions(_index_shape(x.shape))
    flat_t = t.reshape(-1)
    flat_losses = np.asarray(losses).reshape(-1)
    denominator, reduction_table, scale = _reduction_table_ce(
        args, False, flat_losses, flat_t, w, num_rows, loss
    )
    tables: list[Table] = []
    grads: list[Table] = []
    for i in range(min(num_rows, args.max_rows)):
        y = int(flat_t[i])
        kept = y != args.ignore_index
        cols = _pick_columns(c, [y] if kept else [])
        pick = np.asarray(cols)
        a = rows[i]
        with np.errstate(all="ignore"):
            implied = np.exp(a)
        total = float(np.sum(implied))
        steps = [
            Row("input a (log-probabilities)", tuple(a[pick].tolist())),
            Row("exp(a) (the probabilities)", tuple(implied[pick].tolist())),
            Row(
                "sum_c exp(a_c)",
                (total,),
                "1 for log-probabilities"
                if abs(total - 1) < 1e-6
                else "not 1: these are not log-probabilities",
            ),
        ]
        label = _position_label(positions[i])
        key = "sample" if num_rows == 1 else f"sample {i}"
        if kept:
            steps.append(Row(f"target y = {y}: a_y", (float(a[y]),)))
            if args.w is not None:
                steps.append(Row(f"class weight w_y = w[{y}]", (float(w[y]),)))
            steps.append(
                Row(
                    "loss L = -w_y a_y" if args.w is not None else "loss L = -a_y",
                    (float(flat_losses[i]),),
                    "crossent",
                )
            )
            title = f"{label.capitalize()}: target {y}"
        else:
            steps.append(Row("loss L (ignored)", (float(flat_losses[i]),), "crossent"))
            title = f"{label.capitalize()}: target {y} = ignore_index, ignored"
        notes = []
        if i == 0:
            notes.append(
                "nll_loss takes no log and no softmax: it only picks -input[target]. "
                "It equals cross_entropy when the input is log_softmax(logits)."
            )
        tables.append(
            Table(key, title, tuple(f"class {k}" for k in cols), tuple(steps), tuple(notes))
        )
        onehot = np.zeros(c)
        if kept:
            onehot[y] = 1.0
        g_rows = [
            Row("-w_y e_y", tuple((-w[y] * onehot if kept else onehot)[pick].tolist())),
            Row("gradient (crossent)", tuple(grad_rows[i][pick].tolist()), "crossent"),
        ]
        grads.append(
            Table(
                "gradient" if key == "sample" else f"gradient {i}",
                f"Gradient, {label}",
                tuple(f"class {k}" for k in cols),
                tuple(g_rows),
                (f"d loss / d a = -s w_y e_y with s = {scale}: only the target entry moves.",),
            )
        )
    tables.append(reduction_table)
    notes = []
    if num_rows > args.max_rows:
        notes.append(
            f"{num_rows} positions: the first {args.max_rows} are shown step by step; "
            f"the reduction covers all."
        )
    return _Parts(tuple(tables + grads), loss, np.asarray(losses), grad, denominator, tuple(notes))


# ------------------------------------------------------------------------------------------
# binary losses


def _element_columns(shape: tuple[int, ...], limit: int) -> list[tuple[int, ...]]:
    return _positions(shape)[:limit]


def _element_label(index: tuple[int, ...]) -> str:
    if not index:
        return "value"
    if len(index) == 1:
        return f"[{index[0]}]"
    return "[" + ",".join(str(i) for i in index) + "]"


def _binary_reduction(args: _Args, losses: np.ndarray, loss: np.ndarray):
    r = args.reduction
    n = int(losses.size)
    rows = [Row("sum of losses", (float(np.sum(losses)),))]
    if r == "none":
        return (
            None,
            Table(
                "reduction",
                "Reduction 'none'",
                (),
                (
                    Row(
                        "per-element losses (crossent)",
                        tuple(losses.reshape(-1)[:MAX_COLUMNS].tolist()),
                    ),
                ),
                ("reduction='none': no sum, no denominator.",),
            ),
            NONE_SCALE,
        )
    if r == "sum":
        rows.append(Row("loss = sum", (float(loss),), "crossent"))
        return None, Table("reduction", "Reduction 'sum'", (), tuple(rows)), SUM_SCALE
    rows.append(Row("denominator D = numel", (n,)))
    rows.append(Row("loss = sum / D", (float(loss),), "crossent"))
    note = (
        "Binary losses: 'mean' divides by the number of elements; weights never enter "
        "the denominator."
    )
    return (
        float(n),
        Table("reduction", "Reduction 'mean'", (), tuple(rows), (note,)),
        (_mean_scale(float(n))),
    )


def _explain_bce(args: _Args) -> _Parts:
    p, y = args.x, args.t
    loss, grad = _crossent(args)
    losses, _ = _crossent(args, reduction="none")
    shape = p.shape
    w = np.broadcast_to(np.ones(()) if args.w is None else args.w, shape)
    idx = _element_columns(shape, MAX_COLUMNS)
    sel = tuple(np.array(k) for k in zip(*idx, strict=True)) if shape else ()

    def pick(a: np.ndarray) -> tuple[float, ...]:
        return tuple(np.asarray(a)[sel].reshape(-1).tolist()) if shape else (float(a),)

    with np.errstate(all="ignore"):
        log_p = np.log(p)
        log_1mp = np.log1p(-p)  # as the loss computes it (exact for tiny p)
    floor = -100.0
    clamped_p = np.maximum(log_p, floor)
    clamped_1mp = np.maximum(log_1mp, floor)
    clamp_hit = (log_p < floor) | (log_1mp < floor)
    steps = [
        Row("probability p (input)", pick(p)),
        Row("target y", pick(y)),
        Row("log p", pick(log_p)),
        Row("max(log p, -100)", pick(clamped_p)),
        Row("log(1 - p)", pick(log_1mp)),
        Row("max(log(1 - p), -100)", pick(clamped_1mp)),
    ]
    if args.w is not None:
        steps.append(Row("weight w", pick(w)))
    formula = "loss L = -w [y max(log p, -100) + (1-y) max(log(1-p), -100)]"
    if args.w is None:
        formula = "loss L = -[y max(log p, -100) + (1-y) max(log(1-p), -100)]"
    steps.append(Row(formula, pick(np.asarray(losses)), "crossent"))
    notes = [
        "PyTorch clamps each log term at -100, so one element costs at most 100 (times its "
        "weight) instead of inf when p is exactly 0 or 1 on the wrong side."
    ]
    if bool(np.any(clamp_hit)):
        where = [_element_label(k) for k in _positions(shape) if clamp_hit[k]][:6]
        notes.append(
            f"The clamp is active here at {', '.join(where)}: log is -inf (or below "
            f"-100) there and becomes -100."
        )
    cols = tuple(_element_label(k) for k in idx)
    element_table = Table("elements", "Elements", cols, tuple(steps), tuple(notes))
    denominator, reduction_table, scale = _binary_reduction(args, np.asarray(losses), loss)
    eps = BCE_GRAD_EPSILON
    with np.errstate(all="ignore"):
        denom = np.maximum(p * (1 - p), eps)
    g_rows = [
        Row("p - y", pick(p - y)),
        Row("max(p (1 - p), 1e-12)", pick(denom)),
        Row("w (p - y) / max(p(1-p), 1e-12)", pick(w * (p - y) / denom)),
        Row("gradient (crossent)", pick(grad), "crossent"),
    ]
    g_notes = (
        f"d loss / d p = s * w (p - y) / max(p (1 - p), 1e-12), with scale s = "
        f"{scale}. "
        f"The 1e-12 keeps it finite at p = 0 or 1 (it is a float32 constant, also in float64). "
        f"With logits z and p = sigmoid(z) the chain rule gives s * w * (sigmoid(z) - y): use "
        f"binary_cross_entropy_with_logits.",
    )
    gradient = Table("gradient", "Gradient", cols, tuple(g_rows), g_notes)
    notes_top = []
    if p.size > MAX_COLUMNS:
        notes_top.append(
            f"{p.size} elements: the first {MAX_COLUMNS} are shown; the reduction covers all."
        )
    return _Parts(
        (element_table, reduction_table, gradient),
        loss,
        np.asarray(losses),
        grad,
        denominator,
        tuple(notes_top),
    )


def _explain_bce_logits(args: _Args) -> _Parts:
    x, y = args.x, args.t
    loss, grad = _crossent(args)
    losses, _ = _crossent(args, reduction="none")
    shape = x.shape
    w = np.broadcast_to(np.ones(()) if args.w is None else args.w, shape)
    pw = np.broadcast_to(np.ones(()) if args.pw is None else args.pw, shape)
    idx = _element_columns(shape, MAX_COLUMNS)
    sel = tuple(np.array(k) for k in zip(*idx, strict=True)) if shape else ()

    def pick(a: np.ndarray) -> tuple[float, ...]:
        return tuple(np.asarray(a)[sel].reshape(-1).tolist()) if shape else (float(a),)

    e = np.exp(-np.abs(x))
    sig = np.where(x >= 0, 1 / (1 + e), e / (1 + e))
    log_sig = np.minimum(x, 0) - np.log1p(np.exp(-np.abs(x)))
    steps = [
        Row("logit x (input)", pick(x)),
        Row("target y", pick(y)),
        Row("sigmoid(x)", pick(sig)),
        Row("log sigmoid(x) = min(x,0) - log1p(e^-|x|)", pick(log_sig)),
        Row("log(1 - sigmoid(x)) = log sigmoid(x) - x", pick(log_sig - x)),
    ]
    if args.pw is not None:
        steps.append(Row("pos_weight pw", pick(pw)))
    if args.w is not None:
        steps.append(Row("weight w", pick(w)))
    if args.pw is None:
        formula = "loss L = (1 - y) x - log sigmoid(x)"
    else:
        formula = "loss L = (1 - y) x - (1 + (pw - 1) y) log sigmoid(x)"
    if args.w is not None:
        formula = formula.replace("= ", "= w [", 1) + "]"
    steps.append(Row(formula, pick(np.asarray(losses)), "crossent"))
    notes = (
        "This is -[y log sigmoid(x) + (1 - y) log(1 - sigmoid(x))], written so that no log of a "
        "rounded probability is taken: no clamp is needed and large logits give large (not "
        "capped at 100) losses.",
    )
    cols = tuple(_element_label(k) for k in idx)
    element_table = Table("elements", "Elements", cols, tuple(steps), notes)
    denominator, reduction_table, scale = _binary_reduction(args, np.asarray(losses), loss)
    if args.pw is None:
        inner = w * (sig - y)
        label = "w (sigmoid(x) - y)" if args.w is not None else "sigmoid(x) - y"
    else:
        inner = w * (sig * (1 + (pw - 1) * y) - pw * y)
        label = "w (sigmoid(x)(1 + (pw-1) y) - pw y)"
    g_rows = [
        Row("sigmoid(x)", pick(sig)),
        Row("target y", pick(y)),
        Row(label, pick(inner)),
        Row("gradient (crossent)", pick(grad), "crossent"),
    ]
    gradient = Table(
        "gradient",
        "Gradient",
        cols,
        tuple(g_rows),
        (f"d loss / d x = s * ({label}), with scale s = {scale}.",),
    )
    notes_top = []
    if x.size > MAX_COLUMNS:
        notes_top.append(
            f"{x.size} elements: the first {MAX_COLUMNS} are shown; the reduction covers all."
        )
    return _Parts(
        (element_table, reduction_table, gradient),
        loss,
        np.asarray(losses),
        grad,
        denominator,
        tuple(notes_top),
    )


# ------------------------------------------------------------------------------------------
# chance and precision


def _chance_table(args: _Args) -> tuple[Table, float]:
    """The 'mean' loss of a model at chance, computed by crossent on a uniform prediction."""
    x = args.x
    if args.loss == "cross_entropy":
        c = x.shape[0] if x.ndim == 1 else x.shape[1]
        chance_input = np.zeros_like(x)
        what = f"uniform logits (p = 1/C): log C = log {c} = {_cell(math.log(c))}"
    elif args.loss == "nll_loss":
        c = x.shape[0] if x.ndim == 1 else x.shape[1]
        chance_input = np.full_like(x, -math.log(c))
        what = f"log-probabilities -log C: log C = log {c} = {_cell(math.log(c))}"
    elif args.loss == "binary_cross_entropy":
        chance_input = np.full_like(x, 0.5)
        what = f"p = 0.5 everywhere: log 2 = {_cell(math.log(2))} per element"
    else:
        chance_input = np.zeros_like(x)
        what = f"logits 0 (p = 0.5) everywhere: log 2 = {_cell(math.log(2))} per element"
    chance, _ = _crossent(args, x=chance_input, reduction="mean")
    here, _ = _crossent(args, reduction="mean")
    better = "below" if float(here) < float(chance) else "not below"
    notes = (
        f"A model that knows nothing predicts {what}. With these targets and arguments its "
        f"'mean' loss is {_cell(float(chance))}; the 'mean' loss here, {_cell(float(here))}, "
        f"is {better} chance.",
    )
    rows = (Row("mean loss here", (float(here),)), Row("mean loss at chance", (float(chance),)))
    return Table("chance", "Chance level", (), rows, notes), float(chance)


def _cast_for(dtype: str, a: np.ndarray | None) -> Any:
    if a is None:
        return None
    if dtype == "bfloat16":
        from crossent import require

        torch = require("torch", "torch")
        return torch.from_numpy(np.ascontiguousarray(a)).to(torch.bfloat16)
    return a.astype(dtype)


def _precision_table(args: _Args, parts: _Parts, dtype: str) -> Table:
    """crossent's results in ``dtype`` next to float64, for the entries where they differ."""
    x = _cast_for(dtype, args.x)
    index_target = args.loss in ("cross_entropy", "nll_loss") and args.t.shape != args.x.shape
    if index_target:
        t = args.t
        if dtype == "bfloat16":
            from crossent import require

            t = require("torch", "torch").from_numpy(np.ascontiguousarray(args.t))
    else:
        t = _cast_for(dtype, args.t)
    override = {"weight": _cast_for(dtype, args.w)}
    if args.loss == "binary_cross_entropy_with_logits":
        override["pos_weight"] = _cast_for(dtype, args.pw)
    loss_lo, grad_lo = _crossent(args, x=x, t=t, **override)
    entries = []
    for name, hi_values, lo_values in (
        ("loss", np.asarray(parts.loss), loss_lo),
        ("grad", parts.grad_input, grad_lo),
    ):
        shape = hi_values.shape
        for k, (v, lo) in enumerate(
            zip(hi_values.reshape(-1), np.asarray(lo_values).reshape(-1), strict=True)
        ):
            index = np.unravel_index(k, shape) if shape else ()
            label = name + ("[" + ",".join(str(int(i)) for i in index) + "]" if index else "")
            entries.append((label, float(v), float(lo)))
    differ = [(n, a, b) for n, a, b in entries if not (a == b or (math.isnan(a) and math.isnan(b)))]
    equal = len(entries) - len(differ)
    rows = []
    for name, hi, lo in differ[:16]:
        rel = abs(lo - hi) / abs(hi) if hi != 0 and math.isfinite(hi) else math.inf
        rel_text = f"{rel:.1e}" if math.isfinite(rel) else "-"
        rows.append(Row(name, (repr(hi), _repr_in(lo, dtype), rel_text)))
    digits = {"float32": "about 7", "float16": "about 3", "bfloat16": "about 2"}[dtype]
    notes = [
        f"The inputs rounded to {dtype}, through crossent's reference (the *_and_grad "
        f"functions, impl='reference'), which computes in a wider type and rounds each result "
        f"once: the differences come from rounding the inputs and the results to {dtype} "
        f"({digits} significant digits). torch, computing in {dtype} itself, may differ in "
        f"the last digits, and so may crossent's default impl='auto' where it runs torch's "
        f"kernel (on the CPU: half-precision inputs below 2**23 logits, K-dim ones at any "
        f"size).",
    ]
    if equal:
        notes.append(
            f"{equal} of {len(entries)} entries are identical in both precisions and not shown."
        )
    if len(differ) > 16:
        notes.append(f"{len(differ) - 16} more differing entries not shown.")
    return Table(
        "precision",
        f"float64 vs {dtype} (crossent, where they differ)",
        ("float64", dtype, "rel. diff"),
        tuple(rows),
        tuple(notes),
    )


def _repr_in(value: float, dtype: str) -> str:
    if dtype in ("float32", "float16") and math.isfinite(value):
        return str(np.dtype(dtype).type(value))  # the shortest digits that identify the value
    return _cell(value) if not math.isfinite(value) else f"{value:.4g}"


# ------------------------------------------------------------------------------------------
# plots


def write_plots(explanation: Explanation, directory: str | Path) -> tuple[Path, ...]:
    """Write two PNGs into ``directory``: the BCE loss curve and the example's probabilities.

    ``bce_loss.png``: binary cross-entropy against the predicted probability for y = 1 and
    y = 0, on a linear and a logarithmic axis (where the clamp at a loss of 100 shows), with the
    example's points when it is a BCE example. ``probabilities.png``: the example's predicted
    probabilities as bars (softmax for cross-entropy), the target marked. Needs matplotlib (the
    ``plot`` extra).
    """
    from crossent import require

    require("matplotlib", "plot")
    from matplotlib.figure import Figure

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths = (
        _plot_bce(Figure, explanation, out / "bce_loss.png"),
        _plot_probabilities(Figure, explanation, out / "probabilities.png"),
    )
    return paths


def _bce_curve(p: np.ndarray, y: float) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return -(y * np.maximum(np.log(p), -100) + (1 - y) * np.maximum(np.log1p(-p), -100))


def _plot_bce(figure_cls: Any, e: Explanation, path: Path) -> Path:
    fig = figure_cls(figsize=(12, 4.8), layout="constrained")
    left, right = fig.subplots(1, 2)
    blue, red = "#1f77b4", "#d62728"
    top = 6.0
    # Left: the familiar picture on a linear axis.
    p = np.linspace(0, 1, 2001)
    left.plot(p, _bce_curve(p, 1.0), color=blue, lw=2.2, label="y = 1:  loss = -log p")
    left.plot(p, _bce_curve(p, 0.0), color=red, lw=2.2, label="y = 0:  loss = -log(1 - p)")
    left.axhline(math.log(2), color="gray", ls=":", lw=1)
    left.text(0.03, math.log(2) + 0.07, "chance: log 2", color="gray", fontsize=9)
    left.set(
        xlim=(0, 1),
        ylim=(0, top),
        xlabel="predicted probability p",
        ylabel="loss",
        title="BCE loss against the predicted probability",
    )
    left.grid(alpha=0.3)
    # Right: the distance to the wrong end on a log axis, where the clamp at 100 shows.
    d = np.logspace(-62, 0, 1500)
    right.semilogx(d, _bce_curve(d, 1.0), color=blue, lw=2.2, label="y = 1: p on the x axis")
    d0 = d[d >= 2.0**-53]
    right.semilogx(
        d0, _bce_curve(1 - d0, 0.0), color=red, lw=2.2, ls="--", label="y = 0: 1 - p on the x axis"
    )
    right.axhline(100, color="black", ls="--", lw=1)
    right.axvline(math.exp(-100), color="gray", ls=":", lw=1)
    right.annotate(
        "clamp: max(log, -100)\nthe loss never\nexceeds 100",
        xy=(1e-54, 100),
        xytext=(1e-60, 66),
        fontsize=9,
        arrowprops={"arrowstyle": "->", "color": "black"},
    )
    right.text(math.exp(-100) * 4, 30, "p = e^-100\n= 3.7e-44", color="gray", fontsize=9)
    right.annotate(
        "y = 0: in float64 1 - p is\n0 or at least 1.1e-16, so\nthe loss is "
        "<= 36.7, or\n100 at p = 1 exactly",
        xy=(2.0**-53, 36.7),
        xytext=(1e-17, 62),
        fontsize=9,
        color=red,
        arrowprops={"arrowstyle": "->", "color": red},
    )
    right.set(
        xlim=(1e-62, 1),
        ylim=(0, 112),
        ylabel="loss",
        xlabel="p for y = 1, 1 - p for y = 0 (log scale)",
        title="The same curves on a log axis: the clamp at 100",
    )
    right.grid(alpha=0.3)
    if e.loss_name == "binary_cross_entropy":
        losses = np.asarray(e.losses).reshape(-1)
        for k, (pk, yk, lk) in enumerate(
            zip(e.input.reshape(-1), e.target.reshape(-1), losses, strict=True)
        ):
            if k >= MAX_COLUMNS:
                break
            color = blue if yk >= 0.5 else red
            if lk <= top:
                left.plot(pk, lk, "o", color=color, ms=9, mec="black", zorder=5)
            else:
                left.plot(
                    pk, top - 0.12, "^", color=color, ms=10, mec="black", zorder=5, clip_on=False
                )
                left.annotate(
                    f"p = {_cell(pk)}, y = {_cell(yk)}:\nloss {_cell(lk)} (off the axis)",
                    xy=(pk, top - 0.12),
                    xytext=(0.1 if pk < 0.5 else 0.55, top - 1.9),
                    fontsize=9,
                    arrowprops={"arrowstyle": "->", "color": "black"},
                )
            distance = pk if yk >= 0.5 else 1 - pk
            right.plot(
                max(distance, 1e-61),
                lk,
                "o",
                color=color,
                ms=9,
                mec="black",
                zorder=5,
                clip_on=False,
            )
        left.plot([], [], "o", color="white", mec="black", ms=9, label="this example")
    left.legend(loc="upper center", fontsize=9)
    right.legend(loc="lower left", fontsize=9)
    fig.suptitle(
        "binary_cross_entropy: -[y log p + (1 - y) log(1 - p)], each log clamped at -100",
        fontsize=12,
    )
    fig.savefig(path, dpi=110)
    return path


def _example_probabilities(e: Explanation) -> dict[str, Any]:
    """What the bar chart shows: the first row's probabilities (or the elements'), the labels,
    which bars are targets, the titles."""
    x = e.input
    if x.size == 0:
        raise ValueError("the example is empty: there is nothing to plot")
    if e.loss_name in ("cross_entropy", "nll_loss"):
        row = to_rows(np, x)[0]
        c = row.size
        probs = F.softmax(row, 0) if e.loss_name == "cross_entropy" else np.exp(row)
        marks = None
        if e.target.shape == x.shape:
            marks = to_rows(np, e.target)[0]
            targets = [k for k in range(c) if marks[k] > 0]
            legend = "target probability > 0"
        else:
            y = int(e.target.reshape(-1)[0])
            targets = [y] if 0 <= y < c else []
            legend = f"target class {y}"
        shown = list(range(c))
        if c > MAX_COLUMNS:  # the most likely classes, and the target
            likely = [int(k) for k in np.argsort(-probs, kind="stable")]
            shown = _top(likely, targets[:1])
        values = "logit" if e.loss_name == "cross_entropy" else "log p"
        labels = [f"class {k}\n{values} {row[k]:.4g}" for k in shown]
        name = "softmax of the logits" if e.loss_name == "cross_entropy" else "exp(input)"
        where = "" if x.ndim == 1 else ", first row"
        some = "" if len(shown) == c else f" ({len(shown)} of {c} classes: the likeliest, target)"
        return {
            "probs": probs[shown],
            "labels": labels,
            "targets": [i for i, k in enumerate(shown) if k in targets],
            "legend": legend,
            "title": f"Predicted probabilities: {name}{where}{some}",
            "chance": 1 / c,
            "chance_label": f"chance 1/C = {1 / c:.3g}",
            "marks": None if marks is None else marks[shown],
            "marks_label": "target probability q",
        }
    flat = x.reshape(-1)[:MAX_COLUMNS]
    ys = e.target.reshape(-1)[: flat.size]
    probs = flat if e.loss_name == "binary_cross_entropy" else 1 / (1 + np.exp(-flat))
    labels = [f"[{k}]\ny = {_cell(v)}" for k, v in enumerate(ys.tolist())]
    if e.loss_name == "binary_cross_entropy_with_logits":
        labels = [f"{label}\nlogit {z:.4g}" for label, z in zip(labels, flat, strict=True)]
    name = "p" if e.loss_name == "binary_cross_entropy" else "sigmoid of the logits"
    return {
        "probs": probs,
        "labels": labels,
        "targets": [k for k, v in enumerate(ys) if v >= 0.5],
        "legend": "y >= 0.5 (positive)",
        "title": f"Predicted probabilities: {name}",
        "chance": 0.5,
        "chance_label": "chance 0.5",
        "marks": ys,
        "marks_label": "target y",
    }


def _top(likely: list[int], keep: list[int]) -> list[int]:
    """The ``keep`` classes and the likeliest others, MAX_COLUMNS in all, in class order."""
    chosen = list(keep)
    for k in likely:
        if len(chosen) >= MAX_COLUMNS:
            break
        if k not in chosen:
            chosen.append(k)
    return sorted(chosen)


def _plot_probabilities(figure_cls: Any, e: Explanation, path: Path) -> Path:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    info = _example_probabilities(e)
    probs, targets = np.asarray(info["probs"], dtype=np.float64), info["targets"]
    n = probs.size
    fig = figure_cls(figsize=(min(15.0, max(7.5, 0.95 * n + 4.0)), 4.8), layout="constrained")
    ax = fig.subplots()
    green, pale = "#2ca02c", "#9ecae1"
    colors = [green if k in targets else pale for k in range(n)]
    ax.bar(range(n), probs, color=colors, edgecolor="black", lw=0.8)
    marks = None if info["marks"] is None else np.asarray(info["marks"], dtype=np.float64)
    # the axis fits the finite values (a +inf logit makes its row's softmax NaN: no bar, "nan")
    shown = [probs] if marks is None else [probs, marks]
    finite = np.concatenate([v[np.isfinite(v)] for v in shown])
    highest = max([info["chance"], *finite.tolist()])
    top = 1.12 if highest > 0.6 else highest * 1.25 + 0.02
    for k, value in enumerate(probs):
        y_text = value if math.isfinite(value) else 0.0
        if marks is not None and -0.02 * top < marks[k] - y_text < 0.08 * top:
            y_text = marks[k]  # keep the number clear of the target line just above the bar
        ax.text(k, y_text + 0.012 * top, f"{value:.3f}", ha="center", va="bottom", fontsize=10)
    ax.axhline(info["chance"], color="gray", ls=":", lw=1.5)
    handles = [
        Patch(facecolor=green, edgecolor="black", label=info["legend"]),
        Patch(facecolor=pale, edgecolor="black", label="other"),
        Line2D([], [], color="gray", ls=":", lw=1.5, label=info["chance_label"]),
    ]
    if marks is not None:
        ax.hlines(
            marks, np.arange(n) - 0.4, np.arange(n) + 0.4, colors="black", linestyles="--", lw=2
        )
        handles.append(Line2D([], [], color="black", ls="--", lw=2, label=info["marks_label"]))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9)
    ax.set_xticks(range(n), info["labels"])
    ax.set_ylim(0, top)
    ax.set_ylabel("probability")
    ax.set_title(info["title"], fontsize=11)
    loss = np.asarray(e.loss).reshape(-1)
    loss_text = _cell(float(loss[0])) if loss.size == 1 else "per position, see the tables"
    fig.suptitle(f"{e.loss_name}: loss = {loss_text}", fontsize=12)
    ax.grid(axis="y", alpha=0.3)
    fig.savefig(path, dpi=110)
    return path


# ------------------------------------------------------------------------------------------
# the `crossent explain` command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the options of ``crossent explain`` on ``parser``."""
    parser.description = parser.description or (
        "Show every step of a loss computation on your numbers (default: logits [2, 4, 0.5], "
        "target 1). Values: '2,4,0.5' (one row), '0.1,0.2,0.7;0.8,0.1,0.1' (rows) or JSON "
        "'[[...]]'; write --logits=-1,2 when the first value is negative."
    )
    parser.add_argument(
        "--logits",
        "--input",
        dest="input",
        metavar="VALUES",
        help="logits (cross_entropy, *_with_logits), log-probabilities "
        "(nll_loss) or probabilities (binary_cross_entropy)",
    )
    parser.add_argument(
        "--target",
        metavar="VALUES",
        help="class indices ('1', '2,0'), class probabilities with the input's "
        "shape, or binary targets",
    )
    parser.add_argument("--loss", choices=LOSSES, default="cross_entropy")
    parser.add_argument("--weight", metavar="VALUES", help="class weights (or BCE weights)")
    parser.add_argument(
        "--pos-weight", metavar="VALUES", help="binary_cross_entropy_with_logits pos_weight"
    )
    parser.add_argument(
        "--ignore-index",
        type=int,
        default=-100,
        metavar="INT",
        help="class index whose targets are ignored (default: -100)",
    )
    parser.add_argument(
        "--label-smoothing",
        type=float,
        default=0.0,
        metavar="EPS",
        help="cross_entropy label smoothing in [0, 1] (default: 0)",
    )
    parser.add_argument("--reduction", choices=("mean", "sum", "none"), default="mean")
    parser.add_argument(
        "--compare",
        choices=("auto", "float32", "float16", "bfloat16", "none"),
        default="auto",
        help="precision shown next to float64 (auto: float32; bfloat16 needs torch)",
    )
    parser.add_argument(
        "--plot", metavar="DIR", help="also write bce_loss.png and probabilities.png into DIR"
    )


def _parse_values(text: str, what: str) -> np.ndarray:
    """'2,4,0.5' -> (3,); '1,2;3,4' -> (2, 2); JSON '[[1, 2]]' as is; '1' -> 0-d."""
    text = text.strip()
    try:
        if text.startswith("["):
            return np.asarray(json.loads(text))
        parsed = [[_number(v) for v in row.split(",")] for row in text.split(";")]
    except (ValueError, json.JSONDecodeError) as exc:
        raise ValueError(f"--{what}: cannot read {text!r} as numbers ({exc})") from None
    if len(parsed) == 1:
        values = parsed[0]
        return np.asarray(values[0] if len(values) == 1 else values)
    if len({len(r) for r in parsed}) != 1:
        raise ValueError(f"--{what}: rows of different lengths in {text!r}")
    return np.asarray(parsed)


def _number(token: str) -> int | float:
    token = token.strip()
    try:
        return int(token)
    except ValueError:
        return float(token)


def run(args: argparse.Namespace) -> int:
    """Run ``crossent explain``: print the tables, write the plots; 2 on bad input."""
    try:
        if args.plot is not None:
            from crossent import require

            require("matplotlib", "plot")
            plot_dir = Path(args.plot)
            if plot_dir.exists() and not plot_dir.is_dir():  # before any output is printed
                raise ValueError(f"--plot {args.plot}: not a directory (it is a file)")
        x = None if args.input is None else _parse_values(args.input, "logits")
        t = None if args.target is None else _parse_values(args.target, "target")
        if x is not None and t is None:
            raise ValueError("--target is required when --logits is given")
        if x is None and t is not None:
            raise ValueError("--logits is required when --target is given")
        if x is not None and x.dtype.kind in "iu":
            x = x.astype(np.float64)
        if t is not None and args.loss in ("cross_entropy",) and t.shape == x.shape:
            t = t.astype(np.float64)  # a target with the input's shape holds probabilities
        w = None if args.weight is None else _parse_values(args.weight, "weight").astype(float)
        pw = (
            None
            if args.pos_weight is None
            else _parse_values(args.pos_weight, "pos-weight").astype(float)
        )
        explanation = explain(
            x,
            t,
            w,
            loss=args.loss,
            ignore_index=args.ignore_index,
            reduction=args.reduction,
            label_smoothing=args.label_smoothing,
            pos_weight=pw,
            compare=None if args.compare == "none" else args.compare,
        )
    except ImportError as exc:
        print(f"crossent explain: {exc}", file=sys.stderr)
        return 1
    except (ValueError, TypeError, RuntimeError, IndexError, NotImplementedError) as exc:
        message = " ".join(str(exc).split())
        print(f"crossent explain: error: {message}", file=sys.stderr)
        return 2
    sys.stdout.write(explanation.to_text())
    if args.plot is not None:
        try:
            paths = write_plots(explanation, args.plot)
        except (OSError, ValueError) as exc:  # e.g. a --plot path that is a file
            print(f"crossent explain: error: --plot {args.plot}: {exc}", file=sys.stderr)
            return 2
        for path in paths:
            print(f"wrote {path}")
    return 0

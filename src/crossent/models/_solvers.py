"""Optimisers for the softmax-regression objective: full-batch L-BFGS and mini-batch SGD/Adam.

L-BFGS (:func:`lbfgs`) minimises a smooth function given as ``fun(x) -> (value, gradient)``
with the two-loop recursion (memory ``m``, initial Hessian scaled by ``s.y / y.y``) and a line
search for the strong Wolfe conditions (``c1 = 1e-4``, ``c2 = 0.9``; bracketing and zoom with
safeguarded cubic interpolation, Nocedal & Wright, Algorithms 3.5-3.6). Its stopping rules are
scikit-learn's (scipy L-BFGS-B with ``gtol=tol``, ``ftol=64 * eps``): stop when the largest
gradient entry is at most ``tol``, or when one iteration lowers the value by at most ``ftol``
relative to ``max(|f|, |f_new|, 1)``.

Stages. ``fun`` may be a sequence of functions of increasing precision (here: the objective
evaluated in float32, then in float64). A stage ends when its own rules say so (or its line
search fails); the next stage re-evaluates the current point and continues *with the same
curvature memory*, so a float32 stage does the bulk of the descent at about half the cost per
evaluation and the last stage (float64) alone decides convergence: the result meets the same
``tol`` as a float64-only run.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

Function = Callable[[np.ndarray], tuple[float, np.ndarray]]

#: Relative-decrease threshold of the final stage (scipy L-BFGS-B's ``ftol`` as sklearn sets it).
FTOL = 64 * np.finfo(np.float64).eps
#: An earlier (lower-precision) stage hands over once one iteration lowers the value by less
#: than this, relative: below it float32 rounding of the value starts to mislead the search.
STAGE_FTOL = 1e-7


@dataclass
class LbfgsResult:
    """Outcome of :func:`lbfgs`; ``message`` says why it stopped."""

    x: np.ndarray
    fun: float
    grad_max: float
    n_iter: int
    n_evaluations: int
    converged: bool
    message: str
    values: list[float] = field(default_factory=list)


class _Counted:
    """Wraps a function to count evaluations."""

    def __init__(self, fun: Function) -> None:
        self.fun = fun
        self.count = 0

    def __call__(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        self.count += 1
        value, grad = self.fun(x)
        return float(value), grad


def _two_loop(grad: np.ndarray, pairs: deque) -> np.ndarray:
    """``-H grad`` for the L-BFGS inverse-Hessian approximation ``H`` built from ``pairs``."""
    q = grad.copy()
    alphas = []
    for s, y, rho in reversed(pairs):
        a = rho * np.dot(s, q)
        q -= a * y
        alphas.append(a)
    s, y, _ = pairs[-1]
    q *= np.dot(s, y) / np.dot(y, y)
    for (s, y, rho), a in zip(pairs, reversed(alphas), strict=True):
        b = rho * np.dot(y, q)
        q += (a - b) * s
    return -q


def _cubic_min(a: float, fa: float, da: float, b: float, fb: float, db: float) -> float | None:
    """Minimiser of the cubic interpolating (a, fa, da), (b, fb, db); None if undefined."""
    d1 = da + db - 3 * (fa - fb) / (a - b)
    disc = d1 * d1 - da * db
    if disc < 0:
        return None
    d2 = math.copysign(math.sqrt(disc), b - a)
    denom = db - da + 2 * d2
    if denom == 0:
        return None
    return b - (b - a) * (db + d2 - d1) / denom


@dataclass
class _Point:
    step: float
    value: float
    grad: np.ndarray
    slope: float


def _wolfe_search(
    fun: Callable[[np.ndarray], tuple[float, np.ndarray]],
    x: np.ndarray,
    value: float,
    direction: np.ndarray,
    slope: float,
    step: float,
    max_evaluations: int = 50,
    c1: float = 1e-4,
    c2: float = 0.9,
) -> _Point | None:
    """A step satisfying the strong Wolfe conditions along ``direction``, or None."""

    def at(t: float) -> _Point:
        f, g = fun(x + t * direction)
        return _Point(t, f, g, float(np.dot(g, direction)))

    prev = _Point(0.0, value, np.empty(0), slope)
    for i in range(max_evaluations):
        cur = at(step)
        if (
            not math.isfinite(cur.value)
            or cur.value > value + c1 * step * slope
            or (i > 0 and cur.value >= prev.value)
        ):
            return _zoom(at, value, slope, prev, cur, max_evaluations - i - 1, c1, c2)
        if abs(cur.slope) <= -c2 * slope:
            return cur
        if cur.slope >= 0:
            return _zoom(at, value, slope, cur, prev, max_evaluations - i - 1, c1, c2)
        prev, step = cur, step * 4.0
    return None


def _zoom(at, value, slope, lo: _Point, hi: _Point, budget: int, c1: float, c2: float):
    for _ in range(budget):
        width = hi.step - lo.step
        trial = None
        if math.isfinite(hi.value):
            trial = _cubic_min(lo.step, lo.value, lo.slope, hi.step, hi.value, hi.slope)
        lower, upper = sorted((lo.step, hi.step))
        margin = 0.1 * abs(width)
        if trial is None or not (lower + margin <= trial <= upper - margin):
            trial = lo.step + 0.5 * width
        cur = at(trial)
        if (
            not math.isfinite(cur.value)
            or cur.value > value + c1 * trial * slope
            or cur.value >= lo.value
        ):
            hi = cur
        else:
            if abs(cur.slope) <= -c2 * slope:
                return cur
            if cur.slope * (hi.step - lo.step) >= 0:
                hi = lo
            lo = cur
        # (relative to the bracket: on features in large units the whole bracket may lie
        # below 1e-12, the first trial step being 1/||g||)
        if abs(hi.step - lo.step) <= 1e-12 * max(abs(lo.step), abs(hi.step)):
            break
    # No strong-Wolfe point found: accept the best sufficient-decrease point, if any.
    if lo.step > 0 and lo.value <= value + c1 * lo.step * slope:
        return lo
    return None


def lbfgs(
    stages: Sequence[Function],
    x0: np.ndarray,
    *,
    max_iter: int,
    tol: float,
    memory: int = 10,
    callback: Callable[[int, float, float], None] | None = None,
    final_precision: str = "float64",
) -> LbfgsResult:
    """Minimise with L-BFGS through ``stages`` (see the module docstring).

    ``callback(iteration, value, grad_max)`` runs after every iteration. ``values`` in the
    result holds the objective after each iteration (the first entry is the starting value).
    ``final_precision``: the precision the last stage computes its value in. In float32 the
    relative-decrease rule cannot tell convergence from rounding (a float32 value stops
    changing long before the gradient reaches ``tol``), so there it ends the run unconverged.
    """
    funs = [_Counted(f) for f in stages]
    stage = 0
    x = np.array(x0, dtype=np.float64)
    value, grad = funs[0](x)
    values = [value]
    pairs: deque = deque(maxlen=memory)
    n_iter = 0
    message = f"reached max_iter={max_iter}"
    converged = False

    def finish() -> LbfgsResult:
        nonlocal value, grad
        if stage < len(funs) - 1 and math.isfinite(value):
            value, grad = funs[-1](x)  # report the final stage's value and gradient
        return LbfgsResult(
            x=x,
            fun=value,
            grad_max=float(np.max(np.abs(grad))) if grad.size else 0.0,
            n_iter=n_iter,
            n_evaluations=sum(f.count for f in funs),
            converged=converged,
            message=message,
            values=values,
        )

    def next_stage() -> bool:
        nonlocal stage, value, grad
        if stage + 1 >= len(funs):
            return False
        stage += 1
        value, grad = funs[stage](x)
        return True

    while True:
        if not math.isfinite(value) or not np.all(np.isfinite(grad)):
            if next_stage():  # (a narrower stage overflowed, e.g. float32 features beyond
                values[-1] = value  # its range: the same point, valued by the wider stage)
                continue
            message = "the objective or its gradient is not finite"
            return finish()
        grad_max = float(np.max(np.abs(grad))) if grad.size else 0.0
        if grad_max <= tol:
            if next_stage():
                continue
            converged = True
            message = f"gradient max-norm {grad_max:.3g} <= tol={tol:g}"
            return finish()
        if n_iter >= max_iter:
            return finish()
        direction = _two_loop(grad, pairs) if pairs else -grad
        slope = float(np.dot(grad, direction))
        if not slope < 0:
            pairs.clear()
            direction = -grad
            slope = float(np.dot(grad, direction))
        # Without curvature pairs, L-BFGS-B's first step: unit length along -grad.
        step = 1.0 if pairs else 1.0 / float(np.linalg.norm(direction))
        found = _wolfe_search(funs[stage], x, value, direction, slope, step)
        if found is None and pairs:
            pairs.clear()  # retry once along the steepest descent
            direction = -grad
            slope = float(np.dot(grad, direction))
            step = 1.0 / float(np.linalg.norm(direction))
            found = _wolfe_search(funs[stage], x, value, direction, slope, step)
        if found is None:
            if next_stage():
                continue
            message = (
                f"the line search found no lower objective (gradient max-norm {grad_max:.3g} "
                f"> tol={tol:g})"
            )
            if final_precision != "float64":
                message += (
                    f" in {final_precision}, whose rounding may hide further progress; fit in "
                    f"float64 to reach tol"
                )
            return finish()
        s = found.step * direction
        y = found.grad - grad
        sy = float(np.dot(s, y))
        if sy > np.finfo(np.float64).eps * float(np.dot(y, y)):
            pairs.append((s, y, 1.0 / sy))
        decrease = value - found.value
        scale = max(abs(value), abs(found.value), 1.0)
        x = x + s
        value, grad = found.value, found.grad
        n_iter += 1
        values.append(value)
        if callback is not None:
            callback(n_iter, value, float(np.max(np.abs(grad))))
        final = stage == len(funs) - 1
        if decrease <= (FTOL if final else STAGE_FTOL) * scale:
            if next_stage():
                continue
            if final_precision == "float64":
                converged = True
                message = f"relative decrease of the objective {decrease / scale:.3g} <= ftol"
            else:
                message = (
                    f"the {final_precision} objective stopped decreasing with the gradient "
                    f"max-norm at {float(np.max(np.abs(grad))):.3g} > tol={tol:g} (its rounding "
                    f"hides further progress; fit in float64 to reach tol)"
                )
            return finish()

r"""The penalised softmax-regression objective and its gradient, from crossent's own losses.

For features ``X`` (``N x D``), class indices ``y``, per-sample weights ``s`` (class weights
folded in; ones by default), ``S = sum_i s_i``, weights ``W`` (``K x D``), intercepts ``b`` and
the cross-entropy ``CE`` of :func:`crossent.cross_entropy` (with its label smoothing):

.. math::

    F(W, b) = \frac{1}{S} \sum_i s_i\, \mathrm{CE}(W x_i + b,\ y_i)
              + \frac{1}{2\, C\, S} \lVert W \rVert_F^2

which is scikit-learn's ``LogisticRegression`` objective (its ``mean`` pointwise loss plus
``l2_reg_strength / 2 * ||W||^2`` with ``l2_reg_strength = 1 / (C * sum(sample_weight))``; the
intercept is not penalised), so objective values of the two are directly comparable.

Both engines sweep the rows in cache-sized blocks: ``Z = X_b @ W.T + b`` (BLAS, through
NumPy), then crossent computes the block's summed loss (or, with sample weights, the per-row
losses weighted by ``s``) and ``G = dL/dZ``, then ``dW += G.T @ X_b`` and ``db += G.sum(0)``.
The ``N x K`` logits never exist at once. Blocks are split among ``n_threads`` worker threads
(NumPy, BLAS and torch release the GIL; BLAS, and torch's own pool, run single-threaded inside
them) whose partial sums are added in a fixed order, so results are deterministic for a given
thread count. The engines differ in who computes ``(loss, G)`` of a block:

* ``"numpy"`` (needs only NumPy): :func:`crossent.cross_entropy_and_grad`, crossent's analytic
  gradient for any array;
* ``"torch"`` (needs torch): crossent's fused CPU cross-entropy kernel (the path behind
  ``crossent.cross_entropy(..., impl="fused")``), on zero-copy torch views of the block, with
  autograd. Its per-call cost (and importing torch) is higher and its per-element cost lower
  (it computes float32 logits in float32, where the NumPy reference widens to float64), so
  ``engine="auto"`` picks it from :data:`TORCH_MIN_LOGITS` logits (``N * K``) on, when torch
  is installed; ``python -m benchmarks classifier`` times both.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

import crossent

#: Target bytes of one block of logits in the NumPy engine (stays in a core's L2/L3 cache).
BLOCK_BYTES = 1 << 19
#: Fewest rows per block (tiny blocks cost more in Python overhead than they save).
MIN_BLOCK_ROWS = 64
#: The torch engine's blocks: the fused kernel's per-call cost wants bigger ones.
TORCH_BLOCK_BYTES = 1 << 22
TORCH_MIN_BLOCK_ROWS = 256
#: ``engine="auto"`` uses the torch engine from this many logits (``N * K``) on.
TORCH_MIN_LOGITS = 1 << 21
#: Below this many multiply-adds per evaluation (``N * K * D``) one thread does all the work:
#: handing blocks to threads costs more than it saves.
MIN_PARALLEL_WORK = 1 << 22

_EXECUTORS: dict[int, ThreadPoolExecutor] = {}


def _executor(workers: int) -> ThreadPoolExecutor:
    """A shared pool of ``workers`` threads, created on first use."""
    pool = _EXECUTORS.get(workers)
    if pool is None:
        pool = _EXECUTORS[workers] = ThreadPoolExecutor(workers, "crossent-objective")
    return pool


ENGINES = ("auto", "numpy", "torch")


def default_threads() -> int:
    """Worker threads of the objective: the CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def torch_available() -> bool:
    """torch and crossent's fused CPU kernel can be imported (checked without importing)."""
    import importlib.util

    try:
        return all(
            importlib.util.find_spec(name) is not None for name in ("torch", "crossent._fused_op")
        )
    except ImportError:  # pragma: no cover - a broken installation
        return False


def resolve_engine(engine: str, n_rows: int, n_classes: int) -> str:
    """The engine for ``engine`` ("auto": torch from :data:`TORCH_MIN_LOGITS` logits on, when
    it is installed, else numpy; see the module docstring and ``benchmarks/classifier.py``)."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(map(repr, ENGINES))}, got {engine!r}")
    if engine == "torch" and not torch_available():
        crossent.require("torch", "torch")
    if engine == "auto":
        large = n_rows * n_classes >= TORCH_MIN_LOGITS
        return "torch" if large and torch_available() else "numpy"
    return engine


class SoftmaxObjective:
    """``F(W, b)`` and its gradient over fixed data (see the module docstring).

    ``X`` must be C-contiguous float32 or float64 (the compute dtype), ``y`` int64 class
    indices in ``[0, n_classes)``, ``sample_weight`` None or a float64 ``(N,)`` array of
    non-negative weights (class weights already folded in). Parameters travel as one flat
    float64 vector ``[W.ravel(), b]`` (``b`` only with ``fit_intercept``), the layout of
    :meth:`pack`/:meth:`unpack`.
    """

    def __init__(
        self,
        X: np.ndarray,
        y: np.ndarray,
        n_classes: int,
        sample_weight: np.ndarray | None,
        *,
        C: float,
        fit_intercept: bool,
        label_smoothing: float = 0.0,
        engine: str = "auto",
        n_threads: int | None = None,
        weight_total: float | None = None,
    ) -> None:
        self.X = X
        self.y = y
        self.n_classes = int(n_classes)
        self.n_features = int(X.shape[1])
        self.fit_intercept = bool(fit_intercept)
        self.label_smoothing = float(label_smoothing)
        self.dtype = X.dtype
        if sample_weight is not None and np.all(sample_weight == 1.0):
            sample_weight = None
        self.sample_weight = sample_weight
        total = float(X.shape[0]) if sample_weight is None else float(np.sum(sample_weight))
        #: ``S`` of the formula: the loss normaliser and, with ``C``, the penalty strength.
        self.weight_total = total if weight_total is None else float(weight_total)
        self.l2 = 0.0 if math.isinf(C) else 1.0 / (float(C) * self.weight_total)
        self.engine = resolve_engine(engine, int(X.shape[0]), self.n_classes)
        self.n_threads = default_threads() if n_threads is None else max(1, int(n_threads))
        self.n_evaluations = 0
        self._torch_state: dict[str, Any] | None = None

    # -- parameter layout --------------------------------------------------------------------

    @property
    def n_params(self) -> int:
        return self.n_classes * self.n_features + (self.n_classes if self.fit_intercept else 0)

    def pack(self, coef: np.ndarray, intercept: np.ndarray | None) -> np.ndarray:
        parts = [np.asarray(coef, dtype=np.float64).ravel()]
        if self.fit_intercept:
            parts.append(np.asarray(intercept, dtype=np.float64).ravel())
        return np.concatenate(parts)

    def unpack(self, params: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        split = self.n_classes * self.n_features
        coef = params[:split].reshape(self.n_classes, self.n_features)
        intercept = params[split:] if self.fit_intercept else None
        return coef, intercept

    # -- evaluation --------------------------------------------------------------------------

    def __call__(self, params: np.ndarray) -> tuple[float, np.ndarray]:
        """``(F, dF/dparams)`` at ``params`` (float64 in, float64 out)."""
        coef, intercept = self.unpack(params)
        W = np.ascontiguousarray(coef, dtype=self.dtype)
        b = None if intercept is None else np.ascontiguousarray(intercept, dtype=self.dtype)
        loss_sum, grad_W, grad_b = self.loss_sum_and_grads(W, b)
        self.n_evaluations += 1
        scale = 1.0 / self.weight_total
        value = loss_sum * scale + 0.5 * self.l2 * float(np.dot(coef.ravel(), coef.ravel()))
        grad = np.empty(self.n_params, dtype=np.float64)
        gW = grad[: self.n_classes * self.n_features].reshape(self.n_classes, self.n_features)
        np.multiply(grad_W, scale, out=gW)
        gW += self.l2 * coef
        if self.fit_intercept:
            np.multiply(grad_b, scale, out=grad[self.n_classes * self.n_features :])
        return value, grad

    def loss_sum_and_grads(
        self, W: np.ndarray, b: np.ndarray | None
    ) -> tuple[float, np.ndarray, np.ndarray]:
        """``(sum_i s_i CE_i, sum_i s_i dCE_i/dW, sum_i s_i dCE_i/db)`` without the penalty."""
        n = self.X.shape[0]
        rows = self._block_rows()
        workers = min(self.n_threads, max(1, math.ceil(n / rows)))
        if n * self.n_classes * self.n_features < MIN_PARALLEL_WORK:
            workers = 1
        block_loss = self._torch_block if self.engine == "torch" else self._numpy_block
        with single_threaded_blas(), _single_threaded_torch(self.engine == "torch"):
            if workers == 1:
                return self._range_sums(block_loss, W, b, 0, n)
            bounds = np.linspace(0, n, workers + 1).astype(int)
            parts = list(
                _executor(workers).map(
                    lambda k: self._range_sums(block_loss, W, b, bounds[k], bounds[k + 1]),
                    range(workers),
                )
            )
        loss = sum(p[0] for p in parts)
        grad_W, grad_b = parts[0][1], parts[0][2]
        for part in parts[1:]:
            grad_W += part[1]
            grad_b += part[2]
        return loss, grad_W, grad_b

    # -- the blocked sweep -------------------------------------------------------------------

    def _block_rows(self) -> int:
        per_row = self.n_classes * self.dtype.itemsize
        if self.engine == "torch":
            return max(TORCH_MIN_BLOCK_ROWS, TORCH_BLOCK_BYTES // per_row)
        return max(MIN_BLOCK_ROWS, BLOCK_BYTES // per_row)

    def _range_sums(
        self,
        block_loss: Callable[[np.ndarray, int, int], tuple[float, np.ndarray]],
        W: np.ndarray,
        b: np.ndarray | None,
        start: int,
        stop: int,
    ) -> tuple[float, np.ndarray, np.ndarray]:
        """Loss sum and gradient sums over rows ``[start, stop)``, block by block."""
        rows = self._block_rows()
        grad_W = np.zeros((self.n_classes, self.n_features), dtype=self.dtype)
        grad_b = np.zeros(self.n_classes, dtype=self.dtype)
        loss = 0.0
        buffer = np.empty((min(rows, max(stop - start, 1)), self.n_classes), dtype=self.dtype)
        WT = W.T
        for lo in range(start, stop, rows):
            hi = min(lo + rows, stop)
            Xb = self.X[lo:hi]
            Z = np.matmul(Xb, WT, out=buffer[: hi - lo])
            if b is not None:
                Z += b
            block_value, G = block_loss(Z, lo, hi)
            loss += block_value
            grad_W += G.T @ Xb
            if b is not None:
                grad_b += G.sum(axis=0)
        return loss, grad_W, grad_b

    def _numpy_block(self, Z: np.ndarray, lo: int, hi: int) -> tuple[float, np.ndarray]:
        """``crossent.cross_entropy_and_grad`` of one block of logits."""
        if self.sample_weight is None:
            out = crossent.cross_entropy_and_grad(
                Z, self.y[lo:hi], reduction="sum", label_smoothing=self.label_smoothing
            )
            return float(out.loss), out.grad_input
        sw = self.sample_weight[lo:hi].astype(self.dtype)
        out = crossent.cross_entropy_and_grad(
            Z,
            self.y[lo:hi],
            reduction="none",
            label_smoothing=self.label_smoothing,
            grad_output=sw,
        )
        return float(np.dot(out.loss, sw)), out.grad_input

    def _torch_block(self, Z: np.ndarray, lo: int, hi: int) -> tuple[float, np.ndarray]:
        """crossent's fused cross-entropy kernel on a zero-copy torch view of the block."""
        import torch

        state = self._torch_state
        if state is None:
            from crossent._fused_op import fused_cross_entropy
            from crossent.backends.rows import RowOptions

            state = self._torch_state = {
                "y": torch.from_numpy(self.y),
                "sw": None
                if self.sample_weight is None
                else torch.from_numpy(self.sample_weight.astype(self.dtype)),
                "options": RowOptions(label_smoothing=self.label_smoothing),
                "fused": fused_cross_entropy,
            }
        logits = torch.from_numpy(Z).requires_grad_(True)
        sw = state["sw"]
        with torch.enable_grad():
            reduction = "sum" if sw is None else "none"
            loss, _, _ = state["fused"](
                logits, state["y"][lo:hi], None, state["options"], reduction
            )
            if sw is not None:
                loss = torch.dot(loss, sw[lo:hi])
            loss.backward()
        return float(loss.item()), logits.grad.numpy()


class _single_threaded_torch:
    """torch's intra-op pool set to one thread while our workers call torch side by side
    (restored afterwards); a no-op when ``active`` is False."""

    def __init__(self, active: bool) -> None:
        self.active = active
        self.previous = 0

    def __enter__(self) -> None:
        if self.active:
            import torch

            self.previous = torch.get_num_threads()
            torch.set_num_threads(1)

    def __exit__(self, *exc: object) -> None:
        if self.active:
            import torch

            torch.set_num_threads(self.previous)


class single_threaded_blas:
    """Limit BLAS to one thread while worker threads run GEMMs side by side (threadpoolctl,
    installed with scikit-learn; without it nothing is limited)."""

    _controller: Any = None

    def __enter__(self) -> None:
        self._context = None
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
            return
        if single_threaded_blas._controller is None:
            single_threaded_blas._controller = ThreadpoolController()
        self._context = single_threaded_blas._controller.limit(limits=1, user_api="blas")
        self._context.__enter__()

    def __exit__(self, *exc: object) -> None:
        if self._context is not None:
            self._context.__exit__(*exc)

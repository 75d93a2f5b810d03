"""``SoftmaxRegression``: multinomial logistic regression trained on crossent's own loss.

The seed pipeline ``x -> logits W x + b -> softmax -> cross-entropy -> update W, b`` as a
scikit-learn classifier. The objective (:mod:`crossent.models._objective`) is scikit-learn's
``LogisticRegression`` objective (same ``C`` convention), with the loss and its gradient from
:func:`crossent.cross_entropy_and_grad` (NumPy engine) or crossent's fused cross-entropy
kernel (torch engine), on blocks of logits computed by BLAS.
"""

from __future__ import annotations

import math
import numbers
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_array, check_is_fitted, validate_data

import crossent
from crossent.models import _io
from crossent.models._objective import ENGINES, SoftmaxObjective, single_threaded_blas
from crossent.models._solvers import lbfgs

__all__ = ["SoftmaxRegression"]

SOLVERS = ("lbfgs", "sgd", "adam")
#: Mini-batch solvers stop once the epoch objective has not improved by ``tol`` this many times.
N_ITER_NO_CHANGE = 5
#: Default learning rates of the mini-batch solvers.
DEFAULT_LEARNING_RATE = {"sgd": 0.1, "adam": 0.01}
SGD_MOMENTUM = 0.9
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
FILE_FORMAT = "crossent.SoftmaxRegression"
FILE_VERSION = 1

Batch = tuple[Any, Any] | tuple[Any, Any, Any]


def _to_numpy(a: Any) -> Any:
    """torch tensors (any device) to NumPy; everything else unchanged."""
    if type(a).__module__.split(".")[0] == "torch":
        a = a.detach().cpu()
        if str(a.dtype) in ("torch.bfloat16", "torch.float16"):
            a = a.float()  # (NumPy has no bfloat16; float32 holds both exactly)
        return a.numpy()
    return a


def _minibatch_solver(estimator: SoftmaxRegression) -> bool:
    return estimator.solver in ("sgd", "adam")


class SoftmaxRegression(ClassifierMixin, BaseEstimator):
    r"""Multinomial logistic (softmax) regression trained with crossent's cross-entropy.

    Minimises scikit-learn's ``LogisticRegression`` objective

    .. math::

        F(W, b) = \frac{1}{S} \sum_i s_i\, \mathrm{CE}(W x_i + b,\ y_i)
                  + \frac{1}{2\, C\, S} \lVert W \rVert^2, \qquad S = \sum_i s_i

    (``s`` = ``sample_weight`` times the class weight of each sample's class; the intercept is
    not penalised; ``CE`` is :func:`crossent.cross_entropy`, with ``label_smoothing``), so its
    objective values and solutions match ``LogisticRegression(C=C)``'s multinomial model.
    There is always one weight row per class, also for two classes (``LogisticRegression``
    keeps a single row there; with two classes this model equals ``LogisticRegression(C=2*C)``
    and ``decision_function`` gives the same log-odds).

    Parameters
    ----------
    C : float, default=1.0
        Inverse L2 regularisation strength (sklearn's convention); ``np.inf`` for none.
    fit_intercept : bool, default=True
        Learn one unpenalised intercept per class.
    class_weight : dict, "balanced" or None, default=None
        Per-class weights, applied as sample weights (sklearn's semantics: with
        label smoothing the smoothing term of a sample is weighted by its own class' weight).
    label_smoothing : float in [0, 1], default=0.0
        Smoothing of the one-hot targets, as in :func:`crossent.cross_entropy`.
    solver : {"lbfgs", "sgd", "adam"}, default="lbfgs"
        ``"lbfgs"``: full-batch L-BFGS on the exact objective. ``"sgd"`` (momentum 0.9) and
        ``"adam"``: shuffled mini-batches of ``batch_size`` rows; these also provide
        :meth:`partial_fit` and :meth:`fit_batches` (data streamed from an iterator).
    max_iter : int, default=100
        L-BFGS iterations, or epochs of the mini-batch solvers.
    tol : float, default=1e-4
        L-BFGS stops once the largest gradient entry is ``<= tol`` (scipy/sklearn's ``gtol``)
        or an iteration lowers the objective by at most ``64 * eps`` relative. Mini-batch
        solvers stop once the epoch objective has not improved by ``tol`` for 5 epochs.
    learning_rate : float or None, default=None
        Step size of the mini-batch solvers (None: 0.1 for sgd, 0.01 for adam).
    batch_size : int, default=256
        Rows per mini-batch.
    dtype : {None, "float32", "float64"}, default=None
        Precision of the model and of training; None keeps float32 input in float32 and uses
        float64 otherwise.
    mixed_precision : bool, default=True
        For float64 L-BFGS: run the first iterations with the objective evaluated in float32
        (half the memory traffic, faster GEMMs), then continue in float64 with the same
        curvature memory; the float64 stage alone decides convergence, so the result meets
        the same ``tol``.
    engine : {"auto", "numpy", "torch"}, default="auto"
        Who computes the loss and its gradient on each block of logits (``X_b @ W.T + b``,
        by BLAS): ``"numpy"`` (:func:`crossent.cross_entropy_and_grad`), ``"torch"``
        (crossent's fused CPU cross-entropy kernel, the path of ``crossent.cross_entropy(...,
        impl="fused")``); ``"auto"`` picks torch, when installed, from ``N * K >= 2**21``
        logits on (faster per element, but importing it costs about a second).
    n_threads : int or None, default=None
        Worker threads sharing the row blocks (None: every CPU available to the process).
        BLAS and torch run single-threaded inside them; the result is deterministic for a
        given thread count.
    warm_start : bool, default=False
        Start from the previous solution when refitting on the same classes and features.
    random_state : int, RandomState or None, default=None
        Shuffling of the mini-batch solvers.
    callback : callable or None, default=None
        ``callback(iteration, objective)`` after each L-BFGS iteration or mini-batch epoch.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    coef_ : ndarray of shape (n_classes, n_features)
    intercept_ : ndarray of shape (n_classes,)
    n_iter_ : int
        Iterations (L-BFGS) or epochs (mini-batch) of the last fit.
    loss_curve_ : list of float
        Objective after each iteration/epoch (L-BFGS: the first entry is the start).
    objective_ : float
        Final objective value (penalty included): at the returned parameters for L-BFGS; for
        sgd/adam the last epoch's running value (the mean loss over its mini-batches, each at
        the parameters of its step, plus the penalty at the end of the epoch).
    converged_ : bool
        L-BFGS: the gradient reached ``tol`` (or, in float64, the objective stopped
        decreasing). sgd/adam: the epoch objective stopped improving by ``tol`` without rising
        (a run whose objective rises is unstable: False, with a ConvergenceWarning).
    engine_ : str
        The engine that evaluated the objective (L-BFGS).
    n_evaluations_ : int
        Objective evaluations of the last L-BFGS fit (iterations plus line-search trials).
    n_features_in_, feature_names_in_ : as in scikit-learn.

    Examples
    --------
    >>> from sklearn.datasets import load_iris
    >>> from crossent.models import SoftmaxRegression
    >>> X, y = load_iris(return_X_y=True)
    >>> model = SoftmaxRegression(max_iter=500).fit(X, y)
    >>> round(model.score(X, y), 2)
    0.97
    """

    def __init__(
        self,
        C: float = 1.0,
        *,
        fit_intercept: bool = True,
        class_weight: Mapping[Any, float] | str | None = None,
        label_smoothing: float = 0.0,
        solver: str = "lbfgs",
        max_iter: int = 100,
        tol: float = 1e-4,
        learning_rate: float | None = None,
        batch_size: int = 256,
        dtype: str | None = None,
        mixed_precision: bool = True,
        engine: str = "auto",
        n_threads: int | None = None,
        warm_start: bool = False,
        random_state: Any = None,
        callback: Callable[[int, float], None] | None = None,
    ) -> None:
        self.C = C
        self.fit_intercept = fit_intercept
        self.class_weight = class_weight
        self.label_smoothing = label_smoothing
        self.solver = solver
        self.max_iter = max_iter
        self.tol = tol
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.dtype = dtype
        self.mixed_precision = mixed_precision
        self.engine = engine
        self.n_threads = n_threads
        self.warm_start = warm_start
        self.random_state = random_state
        self.callback = callback

    # ------------------------------------------------------------------------------------------
    # parameter checks

    def _check_params(self) -> None:
        def positive_number(name: str, value: Any, allow_inf: bool = False) -> None:
            ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
            ok = ok and value > 0 and (allow_inf or math.isfinite(value))
            if not ok:
                raise ValueError(f"{name} must be a positive number, got {value!r}")

        def positive_int(name: str, value: Any) -> None:
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

        positive_number("C", self.C, allow_inf=True)
        positive_number("tol", self.tol)
        positive_int("max_iter", self.max_iter)
        positive_int("batch_size", self.batch_size)
        if self.solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {self.solver!r}")
        if self.learning_rate is not None:
            positive_number("learning_rate", self.learning_rate)
        if self.dtype not in (None, "float32", "float64"):
            raise ValueError(f"dtype must be None, 'float32' or 'float64', got {self.dtype!r}")
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {self.engine!r}")
        if self.n_threads is not None:
            positive_int("n_threads", self.n_threads)
        ls = self.label_smoothing
        if not isinstance(ls, numbers.Real) or isinstance(ls, bool) or not 0 <= ls <= 1:
            raise ValueError(f"label_smoothing must be a number in [0, 1], got {ls!r}")
        if self.callback is not None and not callable(self.callback):
            raise ValueError(f"callback must be callable or None, got {self.callback!r}")

    def _compute_dtype(self, X: np.ndarray) -> np.dtype:
        if self.dtype is not None:
            return np.dtype(self.dtype)
        return np.dtype(np.float32) if X.dtype == np.float32 else np.dtype(np.float64)

    def _learning_rate(self) -> float:
        if self.learning_rate is not None:
            return float(self.learning_rate)
        return DEFAULT_LEARNING_RATE[self.solver]

    # ------------------------------------------------------------------------------------------
    # data

    def _validate_training_data(
        self, X: Any, y: Any, sample_weight: Any, reset: bool
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        X, y = validate_data(
            self,
            _to_numpy(X),
            _to_numpy(y),
            dtype=[np.float64, np.float32],
            order="C",
            reset=reset,
        )
        check_classification_targets(y)
        dtype = self._compute_dtype(X)
        X = np.ascontiguousarray(X, dtype=dtype)
        sample_weight = self._check_sample_weight(sample_weight, X.shape[0])
        return X, y, sample_weight

    @staticmethod
    def _check_sample_weight(sample_weight: Any, n_samples: int) -> np.ndarray | None:
        if sample_weight is None:
            return None
        sample_weight = _to_numpy(sample_weight)
        if isinstance(sample_weight, numbers.Number):
            sample_weight = np.full(n_samples, float(sample_weight))
        sw = np.asarray(sample_weight, dtype=np.float64)
        if sw.ndim != 1 or sw.shape[0] != n_samples:
            raise ValueError(f"sample_weight must have shape ({n_samples},), got {sw.shape}")
        if not np.all(np.isfinite(sw)) or np.any(sw < 0):
            raise ValueError("sample_weight must be finite and non-negative")
        return sw

    def _effective_weights(
        self, y_index: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None
    ) -> np.ndarray | None:
        """Sample weights times class weights (sklearn's semantics), or None for all ones."""
        if self.class_weight is None:
            return sample_weight
        per_class = compute_class_weight(
            self.class_weight, classes=self.classes_, y=y, sample_weight=sample_weight
        )
        weights = per_class[y_index]
        return weights if sample_weight is None else weights * sample_weight

    def _encode(self, y: np.ndarray) -> np.ndarray:
        index = np.searchsorted(self.classes_, y)
        index = np.clip(index, 0, len(self.classes_) - 1)
        unknown = self.classes_[index] != y
        if np.any(unknown):
            bad = y[np.argmax(unknown)]
            bad = bad.item() if isinstance(bad, np.generic) else bad
            raise ValueError(
                f"label {bad!r} is not one of the model's classes {self.classes_.tolist()} "
                "(those seen by fit, or given to the first partial_fit/fit_batches call)"
            )
        return index.astype(np.int64)

    # ------------------------------------------------------------------------------------------
    # fit

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> SoftmaxRegression:
        """Fit on ``X`` (``(n_samples, n_features)``, NumPy or torch) and labels ``y``."""
        self._check_params()
        X, y, sample_weight = self._validate_training_data(X, y, sample_weight, reset=True)
        previous = self._warm_start_state()
        self.classes_, y_index = np.unique(y, return_inverse=True)
        y_index = y_index.astype(np.int64).reshape(-1)
        if len(self.classes_) < 2:
            raise ValueError(
                "SoftmaxRegression needs samples of at least 2 classes, but the data contains "
                f"only one class: {self.classes_[0]!r}"
            )
        weights = self._effective_weights(y_index, y, sample_weight)
        if weights is not None:
            present = np.unique(y_index[weights > 0])
            if len(present) < 2:
                raise ValueError(
                    "SoftmaxRegression needs samples of at least 2 classes with non-zero "
                    f"sample weight, got {len(present)} class(es)"
                )
        coef, intercept = self._initial_parameters(previous, X.shape[1], X.dtype)
        self._random = None
        start = time.perf_counter()
        if self.solver == "lbfgs":
            self._fit_lbfgs(X, y_index, weights, coef, intercept)
        else:
            self._optimizer_state = None
            self._seen_weight = float(X.shape[0] if weights is None else np.sum(weights))
            self._fit_epochs(
                lambda: self._array_batches(X, y_index, weights), coef, intercept, weights
            )
        self.fit_time_ = time.perf_counter() - start
        return self

    def _warm_start_state(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        if self.warm_start and hasattr(self, "coef_"):
            return self.classes_, self.coef_, self.intercept_
        return None

    def _initial_parameters(
        self, previous: Any, n_features: int, dtype: np.dtype
    ) -> tuple[np.ndarray, np.ndarray]:
        n_classes = len(self.classes_)
        if previous is not None:
            classes, coef, intercept = previous
            if np.array_equal(classes, self.classes_) and coef.shape == (n_classes, n_features):
                return coef.astype(np.float64), intercept.astype(np.float64)
        return np.zeros((n_classes, n_features)), np.zeros(n_classes)

    def _l2(self, weight_total: float) -> float:
        return 0.0 if math.isinf(self.C) else 1.0 / (float(self.C) * weight_total)

    def _objective(
        self, X: np.ndarray, y_index: np.ndarray, weights: np.ndarray | None, **kw: Any
    ) -> SoftmaxObjective:
        return SoftmaxObjective(
            X,
            y_index,
            len(self.classes_),
            weights,
            C=self.C,
            fit_intercept=self.fit_intercept,
            label_smoothing=float(self.label_smoothing),
            engine=self.engine,
            n_threads=self.n_threads,
            **kw,
        )

    def _fit_lbfgs(
        self,
        X: np.ndarray,
        y_index: np.ndarray,
        weights: np.ndarray | None,
        coef: np.ndarray,
        intercept: np.ndarray,
    ) -> None:
        objective = self._objective(X, y_index, weights)
        stages = [objective]
        if self.mixed_precision and X.dtype == np.float64:
            stages.insert(
                0,
                self._objective(
                    X.astype(np.float32), y_index, weights, weight_total=objective.weight_total
                ),
            )
        callback = None
        if self.callback is not None:
            user = self.callback

            def callback(iteration: int, value: float, grad_max: float) -> None:
                user(iteration, value)

        # BLAS stays single-threaded for the solver's vector operations too: they are memory
        # bound, and a threaded ddot on a busy machine waits for descheduled threads.
        with single_threaded_blas():
            result = lbfgs(
                stages,
                objective.pack(coef, intercept),
                max_iter=int(self.max_iter),
                tol=float(self.tol),
                callback=callback,
                final_precision=str(X.dtype),
            )
        W, b = objective.unpack(result.x)
        self._set_solution(W, b, X.dtype)
        self.n_iter_ = result.n_iter
        self.loss_curve_ = [float(v) for v in result.values]
        self.objective_ = float(result.fun)
        self.converged_ = bool(result.converged)
        self.n_evaluations_ = result.n_evaluations
        self.engine_ = objective.engine
        if not result.converged:
            warnings.warn(
                f"SoftmaxRegression (L-BFGS) did not converge: {result.message}. Increase "
                "max_iter, standardise the features (e.g. sklearn.preprocessing."
                "StandardScaler), or decrease C for more regularisation.",
                ConvergenceWarning,
                stacklevel=3,
            )

    def _set_solution(self, W: np.ndarray, b: np.ndarray | None, dtype: np.dtype) -> None:
        self.coef_ = np.array(W, dtype=dtype, order="C")
        n_classes = self.coef_.shape[0]
        self.intercept_ = (
            np.zeros(n_classes, dtype=dtype) if b is None else np.array(b, dtype=dtype)
        )

    # ------------------------------------------------------------------------------------------
    # mini-batch solvers

    def _array_batches(
        self, X: np.ndarray, y_index: np.ndarray, weights: np.ndarray | None
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
        rng = self._rng()
        order = rng.permutation(X.shape[0])
        size = int(self.batch_size)
        for lo in range(0, X.shape[0], size):
            rows = np.sort(order[lo : lo + size])
            yield X[rows], y_index[rows], None if weights is None else weights[rows]

    def _rng(self) -> np.random.RandomState:
        if getattr(self, "_random", None) is None:
            from sklearn.utils import check_random_state

            self._random = check_random_state(self.random_state)
        return self._random

    def _step(
        self,
        params: np.ndarray,
        Xb: np.ndarray,
        yb: np.ndarray,
        wb: np.ndarray | None,
        weight_total: float,
    ) -> tuple[float, float]:
        """One optimiser step on a batch; returns (weighted loss sum, batch weight)."""
        objective = self._objective(Xb, yb, wb)
        if objective.weight_total <= 0:
            return 0.0, 0.0
        W, b = objective.unpack(params)
        loss_sum, grad_W, grad_b = objective.loss_sum_and_grads(
            np.ascontiguousarray(W, dtype=Xb.dtype),
            None if b is None else np.ascontiguousarray(b, dtype=Xb.dtype),
        )
        scale = 1.0 / objective.weight_total
        grad = np.empty_like(params)
        split = W.size
        grad[:split] = grad_W.ravel() * scale + self._l2(weight_total) * W.ravel()
        if b is not None:
            grad[split:] = grad_b * scale
        state = self._optimizer_state
        if state is None or state["m"].shape != params.shape:
            state = self._optimizer_state = {
                "t": 0,
                "m": np.zeros_like(params),
                "v": np.zeros_like(params),
            }
        lr = self._learning_rate()
        state["t"] += 1
        if self.solver == "sgd":
            state["m"] *= SGD_MOMENTUM
            state["m"] -= lr * grad
            params += state["m"]
        else:
            beta1, beta2 = ADAM_BETAS
            state["m"] = beta1 * state["m"] + (1 - beta1) * grad
            state["v"] = beta2 * state["v"] + (1 - beta2) * grad * grad
            m_hat = state["m"] / (1 - beta1 ** state["t"])
            v_hat = state["v"] / (1 - beta2 ** state["t"])
            params -= lr * m_hat / (np.sqrt(v_hat) + ADAM_EPS)
        return loss_sum, objective.weight_total

    def _fit_epochs(
        self,
        make_batches: Callable[[], Iterable[Any]],
        coef: np.ndarray,
        intercept: np.ndarray,
        weights: Any,
        epochs: int | None = None,
    ) -> None:
        """Run mini-batch epochs (``make_batches()`` yields one epoch of (X, y, w) batches)."""
        n_classes, n_features = coef.shape
        start_at_zero = not np.any(coef) and not np.any(intercept)
        params = np.concatenate([coef.ravel(), intercept if self.fit_intercept else []])
        epochs = int(self.max_iter) if epochs is None else epochs
        curve: list[float] = []
        best = math.inf
        stale = 0
        converged = False
        diverged = False
        last_good = params.copy()
        dtype = None
        for epoch in range(1, epochs + 1):
            total_loss = 0.0
            total_weight = 0.0
            for Xb, yb, wb in make_batches():
                dtype = Xb.dtype
                if epoch == 1 and self._stream_counting:
                    self._seen_weight += float(len(yb) if wb is None else np.sum(wb))
                loss, weight = self._step(params, Xb, yb, wb, self._seen_weight)
                total_loss += loss
                total_weight += weight
            if total_weight == 0:
                raise ValueError("the batches held no samples (or only zero sample weights)")
            W = params[: n_classes * n_features]
            value = total_loss / total_weight + 0.5 * self._l2(self._seen_weight) * float(
                np.dot(W, W)
            )
            if not (math.isfinite(value) and np.all(np.isfinite(params))):
                diverged = True
                params = last_good
                break
            last_good = params.copy()
            curve.append(value)
            if self.callback is not None:
                self.callback(epoch, value)
            if value > best - float(self.tol):
                stale += 1
            else:
                stale = 0
            best = min(best, value)
            if stale >= N_ITER_NO_CHANGE:
                converged = True
                break
        unstable = None
        if curve and not diverged:
            # The stale rule also fires on an objective that rises (a step too large for the
            # data): that is no convergence. Nor is a best epoch well above the objective at the
            # zero start, log(C) (any weights, any smoothing: a uniform prediction). Both by a
            # margin of half the value: mini-batch epochs at a fixed step wander by several
            # percent, and a first epoch from zero is log(C) plus its end-of-epoch penalty.
            rising = curve[-1] > best + max(float(self.tol), 0.5 * abs(best))
            log_c = math.log(n_classes)
            from_zero = start_at_zero and best > log_c + max(float(self.tol), 0.5 * log_c)
            if rising or from_zero:
                converged = False
                unstable = (
                    f"its epoch objective rose to {curve[-1]:.4g} from a best of {best:.4g}"
                    if rising
                    else f"its best epoch objective {best:.4g} is above log(C) = "
                    f"{math.log(n_classes):.4g}, the objective at the zero start"
                )
        W = params[: n_classes * n_features].reshape(n_classes, n_features)
        b = params[n_classes * n_features :] if self.fit_intercept else None
        self._set_solution(W, b, dtype if dtype is not None else np.float64)
        self.n_iter_ = len(curve)
        self.loss_curve_ = curve
        self.objective_ = curve[-1] if curve else math.nan
        self.converged_ = converged
        if unstable is not None:
            warnings.warn(
                f"SoftmaxRegression ({self.solver}) is unstable: {unstable}. Lower "
                f"learning_rate (now {self._learning_rate():g}) or standardise the features.",
                ConvergenceWarning,
                stacklevel=3,
            )
        elif diverged:
            warnings.warn(
                f"SoftmaxRegression ({self.solver}) diverged in epoch {len(curve) + 1} (the "
                "objective became NaN or infinite); the last finite parameters are kept. "
                f"Lower learning_rate (now {self._learning_rate():g}) or standardise the "
                "features.",
                ConvergenceWarning,
                stacklevel=3,
            )
        elif not converged and epochs == int(self.max_iter) and epochs > 1:
            warnings.warn(
                f"SoftmaxRegression ({self.solver}) did not converge in max_iter={epochs} "
                f"epochs: the epoch objective still improved by more than tol={self.tol:g}. "
                "Increase max_iter, raise tol, or tune learning_rate.",
                ConvergenceWarning,
                stacklevel=3,
            )

    @property
    def _stream_counting(self) -> bool:
        return getattr(self, "_counting", False)

    def _start_stream(
        self, X_first: np.ndarray, classes: Any, reset: bool, previous: Any = None
    ) -> None:
        """Set up (``reset``, or a first call) or continue a stream; ``previous``: the
        ``(classes, coef, intercept)`` a reset starts from (warm start), where they fit."""
        self._check_params()
        if not _minibatch_solver(self):
            raise ValueError(
                f"streaming needs a mini-batch solver: use solver='sgd' or 'adam' "
                f"(got solver={self.solver!r})"
            )
        if reset or not hasattr(self, "classes_"):
            if classes is None:
                raise ValueError(
                    "classes must be given on the first partial_fit/fit_batches call "
                    "(all labels the stream can contain)"
                )
            classes = np.unique(_to_numpy(np.asarray(classes)))
            if len(classes) < 2:
                raise ValueError(
                    f"SoftmaxRegression needs at least 2 classes, got {classes.tolist()}"
                )
            self.classes_ = classes
            self._optimizer_state = None
            self._seen_weight = 0.0
            dtype = self._compute_dtype(X_first)
            n_features = X_first.shape[1]
            coef, intercept = self._initial_parameters(previous, n_features, dtype)
            self._set_solution(coef, intercept if self.fit_intercept else None, dtype)
        else:
            if not hasattr(self, "_seen_weight"):  # continuing a model fitted by L-BFGS
                self._optimizer_state = None
                self._seen_weight = 0.0
            if classes is not None and not np.array_equal(
                np.unique(_to_numpy(np.asarray(classes))), self.classes_
            ):
                raise ValueError(
                    f"classes {np.unique(np.asarray(classes)).tolist()} differ from the classes "
                    f"of the first call {self.classes_.tolist()}"
                )

    def _clean_batch(self, batch: Any, first: bool) -> tuple[np.ndarray, np.ndarray, Any]:
        if not isinstance(batch, tuple | list) or len(batch) not in (2, 3):
            raise ValueError(
                "each batch must be a tuple (X, y) or (X, y, sample_weight), "
                f"got {type(batch).__name__}"
            )
        X, y = batch[0], batch[1]
        sw = batch[2] if len(batch) == 3 else None
        X, y = validate_data(
            self, _to_numpy(X), _to_numpy(y), dtype=[np.float64, np.float32], reset=first
        )
        X = np.ascontiguousarray(X, dtype=self.coef_.dtype if hasattr(self, "coef_") else None)
        y_index = self._encode(np.asarray(y))
        sw = self._check_sample_weight(sw, X.shape[0])
        if self.class_weight is not None:
            if isinstance(self.class_weight, str):
                raise ValueError(
                    "class_weight='balanced' needs the whole data set; pass a dict of class "
                    "weights when streaming"
                )
            per_class = compute_class_weight(self.class_weight, classes=self.classes_, y=y)
            sw = per_class[y_index] if sw is None else per_class[y_index] * sw
        return X, y_index, sw

    @available_if(_minibatch_solver)
    def partial_fit(
        self, X: Any, y: Any, classes: Any = None, sample_weight: Any = None
    ) -> SoftmaxRegression:
        """One epoch of mini-batch steps over ``(X, y)``, continuing the previous state.

        ``classes`` (every label the data can hold) is required on the first call. The penalty
        is normalised by the total sample weight seen so far.
        """
        first = not hasattr(self, "classes_")
        X_np = check_array(_to_numpy(X), dtype=[np.float64, np.float32])
        self._start_stream(X_np, classes, reset=False)
        Xc, y_index, sw = self._clean_batch((X, y, sample_weight), first)
        self._seen_weight += float(len(y_index) if sw is None else np.sum(sw))
        self._counting = False
        self._fit_epochs(
            lambda: self._array_batches(Xc, y_index, sw),
            self.coef_.astype(np.float64),
            self.intercept_.astype(np.float64),
            sw,
            epochs=1,
        )
        return self

    @available_if(_minibatch_solver)
    def fit_batches(
        self, batches: Iterable[Batch] | Callable[[], Iterable[Batch]], *, classes: Any
    ) -> SoftmaxRegression:
        """Fit from a stream of ``(X, y)`` or ``(X, y, sample_weight)`` batches.

        ``batches`` is either a callable returning a fresh iterable of batches (one epoch; it
        is called up to ``max_iter`` times) or an iterable, used for a single epoch (for data
        larger than memory: read and yield one batch at a time). ``classes`` lists every
        label the stream can contain. Each batch gives one optimiser step; the penalty is
        normalised by the total sample weight of the first epoch, counted as it streams by.
        """
        make = batches if callable(batches) else None
        epochs = int(self.max_iter) if make is not None else 1
        source = make() if make is not None else batches
        iterator = iter(source)
        try:
            first_batch = next(iterator)
        except StopIteration:
            raise ValueError("the batch stream is empty") from None
        # A fit starts over (classes, features, the penalty's weight count, the optimiser's
        # state); warm_start only starts it from the previous parameters, where they fit.
        previous = self._warm_start_state()
        for attribute in ("n_features_in_", "feature_names_in_", "coef_", "classes_"):
            if hasattr(self, attribute):
                delattr(self, attribute)
        first_X = check_array(_to_numpy(first_batch[0]), dtype=[np.float64, np.float32])
        self._start_stream(first_X, classes, reset=True, previous=previous)
        first_clean = self._clean_batch(first_batch, first=True)
        self._counting = True
        epoch = [0]

        def one_epoch() -> Iterator[tuple[np.ndarray, np.ndarray, Any]]:
            epoch[0] += 1
            if epoch[0] == 1:
                yield first_clean
                stream = iterator
            else:
                self._counting = False
                stream = iter(make())
            for batch in stream:
                yield self._clean_batch(batch, first=False)

        try:
            self._fit_epochs(
                one_epoch,
                self.coef_.astype(np.float64),
                self.intercept_.astype(np.float64),
                None,
                epochs=epochs,
            )
        finally:
            self._counting = False
        return self

    # ------------------------------------------------------------------------------------------
    # prediction

    def _logits(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(
            self, _to_numpy(X), dtype=[np.float64, np.float32], order="C", reset=False
        )
        X = np.asarray(X, dtype=self.coef_.dtype)
        return X @ self.coef_.T + self.intercept_

    def decision_function(self, X: Any) -> np.ndarray:
        """Logits ``X @ coef_.T + intercept_``, ``(n_samples, n_classes)``; for two classes the
        log-odds of ``classes_[1]``, ``(n_samples,)`` (scikit-learn's convention)."""
        Z = self._logits(X)
        if Z.shape[1] == 2:
            return Z[:, 1] - Z[:, 0]
        return Z

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities ``crossent.softmax(logits, dim=1)``."""
        return crossent.softmax(self._logits(X), dim=1)

    def predict_log_proba(self, X: Any) -> np.ndarray:
        """Log-probabilities ``crossent.log_softmax(logits, dim=1)``."""
        return crossent.log_softmax(self._logits(X), dim=1)

    def predict(self, X: Any) -> np.ndarray:
        """The most probable class of each sample (first class on ties)."""
        logits = self._logits(X)
        return self.classes_[np.argmax(logits, axis=1)]

    def log_loss(self, X: Any, y: Any) -> float:
        """Mean cross-entropy of the true labels, ``crossent.cross_entropy`` of the logits."""
        y = np.asarray(_to_numpy(y))
        y_index = self._encode(y)
        return float(crossent.cross_entropy(self._logits(X), y_index))

    # ------------------------------------------------------------------------------------------
    # files

    def save(self, path: Any, metadata: Mapping[str, Any] | None = None) -> None:
        """Write the fitted model to ``path`` (``.npz`` or ``.safetensors``), atomically.

        The file holds ``coef_``, ``intercept_``, ``loss_curve_`` and JSON metadata (classes,
        feature names, parameters, ``metadata``); it is never pickled, and :meth:`load` gives
        bitwise-identical predictions.
        """
        check_is_fitted(self)
        classes = self.classes_
        if classes.dtype.kind not in "iufbUO":
            raise ValueError(f"cannot store classes of dtype {classes.dtype}")
        if classes.dtype.kind == "O" and not all(isinstance(c, str) for c in classes):
            raise ValueError("cannot store object classes other than strings")
        params = {
            k: _class_weight_to_json(v) if k == "class_weight" else _plain(v)
            for k, v in self.get_params().items()
            if k != "callback"
        }
        params = {k: v for k, v in params.items() if _json_safe(v)}  # (e.g. a Generator seed)
        meta = {
            "format": FILE_FORMAT,
            "version": FILE_VERSION,
            "crossent_version": crossent.__version__,
            "classes": classes.tolist(),
            "classes_dtype": classes.dtype.str if classes.dtype.kind != "O" else "object",
            "n_features_in": int(self.n_features_in_),
            "feature_names_in": (
                None
                if not hasattr(self, "feature_names_in_")
                else [str(n) for n in self.feature_names_in_]
            ),
            "params": params,
            "n_iter": int(getattr(self, "n_iter_", 0)),
            "objective": _json_float(getattr(self, "objective_", math.nan)),
            "converged": bool(getattr(self, "converged_", False)),
            "user": dict(metadata or {}),
        }
        arrays = {
            "coef": self.coef_,
            "intercept": self.intercept_,
            "loss_curve": np.asarray(getattr(self, "loss_curve_", []), dtype=np.float64),
        }
        _io.save_arrays(path, arrays, meta)

    @classmethod
    def load(cls, path: Any) -> SoftmaxRegression:
        """Read a model written by :meth:`save` (its ``metadata`` is in ``file_metadata_``)."""
        arrays, meta = _io.load_arrays(path)
        if meta.get("format") != FILE_FORMAT:
            raise ValueError(f"{path}: not a SoftmaxRegression file")
        if int(meta.get("version", 0)) > FILE_VERSION:
            raise ValueError(
                f"{path}: file version {meta['version']} is newer than this crossent reads "
                f"({FILE_VERSION}); upgrade crossent"
            )
        try:
            params = dict(meta["params"])
            if "class_weight" in params:
                params["class_weight"] = _class_weight_from_json(params["class_weight"])
            known = cls().get_params()
            model = cls(**{k: v for k, v in params.items() if k in known})
            dtype = meta["classes_dtype"]
            model.classes_ = np.array(
                meta["classes"], dtype=object if dtype == "object" else np.dtype(dtype)
            )
            model.coef_ = arrays["coef"]
            model.intercept_ = arrays["intercept"]
            model.loss_curve_ = arrays.get("loss_curve", np.empty(0)).tolist()
            model.n_features_in_ = int(meta["n_features_in"])
            if meta.get("feature_names_in") is not None:
                model.feature_names_in_ = np.array(meta["feature_names_in"], dtype=object)
            model.n_iter_ = int(meta.get("n_iter", 0))
            model.objective_ = float(meta.get("objective") or math.nan)
            model.converged_ = bool(meta.get("converged", False))
            model.file_metadata_ = dict(meta.get("user") or {})
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: corrupt SoftmaxRegression file ({exc})") from None
        n_classes = len(model.classes_)
        if model.coef_.shape != (n_classes, model.n_features_in_) or model.intercept_.shape != (
            n_classes,
        ):
            raise ValueError(f"{path}: corrupt SoftmaxRegression file (inconsistent shapes)")
        return model


def _plain(value: Any) -> Any:
    """A NumPy scalar (a grid's ``np.int64``, ``np.float32``) as the Python value it holds, which
    JSON stores; anything else as it is."""
    return value.item() if isinstance(value, np.generic) else value


def _json_safe(value: Any) -> bool:
    """Values that survive a JSON round trip unchanged (dicts only with string keys)."""
    if value is None or isinstance(value, bool | int | float | str):
        return True
    if isinstance(value, list):
        return all(_json_safe(v) for v in value)
    return isinstance(value, dict) and all(
        isinstance(k, str) and _json_safe(v) for k, v in value.items()
    )


_PAIRS = "__class_weight_pairs__"


def _class_weight_to_json(value: Any) -> Any:
    """A class_weight dict whose keys are not all strings (class labels 0, 1, ...) as a JSON
    object holding ``[label, weight]`` pairs; anything else as it is."""
    if not isinstance(value, dict) or all(isinstance(k, str) for k in value):
        return value
    pairs = [[k.item() if isinstance(k, np.generic) else k,
              v.item() if isinstance(v, np.generic) else v] for k, v in value.items()]  # fmt: skip
    return {_PAIRS: pairs}


def _class_weight_from_json(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {_PAIRS}:
        return {k: v for k, v in value[_PAIRS]}
    return value


def _json_float(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None

"""crossent.models.SoftmaxRegression: scikit-learn's objective, API, solvers and model files."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import warnings

import numpy as np
import pytest
from sklearn.base import clone

pytest.importorskip("sklearn")

from sklearn._loss.loss import HalfMultinomialLoss
from sklearn.datasets import load_digits, load_iris
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.linear_model._linear_loss import LinearModelLoss
from sklearn.preprocessing import StandardScaler
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.estimator_checks import check_estimator

import crossent
from crossent.models import (
    SoftmaxRegression,
    _io,
)
from crossent.models._objective import SoftmaxObjective
from crossent.models._solvers import lbfgs

HAS_TORCH = importlib.util.find_spec("torch") is not None
HAS_SAFETENSORS = importlib.util.find_spec("safetensors") is not None
ENGINES = ["numpy", pytest.param("torch", marks=pytest.mark.skipif(not HAS_TORCH, reason="torch"))]


def blobs(n=300, d=6, k=4, seed=0, dtype=np.float64):
    """Overlapping Gaussian classes: a well-posed problem with a unique optimum."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=1.5, size=(k, d))
    y = rng.integers(0, k, n)
    X = centers[y] + rng.normal(size=(n, d))
    return X.astype(dtype), y


def sklearn_objective(X, y_index, coef, intercept, C, sample_weight=None):
    """sklearn's own LogisticRegression objective (LinearModelLoss) and gradient."""
    k = coef.shape[0]
    loss = LinearModelLoss(base_loss=HalfMultinomialLoss(n_classes=k), fit_intercept=True)
    packed = np.hstack([coef, intercept[:, None]])
    sw_sum = len(y_index) if sample_weight is None else sample_weight.sum()
    value, grad = loss.loss_gradient(
        packed, X, y_index.astype(float), sample_weight, 1.0 / (C * sw_sum), 1
    )
    return value, grad.reshape(k, -1)


# ------------------------------------------------------------------------------------------------
# scikit-learn compatibility

SW_REASON = (
    "sklearn compares weighted and repeated fits at rtol=1e-7, below what tol-based stopping "
    "delivers (sklearn marks the same check xfail for LogisticRegression); "
    "test_sample_weight_equals_repetition checks it at a tight tol"
)


@pytest.mark.parametrize(
    "estimator",
    [SoftmaxRegression(), SoftmaxRegression(solver="adam", max_iter=20)],
    ids=["lbfgs", "adam"],
)
def test_check_estimator(estimator):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check_estimator(
            estimator,
            expected_failed_checks={"check_sample_weight_equivalence_on_dense_data": SW_REASON},
        )


def test_sample_weight_equals_repetition():
    X, y = blobs(40, 5, 3, seed=3)
    sw = np.random.default_rng(1).integers(0, 4, len(y))
    weighted = SoftmaxRegression(tol=1e-10, max_iter=1000).fit(X, y, sample_weight=sw)
    repeated = SoftmaxRegression(tol=1e-10, max_iter=1000).fit(X.repeat(sw, 0), y.repeat(sw))
    # Both stop at the L-BFGS ftol floor (64 eps relative), i.e. within ~1e-7 of the optimum.
    np.testing.assert_allclose(weighted.predict_proba(X), repeated.predict_proba(X), rtol=1e-6)


def test_params_round_trip():
    model = SoftmaxRegression(C=0.5, solver="sgd", label_smoothing=0.1, class_weight="balanced")
    assert model.get_params()["C"] == 0.5
    model.set_params(C=2.0, tol=1e-6)
    assert model.C == 2.0 and model.tol == 1e-6


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"C": 0}, "C must be a positive number"),
        ({"tol": -1}, "tol must be a positive number"),
        ({"max_iter": 0}, "max_iter must be a positive integer"),
        ({"solver": "newton"}, "solver must be one of"),
        ({"label_smoothing": 1.5}, r"label_smoothing must be a number in \[0, 1\]"),
        ({"dtype": "float16"}, "dtype must be None"),
        ({"engine": "cuda"}, "engine must be one of"),
    ],
)
def test_bad_parameters_say_what_is_expected(params, match):
    X, y = blobs(30)
    with pytest.raises(ValueError, match=match):
        SoftmaxRegression(**params).fit(X, y)


def test_single_class_is_refused():
    X, _ = blobs(20)
    with pytest.raises(ValueError, match="at least 2 classes"):
        SoftmaxRegression().fit(X, np.zeros(20))


# ------------------------------------------------------------------------------------------------
# the objective: scikit-learn's, computed by crossent


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("weighted", [False, True])
def test_objective_and_gradient_equal_sklearn(engine, weighted):
    X, y = blobs(500, 7, 5, seed=1)
    rng = np.random.default_rng(2)
    coef, intercept = rng.normal(size=(5, 7)), rng.normal(size=5)
    sw = rng.uniform(0.1, 3.0, len(y)) if weighted else None
    objective = SoftmaxObjective(X, y, 5, sw, C=0.7, fit_intercept=True, engine=engine)
    value, grad = objective(objective.pack(coef, intercept))
    expected, expected_grad = sklearn_objective(X, y, coef, intercept, 0.7, sw)
    assert value == pytest.approx(expected, rel=1e-12)
    grad_W, grad_b = objective.unpack(grad)
    np.testing.assert_allclose(grad_W, expected_grad[:, :7], rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(grad_b, expected_grad[:, 7], rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("engine", ENGINES)
def test_objective_is_crossent_cross_entropy_with_smoothing(engine):
    X, y = blobs(200, 4, 3, seed=4)
    rng = np.random.default_rng(0)
    coef, intercept = rng.normal(size=(3, 4)), rng.normal(size=3)
    objective = SoftmaxObjective(
        X, y, 3, None, C=math.inf, fit_intercept=True, label_smoothing=0.2, engine=engine
    )
    value, grad = objective(objective.pack(coef, intercept))
    logits = X @ coef.T + intercept
    out = crossent.cross_entropy_and_grad(logits, y, label_smoothing=0.2)
    assert value == pytest.approx(float(out.loss), rel=1e-13)
    np.testing.assert_allclose(objective.unpack(grad)[0], out.grad_input.T @ X, rtol=1e-12)


def test_threads_do_not_change_the_result_beyond_rounding():
    X, y = blobs(20000, 30, 8, seed=5)
    coef = np.random.default_rng(0).normal(size=(8, 30)) * 0.1
    values = []
    for threads in (1, 2, 3):
        objective = SoftmaxObjective(
            X, y, 8, None, C=1.0, fit_intercept=True, engine="numpy", n_threads=threads
        )
        values.append(objective(objective.pack(coef, np.zeros(8))))
    for value, grad in values[1:]:
        assert value == pytest.approx(values[0][0], rel=1e-13)
        np.testing.assert_allclose(grad, values[0][1], rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize(
    "setting",
    [{}, {"class_weight": "balanced"}, {"sample_weight": True}, {"C": 0.05}],
    ids=["plain", "balanced", "sample_weight", "strong_l2"],
)
def test_optimum_matches_logistic_regression(setting):
    X, y = blobs(400, 5, 4, seed=6)
    C = setting.get("C", 1.0)
    sw = np.random.default_rng(3).uniform(0.2, 2.0, len(y)) if "sample_weight" in setting else None
    cw = setting.get("class_weight")
    ours = SoftmaxRegression(C=C, class_weight=cw, tol=1e-8, max_iter=500).fit(X, y, sw)
    ref = LogisticRegression(C=C, class_weight=cw, tol=1e-10, max_iter=2000).fit(X, y, sw)
    weights = sw
    if cw is not None:
        weights = compute_class_weight(cw, classes=ref.classes_, y=y)[y]
    ours_value, _ = sklearn_objective(X, y, ours.coef_, ours.intercept_, C, weights)
    ref_value, _ = sklearn_objective(X, y, ref.coef_, ref.intercept_, C, weights)
    assert abs(ours_value - ref_value) <= 1e-6 * ref_value
    assert ours.objective_ == pytest.approx(ours_value, rel=1e-12)
    np.testing.assert_allclose(ours.predict_proba(X), ref.predict_proba(X), atol=1e-4)
    assert np.array_equal(ours.predict(X), ref.predict(X))


def test_two_classes_equal_logistic_regression_with_twice_c():
    X, y = blobs(300, 4, 2, seed=7)
    ours = SoftmaxRegression(C=0.5, tol=1e-9, max_iter=500).fit(X, y)
    ref = LogisticRegression(C=1.0, tol=1e-10, max_iter=1000).fit(X, y)
    decision = ours.decision_function(X)
    assert decision.shape == (300,)
    np.testing.assert_allclose(decision, ref.decision_function(X), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# predictions, inputs and options


def test_predictions_are_crossent_softmax_of_the_logits():
    X, y = blobs(100, 3, 3)
    model = SoftmaxRegression().fit(X, y)
    logits = X @ model.coef_.T + model.intercept_
    np.testing.assert_array_equal(model.decision_function(X), logits)
    np.testing.assert_array_equal(model.predict_proba(X), crossent.softmax(logits, dim=1))
    np.testing.assert_array_equal(model.predict_log_proba(X), crossent.log_softmax(logits, 1))
    np.testing.assert_array_equal(model.predict(X), model.classes_[logits.argmax(1)])
    assert model.log_loss(X, y) == pytest.approx(
        float(crossent.cross_entropy(logits, np.searchsorted(model.classes_, y))), rel=1e-15
    )


def test_string_labels():
    X, y = blobs(120, 3, 3)
    names = np.array(["cat", "dog", "emu"])[y]
    model = SoftmaxRegression().fit(X, names)
    assert model.classes_.tolist() == ["cat", "dog", "emu"]
    by_index = SoftmaxRegression().fit(X, y)
    np.testing.assert_array_equal(model.coef_, by_index.coef_)
    np.testing.assert_array_equal(model.predict(X), model.classes_[by_index.predict(X)])


@pytest.mark.skipif(not HAS_TORCH, reason="torch")
def test_torch_input_gives_the_numpy_result():
    import torch

    X, y = blobs(150, 4, 3)
    from_numpy = SoftmaxRegression().fit(X, y)
    from_torch = SoftmaxRegression().fit(torch.from_numpy(X), torch.from_numpy(y))
    np.testing.assert_array_equal(from_numpy.coef_, from_torch.coef_)
    np.testing.assert_array_equal(from_torch.predict(torch.from_numpy(X)), from_numpy.predict(X))


@pytest.mark.skipif(not HAS_TORCH, reason="torch")
def test_torch_engine_reaches_the_numpy_engine_optimum():
    X, y = blobs(300, 5, 4, seed=8)
    a = SoftmaxRegression(engine="numpy", tol=1e-8, max_iter=300).fit(X, y)
    b = SoftmaxRegression(engine="torch", tol=1e-8, max_iter=300).fit(X, y)
    assert b.objective_ == pytest.approx(a.objective_, rel=1e-9)


def test_float32_model_and_mixed_precision():
    X, y = blobs(2000, 10, 5, seed=9)
    single = SoftmaxRegression(tol=1e-3).fit(X.astype(np.float32), y)
    assert single.coef_.dtype == np.float32 and single.predict_proba(X).dtype == np.float32
    mixed = SoftmaxRegression(tol=1e-7, max_iter=500).fit(X, y)
    plain = SoftmaxRegression(tol=1e-7, max_iter=500, mixed_precision=False).fit(X, y)
    assert mixed.coef_.dtype == np.float64
    # Both stop on the float64 gradient test, so they agree to the solver's accuracy.
    # (Both within ~(1e-7)^2 / curvature of the optimum: the objectives agree to ~1e-10.)
    assert mixed.objective_ == pytest.approx(plain.objective_, rel=1e-8)
    _, grad = SoftmaxObjective(X, y, 5, None, C=1.0, fit_intercept=True)(
        np.concatenate([mixed.coef_.ravel(), mixed.intercept_])
    )
    assert np.abs(grad).max() <= 1e-7 or mixed.converged_


def test_no_intercept():
    X, y = blobs(200, 4, 3)
    model = SoftmaxRegression(fit_intercept=False).fit(X, y)
    np.testing.assert_array_equal(model.intercept_, np.zeros(3))


def test_label_smoothing_changes_the_optimum_as_crossent_defines_it():
    X, y = blobs(200, 4, 3, seed=10)
    model = SoftmaxRegression(label_smoothing=0.3, C=math.inf, tol=1e-9, max_iter=500).fit(X, y)
    logits = X @ model.coef_.T + model.intercept_
    out = crossent.cross_entropy_and_grad(logits, y, label_smoothing=0.3)
    assert np.abs(out.grad_input.T @ X).max() < 1e-7  # stationary for crossent's loss
    assert model.objective_ == pytest.approx(float(out.loss), rel=1e-12)


def test_convergence_warning_says_what_to_change():
    X, y = blobs(200, 4, 3)
    with pytest.warns(ConvergenceWarning, match="Increase max_iter, standardise the features"):
        SoftmaxRegression(max_iter=2).fit(X, y)


def test_warm_start_continues_from_the_previous_solution():
    X, y = blobs(300, 5, 3, seed=11)
    model = SoftmaxRegression(warm_start=True, tol=1e-6, max_iter=300).fit(X, y)
    first = model.n_iter_
    model.fit(X, y)
    assert model.n_iter_ <= 2 < first


def test_callback_and_loss_curve():
    X, y = blobs(200, 4, 3)
    seen = []
    model = SoftmaxRegression(callback=lambda i, f: seen.append((i, f))).fit(X, y)
    assert [i for i, _ in seen] == list(range(1, model.n_iter_ + 1))
    assert model.loss_curve_[1:] == [f for _, f in seen]
    assert all(b <= a for a, b in zip(model.loss_curve_, model.loss_curve_[1:], strict=False))


# ------------------------------------------------------------------------------------------------
# mini-batch solvers and streaming


def digits_scaled():
    X, y = load_digits(return_X_y=True)
    return StandardScaler().fit_transform(X), y


@pytest.mark.parametrize("solver", ["sgd", "adam"])
def test_minibatch_solvers_learn_digits(solver):
    X, y = digits_scaled()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = SoftmaxRegression(solver=solver, max_iter=15, random_state=0).fit(X, y)
    assert model.score(X, y) > 0.95
    again = SoftmaxRegression(solver=solver, max_iter=15, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        again.fit(X, y)
    np.testing.assert_array_equal(model.coef_, again.coef_)  # seeded: reproducible


def test_fit_batches_streams_an_iterator_once_and_a_callable_per_epoch():
    X, y = digits_scaled()
    calls = []

    def epoch():
        calls.append(1)
        for lo in range(0, len(y), 200):
            yield X[lo : lo + 200], y[lo : lo + 200]

    model = SoftmaxRegression(solver="adam", max_iter=4, tol=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit_batches(epoch, classes=np.arange(10))
    assert len(calls) == 4 and model.n_iter_ == 4
    assert model.score(X, y) > 0.9
    once = SoftmaxRegression(solver="sgd").fit_batches(epoch(), classes=np.arange(10))
    assert once.n_iter_ == 1 and once.n_features_in_ == 64


def test_stream_errors_are_explicit():
    X, y = digits_scaled()
    with pytest.raises(ValueError, match="classes must be given"):
        SoftmaxRegression(solver="adam").partial_fit(X, y)
    model = SoftmaxRegression(solver="adam").partial_fit(X[:100], y[:100], classes=range(10))
    with pytest.raises(ValueError, match="label 11 is not one of the model's classes"):
        model.partial_fit(X[:3], np.array([1, 2, 11]))
    assert not hasattr(SoftmaxRegression(), "partial_fit")  # lbfgs: full-batch only
    with pytest.raises(ValueError, match="batch stream is empty"):
        SoftmaxRegression(solver="sgd").fit_batches(iter([]), classes=[0, 1])


def test_partial_fit_improves():
    X, y = digits_scaled()
    model = SoftmaxRegression(solver="sgd", random_state=0)
    model.partial_fit(X, y, classes=np.unique(y))
    first = model.log_loss(X, y)
    for _ in range(3):
        model.partial_fit(X, y)
    assert model.log_loss(X, y) < first


def test_divergence_warns_and_keeps_finite_weights():
    X, y = digits_scaled()
    with pytest.warns(ConvergenceWarning, match="diverged.*Lower learning_rate"):
        model = SoftmaxRegression(solver="sgd", learning_rate=1e300, max_iter=5).fit(X, y)
    assert np.all(np.isfinite(model.coef_))


# ------------------------------------------------------------------------------------------------
# model files

SUFFIXES = [
    ".npz",
    pytest.param(
        ".safetensors", marks=pytest.mark.skipif(not HAS_SAFETENSORS, reason="safetensors")
    ),
]


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("labels", ["int", "str"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_save_load_gives_bitwise_identical_predictions(tmp_path, suffix, labels, dtype):
    X, y = load_iris(return_X_y=True)
    X = X.astype(dtype)
    if labels == "str":
        y = np.array(["setosa", "versicolor", "virginica"])[y]
    model = SoftmaxRegression(C=3.0, max_iter=300).fit(X, y)
    path = tmp_path / f"model{suffix}"
    model.save(path, metadata={"note": "iris"})
    loaded = SoftmaxRegression.load(path)
    for method in ("predict", "predict_proba", "predict_log_proba", "decision_function"):
        a, b = getattr(model, method)(X), getattr(loaded, method)(X)
        assert a.dtype == b.dtype
        assert a.tobytes() == b.tobytes(), method
    assert loaded.get_params() == {**model.get_params(), "random_state": None}
    assert loaded.file_metadata_ == {"note": "iris"}
    assert loaded.n_iter_ == model.n_iter_ and loaded.loss_curve_ == model.loss_curve_


def test_save_keeps_a_class_weight_keyed_by_labels_and_an_integer_seed(tmp_path):
    X, y = load_iris(return_X_y=True)
    weights = {0: 1.0, np.int64(1): 2.0, 2: 0.5}  # (keys as compute_class_weight users make)
    model = SoftmaxRegression(class_weight=weights, random_state=3).fit(X, y)
    model.save(tmp_path / "m.npz")
    loaded = SoftmaxRegression.load(tmp_path / "m.npz")
    assert loaded.class_weight == {0: 1.0, 1: 2.0, 2: 0.5} and loaded.random_state == 3
    refit = clone(loaded).fit(X, y)  # the same model again from the stored parameters
    assert refit.predict_proba(X).tobytes() == model.predict_proba(X).tobytes()


def test_save_keeps_parameters_given_as_numpy_scalars(tmp_path):
    # (a grid built with np.arange / np.logspace hands them over; they were dropped silently)
    X, y = blobs(60, 4, 3)
    model = SoftmaxRegression(solver="adam", max_iter=np.int64(7), batch_size=np.int64(16),
                              C=np.float32(0.5), random_state=np.int64(3))  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(X, y)
    model.save(tmp_path / "m.npz")
    loaded = SoftmaxRegression.load(tmp_path / "m.npz").get_params()
    assert (loaded["max_iter"], loaded["batch_size"], loaded["random_state"]) == (7, 16, 3)
    assert loaded["C"] == 0.5


def test_lbfgs_fits_features_in_large_units():
    # The first trial step 1/||g|| is ~1e-9 there and the step needed far smaller: the line
    # search's bracket test was absolute (1e-12) and gave up at the zero start (accuracy 0.44,
    # where LogisticRegression reaches 0.895 on these data).
    rng = np.random.RandomState(0)
    X = rng.randn(200, 3)
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(int) + (X[:, 2] > 1)
    X[:, 2] *= 1e7  # (e.g. a timestamp column)
    model = SoftmaxRegression(max_iter=1000).fit(X, y)
    assert model.converged_ and model.objective_ < 0.4
    assert model.score(X, y) >= 0.85


def test_features_beyond_float32_range_go_to_the_float64_stage():
    # mixed precision's float32 stage overflows: the same point is valued in float64 instead of
    # the fit stopping with a NaN objective
    rng = np.random.RandomState(0)
    X = rng.randn(60, 4) * 1e39
    y = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        mixed = SoftmaxRegression().fit(X, y)
        wide = SoftmaxRegression(mixed_precision=False).fit(X, y)
    assert math.isfinite(mixed.objective_) and mixed.objective_ == wide.objective_
    assert all(math.isfinite(v) for v in mixed.loss_curve_)


def test_npz_file_is_plain_arrays_and_json(tmp_path):
    X, y = blobs(50, 3, 3)
    path = tmp_path / "m.npz"
    SoftmaxRegression().fit(X, y).save(path)
    with np.load(path, allow_pickle=False) as archive:
        meta = json.loads(archive["__metadata__"].tobytes())
        assert set(archive.files) == {"coef", "intercept", "loss_curve", "__metadata__"}
    assert meta["format"] == "crossent.SoftmaxRegression" and meta["classes"] == [0, 1, 2]


def test_atomic_write_leaves_nothing_on_failure(tmp_path, monkeypatch):
    X, y = blobs(50, 3, 3)
    model = SoftmaxRegression().fit(X, y)
    path = tmp_path / "m.npz"
    model.save(path)
    before = path.read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken)
    with pytest.raises(OSError, match="disk full"):
        model.save(path)
    with pytest.raises(OSError, match="disk full"):
        model.save(tmp_path / "new.npz")
    assert sorted(os.listdir(tmp_path)) == ["m.npz"]  # no temp file, no partial new file
    assert path.read_bytes() == before  # the old file is untouched


def test_load_rejects_other_files(tmp_path):
    bad = tmp_path / "x.npz"
    np.savez(bad, a=np.zeros(3))
    with pytest.raises(ValueError, match="not a crossent model file"):
        SoftmaxRegression.load(bad)
    with pytest.raises(ValueError, match=r"must end in \.npz or \.safetensors"):
        SoftmaxRegression.load(tmp_path / "model.pkl")
    text = tmp_path / "t.npz"
    text.write_text("hello")
    with pytest.raises(ValueError, match="not a crossent model file"):
        SoftmaxRegression.load(text)


def test_io_metadata_round_trip(tmp_path):
    arrays = {"a": np.arange(5.0), "b": np.eye(2, dtype=np.float32)}
    for name in ["f.npz", *(["f.safetensors"] if HAS_SAFETENSORS else [])]:
        _io.save_arrays(tmp_path / name, arrays, {"k": [1, "x"]})
        got, meta = _io.load_arrays(tmp_path / name)
        assert meta == {"k": [1, "x"]}
        for key, value in arrays.items():
            assert got[key].dtype == value.dtype and np.array_equal(got[key], value)


# ------------------------------------------------------------------------------------------------
# the L-BFGS solver


def test_lbfgs_minimises_rosenbrock():
    def rosenbrock(x):
        a, b = x
        value = (1 - a) ** 2 + 100 * (b - a * a) ** 2
        grad = np.array([-2 * (1 - a) - 400 * a * (b - a * a), 200 * (b - a * a)])
        return value, grad

    result = lbfgs([rosenbrock], np.array([-1.2, 1.0]), max_iter=200, tol=1e-8)
    assert result.converged
    np.testing.assert_allclose(result.x, [1.0, 1.0], atol=1e-6)


def test_lbfgs_stages_hand_over_and_keep_the_final_stage_tolerance():
    rng = np.random.default_rng(0)
    A = rng.normal(size=(30, 30))
    H = A @ A.T + np.eye(30)
    c = rng.normal(size=30)

    def quadratic(x):
        return 0.5 * x @ H @ x - c @ x, H @ x - c

    def rough(x):  # a float32 version of the same function
        value, grad = quadratic(x.astype(np.float32).astype(np.float64))
        return float(np.float32(value)), grad.astype(np.float32).astype(np.float64)

    staged = lbfgs([rough, quadratic], np.zeros(30), max_iter=500, tol=1e-9)
    plain = lbfgs([quadratic], np.zeros(30), max_iter=500, tol=1e-9)
    assert staged.converged and plain.converged
    # The float64 stage decides: the same stopping rules (gtol, or ftol = 64 eps relative)
    # leave both as close to the minimiser as float64 allows.
    exact = np.linalg.solve(H, c)
    assert np.abs(staged.x - exact).max() <= 10 * max(np.abs(plain.x - exact).max(), 1e-9)
    assert staged.fun == pytest.approx(plain.fun, rel=1e-13)


# ------------------------------------------------------------------------------------------------
# review round 2: convergence flags, warm starts of streams, input dtypes


def test_an_sgd_run_that_blows_up_is_not_converged_and_warns():
    from sklearn.datasets import load_breast_cancer

    X, y = load_breast_cancer(return_X_y=True)  # raw features: far too large a step for sgd
    with pytest.warns(ConvergenceWarning, match="unstable|diverged"):
        model = SoftmaxRegression(solver="sgd", random_state=0).fit(X, y)
    assert not model.converged_


def test_float32_lbfgs_that_stalls_above_tol_is_not_converged_and_warns():
    # float32 values stop changing long before the gradient reaches tol: not "converged".
    # Which test notices first (no decrease in an accepted step, or no lower value along the
    # line) depends on float32 rounding, so on the BLAS's summation order and thread count:
    # both must say that float32 is the limit.
    rng = np.random.default_rng(0)
    X = rng.standard_normal((3000, 10)) * 1000
    W = rng.standard_normal((5, 10)) / 1000
    y = np.argmax(X @ W.T + rng.gumbel(size=(3000, 5)), 1)
    with pytest.warns(ConvergenceWarning, match="float32.*fit in float64 to reach tol"):
        model = SoftmaxRegression().fit(X.astype(np.float32), y)
    assert not model.converged_


def test_warm_started_fit_batches_is_a_fit_not_a_continuation():
    X, y = load_iris(return_X_y=True)
    X = StandardScaler().fit_transform(X)

    def batches():
        return [(X[i : i + 50], y[i : i + 50]) for i in range(0, 150, 50)]

    fresh = SoftmaxRegression(solver="adam", C=0.01, max_iter=30, random_state=0)
    fresh.fit_batches(batches, classes=[0, 1, 2])
    warm = SoftmaxRegression(solver="adam", C=0.01, max_iter=30, random_state=0, warm_start=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for _ in range(3):
            warm.fit_batches(batches, classes=[0, 1, 2])
    assert warm._seen_weight == fresh._seen_weight == 150.0  # the penalty's count, not 3x
    # same regularisation: the norms agree far better than a 3x weaker penalty would allow
    assert abs(np.linalg.norm(warm.coef_) - np.linalg.norm(fresh.coef_)) < 0.1
    # a warm fit_batches on other features or classes restarts, as a warm fit() does
    warm.fit_batches(lambda: [(X[:, :3], y)], classes=[0, 1, 2])
    assert warm.coef_.shape == (3, 3) and warm.n_features_in_ == 3


def test_partial_fit_continues_a_model_fitted_by_lbfgs():
    X, y = load_iris(return_X_y=True)
    model = SoftmaxRegression(max_iter=200).fit(StandardScaler().fit_transform(X), y)
    fitted = model.coef_.copy()
    model.set_params(solver="sgd")
    model.partial_fit(StandardScaler().fit_transform(X), y)
    assert model.coef_.shape == (3, 4)
    # one epoch from the optimum stays near it (one from zero would not)
    assert np.linalg.norm(model.coef_ - fitted) < 0.25 * np.linalg.norm(fitted)


def test_half_precision_torch_input_is_read_as_float32():
    torch = pytest.importorskip("torch")
    X, y = load_iris(return_X_y=True)
    X32 = torch.tensor(X, dtype=torch.float32)
    a = SoftmaxRegression(dtype="float32").fit(X32.bfloat16().float().numpy(), y)
    b = SoftmaxRegression(dtype="float32").fit(X32.bfloat16(), y)
    assert a.coef_.tobytes() == b.coef_.tobytes()


def test_ordinary_minibatch_runs_are_not_called_unstable():
    # epochs at a fixed step wander by a few percent; a first epoch from zero is log(C) plus
    # its penalty (review of 2026-11-27: both were flagged)
    X, y = load_digits(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        model = SoftmaxRegression(solver="sgd", random_state=0, max_iter=200).fit(X, y)
        Xi, yi = load_iris(return_X_y=True)
        SoftmaxRegression(solver="sgd", C=0.1).partial_fit(
            StandardScaler().fit_transform(Xi), yi, classes=[0, 1, 2]
        )
    assert model.converged_ and model.score(X, y) > 0.98

"""The test vectors of shared/spec/pytorch-semantics.md section 10, and the seed examples.

Expected values are torch 2.13's (float64 inputs, 8 significant digits). Each vector runs on
torch tensors and on NumPy arrays.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import crossent

X = [[0.1, 0.2, 0.7], [0.8, 0.1, 0.1]]
W = [0.2, 0.5, 0.3]
Q = [[0, 0.25, 0.75], [1, 0, 0]]
Y = [[0.0, 1, 1], [1, 0, 0]]
Z = [[0.5, -1, 3], [2, 0, -4]]
L = [2.0, 4.0, 0.5]


def f(v):
    return np.array(v, dtype=np.float64)


def i(v):
    return np.array(v, dtype=np.int64)


def one_hot(v, c=3):
    return np.eye(c)[v]


XK = f(X).T[None]  # (1, 3, 2) with XK[0, :, j] = X[j]

VECTORS = [
    ("V1", "cross_entropy", dict(input=f(L), target=i(0)), 2.1531782),
    ("V2", "cross_entropy", dict(input=f(L), target=i(1)), 0.15317821),
    ("V3", "cross_entropy", dict(input=f(L), target=i(2)), 3.6531782),
    ("V4", "cross_entropy", dict(input=f([L]), target=i([1]), label_smoothing=0.1), 0.33651154),
    ("V5", "cross_entropy", dict(input=f(L), target=i(1), label_smoothing=1.0), 1.9865115),
    ("V6-mean", "cross_entropy", dict(input=f(X), target=i([2, 0])), 0.72883809),
    ("V6-sum", "cross_entropy", dict(input=f(X), target=i([2, 0]), reduction="sum"), 1.4576762),
    ("V6-none", "cross_entropy", dict(input=f(X), target=i([2, 0]), reduction="none"),
     [0.76794955, 0.68972664]),
    ("V7-mean", "cross_entropy", dict(input=f(X), target=i([2, 0]), weight=f(W)), 0.73666039),
    ("V7-sum", "cross_entropy", dict(input=f(X), target=i([2, 0]), weight=f(W), reduction="sum"),
     0.36833019),
    ("V7-none", "cross_entropy",
     dict(input=f(X), target=i([2, 0]), weight=f(W), reduction="none"), [0.23038486, 0.13794533]),
    ("V8", "cross_entropy", dict(input=f(X), target=i([2, -100])), 0.76794955),
    ("V9-mean", "cross_entropy", dict(input=f(X), target=i([-100, -100])), float("nan")),
    ("V9-sum", "cross_entropy", dict(input=f(X), target=i([-100, -100]), reduction="sum"), 0.0),
    ("V10", "cross_entropy", dict(input=f(X), target=i([2, 0]), ignore_index=0), 0.76794955),
    ("V11-mean", "cross_entropy", dict(input=f(X), target=i([2, 0]), label_smoothing=0.1),
     0.77050476),
    ("V11-sum", "cross_entropy",
     dict(input=f(X), target=i([2, 0]), label_smoothing=0.1, reduction="sum"), 1.5410095),
    ("V11-none", "cross_entropy",
     dict(input=f(X), target=i([2, 0]), label_smoothing=0.1, reduction="none"),
     [0.80461622, 0.73639331]),
    ("V12-mean", "cross_entropy",
     dict(input=f(X), target=i([2, 0]), weight=f(W), label_smoothing=0.1), 0.82217276),
    ("V12-sum", "cross_entropy",
     dict(input=f(X), target=i([2, 0]), weight=f(W), label_smoothing=0.1, reduction="sum"),
     0.41108638),
    ("V12-none", "cross_entropy",
     dict(input=f(X), target=i([2, 0]), weight=f(W), label_smoothing=0.1, reduction="none"),
     [0.24527803, 0.16580835]),
    ("V13-mean", "cross_entropy",
     dict(input=f(X), target=i([2, -100]), weight=f(W), label_smoothing=0.2), 0.86723732),
    ("V13-sum", "cross_entropy",
     dict(input=f(X), target=i([2, -100]), weight=f(W), label_smoothing=0.2, reduction="sum"),
     0.26017119),
    ("V13-none", "cross_entropy",
     dict(input=f(X), target=i([2, -100]), weight=f(W), label_smoothing=0.2, reduction="none"),
     [0.26017119, 0.0]),
    ("V14-mean", "cross_entropy", dict(input=f(X), target=f(Q)), 0.79133809),
    ("V14-sum", "cross_entropy", dict(input=f(X), target=f(Q), reduction="sum"), 1.5826762),
    ("V14-none", "cross_entropy", dict(input=f(X), target=f(Q), reduction="none"),
     [0.89294955, 0.68972664]),
    ("V15", "cross_entropy", dict(input=f(X), target=f(Q), weight=f(W)), 0.23461384),
    ("V16", "cross_entropy", dict(input=f(X), target=f(Q), weight=f(W), label_smoothing=0.1),
     0.25094705),
    ("V17a", "cross_entropy", dict(input=f(X), target=one_hot([2, 0]), weight=f(W)), 0.1841651),
    ("V17b", "cross_entropy",
     dict(input=f([[2.3, 2.1, 4.5], [4.2, 3.2, 5.1]]), target=i([1, 2]), weight=f([25, 25, 100])),
     0.8704835),
    ("V17c", "cross_entropy",
     dict(input=f([[2.3, 2.1, 4.5], [4.2, 3.2, 5.1]]), target=one_hot([1, 2]),
          weight=f([25, 25, 100])), 54.405219),
    ("V18-mean", "cross_entropy", dict(input=XK, target=i([[2, 0]]), weight=f(W)), 0.73666039),
    ("V18-none", "cross_entropy",
     dict(input=XK, target=i([[2, 0]]), weight=f(W), reduction="none"),
     [[0.23038486, 0.13794533]]),
    ("V19-mean", "cross_entropy", dict(input=np.zeros((0, 3)), target=i([])), float("nan")),
    ("V19-sum", "cross_entropy", dict(input=np.zeros((0, 3)), target=i([]), reduction="sum"), 0.0),
    ("V20", "nll_loss",
     dict(input=f([[-1.2, -0.5, -2], [-0.3, -1.5, -2.5]]), target=i([1, 2]), weight=f([1, 2, 3])),
     1.7),
    ("V21", "nll_loss", dict(input=f([[5, 1, 1]]), target=i([0])), -5.0),
    ("V22-mean", "binary_cross_entropy", dict(input=f(X), target=f(Y)), 0.41755633),
    ("V22-sum", "binary_cross_entropy", dict(input=f(X), target=f(Y), reduction="sum"), 2.505338),
    ("V23", "binary_cross_entropy", dict(input=f(X), target=f(Y), weight=f([1, 2, 3])),
     0.85736788),
    ("V24", "binary_cross_entropy",
     dict(input=f([0, 1, 0, 0.5]), target=f([1, 0, 0.25, 0.3]), reduction="none"),
     [100, 100, 25, 0.69314718]),
    ("V25-mean", "binary_cross_entropy_with_logits", dict(input=f(Z), target=f(Y)), 0.52902519),
    ("V25-none", "binary_cross_entropy_with_logits",
     dict(input=f(Z), target=f(Y), reduction="none"),
     [[0.97407698, 1.3132617, 0.048587352], [0.12692801, 0.69314718, 0.018149928]]),
    ("V26", "binary_cross_entropy_with_logits",
     dict(input=f(Z), target=f(Y), pos_weight=f([1, 2, 3])), 0.76409792),
    ("V27", "binary_cross_entropy_with_logits",
     dict(input=f(Z), target=f(Y), weight=f([[1], [2]]), pos_weight=f([1, 2, 3]),
          reduction="sum"), 5.4228127),
    ("V28", "binary_cross_entropy_with_logits",
     dict(input=f([-100, 100, 30, -30]), target=f([1, 0, 1, 0]), reduction="none"),
     [100, 100, 9.357623e-14, 9.2370556e-14]),
]

GRADIENTS = [
    ("G1", "cross_entropy", dict(input=f(X), target=i([2, 0])),
     [0.12731426, 0.14070402, -0.26801829, -0.2491434, 0.1245717, 0.1245717]),
    ("G2", "cross_entropy", dict(input=f(X), target=i([2, 0]), weight=f(W)),
     [0.15277712, 0.16884483, -0.32162194, -0.19931472, 0.09965736, 0.09965736]),
    ("G3", "cross_entropy",
     dict(input=f(X), target=i([2, -100]), weight=f(W), label_smoothing=0.2),
     [0.2158425, 0.17655045, -0.39239294, 0, 0, 0]),
    ("G4", "cross_entropy", dict(input=f(X), target=f(Q), weight=f(W)),
     [0.044559992, -0.013253592, -0.0313064, -0.04982868, 0.02491434, 0.02491434]),
    ("G5", "binary_cross_entropy", dict(input=f(X), target=f(Y)),
     [0.18518519, -0.83333333, -0.23809524, -0.20833333, 0.18518519, 0.18518519]),
    ("G6", "binary_cross_entropy_with_logits",
     dict(input=f(X), target=f(Y), pos_weight=f([1, 2, 3])),
     [0.087496531, -0.15005533, -0.16590611, -0.05167092, 0.087496531, 0.087496531]),
    ("G7", "cross_entropy", dict(input=f(X), target=i([-100, -100])), [0.0] * 6),
]


def _as(args, backend):
    if backend == "numpy":
        return args
    return {k: (torch.from_numpy(np.asarray(v)) if isinstance(v, np.ndarray) else v)
            for k, v in args.items()}


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize(("vid", "op", "args", "expected"), VECTORS, ids=[v[0] for v in VECTORS])
def test_vector(vid, op, args, expected, backend):
    got = np.asarray(getattr(crossent, op)(**_as(args, backend)), dtype=np.float64)
    np.testing.assert_allclose(got, np.asarray(expected, dtype=np.float64), rtol=6e-8, atol=1e-20,
                               equal_nan=True, err_msg=vid)


@pytest.mark.parametrize(("gid", "op", "args", "expected"), GRADIENTS,
                         ids=[g[0] for g in GRADIENTS])
def test_gradient_vector(gid, op, args, expected):
    out = getattr(crossent, op + "_and_grad")(**args)
    np.testing.assert_allclose(out.grad_input.ravel(), expected, rtol=6e-8, atol=1e-9, err_msg=gid)
    x = torch.from_numpy(args["input"]).requires_grad_(True)
    targs = _as({**args, "input": None}, "torch")
    targs["input"] = x
    getattr(crossent, op)(**targs).backward()
    np.testing.assert_allclose(x.grad.numpy().ravel(), expected, rtol=6e-8, atol=1e-9)


def test_g8_bce_gradient_at_the_clamp():
    out = crossent.binary_cross_entropy_and_grad(f(0.0), f(0.3), reduction="none")
    np.testing.assert_allclose(out.grad_input, -3.000000012e11, rtol=1e-9)
    assert out.grad_target == np.inf


def test_v29_softmax_family():
    np.testing.assert_allclose(crossent.softmax(f(L), 0), [0.11611453, 0.85797681, 0.025908655],
                               rtol=1e-7)
    np.testing.assert_allclose(crossent.log_softmax(f(L), 0),
                               [-2.1531782, -0.15317821, -3.6531782], rtol=1e-7)
    np.testing.assert_allclose(crossent.logsumexp(f(L), 0), 4.1531782, rtol=1e-7)


def test_spec_special_values_of_logsumexp_and_softmax():
    inf = np.inf
    assert crossent.logsumexp(f([-inf, -inf]), 0) == -inf
    assert crossent.logsumexp(f([inf, 0]), 0) == inf
    assert np.isnan(crossent.logsumexp(f([np.nan, 0]), 0))
    assert crossent.logsumexp(np.zeros((2, 0)), 1).tolist() == [-inf, -inf]
    np.testing.assert_array_equal(crossent.softmax(f([-inf, 0]), 0), [0, 1])
    assert np.isnan(crossent.softmax(f([-inf, -inf]), 0)).all()
    np.testing.assert_array_equal(crossent.log_softmax(f([1000, 0]), 0), [0, -1000])
    assert crossent.softmax(f(3.0), 0) == 1 and crossent.log_softmax(f(3.0), -1) == 0
    assert crossent.logsumexp(np.array([1, 2, 3]), 0).dtype == np.float64  # NumPy's default float
    assert crossent.logsumexp(torch.tensor([1, 2, 3]), 0).dtype == torch.float32


def test_seed_examples():
    """The seed pipeline's examples: logits [2, 4, 0.5] with each target, and the batch."""
    for target, expected in [(0, 2.1531782), (1, 0.15317821), (2, 3.6531782)]:
        out = crossent.cross_entropy_and_grad(f(L), i(target))
        np.testing.assert_allclose(out.loss, expected, rtol=1e-7)
        p = crossent.softmax(f(L), 0)
        np.testing.assert_allclose(out.grad_input, p - np.eye(3)[target], rtol=1e-12)
    for reduction, expected in [("mean", 0.73666039), ("sum", 0.36833019),
                                ("none", [0.23038486, 0.13794533])]:
        got = crossent.cross_entropy(f(X), i([2, 0]), weight=f(W), reduction=reduction)
        np.testing.assert_allclose(got, expected, rtol=1e-7)

"""crossent.diagnostics: each finding fires on a case that must trigger it and stays silent on a
close case that must not; the opt-in warning mode (switch + maybe_warn) reports the same."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch

import crossent
from crossent import diagnostics as dx

X = [[0.1, 0.2, 0.7], [0.8, 0.1, 0.1]]  # the issue's example: softmax already applied
W = [0.2, 0.5, 0.3]
RNG = np.random.default_rng(0)
LOGITS = RNG.normal(size=(6, 4)) * 2
LABELS = np.array([0, 3, 1, 2, 2, 1])


def _f16_big_sum() -> np.ndarray:
    return (np.random.default_rng(1).normal(size=(20000, 7)) * 4).astype(np.float16)


@dataclass(frozen=True)
class Case:
    """A diagnose call: ``args`` built lazily (input, target[, weight]) and keyword arguments."""

    id: str
    build: Callable[[], tuple[Any, ...]]
    kwargs: dict[str, Any] = field(default_factory=dict)

    def codes(self) -> list[str]:
        return [f.code for f in dx.diagnose(*self.build(), **self.kwargs)]


@dataclass(frozen=True)
class Pair:
    code: str
    trigger: Case
    close: Case
    sampled: bool = True  # the warning mode (bounded sample) sees it too


def _soft(rows: np.ndarray) -> np.ndarray:
    e = np.exp(rows - rows.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


PAIRS = [
    Pair(
        "probabilities-as-logits",
        Case("issue-example", lambda: (torch.tensor(X), torch.tensor([2, 0]))),
        # logits that happen to lie in [0, 1] but whose rows do not sum to 1
        Case(
            "unit-logits",
            lambda: (torch.tensor([[0.1, 0.2, 0.3], [0.8, 0.1, 0.5]]), torch.tensor([2, 0])),
        ),
    ),
    Pair(
        "probabilities-as-logits",
        Case("soft-target", lambda: (np.array(X), np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]))),
        Case("soft-target-logits", lambda: (LOGITS[:2, :3], np.eye(3)[[2, 0]])),
    ),
    Pair(
        "probabilities-as-logits",
        Case(
            "bce-logits-given-sigmoid",
            lambda: (1 / (1 + np.exp(-LOGITS)), (LOGITS > 0) * 1.0),
            {"loss": "binary_cross_entropy_with_logits"},
        ),
        Case(
            "bce-logits-given-logits",
            lambda: (LOGITS, (LOGITS > 0) * 1.0),
            {"loss": "binary_cross_entropy_with_logits"},
        ),
    ),
    Pair(
        "probabilities-as-log-probabilities",
        Case("softmax-then-nll", lambda: (_soft(LOGITS), LABELS), {"loss": "nll_loss"}),
        Case("log-softmax-then-nll", lambda: (np.log(_soft(LOGITS)), LABELS), {"loss": "nll_loss"}),
    ),
    Pair(
        "logits-as-log-probabilities",
        Case("logits-to-nll", lambda: (LOGITS, LABELS), {"loss": "nll_loss"}),
        Case(
            "log-softmax-to-nll",
            lambda: (crossent.log_softmax(LOGITS, 1), LABELS),
            {"loss": "nll_loss"},
        ),
    ),
    Pair(
        "logits-as-probabilities",
        Case(
            "logits-to-bce", lambda: (LOGITS, (LOGITS > 0) * 1.0), {"loss": "binary_cross_entropy"}
        ),
        Case(
            "sigmoid-to-bce",
            lambda: (1 / (1 + np.exp(-LOGITS)), (LOGITS > 0) * 1.0),
            {"loss": "binary_cross_entropy"},
        ),
    ),
    Pair(
        "log-probabilities-as-probabilities",
        Case(
            "log-sigmoid-to-bce",
            lambda: (-np.log1p(np.exp(-LOGITS)), (LOGITS > 0) * 1.0),
            {"loss": "binary_cross_entropy"},
        ),
        Case(
            "probabilities-to-bce",
            lambda: (np.exp(-np.log1p(np.exp(-LOGITS))), (LOGITS > 0) * 1.0),
            {"loss": "binary_cross_entropy"},
        ),
    ),
    Pair(
        "one-hot-with-class-weights",
        Case("float-one-hot-weighted", lambda: (LOGITS[:2, :3], np.eye(3)[[2, 0]], np.array(W))),
        # the same one-hot without class weights: both denominators are the count
        Case("float-one-hot-unweighted", lambda: (LOGITS[:2, :3], np.eye(3)[[2, 0]])),
    ),
    Pair(
        "one-hot-with-class-weights",
        Case(
            "one-hot-weighted-torch",
            lambda: (
                torch.tensor(LOGITS[:2, :3]),
                torch.eye(3, dtype=torch.float64)[[2, 0]],
                torch.tensor(W, dtype=torch.float64),
            ),
        ),
        # class weights with genuinely soft targets (not one-hot-like)
        Case("soft-weighted", lambda: (LOGITS[:2, :3], _soft(LOGITS[:2, :3]), np.array(W))),
    ),
    Pair(
        "one-hot-with-class-weights",
        Case("one-hot-weighted-mean", lambda: (LOGITS[:2, :3], np.eye(3)[[2, 0]], np.array(W))),
        # 'sum' agrees between the two target forms
        Case(
            "one-hot-weighted-sum",
            lambda: (LOGITS[:2, :3], np.eye(3)[[2, 0]], np.array(W)),
            {"reduction": "sum"},
        ),
    ),
    Pair(
        "class-dim-last",
        Case("NLC", lambda: (RNG.normal(size=(4, 7, 10)), np.zeros((4, 7), dtype=np.int64))),
        Case("NCL", lambda: (RNG.normal(size=(4, 10, 7)), np.zeros((4, 7), dtype=np.int64))),
    ),
    Pair(
        "class-dim-last",
        Case("NLC-soft", lambda: (RNG.normal(size=(2, 5, 3)), _soft_last((2, 5, 3)))),
        Case(
            "NCL-soft",
            lambda: (RNG.normal(size=(2, 3, 5)), np.moveaxis(_soft_last((2, 5, 3)), -1, 1)),
        ),
    ),
    Pair(
        "all-targets-ignored",
        Case("all-ignored", lambda: (LOGITS, np.full(6, -100))),
        Case("one-kept", lambda: (LOGITS, np.array([-100] * 5 + [2]))),
    ),
    Pair(
        "all-targets-ignored",
        Case("all-ignored-custom", lambda: (LOGITS, np.full(6, 1)), {"ignore_index": 1}),
        Case(
            "all-ignored-sum",
            lambda: (LOGITS, np.full(6, 1)),
            {"ignore_index": 1, "reduction": "sum"},
        ),
    ),
    Pair(
        "zero-weight-denominator",
        Case(
            "zero-weights",
            lambda: (LOGITS, np.array([0, 0, 0, 0, 0, 0]), np.array([0.0, 1.0, 1.0, 1.0])),
        ),
        Case(
            "some-weight",
            lambda: (LOGITS, np.array([0, 0, 0, 0, 0, 1]), np.array([0.0, 1.0, 1.0, 1.0])),
        ),
        sampled=False,
    ),
    Pair(
        "target-out-of-range",
        Case("too-large", lambda: (LOGITS, np.array([0, 4, 1, 2, 2, 1]))),
        Case("ignored-out-of-range", lambda: (LOGITS, np.array([0, -100, 1, 2, 2, 1]))),
        sampled=False,
    ),
    Pair(
        "float-class-indices",
        Case("float-indices", lambda: (LOGITS, LABELS.astype(np.float32))),
        Case("int-indices", lambda: (LOGITS, LABELS)),
    ),
    Pair(
        "float16-overflow",
        Case("f16-sum-over-65504", lambda: (_f16_big_sum(), np.zeros(20000, dtype=np.int64))),
        Case(
            "f32-same-sum",
            lambda: (_f16_big_sum().astype(np.float32), np.zeros(20000, dtype=np.int64)),
        ),
    ),
    Pair(
        "float16-overflow",
        Case(
            "f16-count-over-65504", lambda: (_f16_onehot_logits(70000), np.zeros(70000, np.int64))
        ),
        Case("f16-count-below", lambda: (_f16_onehot_logits(60000), np.zeros(60000, np.int64))),
    ),
    Pair(
        "float16-overflow",
        Case(
            "f16-bce-sum",
            lambda: (np.full((40000, 2), 0.01, np.float16), np.ones((40000, 2), np.float16)),
            {"loss": "binary_cross_entropy", "reduction": "sum"},
        ),
        # torch's binary 'mean' is accumulated in float32: no overflow
        Case(
            "f16-bce-mean",
            lambda: (np.full((40000, 2), 0.01, np.float16), np.ones((40000, 2), np.float16)),
            {"loss": "binary_cross_entropy"},
        ),
    ),
    Pair(
        "low-precision-count",
        Case(
            "bf16-257",
            lambda: (torch.zeros(257, 2, dtype=torch.bfloat16), torch.zeros(257, dtype=torch.long)),
        ),
        Case(
            "bf16-256",
            lambda: (torch.zeros(256, 2, dtype=torch.bfloat16), torch.zeros(256, dtype=torch.long)),
        ),
        sampled=False,
    ),
    Pair(
        "label-smoothing-with-probabilities",
        Case(
            "smoothing-soft",
            lambda: (LOGITS[:2, :3], np.array([[0, 0.25, 0.75], [1, 0, 0]])),
            {"label_smoothing": 0.1},
        ),
        Case(
            "smoothing-indices",
            lambda: (LOGITS[:2, :3], np.array([2, 0])),
            {"label_smoothing": 0.1},
        ),
    ),
    Pair(
        "label-smoothing-with-probabilities",
        Case(
            "smoothing-soft-2",
            lambda: (LOGITS[:2, :3], np.array([[0, 0.25, 0.75], [1, 0, 0]])),
            {"label_smoothing": 0.2},
        ),
        Case("no-smoothing-soft", lambda: (LOGITS[:2, :3], np.array([[0, 0.25, 0.75], [1, 0, 0]]))),
    ),
    Pair(
        "soft-targets-not-normalized",
        Case("rows-sum-to-2", lambda: (LOGITS[:2, :3], np.array([[0, 1.0, 1.0], [1, 0, 1.0]]))),
        Case("rows-sum-to-1", lambda: (LOGITS[:2, :3], np.array([[0, 0.5, 0.5], [0.5, 0, 0.5]]))),
    ),
    Pair(
        "single-class",
        Case("one-class", lambda: (LOGITS[:, :1], np.zeros(6, dtype=np.int64))),
        Case("two-classes", lambda: (LOGITS[:, :2], np.zeros(6, dtype=np.int64))),
    ),
    Pair(
        "unusual-class-weights",
        Case("negative-weight", lambda: (LOGITS, LABELS, np.array([1.0, -1.0, 1.0, 1.0]))),
        Case("unnormalised-weight", lambda: (LOGITS, LABELS, np.array([10.0, 1.0, 3.0, 7.0]))),
    ),
    Pair(
        "binary-target-out-of-range",
        Case(
            "target-2",
            lambda: (LOGITS, np.full((6, 4), 2.0)),
            {"loss": "binary_cross_entropy_with_logits"},
        ),
        Case(
            "target-1",
            lambda: (LOGITS, np.full((6, 4), 1.0)),
            {"loss": "binary_cross_entropy_with_logits"},
        ),
    ),
]


def _soft_last(shape: tuple[int, ...]) -> np.ndarray:
    z = np.random.default_rng(2).normal(size=shape)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _f16_onehot_logits(n: int) -> np.ndarray:
    """Spec V31: rows [1, 0]; torch's float16 'mean' of 70000 of them is 0.0 (count -> inf)."""
    x = np.zeros((n, 2), dtype=np.float16)
    x[:, 0] = 1
    return x


def _pair_id(pair: Pair) -> str:
    return f"{pair.code}:{pair.trigger.id}"


@pytest.mark.parametrize("pair", PAIRS, ids=_pair_id)
def test_finding_fires_on_its_case(pair: Pair) -> None:
    assert pair.code in pair.trigger.codes()


@pytest.mark.parametrize("pair", PAIRS, ids=_pair_id)
def test_finding_stays_silent_on_the_close_case(pair: Pair) -> None:
    assert pair.code not in pair.close.codes()


def test_every_documented_code_has_a_pair() -> None:
    documented = {line.split("``")[1] for line in dx.__doc__.splitlines() if line.startswith("``")}
    assert documented == {p.code for p in PAIRS}


def test_ordinary_calls_have_no_findings() -> None:
    assert dx.diagnose(LOGITS, LABELS) == ()
    assert dx.diagnose(torch.tensor(LOGITS), torch.tensor(LABELS), torch.rand(4).double()) == ()
    assert dx.diagnose(LOGITS, LABELS, loss="nll_loss") != ()  # logits are not log-probs
    assert dx.diagnose(crossent.log_softmax(LOGITS, 1), LABELS, loss="nll_loss") == ()
    assert dx.diagnose(LOGITS, (LOGITS > 0) * 1.0, loss="binary_cross_entropy_with_logits") == ()


@pytest.mark.parametrize(
    "logits",
    [
        np.zeros((32, 1)),  # a zero-initialised head at step 0
        np.array([0.3]),  # one sample
        np.linspace(0.05, 0.4, 16).reshape(16, 1),  # a few small positive scores
    ],
    ids=["zeros", "one", "small positive"],
)
def test_logits_that_happen_to_lie_in_the_unit_interval_are_not_flagged(logits) -> None:
    targets = (np.arange(logits.size).reshape(logits.shape) % 2) * 1.0
    assert dx.diagnose(logits, targets, loss="binary_cross_entropy_with_logits") == ()


def test_sigmoid_outputs_fed_as_logits_are_flagged() -> None:
    p = 1 / (1 + np.exp(-np.random.default_rng(0).normal(scale=3.0, size=(32, 1))))
    findings = dx.diagnose(p, (p > 0.5) * 1.0, loss="binary_cross_entropy_with_logits")
    assert [f.code for f in findings] == ["probabilities-as-logits"]


def test_two_logits_summing_to_one_in_a_tiny_batch_are_not_flagged() -> None:
    assert dx.diagnose(np.array([[0.3, 0.7]]), np.array([1])) == ()
    probabilities = np.array([[0.3, 0.7], [0.9, 0.1], [0.5, 0.5], [0.2, 0.8]])
    assert [f.code for f in dx.diagnose(probabilities, np.array([1, 0, 1, 1]))] == [
        "probabilities-as-logits"
    ]


def test_issue_example_finding_explains_itself() -> None:
    """CrossEntropyLoss()(torch.tensor([[0.1, 0.2, 0.7], [0.8, 0.1, 0.1]]), torch.tensor([2, 0]))"""
    (finding,) = dx.diagnose(torch.tensor(X), torch.tensor([2, 0]))
    assert finding.code == "probabilities-as-logits"
    assert "[0.1, 0.2, 0.7]" in finding.what
    assert "log_softmax" in finding.why and "0.5514" in finding.why  # log(e + 2) - 1
    # the numbers it quotes are torch's: the loss as given, and the loss of the probabilities
    as_given = torch.nn.CrossEntropyLoss()(
        torch.tensor(X, dtype=torch.float64), torch.tensor([2, 0])
    )
    meant = torch.nn.functional.nll_loss(
        torch.tensor(X, dtype=torch.float64).log(), torch.tensor([2, 0])
    )
    assert f"{float(as_given):.6g}" in finding.why and f"{float(meant):.6g}" in finding.why
    assert "logits" in finding.fix
    assert finding.message == f"{finding.what} {finding.why} Fix: {finding.fix} [{finding.code}]"


def test_one_hot_finding_quotes_the_ratio_torch_shows() -> None:
    """pytorch/pytorch#107680 (spec V17b/c): 0.8704835 with indices vs 54.405219 one-hot."""
    x = torch.tensor([[2.3, 2.1, 4.5], [4.2, 3.2, 5.1]], dtype=torch.float64)
    w = torch.tensor([25.0, 25.0, 100.0], dtype=torch.float64)
    one_hot = torch.eye(3, dtype=torch.float64)[[1, 2]]
    (finding,) = dx.diagnose(x, one_hot, w)
    index = torch.nn.functional.cross_entropy(x, torch.tensor([1, 2]), weight=w)
    soft = torch.nn.functional.cross_entropy(x, one_hot, weight=w)
    assert f"{float(soft / index):.6g} times" in finding.why  # 62.5
    assert "argmax" in finding.fix


def test_out_of_range_says_which_and_where() -> None:
    target = np.array([[0, 1, 7], [3, -2, 1]])
    (finding,) = dx.diagnose(np.zeros((2, 4, 3)), target)
    assert finding.code == "target-out-of-range" and finding.severity == "error"
    assert "[-2, 7]" in finding.what and "(0, 2)" in finding.what and "(1, 1)" in finding.what
    assert "[0, 4)" in finding.what
    with pytest.raises(IndexError):  # what the loss itself does with it
        crossent.cross_entropy(np.zeros((2, 4, 3)), target)


@pytest.mark.parametrize(
    ("target", "hint"),
    [
        (np.array([1, 2, 5, 3]), "1-based"),
        (np.array([-1, 2, -1, 3]), "ignore_index=-1"),
        (np.array([9, 2, 0, 3]), "number of classes"),
    ],
)
def test_out_of_range_fix_reads_the_labels(target: np.ndarray, hint: str) -> None:
    (finding,) = dx.diagnose(RNG.normal(size=(4, 5)), target)
    assert hint in finding.fix


def test_float16_overflow_matches_torch() -> None:
    """The finding fires exactly where torch's float16 'mean' breaks (spec section 7)."""
    x = torch.from_numpy(_f16_big_sum())
    t = torch.zeros(20000, dtype=torch.long)
    assert torch.isinf(torch.nn.functional.cross_entropy(x, t))
    assert "float16-overflow" in [f.code for f in dx.diagnose(x, t)]
    small = x[:2000]
    assert torch.isfinite(torch.nn.functional.cross_entropy(small, t[:2000]))
    assert "float16-overflow" not in [f.code for f in dx.diagnose(small, t[:2000])]
    many = torch.from_numpy(_f16_onehot_logits(70000))
    (finding,) = [
        f
        for f in dx.diagnose(many, torch.zeros(70000, dtype=torch.long))
        if f.code == "float16-overflow"
    ]
    assert (
        float(torch.nn.functional.cross_entropy(many, torch.zeros(70000, dtype=torch.long))) == 0.0
    )
    assert "70000 kept targets" in finding.what


def test_findings_are_frozen_and_sorted_by_severity() -> None:
    findings = dx.diagnose(np.array(X), np.array([2, -100]), np.array([-1.0, 1.0, 1.0]))
    assert [f.severity for f in findings] == sorted(
        (f.severity for f in findings), key=["error", "warning", "info"].index
    )
    with pytest.raises(AttributeError):
        findings[0].code = "x"  # type: ignore[misc]
    assert all(f.what and f.why and f.fix for f in findings)


def test_torch_and_numpy_give_the_same_findings() -> None:
    for pair in PAIRS:
        args = pair.trigger.build()
        if not all(isinstance(a, np.ndarray) for a in args):
            continue
        as_torch = [torch.from_numpy(np.ascontiguousarray(a)) for a in args]
        assert [
            f.code for f in dx.diagnose(*as_torch, **pair.trigger.kwargs)
        ] == pair.trigger.codes(), pair.trigger.id


def test_diagnose_accepts_lists_and_rejects_unknown_losses() -> None:
    assert [f.code for f in dx.diagnose(X, [2, 0])] == ["probabilities-as-logits"]
    with pytest.raises(ValueError, match="loss must be one of"):
        dx.diagnose(X, [2, 0], loss="hinge")


# ------------------------------------------------------------------------------------------
# the warning mode: switch + maybe_warn


def _warned(op: str, *args: Any, **kwargs: Any) -> list[warnings.WarningMessage]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dx.maybe_warn(op, *args, **kwargs)
    return caught


def test_warning_mode_is_off_by_default_and_costs_nothing() -> None:
    assert not dx.warnings_enabled()
    assert _warned("cross_entropy", torch.tensor(X), torch.tensor([2, 0])) == []


def test_switch_functions_and_context_manager() -> None:
    dx.enable_warnings()
    try:
        assert dx.warnings_enabled()
        (w,) = _warned("cross_entropy", torch.tensor(X), torch.tensor([2, 0]))
        assert issubclass(w.category, dx.DiagnosticWarning)
        assert issubclass(dx.DiagnosticWarning, UserWarning)
        assert "[probabilities-as-logits]" in str(w.message)
        with dx.diagnostic_warnings(False):
            assert _warned("cross_entropy", torch.tensor(X), torch.tensor([2, 0])) == []
        assert dx.warnings_enabled()  # the block restored the previous state
    finally:
        dx.disable_warnings()
    assert not dx.warnings_enabled()
    with dx.diagnostic_warnings():
        assert dx.warnings_enabled()
        with pytest.raises(RuntimeError), dx.diagnostic_warnings():
            raise RuntimeError("the state is restored on errors too")
        assert dx.warnings_enabled()
    assert not dx.warnings_enabled()


@pytest.mark.parametrize("pair", [p for p in PAIRS if p.sampled], ids=_pair_id)
def test_warning_mode_reports_the_finding(pair: Pair) -> None:
    def call(case: Case) -> list[warnings.WarningMessage]:
        kwargs = dict(case.kwargs)
        op = kwargs.pop("loss", "cross_entropy")
        return _warned(op, *case.build(), **kwargs)

    with dx.diagnostic_warnings():
        hit, miss = call(pair.trigger), call(pair.close)
    assert any(f"[{pair.code}]" in str(w.message) for w in hit)
    assert not any(f"[{pair.code}]" in str(w.message) for w in miss)


def test_warning_points_at_the_caller() -> None:
    with dx.diagnostic_warnings():
        (w,) = _warned("cross_entropy", torch.tensor(X), torch.tensor([2, 0]))
    assert w.filename == __file__


# A stand-in for a public loss living in the crossent package (as functional.py will), to check
# that warnings skip crossent's frames and point at the user's line.
_LIBRARY = {"__name__": "crossent.functional_stand_in", "dx": dx}
exec(  # defines functions whose module name is inside crossent
    "def cross_entropy(input, target):\n"
    "    dx.maybe_warn('cross_entropy', input, target)\n"
    "def nested(input, target):\n"
    "    return cross_entropy(input, target)\n",
    _LIBRARY,
)


def test_warning_from_inside_crossent_points_at_the_user_line() -> None:
    with dx.diagnostic_warnings(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _LIBRARY["nested"](torch.tensor(X), torch.tensor([2, 0]))
        line = sys._getframe().f_lineno - 1
    (w,) = caught
    assert (w.filename, w.lineno) == (__file__, line)


def test_maybe_warn_never_raises_on_bad_arguments() -> None:
    with dx.diagnostic_warnings():
        for args in [
            (torch.randn(2, 3), torch.tensor([[1, 2, 3]])),  # shapes that do not match
            ([1.0, 2.0], "not an array"),
            (torch.randn(2, 3), torch.tensor([0, 1]), torch.randn(7)),  # bad weight
        ]:
            _warned("cross_entropy", *args)
        with pytest.raises(ValueError, match="op must be one of"):
            dx.maybe_warn("cross_entropy_loss", torch.randn(2, 3), torch.tensor([0, 1]))


def test_warning_mode_reads_a_bounded_sample() -> None:
    """The sample the warning mode reads is at most 64 positions and 65536 elements."""
    big_c = dx._read(
        "cross_entropy",
        torch.zeros(1000, 50000),
        torch.zeros(1000, dtype=torch.long),
        None,
        -100,
        "mean",
        0.0,
        sample=True,
    )
    assert big_c.x.shape == (1, 50000)
    rows = dx._read(
        "cross_entropy",
        torch.zeros(5000, 10),
        torch.zeros(5000, dtype=torch.long),
        None,
        -100,
        "mean",
        0.0,
        sample=True,
    )
    assert rows.x.shape == (64, 10) and rows.positions == 5000
    image = dx._read(
        "cross_entropy",
        torch.zeros(4, 21, 300, 300),
        torch.zeros(4, 300, 300, dtype=torch.long),
        None,
        -100,
        "mean",
        0.0,
        sample=True,
    )
    assert image.x.size <= 21 * 64 and image.t.size <= 64
    binary = dx._read(
        "binary_cross_entropy_with_logits",
        torch.zeros(3000, 3000),
        torch.zeros(3000, 3000),
        None,
        -100,
        "mean",
        0.0,
        sample=True,
    )
    assert binary.x.size <= dx.SAMPLE_ELEMENTS


def test_all_ignored_sample_is_confirmed_on_every_target() -> None:
    target = torch.full((500,), -100)
    target[300] = 1  # beyond the sample: the mean is not NaN
    with dx.diagnostic_warnings():
        assert _warned("cross_entropy", torch.randn(500, 3), target) == []
        target[300] = -100
        (w,) = _warned("cross_entropy", torch.randn(500, 3), target)
    assert "[all-targets-ignored]" in str(w.message)


def test_warning_mode_fires_from_the_loss_functions_themselves():
    """Integration: the opt-in switch makes crossent's own losses warn, at the caller's line."""
    import warnings

    import torch

    import crossent
    from crossent.diagnostics import DiagnosticWarning, diagnostic_warnings

    probs = torch.tensor([[0.1, 0.2, 0.7], [0.8, 0.1, 0.1]])
    with diagnostic_warnings(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        crossent.cross_entropy(probs, torch.tensor([2, 0]))
    found = [w for w in caught if issubclass(w.category, DiagnosticWarning)]
    assert found and "[probabilities-as-logits]" in str(found[0].message)
    assert found[0].filename == __file__
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        crossent.cross_entropy(probs, torch.tensor([2, 0]))  # off by default: no warning


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize(("classes", "scale"), [(10, 0.1), (100, 1.0), (1000, 5.0),
                                                (32000, 1.0)])  # fmt: skip
def test_log_probabilities_rounded_to_half_precision_are_not_called_logits(dtype, classes, scale):
    # a bfloat16 log_softmax row's logsumexp is up to ~0.02 from 0 (each entry rounded): the
    # right input for nll_loss, which a fixed 1e-3 threshold called logits; logits still are
    g = torch.Generator().manual_seed(classes)
    z = (scale * torch.randn(64, classes, generator=g)).to(dtype)
    target = torch.randint(0, classes, (64,), generator=g)
    assert not crossent.diagnose(z.log_softmax(1), target, loss="nll_loss")
    codes = [f.code for f in crossent.diagnose(z, target, loss="nll_loss")]
    assert "logits-as-log-probabilities" in codes

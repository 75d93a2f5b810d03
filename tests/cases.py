"""The declarative table of loss cases that drives the differential tests.

Each :class:`Case` names an op, builds float64 torch tensors from a seed, and carries the
non-tensor arguments. Differential tests run every case through torch (the oracle) and through
crossent for torch tensors, NumPy arrays and array-api-strict arrays. :data:`ERROR_CASES` lists
inputs that must raise, with torch's exception type.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

OPS = ("cross_entropy", "nll_loss", "binary_cross_entropy", "binary_cross_entropy_with_logits")


@dataclass(frozen=True)
class Case:
    id: str
    op: str
    build: Callable[[torch.Generator], dict]  # tensors: input, target, weight?, pos_weight?
    kwargs: dict = field(default_factory=dict)  # reduction, ignore_index, label_smoothing
    #: False where torch's own backward fails (so only the forward can be compared).
    torch_backward: bool = True

    def tensors(self, seed: int = 0) -> dict:
        g = torch.Generator().manual_seed(seed)
        return self.build(g)


def _randn(g, *shape, scale=2.0):
    return torch.randn(*shape, generator=g, dtype=torch.float64) * scale


def _targets(g, high, *shape, ignore=None, frac=0.3):
    t = torch.randint(0, high, shape, generator=g)
    if ignore is not None:
        mask = torch.rand(shape, generator=g) < frac
        t = torch.where(mask, torch.tensor(ignore), t)
    return t


def _probs(g, *shape, dim=1, normalised=True):
    p = torch.rand(*shape, generator=g, dtype=torch.float64)
    return p / p.sum(dim, keepdim=True) if normalised else p


def _weight(g, c):
    return torch.rand(c, generator=g, dtype=torch.float64) + 0.1


REDUCTIONS = ("mean", "sum", "none")


def _ce_cases() -> list[Case]:
    cases: list[Case] = []
    shapes = {
        "unbatched": (5,),
        "2d": (7, 5),
        "kdim1": (3, 4, 6),
        "kdim2": (2, 3, 4, 2),
        "C1": (4, 1),
        "C1000": (3, 1000),
    }
    for name, shape in shapes.items():
        c = shape[0] if len(shape) == 1 else shape[1]
        tshape = () if len(shape) == 1 else (shape[0], *shape[2:])
        for red in REDUCTIONS:
            cases.append(Case(f"ce-{name}-{red}", "cross_entropy",
                              lambda g, s=shape, c=c, t=tshape: {
                                  "input": _randn(g, *s), "target": _targets(g, c, *t)},
                              {"reduction": red}))
        for red in REDUCTIONS:
            for eps in (0.0, 0.1, 1.0):
                cases.append(Case(
                    f"ce-{name}-w-ignore-ls{eps}-{red}", "cross_entropy",
                    lambda g, s=shape, c=c, t=tshape: {
                        "input": _randn(g, *s), "target": _targets(g, c, *t, ignore=-100),
                        "weight": _weight(g, c)},
                    {"reduction": red, "label_smoothing": eps}))
        class_dim = 0 if len(shape) == 1 else 1
        for red in REDUCTIONS:
            for eps in (0.0, 0.2):
                cases.append(Case(
                    f"ce-{name}-soft-w-ls{eps}-{red}", "cross_entropy",
                    lambda g, s=shape, d=class_dim: {
                        "input": _randn(g, *s), "target": _probs(g, *s, dim=d),
                        "weight": _weight(g, s[d])},
                    {"reduction": red, "label_smoothing": eps}))
    cases += [
        Case("ce-ignore-valid-class", "cross_entropy",
             lambda g: {"input": _randn(g, 6, 4), "target": _targets(g, 4, 6)},
             {"ignore_index": 0}),
        Case("ce-ignore-valid-class-ls", "cross_entropy",
             lambda g: {"input": _randn(g, 6, 4), "target": _targets(g, 4, 6),
                        "weight": _weight(g, 4)},
             {"ignore_index": 1, "label_smoothing": 0.3}),
        Case("ce-all-ignored-mean", "cross_entropy",
             lambda g: {"input": _randn(g, 3, 4), "target": torch.full((3,), -100)}, {}),
        Case("ce-all-ignored-ls-w-sum", "cross_entropy",
             lambda g: {"input": _randn(g, 3, 4), "target": torch.full((3,), -100),
                        "weight": _weight(g, 4)},
             {"label_smoothing": 0.2, "reduction": "sum"}),
        Case("ce-empty-mean", "cross_entropy",
             lambda g: {"input": _randn(g, 0, 4), "target": torch.zeros(0, dtype=torch.long)},
             {}),
        Case("ce-empty-kdim-sum", "cross_entropy",
             lambda g: {"input": _randn(g, 2, 4, 0), "target": torch.zeros(2, 0, dtype=torch.long)},
             {"reduction": "sum"}),
        Case("ce-soft-unnormalised", "cross_entropy",
             lambda g: {"input": _randn(g, 5, 3), "target": _probs(g, 5, 3, normalised=False)},
             {}),
        Case("ce-soft-empty-sum", "cross_entropy",
             lambda g: {"input": _randn(g, 0, 3), "target": _probs(g, 0, 3)},
             {"reduction": "sum"}),
        Case("ce-uint8-target", "cross_entropy",
             lambda g: {"input": _randn(g, 5, 4), "target": _targets(g, 4, 5).to(torch.uint8)},
             {"ignore_index": 3}),
        # torch's forward accepts a (1,) target for (C,) input; its backward raises
        # "size mismatch (got input: [5], target: [1])". crossent differentiates it.
        Case("ce-unbatched-target1", "cross_entropy",
             lambda g: {"input": _randn(g, 5), "target": torch.tensor([2])}, {},
             torch_backward=False),
        Case("ce-large-logits", "cross_entropy",
             lambda g: {"input": _randn(g, 4, 6) * 300, "target": _targets(g, 6, 4)},
             {"label_smoothing": 0.1}),
    ]
    return cases


def _nll_cases() -> list[Case]:
    cases = []
    for red in REDUCTIONS:
        cases += [
            Case(f"nll-2d-{red}", "nll_loss",
                 lambda g: {"input": torch.log_softmax(_randn(g, 6, 4), 1),
                            "target": _targets(g, 4, 6, ignore=-100), "weight": _weight(g, 4)},
                 {"reduction": red}),
            Case(f"nll-kdim-{red}", "nll_loss",
                 lambda g: {"input": _randn(g, 2, 3, 4, 5), "target": _targets(g, 3, 2, 4, 5)},
                 {"reduction": red}),
            Case(f"nll-unbatched-{red}", "nll_loss",
                 lambda g: {"input": _randn(g, 4), "target": torch.tensor(1)},
                 {"reduction": red}),
        ]
    cases.append(Case("nll-kdim-weight-1xC", "nll_loss",
                      lambda g: {"input": _randn(g, 2, 3, 4), "target": _targets(g, 3, 2, 4),
                                 "weight": _weight(g, 3).reshape(1, 3)}, {}))
    return cases


def _bce_cases() -> list[Case]:
    cases = []
    for red in REDUCTIONS:
        cases += [
            Case(f"bce-{red}", "binary_cross_entropy",
                 lambda g: {"input": torch.rand(4, 3, generator=g, dtype=torch.float64),
                            "target": torch.rand(4, 3, generator=g, dtype=torch.float64)},
                 {"reduction": red}),
            Case(f"bce-weight-rows-{red}", "binary_cross_entropy",
                 lambda g: {"input": torch.rand(4, 3, generator=g, dtype=torch.float64),
                            "target": torch.rand(4, 3, generator=g, dtype=torch.float64),
                            "weight": torch.rand(4, 1, generator=g, dtype=torch.float64)},
                 {"reduction": red}),
            Case(f"bcel-{red}", "binary_cross_entropy_with_logits",
                 lambda g: {"input": _randn(g, 4, 3, scale=4.0),
                            "target": torch.rand(4, 3, generator=g, dtype=torch.float64)},
                 {"reduction": red}),
            Case(f"bcel-w-pw-{red}", "binary_cross_entropy_with_logits",
                 lambda g: {"input": _randn(g, 2, 4, 3, scale=4.0),
                            "target": torch.rand(2, 4, 3, generator=g, dtype=torch.float64),
                            "weight": torch.rand(4, 1, generator=g, dtype=torch.float64),
                            "pos_weight": torch.rand(3, generator=g, dtype=torch.float64) * 3},
                 {"reduction": red}),
        ]
    cases += [
        Case("bce-clamped-edges", "binary_cross_entropy",
             lambda g: {"input": torch.tensor([0.0, 1.0, 0.0, 0.5, 1.0], dtype=torch.float64),
                        "target": torch.tensor([1.0, 0.0, 0.25, 0.3, 1.0], dtype=torch.float64)},
             {"reduction": "none"}),
        Case("bcel-extremes", "binary_cross_entropy_with_logits",
             lambda g: {"input": torch.tensor([-100.0, 100, 30, -30, -4], dtype=torch.float64),
                        "target": torch.tensor([1.0, 0, 1, 0, 0], dtype=torch.float64)},
             {"reduction": "none"}),
        Case("bce-empty-mean", "binary_cross_entropy",
             lambda g: {"input": torch.zeros(0, dtype=torch.float64),
                        "target": torch.zeros(0, dtype=torch.float64)}, {}),
    ]
    return cases


CASES: list[Case] = _ce_cases() + _nll_cases() + _bce_cases()


@dataclass(frozen=True)
class ErrorCase:
    id: str
    op: str
    build: Callable[[], dict]
    kwargs: dict
    error: type[BaseException]
    match: str


def _x():
    return torch.randn(2, 3, dtype=torch.float64)


ERROR_CASES: list[ErrorCase] = [
    ErrorCase("target-out-of-range", "cross_entropy",
              lambda: {"input": _x(), "target": torch.tensor([1, 3])}, {}, IndexError,
              r"Target 3 is out of bounds.*\[0, 3\).*position \(1,\)"),
    ErrorCase("target-negative", "cross_entropy",
              lambda: {"input": _x(), "target": torch.tensor([-1, 0])}, {}, IndexError,
              "Target -1"),
    ErrorCase("target-int32", "cross_entropy",
              lambda: {"input": _x(), "target": torch.tensor([1, 0], dtype=torch.int32)}, {},
              RuntimeError, "int32"),
    ErrorCase("target-float-index-shape", "cross_entropy",
              lambda: {"input": _x(), "target": torch.tensor([1.0, 0.0])}, {},
              RuntimeError, "probabilities only when it has the input's shape"),
    ErrorCase("target-long-prob-shape", "cross_entropy",
              lambda: {"input": _x(), "target": torch.zeros(2, 3, dtype=torch.long)}, {},
              RuntimeError, "Expected floating point type"),
    ErrorCase("target-2d-for-2d", "cross_entropy",
              lambda: {"input": _x(), "target": torch.zeros(2, 2, dtype=torch.long)}, {},
              RuntimeError, "multi-target"),
    ErrorCase("batch-mismatch", "cross_entropy",
              lambda: {"input": _x(), "target": torch.tensor([1, 0, 1])}, {},
              ValueError, r"batch_size \(2\).*\(3\)"),
    ErrorCase("batched-0d-target", "cross_entropy",
              lambda: {"input": _x(), "target": torch.tensor(1)}, {}, ValueError, "batch_size"),
    ErrorCase("unbatched-target-size2", "cross_entropy",
              lambda: {"input": torch.randn(3, dtype=torch.float64),
                       "target": torch.tensor([1, 2])}, {}, ValueError, "size 1"),
    ErrorCase("kdim-target-shape", "cross_entropy",
              lambda: {"input": torch.randn(2, 3, 4, dtype=torch.float64),
                       "target": torch.zeros(2, 5, dtype=torch.long)}, {},
              RuntimeError, r"Expected target size \[2, 4\], got \[2, 5\]"),
    ErrorCase("kdim-uint8", "cross_entropy",
              lambda: {"input": torch.randn(2, 3, 4, dtype=torch.float64),
                       "target": torch.zeros(2, 4, dtype=torch.uint8)}, {}, RuntimeError, "Byte"),
    ErrorCase("weight-numel", "cross_entropy",
              lambda: {"input": _x(), "target": torch.tensor([1, 0]),
                       "weight": torch.ones(2, dtype=torch.float64)}, {},
              RuntimeError, "all 3 classes"),
    ErrorCase("weight-dtype", "cross_entropy",
              lambda: {"input": _x(), "target": torch.tensor([1, 0]),
                       "weight": torch.ones(3, dtype=torch.float32)}, {}, RuntimeError, "dtype"),
    ErrorCase("weight-2d", "cross_entropy",
              lambda: {"input": _x(), "target": torch.tensor([1, 0]),
                       "weight": torch.ones(1, 3, dtype=torch.float64)}, {}, RuntimeError, "shape"),
    ErrorCase("soft-weight-numel", "cross_entropy",
              lambda: {"input": _x(), "target": torch.zeros(2, 3, dtype=torch.float64),
                       "weight": torch.ones(2, dtype=torch.float64)}, {},
              RuntimeError, "all 3 classes"),
    ErrorCase("soft-ignore-index", "cross_entropy",
              lambda: {"input": _x(), "target": torch.zeros(2, 3, dtype=torch.float64)},
              {"ignore_index": 1}, RuntimeError, "ignore_index"),
    ErrorCase("label-smoothing-gt1", "cross_entropy",
              lambda: {"input": _x(), "target": torch.tensor([1, 0])},
              {"label_smoothing": 1.5}, RuntimeError, "between 0.0 and 1.0"),
    ErrorCase("reduction-unknown", "cross_entropy",
              lambda: {"input": _x(), "target": torch.tensor([1, 0])},
              {"reduction": "avg"}, ValueError, "not a valid value for reduction"),
    ErrorCase("ignore-index-float", "cross_entropy",
              lambda: {"input": _x(), "target": torch.tensor([1, 0])},
              {"ignore_index": 1.0}, TypeError, "int"),
    ErrorCase("input-0d", "cross_entropy",
              lambda: {"input": torch.tensor(1.0, dtype=torch.float64),
                       "target": torch.tensor(0.0, dtype=torch.float64)}, {}, IndexError,
              "no dimensions"),
    ErrorCase("input-0d-long-target", "cross_entropy",
              lambda: {"input": torch.tensor(1.0, dtype=torch.float64),
                       "target": torch.tensor(0)}, {}, RuntimeError, "floating point"),
    ErrorCase("input-integer", "cross_entropy",
              lambda: {"input": torch.zeros(2, 3, dtype=torch.long),
                       "target": torch.tensor([1, 0])}, {}, NotImplementedError, "floating"),
    ErrorCase("C1-long-target-1", "cross_entropy",
              lambda: {"input": torch.randn(1, dtype=torch.float64),
                       "target": torch.tensor([0])}, {}, RuntimeError, "floating point"),
    ErrorCase("nll-0d", "nll_loss",
              lambda: {"input": torch.tensor(1.0, dtype=torch.float64),
                       "target": torch.tensor(0)}, {}, ValueError, "1 or more dimensions"),
    ErrorCase("nll-out-of-range", "nll_loss",
              lambda: {"input": _x(), "target": torch.tensor([0, 5])}, {}, IndexError, "5"),
    ErrorCase("bce-shape", "binary_cross_entropy",
              lambda: {"input": torch.rand(2, 3, dtype=torch.float64),
                       "target": torch.rand(3, dtype=torch.float64)}, {}, ValueError, "size"),
    ErrorCase("bce-dtype", "binary_cross_entropy",
              lambda: {"input": torch.rand(2, 3, dtype=torch.float64),
                       "target": torch.rand(2, 3, dtype=torch.float32)}, {},
              RuntimeError, "dtype"),
    ErrorCase("bce-input-range", "binary_cross_entropy",
              lambda: {"input": torch.tensor([0.5, 1.5], dtype=torch.float64),
                       "target": torch.tensor([0.0, 1.0], dtype=torch.float64)}, {},
              RuntimeError, r"between 0 and 1.*1\.5.*\(1,\)"),
    ErrorCase("bce-input-nan", "binary_cross_entropy",
              lambda: {"input": torch.tensor([0.5, float("nan")], dtype=torch.float64),
                       "target": torch.tensor([0.0, 1.0], dtype=torch.float64)}, {},
              RuntimeError, "between 0 and 1"),
    ErrorCase("bce-target-range", "binary_cross_entropy",
              lambda: {"input": torch.tensor([0.5, 0.5], dtype=torch.float64),
                       "target": torch.tensor([0.0, -1.0], dtype=torch.float64)}, {},
              RuntimeError, "target should be between 0 and 1"),
    ErrorCase("bce-weight-broadcast", "binary_cross_entropy",
              lambda: {"input": torch.rand(2, 3, dtype=torch.float64),
                       "target": torch.rand(2, 3, dtype=torch.float64),
                       "weight": torch.ones(2, dtype=torch.float64)}, {},
              RuntimeError, "broadcast"),
    ErrorCase("bce-weight-enlarge", "binary_cross_entropy",
              lambda: {"input": torch.rand(2, 3, dtype=torch.float64),
                       "target": torch.rand(2, 3, dtype=torch.float64),
                       "weight": torch.ones(4, 2, 3, dtype=torch.float64)}, {},
              RuntimeError, "broadcast shape"),
    ErrorCase("bce-integer", "binary_cross_entropy",
              lambda: {"input": torch.zeros(2, 3, dtype=torch.long),
                       "target": torch.zeros(2, 3, dtype=torch.long)}, {},
              NotImplementedError, "floating"),
    ErrorCase("bcel-shape", "binary_cross_entropy_with_logits",
              lambda: {"input": torch.rand(2, 3, dtype=torch.float64),
                       "target": torch.rand(3, dtype=torch.float64)}, {}, ValueError, "size"),
    ErrorCase("bcel-long-target", "binary_cross_entropy_with_logits",
              lambda: {"input": torch.rand(2, 3, dtype=torch.float64),
                       "target": torch.zeros(2, 3, dtype=torch.long)}, {},
              RuntimeError, "Long|int64"),
    ErrorCase("bcel-pos-weight-enlarge", "binary_cross_entropy_with_logits",
              lambda: {"input": torch.rand(2, 3, dtype=torch.float64),
                       "target": torch.rand(2, 3, dtype=torch.float64),
                       "pos_weight": torch.ones(4, 1, 1, dtype=torch.float64)}, {},
              RuntimeError, "broadcast shape"),
    ErrorCase("bcel-pos-weight-mismatch", "binary_cross_entropy_with_logits",
              lambda: {"input": torch.rand(2, 3, 4, 5, dtype=torch.float64),
                       "target": torch.rand(2, 3, 4, 5, dtype=torch.float64),
                       "pos_weight": torch.ones(3, dtype=torch.float64)}, {},
              RuntimeError, "last dimension"),
    ErrorCase("bcel-integer-input", "binary_cross_entropy_with_logits",
              lambda: {"input": torch.zeros(2, 3, dtype=torch.long),
                       "target": torch.rand(2, 3, dtype=torch.float64)}, {},
              NotImplementedError, "floating"),
    # torch's check order, found by fuzzing: each case has two defects or an unusual shape
    ErrorCase("ce-0d-input-batched-target", "cross_entropy",
              lambda: {"input": torch.tensor(1.0, dtype=torch.float64),
                       "target": torch.tensor([0, 1, 2])}, {},
              IndexError, "Dimension out of range"),
    ErrorCase("ce-1d-input-2d-target", "cross_entropy",
              lambda: {"input": torch.rand(3, dtype=torch.float64),
                       "target": torch.zeros(3, 3, dtype=torch.long)}, {},
              RuntimeError, "multi-target"),
    ErrorCase("nll-1d-input-int32-target-of-size-2", "nll_loss",
              lambda: {"input": torch.rand(3, dtype=torch.float64),
                       "target": torch.tensor([0, 1], dtype=torch.int32)}, {},
              RuntimeError, "int32"),
    ErrorCase("nll-empty-batch-0d-target", "nll_loss",
              lambda: {"input": torch.rand(0, 4, dtype=torch.float64),
                       "target": torch.tensor(0)}, {},
              IndexError, "no dimensions"),
    ErrorCase("ce-integer-input-and-bad-target", "cross_entropy",
              lambda: {"input": torch.zeros(2, 3, dtype=torch.long),
                       "target": torch.zeros(5, dtype=torch.long)}, {},
              NotImplementedError, "floating"),
    ErrorCase("nll-integer-input-and-bad-weight", "nll_loss",
              lambda: {"input": torch.zeros(2, 3, dtype=torch.long),
                       "target": torch.zeros(2, dtype=torch.long),
                       "weight": torch.rand(5, dtype=torch.float64)}, {},
              RuntimeError, "weight tensor should be defined"),
    ErrorCase("bcel-bool-pos-weight", "binary_cross_entropy_with_logits",
              lambda: {"input": torch.rand(3, dtype=torch.float64),
                       "target": torch.rand(3, dtype=torch.float64),
                       "pos_weight": torch.ones(3, dtype=torch.bool)}, {},
              RuntimeError, "bool"),
]

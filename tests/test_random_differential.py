"""Seeded random differential runs against torch over the whole argument space (float64).

The case table (``cases.py``) names the cases we thought of; these runs draw shapes and arguments
at random — K-dim inputs, one class, empty batches, class weights, ignore_index inside the class
range, label smoothing up to 1, probability targets, every reduction and every implementation —
and demand torch's value, gradient (for a random upstream gradient) and exception type. Runs of
this kind found the bugs pinned in ``test_edge_values.py``.
"""

from __future__ import annotations

import random

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

import crossent  # noqa: E402

CASES_PER_SEED = 60


def _same(a: torch.Tensor, b: torch.Tensor, rtol: float, *, elementwise: bool = False) -> bool:
    """Equal NaN pattern and infinities; finite entries within ``rtol`` relative to the entry
    (``elementwise``: the binary losses, whose tiny values torch computes without cancellation,
    through log1p) or to max(|entry|, 1) (cross-entropy of a confident row is log(1 + delta) in
    torch's formula too, accurate to about 1e-16 absolute, not relative; gradients)."""
    a, b = a.detach(), b.detach()
    if a.shape != b.shape or not torch.equal(torch.isnan(a), torch.isnan(b)):
        return False
    if not torch.equal(torch.isinf(a), torch.isinf(b)) or not torch.equal(
        a[torch.isinf(a)], b[torch.isinf(b)]
    ):
        return False
    finite = torch.isfinite(b)
    scale = b[finite].abs() if elementwise else b[finite].abs().clamp_min(1.0)
    return bool(((a[finite] - b[finite]).abs() <= rtol * scale).all())


def _outcome(fn, x, *args, upstream=None, **kwargs):
    """(loss, grad) or the exception type."""
    leaf = x.detach().clone().requires_grad_()
    try:
        loss = fn(leaf, *args, **kwargs)
    except Exception as exc:  # the exception type is what is compared
        return type(exc)
    up = torch.ones_like(loss) if upstream is None else upstream
    (grad,) = torch.autograd.grad(loss, leaf, up, allow_unused=True)
    return loss, torch.zeros_like(leaf) if grad is None else grad


def _draw_cross_entropy(rng: random.Random):
    classes = rng.choice([1, 2, 3, 5, 17])
    form = rng.choice(["unbatched", "2d", "kd"])
    n = rng.choice([0, 1, 3, 8])
    shape = {"unbatched": (classes,), "2d": (n, classes),
             "kd": (n, classes, rng.choice([1, 2, 3]), rng.choice([1, 2]))}[form]  # fmt: skip
    x = torch.randn(shape, dtype=torch.float64) * rng.choice([0.1, 1.0, 10.0, 100.0])
    class_dim = 0 if form == "unbatched" else 1
    ignore_index = rng.choice([-100, 0, 1])
    if rng.random() < 0.3:
        target = torch.softmax(torch.randn(shape, dtype=torch.float64), dim=class_dim)
        ignore_index = -100  # probability targets take no ignore_index
    else:
        target_shape = () if form == "unbatched" else (shape[0], *shape[2:])
        target = torch.randint(0, classes, target_shape)
        if rng.random() < 0.3 and target.numel():
            target.view(-1)[0] = ignore_index
    weight = torch.rand(classes, dtype=torch.float64) if rng.random() < 0.5 else None
    kwargs = dict(weight=weight, ignore_index=ignore_index,
                  reduction=rng.choice(["mean", "sum", "none"]),
                  label_smoothing=rng.choice([0.0, 0.0, 0.1, 0.5, 1.0]))  # fmt: skip
    return x, target, kwargs


@pytest.mark.parametrize("impl", ["auto", "reference", "torch", "fused", "triton"])
@pytest.mark.parametrize("seed", range(3))
def test_cross_entropy_random_cases_match_torch(impl, seed):
    if impl == "triton":  # (the Triton interpreter on CPU tensors, tests/conftest.py)
        pytest.importorskip("triton")
    rng = random.Random(1000 * seed + len(impl))
    for _ in range(CASES_PER_SEED):
        x, target, kwargs = _draw_cross_entropy(rng)
        expected = _outcome(F.cross_entropy, x, target, **kwargs)
        if isinstance(expected, type):
            assert _outcome(crossent.cross_entropy, x, target, impl=impl, **kwargs) is expected
            continue
        upstream = torch.rand(expected[0].shape, dtype=torch.float64) + 0.5
        expected = _outcome(F.cross_entropy, x, target, upstream=upstream, **kwargs)
        ours = _outcome(crossent.cross_entropy, x, target, upstream=upstream, impl=impl,
                        **kwargs)  # fmt: skip
        context = (tuple(x.shape), tuple(target.shape), target.dtype, kwargs)
        assert not isinstance(ours, type), (ours, context)
        assert _same(ours[0], expected[0], 1e-12), context
        assert _same(ours[1], expected[1], 1e-11), context


@pytest.mark.parametrize("impl", ["auto", "fused"])
@pytest.mark.parametrize("seed", range(2))
def test_linear_cross_entropy_random_cases_match_torch(seed, impl):
    rng = random.Random(seed)
    for _ in range(CASES_PER_SEED):
        batch = rng.choice([(0,), (1,), (5,), (3, 2), ()])
        d, v = rng.choice([1, 3, 8]), rng.choice([1, 2, 7, 33])
        x = torch.randn(*batch, d, dtype=torch.float64)
        w = torch.randn(v, d, dtype=torch.float64)
        bias = torch.randn(v, dtype=torch.float64) if rng.random() < 0.4 else None
        ignore_index = rng.choice([None, -100, 0, 1])
        if rng.random() < 0.3:
            target = torch.softmax(torch.randn(*batch, v, dtype=torch.float64), -1)
        else:
            target = torch.randint(0, v, batch)
            if ignore_index is not None and target.numel() and rng.random() < 0.5:
                target.view(-1)[0] = ignore_index
        kwargs = dict(linear_bias=bias, ignore_index=ignore_index,
                      weight=torch.rand(v, dtype=torch.float64) if rng.random() < 0.4 else None,
                      reduction=rng.choice(["mean", "sum", "none"]),
                      label_smoothing=rng.choice([0.0, 0.2, 1.0]))  # fmt: skip
        budget = rng.choice([None, 1024, 4096])

        def ours(leaf, *args, budget=budget, **kw):
            return crossent.linear_cross_entropy(leaf, *args, memory_budget=budget, impl=impl,
                                                 **kw)  # fmt: skip

        expected = _outcome(F.linear_cross_entropy, x, w, target, **kwargs)
        got = _outcome(ours, x, w, target, **kwargs)
        context = (batch, d, v, kwargs, budget)
        if isinstance(expected, type):
            assert got is expected, context
            continue
        assert not isinstance(got, type), (got, context)
        assert _same(got[0], expected[0], 1e-11), context
        assert _same(got[1], expected[1], 1e-10), context


def _broadcastable_shape(rng: random.Random, shape: tuple[int, ...]) -> tuple[int, ...]:
    """A trailing sub-shape of ``shape`` with some sizes set to 1 (never enlarging)."""
    kept = shape[rng.randrange(len(shape) + 1):] if shape else ()
    return tuple(1 if rng.random() < 0.3 else s for s in kept)


@pytest.mark.parametrize("op", ["nll_loss", "binary_cross_entropy",
                                "binary_cross_entropy_with_logits"])  # fmt: skip
# (auto is torch's own kernel here: what it checks is crossent's validation in front of it,
# whose exception types must be torch's)
@pytest.mark.parametrize("impl", ["auto", "reference"])
@pytest.mark.parametrize("seed", range(2))
def test_other_losses_random_cases_match_torch(op, seed, impl):
    rng = random.Random(7 * seed + len(op) + len(impl))
    for _ in range(CASES_PER_SEED):
        reduction = rng.choice(["mean", "sum", "none"])
        if op == "nll_loss":
            classes = rng.choice([1, 3, 6])
            n = rng.choice([0, 1, 4])
            shape = rng.choice([(classes,), (n, classes), (n, classes, 2)])
            x = torch.log_softmax(torch.randn(shape, dtype=torch.float64), 0 if len(shape) == 1
                                  else 1)  # fmt: skip
            target_shape = () if len(shape) == 1 else (shape[0], *shape[2:])
            target = torch.randint(0, classes, target_shape)
            ignore_index = rng.choice([-100, 0])
            if target.numel() and rng.random() < 0.4:
                target.view(-1)[0] = ignore_index
            weight = torch.rand(classes, dtype=torch.float64) if rng.random() < 0.5 else None
            args = (target,)
            kwargs = dict(weight=weight, ignore_index=ignore_index, reduction=reduction)
        else:
            shape = rng.choice([(), (4,), (2, 3), (2, 1, 3)])
            if op == "binary_cross_entropy":
                x = torch.rand(shape, dtype=torch.float64)
                if x.numel() and rng.random() < 0.3:
                    x.view(-1)[0] = rng.choice([0.0, 1.0, 1e-12, 1 - 1e-12])
            else:
                x = torch.randn(shape, dtype=torch.float64) * rng.choice([1.0, 30.0])
            target = torch.rand(shape, dtype=torch.float64)
            if target.numel() and rng.random() < 0.5:
                target = (target > 0.5).to(torch.float64)
            weight_shape = _broadcastable_shape(rng, shape)
            weight = torch.rand(weight_shape, dtype=torch.float64) if rng.random() < 0.5 else None
            args = (target,)
            kwargs = dict(weight=weight, reduction=reduction)
            if op == "binary_cross_entropy_with_logits" and rng.random() < 0.5:
                kwargs["pos_weight"] = torch.rand(_broadcastable_shape(rng, shape),
                                                  dtype=torch.float64) * 3  # fmt: skip
        expected = _outcome(getattr(F, op), x, *args, **kwargs)
        got = _outcome(getattr(crossent, op), x, *args, impl=impl, **kwargs)
        context = (op, tuple(x.shape), kwargs)
        if isinstance(expected, type):
            assert got is expected, context
            continue
        assert not isinstance(got, type), (got, context)
        assert _same(got[0], expected[0], 1e-12, elementwise=op != "nll_loss"), context
        assert _same(got[1], expected[1], 1e-11), context

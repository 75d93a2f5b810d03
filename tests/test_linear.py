"""crossent.linear_cross_entropy against torch: values, gradients, memory plan, determinism.

Tolerances: float64 results must agree with torch's float64 to 1e-12 relative (both are exact to
a few ulps). Low-precision results are compared with torch eager's error against float64 (see
``LOW_PRECISION_SLACK``).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from crossent import _torch_native, linear
from crossent.backends import linear_blocks
from crossent.linear import (
    LinearCrossEntropyLoss,
    linear_cross_entropy_with_extras,
    plan_blocks,
)


def linear_cross_entropy(*args, **kwargs):
    """The blocked path, which these tests are about: ``impl="auto"`` hands problems this small
    to torch's own kernels (see test_small_problems_go_to_torchs_kernels)."""
    kwargs.setdefault("impl", "fused")
    return linear.linear_cross_entropy(*args, **kwargs)


F64_TOL = 1e-12
#: Low-precision errors must stay within this factor of torch eager's (same dtype, same data).
#: Both are dominated by rounding the logits and dZ to the input dtype, which both do once per
#: element; the individual rounding errors differ, so the maxima differ by a little either way.
LOW_PRECISION_SLACK = 1.5


def rel_err(value: torch.Tensor, reference: torch.Tensor) -> float:
    value, reference = value.detach().double(), reference.detach().double()
    assert value.shape == reference.shape
    if reference.numel() == 0:
        return 0.0
    same = (value == reference) | (value.isnan() & reference.isnan())
    diff = torch.where(same, 0.0, (value - reference).abs())
    scale = reference.abs().max().item()
    return diff.max().item() / scale if scale > 0 else diff.max().item()


def make_problem(
    n, d, v, *, dtype=torch.float64, bias=False, probs=False, ignore=0.0, class_weight=False, seed=0
):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    w = torch.randn(v, d, generator=g, dtype=torch.float64) / max(1, d) ** 0.5 * 2
    b = torch.randn(v, generator=g, dtype=torch.float64) if bias else None
    if probs:
        target = torch.rand(n, v, generator=g, dtype=torch.float64).to(dtype)
    else:
        target = torch.randint(0, v, (n,), generator=g)
        target[torch.rand(n, generator=g) < ignore] = -100
    cw = torch.rand(v, generator=g, dtype=torch.float64).to(dtype) + 0.1 if class_weight else None
    return x.to(dtype), w.to(dtype), (None if b is None else b.to(dtype)), target, cw


def budget_for(kind, n, d, v, dtype=torch.float64, **call):
    """A budget that forces several full-vocabulary row blocks ('rows') or vocabulary blocks.

    ``call``: the :func:`linear_blocks.workload` keywords of the call (probabilities, softcap,
    smoothing, gradients)."""
    work = linear_blocks.workload(v, d, dtype, **call)
    if kind is None:
        return None
    if kind == "rows":
        rows = linear_blocks.MIN_ROWS
        return linear_blocks.working_bytes(
            work, rows, v, min(rows, linear_blocks.default_kernel_rows(work)), False
        )
    rows = min(n, linear_blocks.MIN_ROWS)
    vocab = max(linear_blocks.VOCAB_ALIGN, v // 5 // 16 * 16)
    return linear_blocks.working_bytes(work, rows, vocab, 0, True)


def run_both(x, w, b, target, cw, *, reduction, budget, seed=1, **kw):
    """(loss, grads) of crossent and of torch on the materialised logits, float64 upstream."""
    results = []
    for fn in ("crossent", "torch"):
        xx = x.detach().clone().requires_grad_()
        ww = w.detach().clone().requires_grad_()
        bb = None if b is None else b.detach().clone().requires_grad_()
        if fn == "crossent":
            loss = linear_cross_entropy(
                xx,
                ww,
                target,
                linear_bias=bb,
                weight=cw,
                reduction=reduction,
                memory_budget=budget,
                **kw,
            )
        else:
            logits = xx @ ww.T + (0 if bb is None else bb)
            loss = F.cross_entropy(logits, target, cw, reduction=reduction, **kw)
        upstream = (
            torch.rand(
                loss.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
            ).to(loss.dtype)
            + 0.5
        )
        params = [p for p in (xx, ww, bb) if p is not None]
        grads = torch.autograd.grad(loss, params, upstream)
        results.append((loss.detach(), grads))
    return results


# ------------------------------------------------------------------------------------------------
# differential table (float64)

SHAPES = [(1, 16, 3), (7, 1, 1000), (33, 16, 4097), (203, 16, 1000)]
OPTIONS = [  # (bias, class_weight, ignore fraction, label_smoothing, probability targets)
    (False, False, 0.0, 0.0, False),
    (True, True, 0.3, 0.0, False),
    (False, True, 0.3, 0.2, False),
    (True, False, 1.0, 0.1, False),  # all ignored
    (False, False, 0.0, 0.0, True),
    (True, True, 0.0, 0.3, True),
]
BUDGETS = [None, "rows", "vocab"]


def _table():
    """Every shape x option with every reduction at the default budget; with forced row or
    vocabulary blocks, one reduction per option (cycling), to keep the file fast."""
    reductions = ("mean", "sum", "none")
    for shape, (k, opts), budget in itertools.product(SHAPES, enumerate(OPTIONS), BUDGETS):
        n, _, v = shape
        if budget == "rows" and n <= linear_blocks.MIN_ROWS:
            continue  # fewer rows than one block: "rows" would mean vocabulary blocks
        if budget == "vocab" and v <= linear_blocks.VOCAB_ALIGN:
            continue
        for reduction in reductions if budget is None else (reductions[k % 3],):
            yield pytest.param(
                shape, opts, budget, reduction, id=f"{shape}-{opts}-{budget}-{reduction}"
            )


@pytest.mark.parametrize(("shape", "opts", "budget_kind", "reduction"), list(_table()))
def test_matches_torch_float64(shape, opts, budget_kind, reduction):
    n, d, v = shape
    bias, class_weight, ignore, eps, probs = opts
    x, w, b, target, cw = make_problem(
        n, d, v, bias=bias, probs=probs, ignore=ignore, class_weight=class_weight, seed=n + v
    )
    call = {"probabilities": probs, "smoothing": eps > 0, "gradients": reduction != "none"}
    budget = budget_for(budget_kind, n, d, v, **call)
    if budget_kind is not None:
        plan = plan_blocks(n, d, v, torch.float64, budget, probabilities=probs,
                           label_smoothing=eps, gradients=reduction != "none")  # fmt: skip
        assert plan.vocab_blocked == (budget_kind == "vocab")
        assert plan.rows < n or plan.vocab < v
    ours, ref = run_both(
        x, w, b, target, cw, reduction=reduction, budget=budget, label_smoothing=eps
    )
    assert rel_err(ours[0], ref[0]) <= F64_TOL
    for got, want in zip(ours[1], ref[1], strict=True):
        assert rel_err(got, want) <= F64_TOL


def test_all_ignored_and_empty_match_torch():
    x, w, _, target, _ = make_problem(5, 4, 9, ignore=1.0)
    for reduction in ("mean", "sum", "none"):
        ours, ref = run_both(x, w, None, target, None, reduction=reduction, budget=None)
        assert rel_err(ours[0], ref[0]) == 0.0  # nan/0/zeros, exactly
        assert all(torch.equal(g, torch.zeros_like(g)) for g in ours[1])
    empty = torch.empty(0, 4, dtype=torch.float64)
    for reduction, expected in (("mean", float("nan")), ("sum", 0.0)):
        loss = linear_cross_entropy(empty, w, torch.empty(0, dtype=torch.long), reduction=reduction)
        ref = F.cross_entropy(empty @ w.T, torch.empty(0, dtype=torch.long), reduction=reduction)
        assert rel_err(loss, ref) == 0.0 and (loss.isnan().item() == (expected != expected))
    assert linear_cross_entropy(
        empty, w, torch.empty(0, dtype=torch.long), reduction="none"
    ).shape == (0,)


# ------------------------------------------------------------------------------------------------
# torch 2.13's F.linear_cross_entropy: shapes it supports (unbatched, K-dimensional), options


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("budget", [None, 1500])
def test_matches_torch_linear_cross_entropy_kdim(reduction, budget):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(5, 8, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(11, 3, 2, 8, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(11, 3, 2, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 11, (5, 3, 2), generator=g)
    y[0, 0, 0] = y[3, 2, 1] = -100
    cw = torch.rand(11, generator=g, dtype=torch.float64)
    q = torch.rand(5, 11, 3, 2, generator=g, dtype=torch.float64)
    for target, kw in ((y, {"label_smoothing": 0.1, "weight": cw}), (q, {"weight": cw})):
        ours = linear_cross_entropy(
            x, w, target, linear_bias=b, reduction=reduction, memory_budget=budget, **kw
        )
        ref = F.linear_cross_entropy(x, w, target, linear_bias=b, reduction=reduction, **kw)
        up = torch.rand(ref.shape, generator=g, dtype=torch.float64)
        assert rel_err(ours, ref) <= F64_TOL
        for got, want in zip(
            torch.autograd.grad(ours, (x, w, b), up),
            torch.autograd.grad(ref, (x, w, b), up),
            strict=True,
        ):
            assert rel_err(got, want) <= F64_TOL


@pytest.mark.parametrize("impl", ["fused", "reference", "auto"])
def test_kdim_mean_with_no_kept_position_has_torchs_zero_gradients(impl):
    # all targets ignored, or no rows: loss NaN and gradients 0 in torch; the blocked K-dim
    # path gave NaN dW and db (its per-position sums' zero gradients times d(sum / 0) = inf)
    g = torch.Generator().manual_seed(5)
    w = torch.randn(7, 2, 4, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(7, 2, generator=g, dtype=torch.float64, requires_grad=True)
    zero_weight = torch.tensor([0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    cases = [  # (rows, target, class weights): the last has kept rows of weight 0 (torch: NaN)
        (torch.randn(3, 4, generator=g, dtype=torch.float64), torch.full((3, 2), -100), None),
        (torch.randn(0, 4, dtype=torch.float64), torch.empty(0, 2, dtype=torch.long), None),
        (torch.randn(0, 4, dtype=torch.float64), torch.empty(0, 7, 2, dtype=torch.float64), None),
        (torch.randn(2, 4, generator=g, dtype=torch.float64), torch.tensor([[0, 1], [1, 0]]),
         zero_weight),
    ]  # fmt: skip
    for x, target, weight in cases:
        x.requires_grad_()
        ours = linear_cross_entropy(x, w, target, linear_bias=b, weight=weight, impl=impl)
        ref = F.linear_cross_entropy(x, w, target, linear_bias=b, weight=weight)
        assert ours.isnan() and ref.isnan()
        for got, want in zip(torch.autograd.grad(ours, (x, w, b)),
                             torch.autograd.grad(ref, (x, w, b)), strict=True):  # fmt: skip
            torch.testing.assert_close(got, want, equal_nan=True, rtol=0, atol=0)
    # an infinite mean stays infinite (a zero-gradient term must not add inf - inf)
    x, t = torch.tensor([[1e20], [1.0]]), torch.tensor([[0], [1]])
    w1 = torch.tensor([[[-1e20]], [[1.0]]])
    assert linear_cross_entropy(x, w1, t, impl=impl) == F.linear_cross_entropy(x, w1, t) == math.inf


@pytest.mark.parametrize("impl", ["auto", "reference"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_matches_torch_linear_cross_entropy_unbatched(reduction, impl):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(8, generator=g, dtype=torch.float64)
    w = torch.randn(13, 8, generator=g, dtype=torch.float64)
    for target in (
        torch.tensor(3),
        torch.tensor([5]),
        torch.rand(13, generator=g, dtype=torch.float64),
    ):
        ours = linear_cross_entropy_with_extras(x, w, target, reduction=reduction, impl=impl,
                                                z_loss=1e-3)  # fmt: skip
        ref = F.linear_cross_entropy(x, w, target, reduction=reduction)
        lse = torch.logsumexp(w @ x, 0)
        assert ours.loss.shape == ref.shape and ours.lse.shape == ours.z_loss.shape == ()
        assert rel_err(ours.loss, ref + 1e-3 * lse**2) <= F64_TOL
        assert rel_err(ours.lse, lse) <= F64_TOL


def test_matches_torch_chunked_float32():
    x, w, b, target, _ = make_problem(96, 32, 1000, dtype=torch.float32, bias=True, ignore=0.2)
    opts = torch.nn.LinearCrossEntropyOptions()
    for reduction in ("mean", "sum", "none"):
        ours = linear_cross_entropy(x, w, target, linear_bias=b, reduction=reduction)
        ref = F.linear_cross_entropy(x, w, target, linear_bias=b, reduction=reduction, options=opts)
        assert rel_err(ours, ref) <= 1e-5


# ------------------------------------------------------------------------------------------------
# low precision


def _errors(fn, x64, w64, target, dtype):
    x = x64.detach().to(dtype).requires_grad_()
    w = w64.detach().to(dtype).requires_grad_()
    loss = fn(x, w)
    loss.backward()
    return loss.detach(), x.grad, w.grad


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("budget_kind", [None, "vocab"])
def test_low_precision_error_no_worse_than_eager(dtype, budget_kind):
    n, d, v = 257, 64, 4097
    x, w, _, target, _ = make_problem(n, d, v, ignore=0.1, seed=5)
    budget = budget_for(budget_kind, n, d, v, dtype)
    ref = _errors(lambda a, c: F.cross_entropy(a @ c.T, target), x, w, target, torch.float64)
    eager = _errors(lambda a, c: F.cross_entropy(a @ c.T, target), x, w, target, dtype)
    ours = _errors(
        lambda a, c: linear_cross_entropy(a, c, target, memory_budget=budget), x, w, target, dtype
    )
    for got, base, want in zip(ours, eager, ref, strict=True):
        assert got.dtype == dtype
        assert rel_err(got, want) <= LOW_PRECISION_SLACK * rel_err(base, want)


def test_low_precision_weight_gradient_accumulates_in_float32():
    # 64 row blocks of identical rows: a bfloat16 running sum would drift by ~2^-9 per block.
    x = torch.ones(4096, 8, dtype=torch.bfloat16, requires_grad=True)
    w = torch.zeros(4, 8, dtype=torch.bfloat16, requires_grad=True)
    target = torch.zeros(4096, dtype=torch.long)
    linear_cross_entropy(x, w, target, reduction="sum", memory_budget=40_000).backward()
    expected = torch.tensor([-0.75 * 4096, 0.25 * 4096, 0.25 * 4096, 0.25 * 4096])
    assert torch.equal(w.grad.float()[:, 0], expected)


# ------------------------------------------------------------------------------------------------
# extras: z-loss, soft-capping, lse


def _formula(x, w, b, target, cw, reduction, eps, zeta, cap):
    """The documented formula with float64 autograd (probability or class-index targets)."""
    z = x @ w.T + (0 if b is None else b)
    z = cap * torch.tanh(z / cap)
    lse = torch.logsumexp(z, 1)
    v = z.shape[1]
    wv = torch.ones(v, dtype=z.dtype) if cw is None else cw
    nl = lse[:, None] - z
    if target.dtype.is_floating_point:
        q = (1 - eps) * target + eps / v
        rows = (wv * q * nl).sum(1) + zeta * lse**2
        kept = torch.ones_like(lse, dtype=torch.bool)
        denominator = torch.tensor(float(len(rows)), dtype=z.dtype)
    else:
        kept = target != -100
        safe = torch.where(kept, target, 0)
        rows = (1 - eps) * wv[safe] * nl.gather(1, safe[:, None]).squeeze(1)
        rows = rows + eps / v * (wv * nl).sum(1) + zeta * lse**2
        rows = torch.where(kept, rows, 0.0)
        denominator = torch.where(kept, wv[safe], 0.0).sum()
    lse = torch.where(kept, lse, 0.0)
    z_rows = torch.where(kept, zeta * lse**2, 0.0)
    if reduction == "none":
        return rows, z_rows, lse
    if reduction == "sum":
        return rows.sum(), z_rows.sum(), lse
    return rows.sum() / denominator, z_rows.sum() / denominator, lse


@pytest.mark.parametrize("probs", [False, True])
@pytest.mark.parametrize("budget_kind", [None, "vocab"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_z_loss_and_softcap_match_formula(probs, budget_kind, reduction):
    n, d, v = 33, 16, 1000
    x, w, b, target, cw = make_problem(
        n, d, v, bias=True, probs=probs, ignore=0.2, class_weight=True, seed=11
    )
    kw = {"label_smoothing": 0.1, "z_loss": 1e-3, "softcap": 4.0}
    budget = budget_for(budget_kind, n, d, v, probabilities=probs, softcap=True, smoothing=True)
    xs = [t.clone().requires_grad_() for t in (x, w, b)]
    ys = [t.clone().requires_grad_() for t in (x, w, b)]
    out = linear_cross_entropy_with_extras(
        *xs[:2],
        target,
        linear_bias=xs[2],
        weight=cw,
        reduction=reduction,
        memory_budget=budget,
        **kw,
    )
    ref = _formula(ys[0], ys[1], ys[2], target, cw, reduction, 0.1, 1e-3, 4.0)
    up = torch.rand(ref[0].shape, dtype=torch.float64) + 0.5
    for got, want in zip(out, ref, strict=True):
        assert rel_err(got, want) <= F64_TOL
    assert not out.z_loss.requires_grad and not out.lse.requires_grad
    assert out.lse.dtype == torch.float64
    for got, want in zip(
        torch.autograd.grad(out.loss, xs, up), torch.autograd.grad(ref[0], ys, up), strict=True
    ):
        assert rel_err(got, want) <= F64_TOL


def test_lse_is_float32_for_low_precision_and_zero_for_ignored():
    x, w, _, target, _ = make_problem(9, 8, 50, dtype=torch.bfloat16, ignore=0.3)
    out = linear_cross_entropy_with_extras(x, w, target)
    assert out.lse.dtype == torch.float32 and out.loss.dtype == torch.bfloat16
    assert torch.equal(out.lse[target == -100], torch.zeros(int((target == -100).sum())))


# ------------------------------------------------------------------------------------------------
# memory plan and measured memory


@pytest.mark.parametrize(
    ("n", "d", "v", "dtype", "budget"),
    [
        (2048, 1024, 32768, torch.float32, None),
        (4096, 2048, 128256, torch.float32, 512 * 2**20),
        (4096, 2048, 128256, torch.bfloat16, 64 * 2**20),
        (7, 16, 4097, torch.float64, 20_000),
        (300, 3, 3, torch.float32, 5_000),
        (1, 1, 1, torch.float32, None),
    ],
)
@pytest.mark.parametrize("probs", [False, True])
def test_plan_fits_budget_and_is_deterministic(n, d, v, dtype, budget, probs):
    call = {"probabilities": probs, "softcap": probs, "label_smoothing": 0.1 * probs}
    plan = plan_blocks(n, d, v, dtype, budget, **call)
    again = plan_blocks(n, d, v, dtype, budget, **call)
    assert plan == again
    assert 1 <= plan.rows <= max(n, 1) and 1 <= plan.vocab <= v
    assert plan.working_bytes <= plan.budget
    if budget is not None:
        assert plan.budget == budget
    if not plan.vocab_blocked:
        assert plan.vocab == v
        assert plan.rows >= min(n, linear_blocks.MIN_ROWS) or v <= linear_blocks.VOCAB_ALIGN


def test_big_shape_default_and_512mib_plans_need_no_vocabulary_blocks():
    plan = plan_blocks(4096, 2048, 128256, torch.float32, 512 * 2**20)
    assert not plan.vocab_blocked and plan.rows >= 128
    assert not plan_blocks(2048, 1024, 32768).vocab_blocked


def test_budget_too_small_raises():
    with pytest.raises(ValueError, match="too small"):
        plan_blocks(10, 4096, 50000, torch.float32, 1000)


_PEAK_SCRIPT = textwrap.dedent(
    """
    import gc, json, sys, torch
    from crossent.linear import linear_cross_entropy, plan_blocks
    torch.set_num_threads(1)
    n, d, v = 256, 128, 32768
    torch.manual_seed(0)
    x = torch.randn(n, d, requires_grad=True)
    w = (torch.randn(v, d) / d ** 0.5).requires_grad_()
    def status(field):
        for line in open("/proc/self/status"):
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    results = []
    for budget, ignored in json.loads(sys.argv[1]):
        y = torch.randint(0, v, (n,))
        y[: n * ignored // 100] = -100
        def step():
            x.grad = w.grad = None
            linear_cross_entropy(x, w, y, memory_budget=budget).backward()
        step()
        x.grad = w.grad = None
        gc.collect()
        base = status("VmRSS")
        open("/proc/self/clear_refs", "w").write("5")
        step()
        peak = status("VmHWM") - base
        grads = x.numel() * 4 + w.numel() * 4
        plan = plan_blocks(n, d, v, torch.float32, budget)
        results.append({"budget": budget, "peak": peak, "grads": grads,
                        "plan": plan.working_bytes, "vocab_blocked": plan.vocab_blocked})
    print(json.dumps(results))
    """
)


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux peak RSS")
def test_measured_peak_memory_within_budget():
    """Peak RSS growth of forward+backward <= gradients + budget + 2 MiB, in a fresh process
    (glibc told to return freed blocks, as the benchmark harness does)."""
    configs = [(24 * 2**20, 0), (24 * 2**20, 50), (2 * 2**20, 0)]
    env = dict(
        os.environ,
        MALLOC_MMAP_THRESHOLD_="65536",
        MALLOC_TRIM_THRESHOLD_="0",
        PYTHONPATH=os.pathsep.join(sys.path),
    )
    out = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT, json.dumps(configs)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    results = json.loads(out.stdout.strip().splitlines()[-1])
    assert [r["vocab_blocked"] for r in results] == [False, False, True]
    slack = 2 * 2**20  # allocator rounding, the (N,) row vectors, torch's own bookkeeping
    for r in results:
        assert r["plan"] <= r["budget"]
        assert r["peak"] <= r["grads"] + r["budget"] + slack, r


# ------------------------------------------------------------------------------------------------
# ignored rows cost no GEMM work; determinism; autograd behaviour; compile


def test_ignored_rows_are_not_in_any_gemm():
    n, d, v = 33, 16, 100
    x, w, _, target, _ = make_problem(n, d, v, dtype=torch.float32, ignore=0.6, seed=2)
    kept = int((target != -100).sum())
    assert kept not in (n, d, v)
    x.requires_grad_()
    w.requires_grad_()
    with torch.profiler.profile(record_shapes=True) as prof:
        linear_cross_entropy(x, w, target).backward()
    gemm_dims = [
        {size for shape in e.input_shapes if shape for size in shape}
        for e in prof.events()
        if e.name in ("aten::mm", "aten::addmm", "aten::addmm_")
    ]
    assert len(gemm_dims) == 3  # logits, dX, dW: one row block of the kept rows
    assert all(kept in dims and n not in dims for dims in gemm_dims), (gemm_dims, kept)


@pytest.mark.parametrize("budget_kind", [None, "rows", "vocab"])
def test_bitwise_deterministic(budget_kind):
    n, d, v = 203, 16, 1000
    x, w, b, target, _ = make_problem(n, d, v, dtype=torch.float32, bias=True, ignore=0.3)
    budget = budget_for(budget_kind, n, d, v, torch.float32)
    runs = []
    for _ in range(2):
        xs = [t.clone().requires_grad_() for t in (x, w, b)]
        loss = linear_cross_entropy(
            xs[0], xs[1], target, linear_bias=xs[2], memory_budget=budget, label_smoothing=0.1
        )
        loss.backward()
        runs.append([loss.detach(), *(t.grad for t in xs)])
    for a, c in zip(*runs, strict=True):
        assert torch.equal(a, c)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_retain_graph_second_backward_recomputes(reduction):
    x, w, b, target, _ = make_problem(40, 8, 30, bias=True, ignore=0.2)
    xs = [t.clone().requires_grad_() for t in (x, w, b)]
    loss = linear_cross_entropy(xs[0], xs[1], target, linear_bias=xs[2], reduction=reduction)
    up = torch.full(loss.shape, 0.5, dtype=torch.float64)
    first = torch.autograd.grad(loss, xs, up, retain_graph=True)
    second = torch.autograd.grad(loss, xs, up)
    for a, c in zip(first, second, strict=True):
        assert rel_err(a, c) <= F64_TOL


def test_partial_requires_grad_and_no_grad():
    x, w, b, target, _ = make_problem(20, 8, 30, bias=True)
    wr = w.clone().requires_grad_()
    loss = linear_cross_entropy(x, wr, target, linear_bias=b)
    (gw,) = torch.autograd.grad(loss, (wr,))
    ref = F.cross_entropy(x @ wr.T + b, target)
    assert rel_err(gw, torch.autograd.grad(ref, (wr,))[0]) <= F64_TOL
    with torch.no_grad():
        assert rel_err(linear_cross_entropy(x, wr, target, linear_bias=b), ref) <= F64_TOL


def test_higher_order_gradients_raise():
    x, w, _, target, _ = make_problem(4, 3, 5)
    x.requires_grad_()
    loss = linear_cross_entropy(x, w, target)
    with pytest.raises(RuntimeError, match="higher-order"):
        torch.autograd.grad(loss, x, create_graph=True)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_torch_compile_fullgraph(reduction):
    torch._dynamo.reset()
    x, w, b, target, _ = make_problem(33, 16, 100, dtype=torch.float32, bias=True, ignore=0.2)

    def f(x, w, b):
        out = linear_cross_entropy_with_extras(
            x, w, target, linear_bias=b, reduction=reduction, z_loss=1e-4
        )
        return out.loss.sum() + 0 * out.lse.sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    results = []
    for fn in (compiled, f):
        xs = [t.clone().requires_grad_() for t in (x, w, b)]
        loss = fn(*xs)
        results.append([loss.detach(), *torch.autograd.grad(loss, xs)])
    for a, c in zip(*results, strict=True):
        assert torch.allclose(a, c, rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------------------------------------
# argument handling: impl, errors, module


def test_impl_choices():
    x, w, b, target, _ = make_problem(6, 4, 9, bias=True, ignore=0.3)
    ref = linear_cross_entropy(x, w, target, linear_bias=b, impl="reference")
    assert rel_err(linear_cross_entropy(x, w, target, linear_bias=b, impl="fused"), ref) <= F64_TOL
    with pytest.raises(ValueError, match="'fused'"):
        linear_cross_entropy(x, w, target, impl="nonsense")


def test_probability_target_gradient_needs_reference():
    x, w, _, q, _ = make_problem(6, 4, 9, probs=True)
    q.requires_grad_()
    with pytest.raises(NotImplementedError, match="reference"):
        linear_cross_entropy(x, w, q)
    loss = linear_cross_entropy(x, w, q, impl="reference")
    assert (
        rel_err(
            torch.autograd.grad(loss, q)[0], torch.autograd.grad(F.cross_entropy(x @ w.T, q), q)[0]
        )
        <= F64_TOL
    )


_X, _W, _Y = torch.randn(4, 3), torch.randn(5, 3), torch.tensor([0, 1, 4, 2])
BAD_CALLS = {
    "input 3-D": lambda f: f(_X[None], _W, _Y),
    "input 0-D": lambda f: f(torch.tensor(1.0), _W, _Y),
    "weight 1-D": lambda f: f(_X, _W[0], _Y),
    "in_features": lambda f: f(_X, _W[:, :2], _Y),
    "bias shape": lambda f: f(_X, _W, _Y, linear_bias=torch.zeros(4)),
    "input dtype": lambda f: f(_X.double(), _W, _Y),
    "weight dtype": lambda f: f(_X, _W.double(), _Y),
    "bias dtype": lambda f: f(_X, _W, _Y, linear_bias=torch.zeros(5, dtype=torch.float64)),
    "integer input": lambda f: f(_X.long(), _W.long(), _Y),
    "target int32": lambda f: f(_X, _W, _Y.int()),
    "target float (N,)": lambda f: f(_X, _W, _Y.float()),
    "target length": lambda f: f(_X, _W, _Y[:3]),
    "target 2-D": lambda f: f(_X, _W, _Y[:, None]),
    "target out of range": lambda f: f(_X, _W, _Y + 5),
    "target negative": lambda f: f(_X, _W, _Y - 6),
    "probabilities with ignore_index": lambda f: f(_X, _W, torch.rand(4, 5), ignore_index=-100),
    "integer probabilities": lambda f: f(_X, _W, torch.ones(4, 5, dtype=torch.long)),
    "class weight dtype": lambda f: f(_X, _W, _Y, weight=torch.ones(5, dtype=torch.float64)),
    "class weight size": lambda f: f(_X, _W, _Y, weight=torch.ones(4)),
    "class weight list": lambda f: f(_X, _W, _Y, weight=[1.0] * 5),
    "class weight ndarray": lambda f: f(_X, _W, _Y, weight=np.ones(5, "f4")),
    "target list": lambda f: f(_X, _W, [0, 1, 4, 2]),
    "input list": lambda f: f(_X.tolist(), _W, _Y),
    "linear_weight list": lambda f: f(_X, _W.tolist(), _Y),
    "linear_bias list": lambda f: f(_X, _W, _Y, linear_bias=[0.0] * 5),
    "class weight requires grad": lambda f: f(_X, _W, _Y, weight=torch.ones(5, requires_grad=True)),
    "label smoothing > 1": lambda f: f(_X, _W, _Y, label_smoothing=1.5),
    "reduction": lambda f: f(_X, _W, _Y, reduction="avg"),
    "ignore_index float": lambda f: f(_X, _W, _Y, ignore_index=1.0),
    "K-dim unbatched": lambda f: f(_X[0], torch.randn(5, 2, 3), torch.tensor([0, 1])),
}


@pytest.mark.parametrize("name", list(BAD_CALLS))
def test_errors_match_torch_types(name):
    with pytest.raises(Exception) as torch_error:
        BAD_CALLS[name](F.linear_cross_entropy)
    with pytest.raises(torch_error.type):
        BAD_CALLS[name](linear_cross_entropy)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"z_loss": -1.0}, ValueError),
        ({"z_loss": float("nan")}, ValueError),
        ({"softcap": 0.0}, ValueError),
        ({"memory_budget": 0}, ValueError),
        ({"memory_budget": 1.5}, TypeError),
        ({"memory_budget": 10}, ValueError),  # too small for any block
        ({"label_smoothing": -0.1}, ValueError),  # crossent rejects what torch ignores
    ],
)
def test_extra_argument_errors(kwargs, error):
    with pytest.raises(error):
        linear_cross_entropy(_X, _W, _Y, **kwargs)


def test_uint8_targets_accepted():
    assert torch.equal(
        linear_cross_entropy(_X, _W, _Y.to(torch.uint8)), linear_cross_entropy(_X, _W, _Y)
    )


@pytest.mark.parametrize("impl", ["auto", "fused"])
def test_module_is_a_drop_in_for_torch(impl):
    import inspect

    ours_params = inspect.signature(LinearCrossEntropyLoss).parameters
    for name in inspect.signature(torch.nn.LinearCrossEntropyLoss).parameters:
        assert name == "options" or name in ours_params, name
    torch.manual_seed(0)
    kw = {
        "out_features": (2,),
        "bias": True,
        "dtype": torch.float64,
        "label_smoothing": 0.1,
        "weight": torch.rand(7, dtype=torch.float64),
        "ignore_index": 3,
    }
    theirs = torch.nn.LinearCrossEntropyLoss(5, 7, **kw)
    ours = LinearCrossEntropyLoss(5, 7, **kw, impl=impl)
    ours.load_state_dict(theirs.state_dict())
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    x = torch.randn(4, 5, dtype=torch.float64)
    y = torch.randint(0, 7, (4, 2))
    a, c = ours(x, y), theirs(x, y)
    assert rel_err(a, c) <= F64_TOL
    a.backward()
    c.backward()
    assert rel_err(ours.linear.weight.grad, theirs.linear.weight.grad) <= F64_TOL
    assert rel_err(ours.linear.bias.grad, theirs.linear.bias.grad) <= F64_TOL
    with pytest.raises(RuntimeError):
        LinearCrossEntropyLoss(5, 7, weight=torch.ones(6))
    assert "num_classes=7" in repr(ours)


def test_triton_row_kernel_through_interpreter():
    pytest.importorskip("triton")
    from crossent._dispatch import triton_usable

    x, w, b, target, _ = make_problem(5, 4, 7, dtype=torch.float32, bias=True, ignore=0.3)
    if not triton_usable(x):
        pytest.skip("Triton serves CUDA tensors (or CPU ones under TRITON_INTERPRET=1)")
    ours = linear_cross_entropy(x, w, target, linear_bias=b, impl="triton", reduction="none")
    ref = F.cross_entropy(x @ w.T + b, target, reduction="none")
    assert rel_err(ours, ref) <= 1e-6


def _skip_without_triton(impl: str, x: torch.Tensor) -> None:
    """Skip an ``impl="triton"`` case where Triton cannot serve ``x`` (not installed; CPU
    tensors without TRITON_INTERPRET=1); the other impls always run."""
    if impl == "triton":
        pytest.importorskip("triton")
        from crossent._dispatch import triton_usable

        if not triton_usable(x):
            pytest.skip("Triton serves CUDA tensors (or CPU ones under TRITON_INTERPRET=1)")


@pytest.mark.parametrize("impl", ["fused", "triton"])
def test_strided_probability_targets_on_the_blocked_paths(impl):
    # a K-dim weight's probability target is read position by position (a class stride of
    # out_features), a transposed one with class stride N: the Triton launcher needs packed
    # classes and refused both with a ValueError
    g = torch.Generator().manual_seed(9)
    x = torch.randn(3, 4, generator=g, dtype=torch.float64)
    _skip_without_triton(impl, x)
    w3 = torch.randn(5, 2, 4, generator=g, dtype=torch.float64)
    q3 = torch.softmax(torch.randn(3, 5, 2, generator=g, dtype=torch.float64), 1)
    w = torch.randn(5, 4, generator=g, dtype=torch.float64)
    q = torch.softmax(torch.randn(5, 3, generator=g, dtype=torch.float64), 0).t()
    for weights, target in ((w3, q3), (w, q)):
        ours = linear_cross_entropy(x, weights, target, impl=impl)
        assert rel_err(ours, F.linear_cross_entropy(x, weights, target)) <= F64_TOL


@pytest.mark.parametrize("impl", ["reference", "fused", "triton"])
def test_kdim_out_of_range_target_named_in_its_own_shape(impl):
    # the blocked path checks each output position's (N,) slice: its error named a position in
    # that slice, and the first offender in position order instead of the target's own order
    x, w = torch.randn(4, 3), torch.randn(5, 2, 3, 3)
    _skip_without_triton(impl, x)
    t = torch.randint(0, 5, (4, 2, 3))
    t[0, 1, 2], t[3, 0, 0] = 7, 9
    with pytest.raises(IndexError, match=r"got 7 at position \(0, 1, 2\)") as info:
        linear_cross_entropy(x, w, t, impl=impl)
    assert info.value.__suppress_context__ or info.value.__context__ is None


def test_default_budget_rule():
    assert linear.default_memory_budget(32768) == 384 * 32768 * 4  # 48 MiB
    assert linear.default_memory_budget(1000) == 32 * 2**20
    assert linear.default_memory_budget(10**6) == 256 * 2**20
    assert linear.default_memory_budget(8192, torch.bfloat16) == 32 * 2**20


@pytest.mark.parametrize("blocks", ["several", "one"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_tensor_core_path_through_interpreter(dtype, blocks):
    """float16/bfloat16 with the Triton kernel: the logits block stays in the input dtype, dZ is
    rounded once, dW accumulates in float32 over several row blocks (the CUDA recipe; off CUDA
    the float32-output GEMMs are emulated), or is one GEMM written in the input dtype."""
    pytest.importorskip("triton")
    from crossent._dispatch import triton_usable

    n, d, v = 300, 16, 1000
    x, w, _, target, _ = make_problem(n, d, v, ignore=0.2, seed=7)
    if not triton_usable(x):
        pytest.skip("Triton serves CUDA tensors (or CPU ones under TRITON_INTERPRET=1)")
    work = linear_blocks.workload(v, d, dtype, kernel="triton")
    assert work.tensor_cores
    rows = linear_blocks.MIN_ROWS if blocks == "several" else n
    budget = linear_blocks.working_bytes(work, rows, v, 0, False)
    plan = linear.plan_blocks(n, d, v, dtype, budget, kernel="triton")
    assert not plan.vocab_blocked and (plan.rows < n) == (blocks == "several")
    ref = _errors(lambda a, c: F.cross_entropy(a @ c.T, target), x, w, target, torch.float64)
    eager = _errors(lambda a, c: F.cross_entropy(a @ c.T, target), x, w, target, dtype)
    ours = _errors(
        lambda a, c: linear_cross_entropy(a, c, target, memory_budget=budget, impl="triton"),
        x, w, target, dtype,
    )
    for got, base, want in zip(ours, eager, ref, strict=True):
        assert got.dtype == dtype
        assert rel_err(got, want) <= LOW_PRECISION_SLACK * rel_err(base, want)


# ------------------------------------------------------------------------------------------------
# non-finite values, version checks, dtype promotion (found by review)


@pytest.mark.parametrize("memory_budget", [None, 800])  # 800 bytes: vocabulary blocks of a few
def test_a_positive_infinite_logit_makes_its_row_nan_in_every_plan(memory_budget):
    x, w, b = torch.ones(2, 1), torch.ones(40, 1), torch.zeros(40)
    b[3] = float("inf")
    t = torch.tensor([0, 3])
    expected = F.cross_entropy(F.linear(x, w, b), t, reduction="none")
    out = linear_cross_entropy_with_extras(
        x, w, t, linear_bias=b.requires_grad_(), reduction="none", memory_budget=memory_budget
    )
    torch.testing.assert_close(out.loss, expected, equal_nan=True)
    assert torch.isnan(out.lse).all()  # as the fused paths' lse of such a row
    out.loss.sum().backward()
    assert torch.isnan(b.grad).all()


@pytest.mark.parametrize("upstream", [float("nan"), float("inf")])
def test_an_ignored_rows_input_gradient_stays_zero_under_a_non_finite_upstream(upstream):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([1, -100, 2])
    linear_cross_entropy(x, w, t).backward(torch.tensor(upstream, dtype=torch.float64))
    x2, w2 = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    F.cross_entropy(x2 @ w2.T, t).backward(torch.tensor(upstream, dtype=torch.float64))
    assert torch.equal(x.grad[1], torch.zeros(4, dtype=torch.float64))
    assert torch.equal(x2.grad[1], x.grad[1])
    if upstream != upstream:  # NaN: every kept entry NaN in both (with inf, torch's GEMM of
        # +-inf entries gives NaN where crossent's scaled dX keeps +-inf: not compared)
        torch.testing.assert_close(x.grad, x2.grad, equal_nan=True)


@pytest.mark.parametrize("changed", ["input", "linear_weight"])
def test_an_input_changed_in_place_before_backward_raises_as_in_torch(changed):
    x = torch.randn(4, 3, requires_grad=True)
    w = torch.randn(6, 3, requires_grad=True)
    inputs = {"input": x * 1, "linear_weight": w * 1}
    target = torch.tensor([0, 1, 2, 3])
    loss = linear_cross_entropy(inputs["input"], inputs["linear_weight"], target)
    with torch.no_grad():
        inputs[changed].add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_a_probability_target_wider_than_the_computation_is_refused():
    # float32 blocks cannot give a float64 loss torch's accuracy: explicit, not silently rounded
    x, w = torch.randn(4, 3), torch.randn(5, 3)
    q = torch.softmax(torch.randn(4, 5, dtype=torch.float64), 1)
    with pytest.raises(NotImplementedError, match=r"promotes the loss to torch\.float64"):
        linear_cross_entropy(x, w, q)
    expected = F.cross_entropy(F.linear(x, w), q)
    torch.testing.assert_close(linear_cross_entropy(x, w, q, impl="reference"), expected)
    # bfloat16 input with float32 probabilities: its blocks compute in float32 already
    loss = linear_cross_entropy(x.bfloat16(), w.bfloat16(), q.float())
    assert loss.dtype == torch.float32


def test_plan_blocks_checks_its_arguments_as_linear_cross_entropy_does():
    with pytest.raises(ValueError, match="num_rows must be a non-negative int"):
        plan_blocks(-1, 8, 100)
    for bad in (1e6, True, "100000"):
        with pytest.raises(TypeError, match="memory_budget"):
            plan_blocks(4, 8, 100, memory_budget=bad)
    with pytest.raises(ValueError, match="positive number of bytes"):
        plan_blocks(4, 8, 100, memory_budget=0)
    with pytest.raises(TypeError, match=r"dtype must be a torch\.dtype, got str"):
        plan_blocks(4, 8, 100, "float32")
    with pytest.raises(ValueError, match="floating dtype"):
        plan_blocks(4, 8, 100, torch.int64)


def test_small_problems_go_to_torchs_kernels(monkeypatch):
    # auto, CPU, fewer than 2**20 logits that fit the budget three times: F.cross_entropy(F.linear)
    # after crossent's checks, torch's bits; the extras, a tight budget or more logits: blocked
    x, w, b, target, _ = make_problem(12, 5, 7, dtype=torch.float32, bias=True, ignore=0.3)
    weight = torch.rand(7) + 0.5

    def grads(fn):
        leaves = [t.clone().requires_grad_() for t in (x, w, b)]
        loss = fn(*leaves)
        return (loss.detach(), *torch.autograd.grad(loss.sum(), leaves))

    for kwargs in (dict(), dict(reduction="none", label_smoothing=0.1),
                   dict(reduction="sum", ignore_index=2)):  # fmt: skip
        t = target.clamp(min=0) if "ignore_index" in kwargs else target
        ours = grads(lambda a, c, d, t=t, kw=kwargs: linear.linear_cross_entropy(
            a, c, t, linear_bias=d, weight=weight, **kw))
        theirs = grads(lambda a, c, d, t=t, kw=kwargs: F.cross_entropy(
            F.linear(a, c, d), t, weight, **kw))
        assert all(torch.equal(p, q) for p, q in zip(ours, theirs, strict=True)), kwargs
    with pytest.raises(IndexError, match=r"Target 7 is out of bounds.*position \(1,\)"):
        linear.linear_cross_entropy(x, w, torch.tensor([0, 7] + [1] * 10))

    def routed(**kwargs):
        loss = linear.linear_cross_entropy(x.requires_grad_(), w, target, **kwargs)
        return type(loss.grad_fn).__name__ == "NllLossBackward0"  # torch's own graph

    assert routed() and not routed(impl="fused")
    assert not routed(memory_budget=3 * 12 * 7 * 4 - 1) and routed(memory_budget=3 * 12 * 7 * 4)
    assert linear.linear_cross_entropy_with_extras(x, w, target).lse is not None
    monkeypatch.setattr(_torch_native, "CROSS_ENTROPY_MAX_ELEMENTS", 12 * 7)
    assert not routed()


@pytest.mark.parametrize("form", ["k-dim", "unbatched", "probabilities", "unbatched-probs"])
def test_small_problems_on_torchs_kernels_in_every_form(form):
    gen = torch.Generator().manual_seed(4)
    d, v = 3, 5
    x = torch.randn(*(() if form.startswith("unbatched") else (6,)), d, generator=gen,
                    dtype=torch.float64)  # fmt: skip
    w = torch.randn(v, *((2,) if form == "k-dim" else ()), d, generator=gen, dtype=torch.float64)
    b = torch.randn(w.shape[:-1], generator=gen, dtype=torch.float64)
    logits_shape = (*x.shape[:-1], *w.shape[:-1])
    if form == "k-dim":
        target = torch.randint(0, v, (6, 2), generator=gen)
    elif form == "unbatched":
        target = torch.tensor(3)
    else:
        target = torch.softmax(torch.randn(logits_shape, generator=gen, dtype=torch.float64), -1
                               if form == "unbatched-probs" else 1).requires_grad_()  # fmt: skip

    def grads(fn):
        leaves = [t.clone().requires_grad_() for t in (x, w, b)]
        loss = fn(*leaves)
        wanted = leaves + ([target] if target.requires_grad else [])
        return (loss.detach(), *torch.autograd.grad(loss, wanted))

    ours = grads(lambda a, c, e: linear.linear_cross_entropy(a, c, target, linear_bias=e))
    theirs = grads(lambda a, c, e: F.linear_cross_entropy(a, c, target, linear_bias=e))
    assert all(torch.equal(p, q) for p, q in zip(ours, theirs, strict=True)), form


def test_small_route_keeps_the_blocked_paths_errors_and_no_grad_rules():
    x, w = torch.randn(4, 3), torch.randn(5, 3)
    t = torch.tensor([0, 1, 4, 2])
    for impl in ("auto", "fused"):  # a budget too small for the blocked path: on both routes
        with pytest.raises(ValueError, match="memory_budget"):
            linear.linear_cross_entropy(x, w, t, memory_budget=240, impl=impl)
    weight = torch.nn.Parameter(torch.rand(5) + 0.5)  # (in an evaluation loop)
    with torch.no_grad():
        expected = F.linear_cross_entropy(x, w, t, weight=weight)
        for impl in ("auto", "fused"):
            torch.testing.assert_close(
                linear.linear_cross_entropy(x, w, t, weight=weight, impl=impl), expected)
    with pytest.raises(RuntimeError, match="not differentiable with respect to argument 'weight'"):
        linear.linear_cross_entropy(x, w, t, weight=weight)  # autograd records: refused, as torch


@pytest.mark.parametrize("impl", ["auto", "fused", "reference"])
def test_target_check_device_on_the_cpu_raises_as_host(impl):
    """linear_cross_entropy's target_check: 'device' changes only CUDA calls, so on the CPU an
    out-of-range target raises the same IndexError in both modes, through the custom ops too,
    and valid targets give the same bits; an unknown mode is a ValueError."""
    from crossent import _fused_op

    gen = torch.Generator().manual_seed(5)
    x = torch.randn(6, 4, generator=gen, dtype=torch.float64)
    w = torch.randn(9, 4, generator=gen, dtype=torch.float64)
    target = torch.tensor([0, 8, -100, 3, 2, 1])
    bad = torch.tensor([0, 8, -100, 9, 2, 1])
    losses = []
    for mode in ("host", "device"):
        losses.append(linear.linear_cross_entropy(x, w, target, impl=impl, target_check=mode))
        with pytest.raises(IndexError, match=r"Target 9 is out of bounds.*position \(3,\)"):
            linear.linear_cross_entropy(x, w, bad, impl=impl, target_check=mode)
    assert torch.equal(losses[0], losses[1])
    with pytest.raises(ValueError, match="target_check must be one of"):
        linear.linear_cross_entropy(x, w, target, impl=impl, target_check="soon")
    if impl == "fused":  # through the custom op's schema (the route torch.compile takes)
        out = linear.linear_cross_entropy_with_extras(x, w, target, impl=impl,
                                                      target_check="device")  # fmt: skip
        assert torch.equal(out.loss, losses[0])
        assert _fused_op.asserts_on_device(target, "device") is False  # (a CPU tensor)


def test_module_takes_target_check():
    """LinearCrossEntropyLoss(target_check=...) reaches the functional call (on the CPU both
    modes raise the IndexError) and shows in its repr."""
    module = LinearCrossEntropyLoss(4, 6, impl="fused", target_check="device")
    assert "target_check=device" in repr(module)
    x = torch.randn(3, 4)
    module(x, torch.tensor([0, 5, 1]))
    with pytest.raises(IndexError, match="Target 6 is out of bounds"):
        module(x, torch.tensor([0, 6, 1]))
    with pytest.raises(ValueError, match="target_check must be one of"):
        LinearCrossEntropyLoss(4, 6, target_check="eventually")(x, torch.tensor([0, 5, 1]))


def test_auto_hands_small_two_dimensional_logits_to_torch_on_cpu_and_cuda_only():
    """impl='auto' computes F.cross_entropy(F.linear(...)) below a logits limit per device:
    2**20 on the CPU, CUDA_TORCH_MAX_LOGITS on CUDA for 2-D logits only (torch's K-dim CUDA
    kernel sums with atomics), never elsewhere."""
    from crossent import _torch_native
    from crossent.linear import CUDA_TORCH_MAX_LOGITS, _torch_logits_limit

    assert _torch_logits_limit("cpu", ()) == _torch_native.CROSS_ENTROPY_MAX_ELEMENTS
    assert _torch_logits_limit("cpu", (3,)) == _torch_native.CROSS_ENTROPY_MAX_ELEMENTS
    assert _torch_logits_limit("cuda", ()) == CUDA_TORCH_MAX_LOGITS
    assert _torch_logits_limit("cuda", (3,)) is None
    assert _torch_logits_limit("meta", ()) is None
    assert _torch_logits_limit("mps", ()) is None


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize(
    "case",
    [
        dict(dtype=torch.float32),
        dict(dtype=torch.bfloat16, weights=True, label_smoothing=0.1, z_loss=1e-3),
        dict(dtype=torch.float64, probabilities=True, softcap=4.0),
    ],
    ids=["index", "weights-smoothing-zloss-bf16", "probabilities-softcap"],
)
def test_linear_eager_route_equals_the_custom_op_route(monkeypatch, case, reduction):
    """Eager calls skip the custom ops' dispatch; both routes run the same code and agree
    bitwise: loss, z-loss, lse and the gradients of input, weight and bias, under an upstream
    gradient that is not 1, and a second backward through the same graph (recomputed)."""
    from crossent import _fused_op

    case = dict(case)
    dtype, probabilities, weights = (case.pop("dtype"), case.pop("probabilities", False),
                                     case.pop("weights", False))  # fmt: skip
    gen = torch.Generator().manual_seed(5)
    n, d, c = 13, 8, 37
    x = torch.randn(n, d, generator=gen).to(dtype)
    w = torch.randn(c, d, generator=gen).to(dtype)
    b = torch.randn(c, generator=gen).to(dtype)
    if probabilities:
        target = torch.rand(n, c, generator=gen, dtype=torch.float64).softmax(1).to(dtype)
    else:
        target = torch.randint(0, c, (n,), generator=gen)
        target[::4] = -100
    class_weight = (torch.rand(c, generator=gen) + 0.5).to(dtype) if weights else None
    upstream = 2.5 * torch.ones(n if reduction == "none" else (), dtype=dtype)

    def run():
        leaves = [t.detach().clone().requires_grad_() for t in (x, w, b)]
        out = linear_cross_entropy_with_extras(
            leaves[0], leaves[1], target, linear_bias=leaves[2], weight=class_weight,
            reduction=reduction, impl="fused", memory_budget=2**16, **case,
        )  # fmt: skip
        out.loss.backward(upstream, retain_graph=True)
        first = [leaf.grad.clone() for leaf in leaves]
        for leaf in leaves:
            leaf.grad = None
        out.loss.backward(upstream)  # the saved gradients are consumed: recomputed
        return [out.loss.detach(), out.z_loss, out.lse, *first, *(t.grad for t in leaves)]

    taken = []
    forward = linear._EagerLinearCrossEntropy.forward
    monkeypatch.setattr(linear._EagerLinearCrossEntropy, "forward",
                        staticmethod(lambda ctx, *a: taken.append(1) or forward(ctx, *a)))
    assert _fused_op._runs_eagerly(x, w, target)
    eager = run()
    assert taken, "the eager route did not run"
    taken.clear()
    monkeypatch.setattr(_fused_op, "_runs_eagerly", lambda *tensors: False)
    through_ops = run()
    assert not taken, "the custom ops' route ran the eager route"
    for a, b_ in zip(eager, through_ops, strict=True):
        assert torch.equal(a, b_)


def test_forward_mode_ad_is_refused_by_the_blocked_paths_and_served_by_the_reference(
    monkeypatch,
):
    """A dual tensor (forward-mode AD): the blocked paths have no forward derivative, so they
    raise NotImplementedError naming impl='reference' (through the custom ops they returned no
    tangent, a silent wrong derivative); the reference gives torch's tangent."""
    import torch.autograd.forward_ad as fwAD

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 4, dtype=torch.float64, generator=gen)
    w = torch.randn(9, 4, dtype=torch.float64, generator=gen)
    t = torch.randint(0, 9, (6,), generator=gen)
    v = torch.randn(6, 4, dtype=torch.float64, generator=gen)
    with fwAD.dual_level():
        xd = fwAD.make_dual(x, v)
        expected = fwAD.unpack_dual(F.cross_entropy(F.linear(xd, w), t)).tangent
        got = fwAD.unpack_dual(linear_cross_entropy(xd, w, t, impl="reference")).tangent
        torch.testing.assert_close(got, expected)
        # (auto: small problems are torch's expression, which has the tangent; above the limit
        # the blocked path refuses)
        small = linear_cross_entropy(xd, w, t, impl="auto")
        torch.testing.assert_close(fwAD.unpack_dual(small).tangent, expected)
        monkeypatch.setattr(_torch_native, "CROSS_ENTROPY_MAX_ELEMENTS", 1)
        for impl in ("fused", "auto"):
            with pytest.raises(NotImplementedError, match=r"forward-mode AD.*impl='reference'"):
                linear_cross_entropy(xd, w, t, impl=impl)


def test_parameters_take_the_linear_eager_route(monkeypatch):
    """nn.Parameter weights (the usual lm_head.weight) run the eager route, as plain tensors do:
    the route is chosen per call, and a Parameter is a tensor that overrides nothing."""
    from crossent import _fused_op

    taken = []
    forward = linear._EagerLinearCrossEntropy.forward

    def spy(ctx, *inputs):
        taken.append(True)
        return forward(ctx, *inputs)

    monkeypatch.setattr(linear._EagerLinearCrossEntropy, "forward", staticmethod(spy))
    head = torch.nn.Linear(8, 37)
    x = torch.randn(5, 8, requires_grad=True)
    target = torch.randint(0, 37, (5,))
    assert _fused_op._runs_eagerly(head.weight, head.bias, x, target)
    loss = linear_cross_entropy(x, head.weight, target, linear_bias=head.bias, impl="fused")
    loss.backward()
    assert taken == [True]
    expected = F.cross_entropy(F.linear(x, head.weight, head.bias), target)
    torch.testing.assert_close(loss, expected)


def test_blocked_path_counts_targets_before_the_full_range_check(monkeypatch):
    """The blocked paths check class indices as cross_entropy's torch route does: the Triton
    count first (one launch and one read on CUDA; it declines elsewhere), the full check, which
    names the offender, only when the count does not clear the targets."""
    import crossent.functional as functional
    from crossent import _validation

    counted, full, count_clears = [], [], [False]
    full_check = _validation.check_target_range
    monkeypatch.setattr(functional, "_counted_in_range",
                        lambda target, c, ignore: counted.append(c) or count_clears[0])  # fmt: skip
    monkeypatch.setattr(_validation, "check_target_range",
                        lambda *a: full.append(1) or full_check(*a))  # fmt: skip
    x, w = torch.randn(5, 4), torch.randn(7, 4)
    for clears, bad, full_runs in ((True, False, 0), (False, False, 1), (False, True, 1)):
        count_clears[0] = clears
        counted.clear(), full.clear()
        target = torch.tensor([0, 1, 7 if bad else 2, 3, -100])
        if bad:
            with pytest.raises(IndexError, match="position"):
                linear_cross_entropy(x, w, target, impl="fused")
        else:
            linear_cross_entropy(x, w, target, impl="fused")
        assert counted == [7] and len(full) == full_runs

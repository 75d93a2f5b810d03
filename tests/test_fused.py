"""The fused torch path (crossent._fused_op + crossent.backends.cpu) against torch.

Tolerances. float64 must equal torch to 1e-12 relative (loss and gradient). For float32, float16
and bfloat16 the error against a float64 reference must not exceed torch's own error in that
dtype by more than a stated slack: ``SLACK_ULPS`` units in the last place of the dtype at the
scale of the compared values (the fused path rounds its float32 result once; torch rounds
differently, so on a single element either may be the closer one).
"""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from crossent import _fused_op  # noqa: E402
from crossent._fused_op import FusedUnsupported, fused_cross_entropy  # noqa: E402
from crossent.backends import cpu, rows  # noqa: E402
from crossent.backends.rows import RowOptions  # noqa: E402

SLACK_ULPS = 2.0
LOW = (torch.float32, torch.bfloat16, torch.float16)


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    """Blocks of a few rows, so every case runs several blocks and a remainder block."""
    monkeypatch.setattr(cpu, "BLOCK_BYTES", 3 * 4 * 1000)


# ------------------------------------------------------------------------------------------------
# helpers


def make_case(m, c, dtype, *, soft=False, weight=False, ignored=0, ignore_index=-100, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(m, c, generator=gen, dtype=torch.float64) * 2).to(dtype)
    if soft:
        target = torch.softmax(torch.randn(m, c, generator=gen, dtype=torch.float64), 1)
        target = target.to(dtype)
    else:
        target = torch.randint(0, c, (m,), generator=gen)
        if ignored:
            target[torch.randperm(m, generator=gen)[:ignored]] = ignore_index
    w = (torch.rand(c, generator=gen, dtype=torch.float64) + 0.1).to(dtype) if weight else None
    return x, target, w


def fused(x, target, weight, reduction="mean", upstream=None, **options):
    inplace = options.pop("inplace", False)
    leaf = x.detach().clone().requires_grad_()
    logits = leaf * 1 if inplace else leaf
    loss, z, lse = fused_cross_entropy(
        logits, target, weight, RowOptions(**options), reduction, inplace_backward=inplace
    )
    loss.backward(upstream if upstream is not None else torch.ones_like(loss))
    return loss.detach(), leaf.grad, z, lse


def torch_ce(x, target, weight, reduction="mean", upstream=None, **options):
    leaf = x.detach().clone().requires_grad_()
    loss = F.cross_entropy(leaf, target, weight, reduction=reduction, **options)
    loss.backward(upstream if upstream is not None else torch.ones_like(loss))
    return loss.detach(), leaf.grad


def ulp(dtype, scale):
    return torch.finfo(dtype).eps * max(scale, torch.finfo(dtype).tiny)


def max_err(value, reference):
    diff = (value.double() - reference.double()).abs()
    both_nan = value.isnan() & reference.isnan()
    diff = torch.where(both_nan, torch.zeros_like(diff), diff)
    return diff.max().item() if diff.numel() else 0.0


def assert_close_to_torch(x, target, weight, reduction, upstream=None, **options):
    """float64: equal to 1e-12; lower precision: no worse than torch (+ slack) vs float64."""
    ours_loss, ours_grad, _, _ = fused(x, target, weight, reduction, upstream, **options)
    ours_grad = ours_grad
    if x.dtype == torch.float64:
        ref_loss, ref_grad = torch_ce(x, target, weight, reduction, upstream, **options)
        torch.testing.assert_close(ours_loss, ref_loss, rtol=1e-12, atol=1e-12, equal_nan=True)
        torch.testing.assert_close(ours_grad, ref_grad, rtol=1e-12, atol=1e-15, equal_nan=True)
        return
    t_loss, t_grad = torch_ce(x, target, weight, reduction, upstream, **options)
    x64 = x.double()
    t64 = target.double() if target.is_floating_point() else target
    w64 = None if weight is None else weight.double()
    up64 = None if upstream is None else upstream.double()
    ref_loss, ref_grad = torch_ce(x64, t64, w64, reduction, up64, **options)
    assert ours_loss.dtype == t_loss.dtype and ours_grad.dtype == x.dtype
    assert torch.equal(ours_loss.isnan(), ref_loss.isnan())
    for ours, theirs, ref in ((ours_loss, t_loss, ref_loss), (ours_grad, t_grad, ref_grad)):
        scale = ref.abs().nan_to_num(0).max().item() if ref.numel() else 0.0
        bound = max_err(theirs, ref) + SLACK_ULPS * ulp(x.dtype, scale)
        assert max_err(ours, ref) <= bound, (max_err(ours, ref), max_err(theirs, ref), bound)


# ------------------------------------------------------------------------------------------------
# differential table against torch.nn.functional.cross_entropy

SHAPES = [(5, 1), (7, 3), (23, 1000), (9, 4097)]
DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_class_index_matches_torch(shape, dtype, reduction):
    m, c = shape
    x, target, _ = make_case(m, c, dtype, ignored=2)
    upstream = torch.randn(m, dtype=dtype) if reduction == "none" else None
    assert_close_to_torch(x, target, None, reduction, upstream)


INDEX_OPTIONS = [
    dict(weight=True),
    dict(ignored=3),
    dict(weight=True, ignored=3, label_smoothing=0.1),
    dict(weight=True, ignored=3, label_smoothing=1.0),
    dict(label_smoothing=0.1),
    dict(ignored=4, ignore_index=0),  # ignore_index that is a valid class
    dict(weight=True, ignored=4, ignore_index=2, label_smoothing=0.1),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("case", INDEX_OPTIONS, ids=str)
def test_index_options_match_torch(case, reduction, dtype):
    case = dict(case)
    weight, ignored = case.pop("weight", False), case.pop("ignored", 0)
    ignore_index = case.get("ignore_index", -100)
    x, target, w = make_case(
        17, 301, dtype, weight=weight, ignored=ignored, ignore_index=ignore_index, seed=1
    )
    if ignore_index >= 0:  # some real class-`ignore_index` targets must exist too
        target[target == ignore_index] = ignore_index
    upstream = torch.randn(17, dtype=dtype) if reduction == "none" else None
    assert_close_to_torch(x, target, w, reduction, upstream, **case)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weight", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_probability_targets_match_torch(smoothing, weight, reduction, dtype):
    x, target, w = make_case(13, 257, dtype, soft=True, weight=weight, seed=2)
    upstream = torch.randn(13, dtype=dtype) if reduction == "none" else None
    assert_close_to_torch(x, target, w, reduction, upstream, label_smoothing=smoothing)


def test_unnormalised_probability_targets():
    x, _, w = make_case(6, 50, torch.float64, weight=True)
    target = torch.rand(6, 50, dtype=torch.float64) * 3 - 1
    assert_close_to_torch(x, target, w, "mean", label_smoothing=0.3)


def test_k_dim_input_flattened_matches_torch():
    """The functional layer moves the class dim last and flattens; denominators survive."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 7, 3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 7, (2, 3, 4), generator=gen)
    target[0, 1] = -100
    w = torch.rand(7, dtype=torch.float64)
    ref = F.cross_entropy(x, target, w, label_smoothing=0.1)
    (ref_grad,) = torch.autograd.grad(ref, x)
    rows_x = x.movedim(1, -1).reshape(-1, 7)
    loss, _, _ = fused_cross_entropy(
        rows_x, target.reshape(-1), w, RowOptions(label_smoothing=0.1), "mean"
    )
    (grad,) = torch.autograd.grad(loss, x)
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=0)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("impl", ["fused", "reference", "triton"])
@pytest.mark.parametrize(
    ("weight", "ignore_index"),
    [
        ([4.0, 2.0, math.inf, 4.0], -100),  # inverse class frequency: class 2 never occurs
        ([math.nan, 1.0, 1.0, 1.0], 0),  # the ignored class's weight is never read
        ([3e38, 3e38, 1.0, 1.0], -100),  # the total weight overflows float32
    ],
)
def test_non_finite_weight_of_an_absent_class_leaves_gradients_finite(impl, weight, ignore_index):
    # torch never multiplies the unused total weight into the gradient without smoothing
    import crossent

    if impl == "triton":
        pytest.importorskip("triton")
    t, w = torch.tensor([0, 1, 1, 3]), torch.tensor(weight)
    x = torch.randn(4, 4, generator=torch.Generator().manual_seed(0), requires_grad=True)
    expected = torch.autograd.grad(F.cross_entropy(x, t, w, ignore_index=ignore_index), x)[0]
    if impl == "reference":  # computed one step wider (float64): no overflow to compare with
        x64 = x.detach().double().requires_grad_()
        loss = F.cross_entropy(x64, t, w.double(), ignore_index=ignore_index)
        expected = torch.autograd.grad(loss, x64)[0].float()
    loss = crossent.cross_entropy(x, t, w, ignore_index=ignore_index, impl=impl)
    (grad,) = torch.autograd.grad(loss, x)
    assert torch.isfinite(expected).all()
    torch.testing.assert_close(grad, expected)


def test_uint8_targets():
    x, target, _ = make_case(9, 20, torch.float64)
    target = target.to(torch.uint8)
    target[0] = 255
    assert_close_to_torch(x, target, None, "mean", ignore_index=255)


def test_large_logit_offset_is_as_accurate_as_torch():
    """Sums are taken relative to the row maximum, so a large common offset costs nothing."""
    x, target, w = make_case(11, 500, torch.float32, weight=True, seed=4)
    x = x + 1000
    assert_close_to_torch(x, target, w, "mean", label_smoothing=0.1)
    xs, ts, _ = make_case(11, 500, torch.float32, soft=True, seed=4)
    assert_close_to_torch(xs + 1000, ts, None, "sum", label_smoothing=0.1)


# ------------------------------------------------------------------------------------------------
# special values and degenerate shapes


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("soft", [False, True])
def test_empty_input(reduction, soft):
    x = torch.empty(0, 5, requires_grad=True)
    target = torch.empty(0, 5) if soft else torch.empty(0, dtype=torch.long)
    loss, _, lse = fused_cross_entropy(x, target, None, RowOptions(), reduction)
    ref = F.cross_entropy(x, target, reduction=reduction)
    torch.testing.assert_close(loss, ref, equal_nan=True)
    assert str(loss.item() if loss.dim() == 0 else "") == str(ref.item() if ref.dim() == 0 else "")
    assert lse.shape == (0,)
    if reduction != "mean":
        loss.sum().backward()
        assert x.grad.shape == (0, 5)


@pytest.mark.parametrize("smoothing", [0.0, 0.3])
@pytest.mark.parametrize("weight", [False, True])
def test_all_ignored_mean_is_nan_with_zero_gradient(weight, smoothing):
    x, target, w = make_case(6, 9, torch.float32, weight=weight)
    target[:] = -100
    loss, grad, z, lse = fused(x, target, w, "mean", label_smoothing=smoothing)
    assert loss.isnan() and z.isnan()
    assert torch.equal(grad, torch.zeros_like(grad))
    assert torch.equal(lse, torch.zeros_like(lse))


def test_zero_weight_targets_give_nan_like_torch():
    x, target, _ = make_case(5, 4, torch.float64)
    w = torch.tensor([0.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    target[:] = 0
    target[0] = -100
    assert_close_to_torch(x, target, w, "mean")


def test_non_finite_logits_follow_torch():
    x, target, _ = make_case(6, 5, torch.float64)
    target[0] = -100
    x[0, 1] = math.nan  # ignored row: loss 0, gradient nan (torch computes 0 * nan)
    x[1, 2] = math.inf  # kept row: nan
    x[2, (target[2] + 1) % 5] = -math.inf  # -inf at a non-target class: finite
    for smoothing in (0.0, 0.1):
        ours_loss, ours_grad, _, _ = fused(x, target, None, "none", label_smoothing=smoothing)
        ref_loss, ref_grad = torch_ce(x, target, None, "none", label_smoothing=smoothing)
        torch.testing.assert_close(ours_loss, ref_loss, equal_nan=True)
        torch.testing.assert_close(ours_grad, ref_grad, equal_nan=True)


def test_class_count_one():
    x = torch.randn(4, 1, dtype=torch.float64)
    assert_close_to_torch(x, torch.zeros(4, dtype=torch.long), None, "mean")


@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_k_dim_input_with_one_class(soft, reduction):
    """(N, 1, d1, d2): the flattened rows have a class stride that is not 1 (a size-1 dim has
    no meaningful stride); found by fuzzing the public API against torch."""
    import crossent

    gen = torch.Generator().manual_seed(5)
    x = torch.randn(3, 1, 2, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    if soft:
        target = torch.rand(3, 1, 2, 2, generator=gen, dtype=torch.float64)
    else:
        target = torch.zeros(3, 2, 2, dtype=torch.long)
        target[1, 0, 1] = -100
    w = torch.tensor([0.7], dtype=torch.float64)
    ref = F.cross_entropy(x, target, w, reduction=reduction, label_smoothing=0.5)
    ours = crossent.cross_entropy(
        x, target, w, reduction=reduction, label_smoothing=0.5, impl="fused"
    )
    upstream = torch.rand(ref.shape, generator=gen, dtype=torch.float64)
    (ref_grad,) = torch.autograd.grad(ref, x, upstream)
    (grad,) = torch.autograd.grad(ours, x, upstream)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=0)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-12, atol=1e-15)


# ------------------------------------------------------------------------------------------------
# z-loss, soft-capping and the lse output against the row contract


EXTRA_OPTIONS = [
    dict(z_loss=1e-3),
    dict(softcap=4.0),
    dict(softcap=2.5, z_loss=0.01, label_smoothing=0.1),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("weight", [False, True])
@pytest.mark.parametrize("options", EXTRA_OPTIONS, ids=str)
def test_rows_kernel_matches_contract_reference(options, weight, soft, dtype):
    x, target, w = make_case(19, 130, dtype, soft=soft, weight=weight, ignored=0 if soft else 3)
    x = x * 3
    opts = RowOptions(**options)
    grad, ref_grad = torch.empty_like(x), torch.empty_like(x)
    loss, lse = cpu.cross_entropy_rows(x, target, w, opts, grad, block_rows=4)
    ref_loss, ref_lse = rows.cross_entropy_rows(x, target, w, opts, ref_grad)
    assert loss.dtype == ref_loss.dtype and lse.dtype == ref_lse.dtype
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-6, atol=2e-6)
    torch.testing.assert_close(loss, ref_loss, **tol)
    torch.testing.assert_close(lse, ref_lse, **tol)
    if dtype == torch.bfloat16:  # both round the same float32 values; allow one bf16 ulp
        torch.testing.assert_close(grad.float(), ref_grad.float(), rtol=8e-3, atol=1e-6)
    else:
        torch.testing.assert_close(grad, ref_grad, **tol)


COLUMN_OPTIONS = [
    dict(), dict(ignore_index=2), dict(z_loss=1e-3), dict(ignore_index=0, z_loss=0.01),
    dict(label_smoothing=0.1), dict(softcap=4.0),
    dict(softcap=2.5, z_loss=0.01, label_smoothing=0.2),
]
COLUMN_CASES = [  # (ignore_index does not apply to probabilities)
    (soft, options) for soft in (False, True) for options in COLUMN_OPTIONS
    if not (soft and "ignore_index" in options)
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("weight", [False, True])
@pytest.mark.parametrize(("soft", "options"), COLUMN_CASES, ids=str)
@pytest.mark.parametrize("block_rows", [None, 3, 7, 10, 14])
@pytest.mark.parametrize("in_place", [False, True])
def test_column_layout_is_the_rows_layout_without_the_copy(in_place, block_rows, options,
                                                           weight, soft, dtype):  # fmt: skip
    """A K-dim input as (N, C, S): the same per-row losses, lse and gradient as its rows
    (N*S, C), for class indices and probabilities (as (N, C, S) too), with blocks of all
    samples (None), of a few positions of one sample (3: two slices and a remainder per
    sample), of one sample (7, 10) and of two samples and a remainder sample (14); written
    into a buffer or into the logits."""
    n, c, positions = 3, 6, 7
    x, target, w = make_case(n * positions, c, dtype, soft=soft, weight=weight,
                             ignored=0 if soft else 4,
                             ignore_index=options.get("ignore_index", -100))  # fmt: skip
    columns = (x * 3).reshape(n, positions, c).transpose(1, 2).contiguous()  # (N, C, S)
    rows_x = columns.transpose(1, 2).reshape(-1, c)  # the same logits as rows (a copy)
    column_target = target
    if soft:
        column_target = target.reshape(n, positions, c).transpose(1, 2).contiguous()
    opts = RowOptions(**options)
    scale = torch.rand(n * positions, generator=torch.Generator().manual_seed(1)).to(
        accumulation := rows.accumulation_dtype(dtype))  # fmt: skip
    ref_grad = torch.empty_like(rows_x)
    ref_loss, ref_lse = cpu.cross_entropy_rows(rows_x, target, w, opts, ref_grad,
                                               row_scale=scale, block_rows=block_rows)  # fmt: skip
    work = columns.clone()
    grad = work if in_place else torch.empty_like(columns)
    loss, lse = cpu.cross_entropy_rows(work, column_target, w, opts, grad, row_scale=scale,
                                       block_rows=block_rows)  # fmt: skip
    assert loss.dtype == lse.dtype == accumulation
    tol = dict(rtol=1e-13, atol=1e-13) if dtype == torch.float64 else dict(rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(loss, ref_loss, **tol)
    torch.testing.assert_close(lse, ref_lse, **tol)
    as_rows = grad.transpose(1, 2).reshape(-1, c)
    if dtype == torch.bfloat16:  # both round float32 values computed in another order
        torch.testing.assert_close(as_rows.float(), ref_grad.float(), rtol=8e-3, atol=1e-6)
    else:
        torch.testing.assert_close(as_rows, ref_grad, **tol)


def test_column_layout_is_for_contiguous_cpu_tensors():
    x = torch.randn(2, 4, 5)
    target = torch.zeros(10, dtype=torch.long)
    with pytest.raises(ValueError, match="contiguous"):
        cpu.cross_entropy_rows(x.transpose(1, 2), target, None, RowOptions())
    # the 'cpu' kernel on tensors of another device (impl='fused' on CUDA) keeps rows
    meta = torch.empty(2, 4, 5, device="meta")
    plain = RowOptions()
    assert _fused_op.column_layout_serves("cpu", x, target, plain)
    assert _fused_op.column_layout_serves("cpu", x, target, RowOptions(label_smoothing=0.1))
    assert not _fused_op.column_layout_serves("cpu", meta, target, plain)
    # the Triton column kernel: plain class indices over enough positions per sample
    wide = torch.empty(2, 4, 128)
    indices = torch.zeros(256, dtype=torch.long)
    assert _fused_op.column_layout_serves("triton", wide, indices, plain)
    assert not _fused_op.column_layout_serves("triton", x, target, plain)  # 5 positions
    for options in (RowOptions(label_smoothing=0.1), RowOptions(softcap=3.0)):
        assert not _fused_op.column_layout_serves("triton", wide, indices, options)
    assert not _fused_op.column_layout_serves("triton", wide, torch.rand(2, 4, 128), plain)
    with pytest.raises(ValueError, match=r"\(N, C, S\) logits"):
        fused_cross_entropy(x, target, None, plain, "mean", kernel="triton")


def test_column_layout_with_one_position_per_sample_matches_torch():
    """(N, C, 1): whole samples per block, as many as fit (not one block per sample)."""
    import crossent

    gen = torch.Generator().manual_seed(11)
    x = torch.randn(500, 7, 1, generator=gen, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 7, (500, 1), generator=gen)
    blocks = []
    original = cpu._Rows.blocks
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cpu._Rows, "blocks", lambda self: blocks.append(1) or original(self))
        ours = crossent.cross_entropy(x, target, impl="fused")
    assert blocks  # (the column layout ran)
    (grad,) = torch.autograd.grad(ours, x)
    ref = F.cross_entropy(x, target)
    (ref_grad,) = torch.autograd.grad(ref, x)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=0)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-12, atol=1e-15)
    per_block = cpu.block_rows_for(7, 8)
    rows = cpu._Rows(x.detach(), target.reshape(-1), None, RowOptions(), None, None, None)
    assert len(list(rows.blocks())) == -(-500 // per_block)  # blocks of many samples each


def test_k_dim_out_of_range_target_names_its_position_in_the_target_shape():
    import crossent

    x = torch.randn(2, 5, 3, 4)
    target = torch.randint(0, 5, (2, 3, 4))
    target[1, 2, 3] = 7
    for impl in ("fused", "reference"):
        with pytest.raises(IndexError, match=r"got 7 at position \(1, 2, 3\)"):
            crossent.cross_entropy(x, target, impl=impl)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weight", [False, True])
def test_k_dim_public_call_takes_the_column_layout_and_matches_torch(weight, reduction):
    """impl='fused' on a K-dim class-index input reaches the kernel as a view of the input (no
    copy), in place too (the gradient lands in the input's own storage)."""
    import crossent

    gen = torch.Generator().manual_seed(7)
    x = torch.randn(2, 5, 3, 4, generator=gen, dtype=torch.float64)
    target = torch.randint(0, 5, (2, 3, 4), generator=gen)
    target[1, 0] = -100
    w = torch.rand(5, generator=gen, dtype=torch.float64) + 0.2 if weight else None
    seen = []
    original = cpu.cross_entropy_rows

    def spy(logits, *args, **kwargs):
        seen.append((logits.shape, logits.data_ptr()))
        return original(logits, *args, **kwargs)

    leaf = x.clone().requires_grad_()
    ref = F.cross_entropy(leaf, target, w, reduction=reduction)
    upstream = torch.rand(ref.shape, generator=gen, dtype=torch.float64)
    (ref_grad,) = torch.autograd.grad(ref, leaf, upstream)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cpu, "cross_entropy_rows", spy)
        for in_place in (False, True):
            leaf = x.clone().requires_grad_()
            logits = leaf * 1.0 if in_place else leaf
            ours = crossent.cross_entropy(logits, target, w, reduction=reduction, impl="fused",
                                          inplace_backward=in_place)  # fmt: skip
            (grad,) = torch.autograd.grad(ours, leaf, upstream)
            torch.testing.assert_close(ours, ref, rtol=1e-12, atol=0)
            torch.testing.assert_close(grad, ref_grad, rtol=1e-12, atol=1e-15)
            assert seen[-1] == ((2, 5, 12), logits.data_ptr())  # the input itself, as (N, C, S)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("soft", [False, True])
def test_z_loss_and_softcap_formulas_by_float64_autograd(reduction, soft):
    zeta, cap, eps = 0.02, 3.0, 0.1
    x, target, w = make_case(
        10, 40, torch.float64, soft=soft, weight=True, ignored=0 if soft else 2
    )
    x = x * 3
    leaf = x.clone().requires_grad_()
    z = cap * torch.tanh(leaf / cap)
    base = F.cross_entropy(z, target, w, reduction="none", label_smoothing=eps)
    lse = torch.logsumexp(z, 1)
    kept = torch.ones(10, dtype=torch.bool) if soft else target != -100
    z_rows = torch.where(kept, zeta * lse**2, 0.0)
    per_row = base + z_rows
    if reduction == "none":
        ref, ref_z = per_row, z_rows
    elif reduction == "sum":
        ref, ref_z = per_row.sum(), z_rows.sum()
    else:
        denom = 10.0 if soft else w[target[kept]].sum()
        ref, ref_z = per_row.sum() / denom, z_rows.sum() / denom
    upstream = torch.randn_like(ref)
    (ref_grad,) = torch.autograd.grad(ref, leaf, upstream)
    options = dict(z_loss=zeta, softcap=cap, label_smoothing=eps)
    loss, grad, z_out, lse_out = fused(x, target, w, reduction, upstream, **options)
    torch.testing.assert_close(loss, ref.detach(), rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(z_out, ref_z.detach(), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(lse_out, torch.where(kept, lse, 0.0).detach(), rtol=1e-13, atol=0)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_lse_and_z_loss_outputs(dtype):
    x, target, _ = make_case(8, 33, dtype, ignored=2)
    leaf = x.clone().requires_grad_()
    loss, z, lse = fused_cross_entropy(leaf, target, None, RowOptions(z_loss=0.5), "sum")
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    assert lse.dtype == acc and not lse.requires_grad and not z.requires_grad
    assert loss.dtype == dtype and z.dtype == dtype and loss.requires_grad
    kept = target != -100
    expected = torch.where(kept, torch.logsumexp(x.to(acc), 1), 0.0)
    torch.testing.assert_close(lse, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(z.to(acc), (0.5 * lse * lse).sum().to(dtype).to(acc))
    plain, _, _ = fused_cross_entropy(x, target, None, RowOptions(), "sum")
    torch.testing.assert_close(loss.detach().to(acc), (plain + z).to(acc), rtol=2e-2, atol=0)


# ------------------------------------------------------------------------------------------------
# autograd contract: no saved probabilities, in-place scaling, second backward, no grad


def test_gradient_buffer_becomes_grad_without_copy(monkeypatch):
    pointers = []  # (keeping the buffer itself alive here would force autograd to copy it)
    original = cpu.empty_gradient

    def recording(like):
        buffer = original(like)
        pointers.append(buffer.data_ptr())
        return buffer

    monkeypatch.setattr(cpu, "empty_gradient", recording)
    x, target, _ = make_case(20, 50, torch.float32)
    x.requires_grad_()
    loss, _, _ = fused_cross_entropy(x, target, None, RowOptions(), "mean")
    assert len(pointers) == 1
    loss.backward()
    assert x.grad.data_ptr() == pointers[0]


def test_pool_hands_out_only_buffers_no_tensor_refers_to(monkeypatch):
    """The gradient-buffer pool: a buffer comes back only once no tensor (or view) refers to
    it; at most POOL_BUFFERS are kept; release_pooled_buffers lets them all go."""
    monkeypatch.setattr(cpu, "POOL_MIN_BYTES", 1024)
    cpu.release_pooled_buffers()
    like = torch.empty(64, 100)
    first = cpu.empty_gradient(like)
    second = cpu.empty_gradient(like)
    assert first.shape == like.shape and first.dtype == like.dtype and first.is_contiguous()
    assert first.data_ptr() % 64 == 0
    owned = {first.data_ptr(), second.data_ptr()}
    assert len(owned) == 2
    view = first[10:]
    del first
    third = cpu.empty_gradient(like)  # `first` lives on in its view: not handed out again
    assert third.data_ptr() not in owned
    del view, second
    fourth = cpu.empty_gradient(like)  # second's buffer (still kept) is free again
    assert fourth.data_ptr() in owned
    assert len(cpu._POOL._buffers) == 2
    # another size is never handed a free buffer of this one (the free buffer is alive in the
    # pool, so no allocator can return its address either; `first`'s address, released when
    # the pool dropped it, may be reused by malloc, which made an earlier form of this flaky)
    free = fourth.data_ptr()
    del fourth
    other = cpu.empty_gradient(torch.empty(64, 100, dtype=torch.bfloat16))
    assert other.dtype == torch.bfloat16 and other.data_ptr() != free
    cpu.release_pooled_buffers()
    assert cpu._POOL._buffers == []


def test_pool_off_and_small_buffers_are_plain_allocations(monkeypatch):
    like = torch.empty(8, 8)
    assert cpu.empty_gradient(like).untyped_storage().resizable()  # below POOL_MIN_BYTES
    monkeypatch.setattr(cpu, "POOL_MIN_BYTES", 0)
    monkeypatch.setattr(cpu, "POOL_BUFFERS", 0)
    assert cpu.empty_gradient(like).untyped_storage().resizable()


def test_pooled_gradients_of_consecutive_steps(monkeypatch):
    """A live gradient is never overwritten by the next call; a freed one is reused."""
    monkeypatch.setattr(cpu, "POOL_MIN_BYTES", 1024)
    cpu.release_pooled_buffers()
    x, target, _ = make_case(40, 70, torch.float32)
    expected = torch.func.grad(lambda z: F.cross_entropy(z, target))(x)
    grads = []
    for _ in range(3):
        leaf = x.clone().requires_grad_()
        loss, _, _ = fused_cross_entropy(leaf, target, None, RowOptions(), "mean")
        loss.backward()
        grads.append(leaf.grad)
    assert len({g.data_ptr() for g in grads}) == 3
    for g in grads:
        torch.testing.assert_close(g, expected)
    pointers = {g.data_ptr() for g in grads}
    del grads, leaf
    leaf = x.clone().requires_grad_()
    fused_cross_entropy(leaf, target, None, RowOptions(), "mean")[0].backward()
    assert leaf.grad.data_ptr() in pointers
    torch.testing.assert_close(leaf.grad, expected)
    cpu.release_pooled_buffers()


def test_no_gradient_buffer_without_grad(monkeypatch):
    calls = []
    monkeypatch.setattr(cpu, "empty_gradient", lambda like: calls.append(like))
    x, target, _ = make_case(20, 50, torch.float32)
    ref = F.cross_entropy(x, target)
    loss, _, _ = fused_cross_entropy(x, target, None, RowOptions(), "mean")
    with torch.no_grad():
        loss2, _, _ = fused_cross_entropy(x.requires_grad_(), target, None, RowOptions(), "mean")
    assert calls == [] and not loss.requires_grad and not loss2.requires_grad
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(loss2, ref)


@pytest.mark.parametrize("inplace", [False, True])
def test_second_backward_raises(inplace):
    x, target, _ = make_case(6, 10, torch.float32)
    leaf = x.clone().requires_grad_()
    logits = leaf * 1 if inplace else leaf
    loss, _, _ = fused_cross_entropy(
        logits, target, None, RowOptions(), "mean", inplace_backward=inplace
    )
    loss.backward(retain_graph=True)
    first = leaf.grad.clone()
    with pytest.raises(RuntimeError, match="retain_graph"):
        loss.backward()
    torch.testing.assert_close(first, torch_ce(x, target, None)[1])


def test_double_backward_raises():
    x, target, _ = make_case(6, 10, torch.float64)
    x.requires_grad_()
    loss, _, _ = fused_cross_entropy(x, target, None, RowOptions(), "mean")
    with pytest.raises(RuntimeError, match="create_graph"):
        torch.autograd.grad(loss, x, create_graph=True)


def test_scaling_by_upstream_gradient_of_two_losses():
    """The loss participates in a larger graph; the upstream gradient is not 1."""
    x, target, w = make_case(12, 30, torch.float64, weight=True, ignored=2)
    leaf = x.clone().requires_grad_()
    loss, _, _ = fused_cross_entropy(leaf, target, w, RowOptions(), "mean")
    (3.5 * loss + leaf.sum()).backward()
    ref_leaf = x.clone().requires_grad_()
    (3.5 * F.cross_entropy(ref_leaf, target, w) + ref_leaf.sum()).backward()
    torch.testing.assert_close(leaf.grad, ref_leaf.grad, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_non_finite_upstream_keeps_ignored_rows_zero(reduction):
    x, target, _ = make_case(5, 6, torch.float64, ignored=2)
    upstream = torch.full((5,) if reduction == "none" else (), math.inf, dtype=torch.float64)
    ours = fused(x, target, None, reduction, upstream)[1]
    ref = torch_ce(x, target, None, reduction, upstream)[1]
    ignored = target == -100
    assert torch.equal(ours[ignored], ref[ignored]) and not ours[ignored].any()
    # Kept rows are non-finite in both (torch's target entry is inf - inf = nan, ours -inf).
    assert not ours[~ignored].isfinite().any() and not ref[~ignored].isfinite().any()


# ------------------------------------------------------------------------------------------------
# in-place mode


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize(
    "options", [dict(), dict(label_smoothing=0.1, z_loss=1e-3, softcap=5.0)], ids=str
)
def test_inplace_equals_out_of_place(options, reduction, dtype):
    x, target, w = make_case(21, 77, dtype, weight=True, ignored=3)
    upstream = torch.randn(21, dtype=dtype) if reduction == "none" else None
    out = fused(x, target, w, reduction, upstream, **options)
    inp = fused(x, target, w, reduction, upstream, inplace=True, **options)
    for a, b in zip(out, inp, strict=True):
        assert torch.equal(a, b)


def test_inplace_writes_the_gradient_into_the_logits():
    x, target, _ = make_case(9, 40, torch.float32, ignored=2)
    h = x.clone().requires_grad_()
    logits = h * 1
    ptr = logits.data_ptr()
    expected = torch_ce(x, target, None)[1]
    reference, _, _ = fused_cross_entropy(x, target, None, RowOptions(), "mean")
    loss, _, _ = fused_cross_entropy(
        logits, target, None, RowOptions(), "mean", inplace_backward=True
    )
    assert logits.data_ptr() == ptr and logits._version > 0
    # 1/D of the mean is folded into the gradient written by the forward.
    torch.testing.assert_close(logits.detach(), expected)
    torch.testing.assert_close(loss, reference)
    loss.backward()
    torch.testing.assert_close(h.grad, expected)
    torch.testing.assert_close(logits.detach(), expected)  # (an upstream of 1: nothing to scale)


def test_inplace_through_a_matmul_matches():
    gen = torch.Generator().manual_seed(5)
    hidden = torch.randn(16, 8, generator=gen, dtype=torch.float64)
    classifier = torch.randn(40, 8, generator=gen, dtype=torch.float64)
    target = torch.randint(0, 40, (16,), generator=gen)
    grads = []
    for inplace in (False, True):
        h = hidden.clone().requires_grad_()
        wc = classifier.clone().requires_grad_()
        loss, _, _ = fused_cross_entropy(
            h @ wc.T, target, None, RowOptions(), "mean", inplace_backward=inplace
        )
        loss.backward()
        grads.append((h.grad, wc.grad))
    for a, b in zip(*grads, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kernel", ["cpu", "triton"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize(
    "options", [dict(), dict(label_smoothing=0.1, softcap=5.0)], ids=["plain", "general"]
)
@pytest.mark.parametrize("view", ["columns", "every other row"])
def test_inplace_into_a_strided_view_writes_only_its_elements(view, options, dtype, kernel):
    # out= ops wrote a row-strided gradient view as if it were packed, past its own rows
    if kernel == "triton":
        pytest.importorskip("triton")
    gen = torch.Generator().manual_seed(3)
    wide = torch.randn(12, 30, generator=gen, dtype=torch.float64).to(dtype)
    target = torch.randint(0, 20, (6,), generator=gen)
    pick = (lambda t: t[:6, :20]) if view == "columns" else (lambda t: t[::2, :20])
    reference = pick(wide).contiguous().requires_grad_()
    expected_loss, _, _ = fused_cross_entropy(
        reference, target, None, RowOptions(**options), "mean", kernel=kernel
    )
    expected_loss.backward()
    leaf = wide.clone().requires_grad_()
    out = leaf * 1
    logits = pick(out)
    before = out.detach().clone()
    loss, _, _ = fused_cross_entropy(
        logits, target, None, RowOptions(**options), "mean", kernel=kernel, inplace_backward=True
    )
    loss.backward()
    outside = torch.ones_like(before, dtype=torch.bool)
    pick(outside).fill_(False)
    assert torch.equal(out.detach()[outside], before[outside])  # nothing else overwritten
    assert torch.equal(loss, expected_loss)  # the same arithmetic as on a packed copy
    assert torch.equal(pick(leaf.grad), reference.grad)


def test_inplace_refuses_logits_whose_elements_share_memory():
    leaf = torch.randn(1, 8, requires_grad=True)
    logits = (leaf * 1).expand(16, 8)  # one row of memory seen 16 times
    with pytest.raises(RuntimeError, match="share memory"):
        fused_cross_entropy(logits, torch.zeros(16, dtype=torch.long), None, RowOptions(),
                            "mean", inplace_backward=True)  # fmt: skip


@pytest.mark.parametrize("columns", [slice(None), slice(0, 5)])
def test_inplace_refuses_a_view_that_is_itself_a_leaf_parameter(columns):
    # storage[...].requires_grad_(): a leaf whose base does not require grad; it was
    # overwritten by its own gradient
    storage = torch.randn(12, 8)
    logits = storage[:6, columns].requires_grad_()
    before = logits.detach().clone()
    with pytest.raises(RuntimeError, match="leaf tensor that requires grad"):
        fused_cross_entropy(logits, torch.zeros(6, dtype=torch.long), None, RowOptions(),
                            "mean", inplace_backward=True)  # fmt: skip
    assert torch.equal(logits.detach(), before)


def test_inplace_without_grad_leaves_logits_untouched():
    x, target, _ = make_case(5, 7, torch.float32)
    original = x.clone()
    fused_cross_entropy(x, target, None, RowOptions(), "mean", inplace_backward=True)
    with torch.no_grad():
        y = x.clone().requires_grad_()
        fused_cross_entropy(y, target, None, RowOptions(), "mean", inplace_backward=True)
    assert torch.equal(x, original) and torch.equal(y, original)


@pytest.mark.parametrize(
    "make_logits",
    [
        lambda h: h,  # leaf
        lambda h: h.view(h.shape),  # view of a leaf
        lambda h: torch.tanh(h * 1),  # saved result
        lambda h: torch.exp(h * 1),
        lambda h: torch.sigmoid(h * 1),
        lambda h: torch.softmax(h * 1, dim=1),
        lambda h: torch.tanh(h * 1).view(-1).view(h.shape),  # saved result behind views
    ],
    ids=["leaf", "leaf-view", "tanh", "exp", "sigmoid", "softmax", "tanh-view"],
)
def test_inplace_refuses_when_autograd_needs_the_logits(make_logits):
    x, target, _ = make_case(4, 6, torch.float32)
    h = x.clone().requires_grad_()
    logits = make_logits(h)
    before = logits.detach().clone()
    with pytest.raises(RuntimeError, match="inplace_backward"):
        fused_cross_entropy(logits, target, None, RowOptions(), "mean", inplace_backward=True)
    assert torch.equal(logits.detach(), before)


def test_inplace_misuse_is_caught_by_the_version_counter():
    x, target, _ = make_case(4, 6, torch.float32)
    h = x.clone().requires_grad_()
    logits = h * 1
    aux = (logits**2).sum()  # saves the logits for its backward
    loss, _, _ = fused_cross_entropy(
        logits, target, None, RowOptions(), "mean", inplace_backward=True
    )
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        (loss + aux).backward()
    # A write to the logits after the call is caught the same way.
    logits = h * 1
    loss, _, _ = fused_cross_entropy(
        logits, target, None, RowOptions(), "mean", inplace_backward=True
    )
    with torch.no_grad():
        logits.zero_()
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


# ------------------------------------------------------------------------------------------------
# unsupported combinations, argument errors


def test_unsupported_combinations_raise_fused_unsupported():
    x, soft, w = make_case(3, 4, torch.float32, soft=True, weight=True)
    index = torch.tensor([0, 1, 2])
    cases = [
        (x, soft.clone().requires_grad_(), None),
        (x, index, w.clone().requires_grad_()),
        (x, soft.double(), None),  # loss would be float64
        (x, soft, w.double()),
        (x.to(torch.int32), index, None),
    ]
    for logits, target, weight in cases:
        with pytest.raises(FusedUnsupported):
            fused_cross_entropy(logits, target, weight, RowOptions(), "mean")
    assert issubclass(FusedUnsupported, NotImplementedError)


def test_argument_errors():
    x, target, _ = make_case(3, 4, torch.float32)
    with pytest.raises(ValueError, match="available: cpu, triton"):
        fused_cross_entropy(x, target, None, RowOptions(), "mean", kernel="cuda")
    with pytest.raises(ValueError, match="not a valid value for reduction"):
        fused_cross_entropy(x, target, None, RowOptions(), "avg")
    with pytest.raises(ValueError, match="2-D"):
        fused_cross_entropy(x[0], target[0], None, RowOptions(), "mean")


def test_non_contiguous_logits_and_targets():
    x, soft, _ = make_case(6, 10, torch.float64, soft=True)
    xt = x.T.contiguous().T  # class stride 6
    st_ = soft.T.contiguous().T
    assert xt.stride(1) != 1
    assert_close_to_torch(xt, st_, None, "mean")


# ------------------------------------------------------------------------------------------------
# determinism, compile, kernel internals


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_bitwise_deterministic(dtype):
    x, target, w = make_case(50, 333, dtype, weight=True, ignored=5)
    options = dict(label_smoothing=0.1, z_loss=1e-4)
    first = fused(x, target, w, "mean", **options)
    for _ in range(2):
        again = fused(x, target, w, "mean", **options)
        for a, b in zip(first, again, strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize(
    "case",
    [
        dict(dtype=torch.float32, ignored=3),
        dict(dtype=torch.bfloat16, weight=True, ignored=2, label_smoothing=0.1, z_loss=1e-3),
        dict(dtype=torch.float64, soft=True, softcap=4.0),
    ],
    ids=["index", "weights-smoothing-zloss-bf16", "probabilities-softcap"],
)
def test_eager_route_equals_the_custom_op_route(monkeypatch, case, reduction, inplace):
    """Eager calls skip the ops' dispatch; both routes run the same code and agree bitwise
    (losses, lse, gradients, also under an upstream gradient that is not 1)."""
    case = dict(case)
    make = {k: case.pop(k) for k in ("dtype", "soft", "weight", "ignored") if k in case}
    x, target, w = make_case(17, 45, make.pop("dtype"), **make)
    upstream = torch.rand(17, dtype=x.dtype) + 0.5 if reduction == "none" else None
    assert _fused_op._runs_eagerly(x, target)
    eager = fused(x, target, w, reduction, upstream, inplace=inplace, **case)
    monkeypatch.setattr(_fused_op, "_runs_eagerly", lambda *tensors: False)
    through_ops = fused(x, target, w, reduction, upstream, inplace=inplace, **case)
    for a, b in zip(eager, through_ops, strict=True):
        assert torch.equal(a, b)


def test_which_calls_run_eagerly():
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils._python_dispatch import TorchDispatchMode

    x, target = torch.randn(3, 4), torch.tensor([0, 1, 2])
    assert _fused_op._runs_eagerly(x, target)
    assert not _fused_op._runs_eagerly(x.to("meta"), target)

    class Recording(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    with Recording():
        assert not _fused_op._runs_eagerly(x, target)
    with FakeTensorMode() as mode:
        assert not _fused_op._runs_eagerly(mode.from_tensor(x), target)
    seen = []
    torch.func.grad(lambda z: seen.append(_fused_op._runs_eagerly(z)) or z.sum())(x)
    assert seen == [False]
    x.requires_grad_()
    loss, _, _ = fused_cross_entropy(x, target, None, RowOptions(), "mean")
    assert type(loss.grad_fn).__name__.startswith("_FusedCrossEntropy")


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_target_term_by_scatter_add_equals_index_put(monkeypatch, reduction):
    """The plain sweep's two ways of writing g[i, y_i] (scatter_add_ on CPU, gather and
    index_put_ on other devices) give the same bits."""
    x, target, _ = make_case(23, 61, torch.float32, ignored=3)
    by_scatter = fused(x, target, None, reduction)
    monkeypatch.setattr(cpu, "SCATTER_ADD_DEVICES", ())
    by_index_put = fused(x, target, None, reduction)
    for a, b in zip(by_scatter, by_index_put, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("options", [dict(), dict(label_smoothing=0.1)], ids=str)
def test_runs_under_torch_deterministic_mode(options):
    """No op of the fused path is refused by torch's deterministic mode; same bits."""
    x, target, w = make_case(9, 33, torch.float32, weight=True, ignored=2)
    expected = fused(x, target, w, "mean", **options)
    torch.use_deterministic_algorithms(True)
    try:
        got = fused(x, target, w, "mean", **options)
    finally:
        torch.use_deterministic_algorithms(False)
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))


def test_softmax_out_may_alias_its_input():
    """The kernel softmaxes its work buffer in place; guard that ATen allows it."""
    x = torch.randn(7, 1000)
    expected = torch.softmax(x, 1)
    torch.ops.aten._softmax.out(x, 1, False, out=x)
    assert torch.equal(x, expected)


def _compiled_step(backend):
    gen = torch.Generator().manual_seed(6)
    hidden = torch.randn(12, 8, generator=gen, requires_grad=True)
    classifier = torch.randn(8, 30, generator=gen, requires_grad=True)
    target = torch.randint(0, 30, (12,), generator=gen)
    target[0] = -100

    def step(h, y, inplace):
        logits = h @ classifier
        loss, _, lse = fused_cross_entropy(
            logits, y, None, RowOptions(z_loss=1e-3, softcap=20.0), "mean", inplace_backward=inplace
        )
        return loss, lse

    compiled = torch.compile(step, backend=backend, fullgraph=True)
    for inplace in (False, True):
        results = []
        for fn in (step, compiled):
            hidden.grad = classifier.grad = None
            loss, lse = fn(hidden, target, inplace)
            loss.backward()
            results.append((loss.detach(), lse, hidden.grad.clone(), classifier.grad.clone()))
        for a, b in zip(*results, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph(backend):
    torch._dynamo.reset()
    # Compile from scratch: an on-disk cache entry made for another version of the ops' schema
    # must not decide the outcome (and the test must not leave entries behind).
    with (
        torch._inductor.config.patch(fx_graph_cache=False),
        torch._functorch.config.patch(enable_autograd_cache=False),
    ):
        _compiled_step(backend)


@settings(max_examples=25, deadline=None)
@given(
    m=st.integers(1, 12),
    c=st.integers(1, 40),
    soft=st.booleans(),
    weight=st.booleans(),
    smoothing=st.sampled_from([0.0, 0.05, 1.0]),
    reduction=st.sampled_from(["mean", "sum", "none"]),
    ignored=st.integers(0, 3),
    seed=st.integers(0, 2**16),
)
def test_property_float64_equals_torch(m, c, soft, weight, smoothing, reduction, ignored, seed):
    x, target, w = make_case(
        m, c, torch.float64, soft=soft, weight=weight, ignored=min(ignored, m), seed=seed
    )
    upstream = torch.randn(m, dtype=torch.float64) if reduction == "none" else None
    assert_close_to_torch(x, target, w, reduction, upstream, label_smoothing=smoothing)


def test_registered_ops_have_fake_kernels():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.empty(4, 9, dtype=torch.bfloat16)
        y = torch.empty(4, dtype=torch.long)
        loss, _, lse, grad = torch.ops.crossent.fused_cross_entropy_v3(
            x, y, None, -100, 0.0, 0.0, None, "none", "cpu", None, "host", True
        )
        inplace_loss, _, _ = torch.ops.crossent.fused_cross_entropy_inplace_v3_(
            x, y, None, -100, 0.0, 0.0, None, "mean", "cpu", torch.float32, "device"
        )
    assert loss.shape == (4,) and loss.dtype == torch.bfloat16 and inplace_loss.shape == ()
    assert inplace_loss.dtype == torch.float32
    assert lse.dtype == torch.float32 and grad.shape == (4, 9)
    assert _fused_op.KERNELS == ("cpu", "triton")


@pytest.mark.parametrize(
    ("make", "overlaps"),
    [
        (lambda: torch.randn(4, 5)[:, :3], False),
        (lambda: torch.randn(4, 5).t(), False),
        (lambda: torch.randn(4, 5)[::2], False),
        (lambda: torch.randn(1, 5).expand(3, 5), True),
        (lambda: torch.randn(5, 1).expand(5, 4), True),
        (lambda: torch.randn(4, 6).as_strided((4, 3), (2, 1)), True),
        (lambda: torch.randn(4, 6).as_strided((2, 3), (3, 1)), False),
        (lambda: torch.randn(0, 3), False),
        (lambda: torch.randn(3, 1).expand(3, 1), False),
    ],
)
def test_overlap_check(make, overlaps):
    assert _fused_op._may_overlap(make()) is overlaps


@pytest.mark.parametrize("impl", ["auto", "fused", "torch", "reference", "triton"])
def test_target_check_device_on_the_cpu_raises_as_host(impl):
    """target_check='device' only changes CUDA calls (no synchronisation to save on the CPU):
    an out-of-range target raises the same IndexError, valid targets give the same values and
    gradients bit for bit; an unknown mode is a ValueError naming the choices."""
    import crossent

    if impl == "triton":
        pytest.importorskip("triton")
    gen = torch.Generator().manual_seed(11)
    base = torch.randn(6, 7, generator=gen, dtype=torch.float64)
    target = torch.tensor([0, 6, -100, 3, 2, 1])
    results = {}
    for mode in ("host", "device"):
        x = base.clone().requires_grad_()
        loss = crossent.cross_entropy(x, target, impl=impl, target_check=mode)
        loss.backward()
        results[mode] = (loss.detach(), x.grad)
        bad = target.clone()
        bad[3] = 7
        with pytest.raises(IndexError, match=r"got 7 at position \(3,\)"):
            crossent.cross_entropy(base, bad, impl=impl, target_check=mode)
    assert all(torch.equal(a, b) for a, b in zip(results["host"], results["device"], strict=True))
    with pytest.raises(ValueError, match="target_check must be one of 'host', 'device', got 'gpu'"):
        crossent.cross_entropy(base, target, impl=impl, target_check="gpu")


def test_target_check_reaches_the_custom_ops_and_the_module():
    """The mode travels through the custom ops (torch.compile's route) and the module; the
    device-side assertion itself fails at once on a CPU tensor."""
    import crossent
    import crossent.nn as cnn

    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([1, 4, 0, -100])
    eager = crossent.cross_entropy(x, target, impl="fused", target_check="device")
    original = _fused_op._runs_eagerly
    _fused_op._runs_eagerly = lambda *tensors: False
    try:
        through_ops = crossent.cross_entropy(x, target, impl="fused", target_check="device")
    finally:
        _fused_op._runs_eagerly = original
    assert torch.equal(eager, through_ops)
    module = cnn.CrossEntropyLoss(impl="fused", target_check="device")
    assert module.target_check == "device" and torch.equal(module(x, target), eager)
    with pytest.raises(ValueError, match="target_check"):
        cnn.CrossEntropyLoss(target_check="later")(x, target)
    _fused_op.assert_on_device(torch.tensor(True))
    with pytest.raises(RuntimeError, match="target_check='device'"):
        _fused_op.assert_on_device(torch.tensor(False))

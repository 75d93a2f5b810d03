"""The Triton row kernels against the reference row contract (crossent.backends.rows).

On a machine without CUDA every kernel runs through the Triton interpreter on CPU tensors
(``TRITON_INTERPRET=1``, set here before Triton is imported, as tests/conftest.py also does); on
a CUDA machine the same tests run the compiled kernels on the GPU. The interpreter executes each
program in Python, so the shapes are small and odd (C = 1, 3, 1000, 4097; rows not a multiple of
the grid) and the launch configurations are shrunk so that every code path is taken: several
full blocks plus a masked tail, a persistent grid walking several rows per program.

Tolerances (the kernel and the reference compute in the same accumulation dtype, in a different
order, and round the gradient once to the logits' dtype):

* float64: ``rtol=1e-10``: sums of a few thousand float64 terms in a different order differ by a
  few hundred ulps at most (1 ulp = 1.1e-16);
* float32 accumulation (losses/lse of every non-float64 input, float32 gradients): ``rtol=2e-5``
  on losses/lse (sums of up to 4097 float32 terms in a different order, plus ``tanh`` computed
  from ``exp``: a few ulp each); gradients ``rtol=1e-5, atol=1e-7``: ``p = exp(z - lse)`` inherits
  the absolute error of ``lse`` (|lse| ~ 10 times 6e-8) as a relative error, and the target entry
  ``p - 1`` an absolute error of about one float32 ulp of 1;
* bfloat16/float16 gradients: both sides round a float32 value once, so they differ by at most one
  unit in the last place: ``rtol = 2**-7`` (bf16) / ``2**-10`` (fp16) (this also covers the
  Triton 3.6 interpreter, which converts float32 to bfloat16 by truncation where the GPU rounds
  to nearest even: still within one ulp); plus the float32 ``atol``
  (1e-7), because an exact 0 (e.g. C = 1, where p = 1) is computed as a difference of O(1)
  float32 terms and comes out as a residue of about one float32 ulp of 1 on either side.
"""

from __future__ import annotations

import itertools
import math
import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from crossent.backends import rows  # noqa: E402
from crossent.backends.rows import RowOptions  # noqa: E402
from crossent.backends.triton import (  # noqa: E402
    KernelConfig,
    cross_entropy_rows,
    cross_entropy_rows_grad,
    scale_rows_,
)
from crossent.backends.triton.cross_entropy import _interpreting  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() and not _interpreting() else "cpu"
if DEVICE == "cpu" and not _interpreting():  # pragma: no cover - import-order guard
    raise RuntimeError(
        "crossent's Triton kernels were decorated before TRITON_INTERPRET=1 was set; "
        "set it before anything imports crossent.backends.triton"
    )

DTYPES = {
    "f64": torch.float64,
    "f32": torch.float32,
    "bf16": torch.bfloat16,
    "f16": torch.float16,
}
#: (classes, rows, launch config): full blocks + masked tail, and more rows than programs.
SHAPES = [
    (1, 5, KernelConfig(block=16, num_warps=1, programs=3)),
    (3, 33, KernelConfig(block=16, num_warps=1, programs=7)),
    (1000, 5, KernelConfig(block=256, num_warps=2, programs=2)),
    (4097, 5, KernelConfig(block=1024, num_warps=4, programs=3)),
]
OPTIONS = {
    "plain": RowOptions(),
    "ignore7": RowOptions(ignore_index=7),
    "smooth": RowOptions(label_smoothing=0.1),
    "zloss-softcap": RowOptions(z_loss=1e-3, softcap=4.0),
    "everything": RowOptions(ignore_index=0, label_smoothing=0.25, z_loss=0.01, softcap=3.0),
}
GRAD_MODES = ("none", "buffer", "inplace")


def tolerances(dtype: torch.dtype) -> dict[str, dict[str, float]]:
    """assert_close tolerances per output (the reasons are in the module docstring)."""
    if dtype == torch.float64:
        exact = {"rtol": 1e-10, "atol": 1e-12}
        return {"loss": exact, "grad": exact}
    loss = {"rtol": 2e-5, "atol": 2e-5}
    grad = {
        torch.float32: {"rtol": 1e-5, "atol": 1e-7},
        torch.bfloat16: {"rtol": 2.0**-7, "atol": 1e-7},
        torch.float16: {"rtol": 2.0**-10, "atol": 1e-7},
    }[dtype]
    return {"loss": loss, "grad": grad}


def make_inputs(num_rows, num_classes, dtype, options, probabilities, weighted, seed):
    """Random logits (scale 3), targets with some ignored rows, optional positive weights."""
    gen = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(num_rows, num_classes, generator=gen, dtype=torch.float64)).to(dtype)
    if probabilities:
        raw = torch.randn(num_rows, num_classes, generator=gen, dtype=torch.float64)
        target = torch.softmax(raw, dim=1).to(dtype)
    else:
        target = torch.randint(0, num_classes, (num_rows,), generator=gen)
        target[::3] = options.ignore_index
    weight = None
    if weighted:
        weight = torch.rand(num_classes, generator=gen, dtype=torch.float64) + 0.1
        weight = weight.to(torch.float32 if dtype != torch.float64 else dtype)
    return tuple(t if t is None else t.to(DEVICE) for t in (logits, target, weight))


def run_kernel(logits, target, weight, options, grad_mode, config):
    """(loss, lse, grad or None) from the Triton kernel; the gradient buffer starts as NaN."""
    if grad_mode == "none":
        loss, lse = cross_entropy_rows(logits, target, weight, options, config=config)
        return loss, lse, None
    if grad_mode == "buffer":
        grad = torch.full_like(logits, float("nan"))
        loss, lse = cross_entropy_rows(logits, target, weight, options, grad, config=config)
        return loss, lse, grad
    work = logits.clone()
    loss, lse = cross_entropy_rows(work, target, weight, options, work, config=config)
    return loss, lse, work


def run_reference(logits, target, weight, options):
    grad = torch.empty_like(logits)
    loss, lse = rows.cross_entropy_rows(logits, target, weight, options, grad)
    return loss, lse, grad


def check(actual, expected, dtype):
    tol = tolerances(dtype)
    loss, lse, grad = actual
    ref_loss, ref_lse, ref_grad = expected
    assert loss.dtype == ref_loss.dtype and lse.dtype == ref_lse.dtype
    torch.testing.assert_close(loss, ref_loss, **tol["loss"], equal_nan=True)
    torch.testing.assert_close(lse, ref_lse, **tol["loss"], equal_nan=True)
    if grad is not None:
        assert grad.dtype == dtype
        torch.testing.assert_close(grad, ref_grad, **tol["grad"], equal_nan=True)


def table():
    """Every option set with every (target kind, weight) pair for every dtype, with the shape
    and the gradient mode rotating, so each shape and mode meets every option set somewhere."""
    cases = []
    for dtype_name in DTYPES:
        combos = itertools.product(OPTIONS, (False, True), (False, True))
        for i, (option_name, probabilities, weighted) in enumerate(combos):
            num_classes, num_rows, config = SHAPES[i % len(SHAPES)]
            grad_mode = GRAD_MODES[(i + len(cases)) % len(GRAD_MODES)]
            kind = "prob" if probabilities else "index"
            case_id = (
                f"{dtype_name}-C{num_classes}-R{num_rows}-{option_name}-{kind}"
                f"-{'w' if weighted else 'nw'}-{grad_mode}"
            )
            cases.append(
                pytest.param(
                    *(dtype_name, num_classes, num_rows, config),
                    *(option_name, probabilities, weighted, grad_mode),
                    id=case_id,
                )
            )
    return cases


@pytest.mark.parametrize(
    "dtype_name,num_classes,num_rows,config,option_name,probabilities,weighted,grad_mode", table()
)
def test_matches_reference(
    dtype_name, num_classes, num_rows, config, option_name, probabilities, weighted, grad_mode
):
    dtype = DTYPES[dtype_name]
    options = OPTIONS[option_name]
    inputs = make_inputs(num_rows, num_classes, dtype, options, probabilities, weighted, seed=1)
    check(run_kernel(*inputs, options, grad_mode, config), run_reference(*inputs, options), dtype)


@pytest.mark.parametrize("dtype_name", ["bf16", "f32"])
def test_default_config_and_more_rows(dtype_name):
    """The heuristic launch configuration (one full 4096 block and a 1-column tail) on 33 rows."""
    dtype = DTYPES[dtype_name]
    options = OPTIONS["everything"]
    inputs = make_inputs(33, 4097, dtype, options, False, True, seed=2)
    check(run_kernel(*inputs, options, "buffer", None), run_reference(*inputs, options), dtype)


@pytest.mark.parametrize("probabilities", [False, True])
def test_strided_rows(probabilities):
    """Row strides larger than the row (a column slice of a wider tensor), for every operand."""
    dtype = torch.float32
    options = OPTIONS["everything"]
    wide = torch.randn(6, 1100, dtype=torch.float64, device=DEVICE).to(dtype) * 3
    logits = wide[:, 50:1050]
    assert logits.stride() == (1100, 1)
    _, target, weight = make_inputs(6, 1000, dtype, options, probabilities, True, seed=3)
    if probabilities:
        target = torch.cat([target, target[:, :37]], dim=1)[:, :1000]
        assert target.stride(0) != 1000
    grad_storage = torch.full((6, 1234), float("nan"), dtype=dtype, device=DEVICE)
    grad = grad_storage[:, 10:1010]
    config = SHAPES[2][2]
    loss, lse = cross_entropy_rows(logits, target, weight, options, grad, config=config)
    check((loss, lse, grad), run_reference(logits, target, weight, options), dtype)
    assert torch.isnan(grad_storage[:, :10]).all() and torch.isnan(grad_storage[:, 1010:]).all()


def test_all_rows_ignored():
    """Ignored rows: loss 0, lse 0, gradient 0, even when their logits are NaN."""
    logits = torch.full((5, 1000), float("nan"), device=DEVICE)
    target = torch.full((5,), -100, device=DEVICE)
    grad = torch.full_like(logits, float("nan"))
    options = RowOptions(label_smoothing=0.1, z_loss=0.1, softcap=2.0)
    loss, lse = cross_entropy_rows(logits, target, None, options, grad, config=SHAPES[2][2])
    assert torch.equal(loss, torch.zeros(5, device=DEVICE))
    assert torch.equal(lse, torch.zeros(5, device=DEVICE))
    assert torch.equal(grad, torch.zeros_like(grad))


def test_negative_infinite_logits():
    """-inf at non-target classes (a masked vocabulary): finite loss, zero gradient there."""
    options = RowOptions(z_loss=1e-3)
    logits, target, weight = make_inputs(5, 1000, torch.float32, options, False, True, seed=4)
    logits[:, 100:300] = float("-inf")
    logits[:, :1] = float("-inf")
    target = torch.where(target == options.ignore_index, target, 500)
    result = run_kernel(logits, target, weight, options, "buffer", SHAPES[2][2])
    check(result, run_reference(logits, target, weight, options), torch.float32)
    assert torch.isfinite(result[0]).all()
    assert torch.equal(result[2][:, 100:300], torch.zeros_like(result[2][:, 100:300]))


@pytest.mark.parametrize("dtype_name", ["bf16", "f64"])
def test_modes_are_bitwise_consistent(dtype_name):
    """Same bits for: no gradient / a buffer / in place / another grid / a second run; the
    gradient recomputed from the saved lse is close."""
    dtype = DTYPES[dtype_name]
    options = OPTIONS["everything"]
    for probabilities in (False, True):
        inputs = make_inputs(5, 1000, dtype, options, probabilities, True, seed=5)
        config = SHAPES[2][2]
        loss_none, lse_none, _ = run_kernel(*inputs, options, "none", config)
        loss, lse, grad = run_kernel(*inputs, options, "buffer", config)
        for other in (
            run_kernel(*inputs, options, "inplace", config),
            run_kernel(*inputs, options, "buffer", KernelConfig(256, 2, programs=0)),
            run_kernel(*inputs, options, "buffer", KernelConfig(256, 2, programs=1)),
            run_kernel(*inputs, options, "buffer", config),
        ):
            for a, b in zip(other, (loss, lse, grad), strict=True):
                assert torch.equal(a, b)
        assert torch.equal(loss_none, loss) and torch.equal(lse_none, lse)
        recomputed = torch.full_like(grad, float("nan"))
        cross_entropy_rows_grad(*inputs, options, lse, recomputed, config=config)
        # (from the rounded lse: exp(z - lse) instead of exp((z - max) - log_sum), so close
        # to the one-sweep gradient, not bitwise)
        torch.testing.assert_close(recomputed, grad, **tolerances(dtype)["grad"])


@pytest.mark.parametrize("scale_shape", ["rows", "scalar"])
def test_row_scale(scale_shape):
    """The gradient of sum_i s_i loss_i; ignored rows stay 0 whatever their scale."""
    dtype = torch.float32
    options = OPTIONS["smooth"]
    logits, target, weight = make_inputs(9, 1000, dtype, options, False, True, seed=6)
    if scale_shape == "rows":
        scale = torch.linspace(-2.0, 3.0, 9, device=DEVICE)
        scale[0] = float("nan")  # row 0 is ignored
    else:
        scale = torch.tensor(0.37, device=DEVICE)
    grad = torch.full_like(logits, float("nan"))
    cross_entropy_rows(logits, target, weight, options, grad, row_scale=scale, config=SHAPES[2][2])
    _, _, ref_grad = run_reference(logits, target, weight, options)
    expected = ref_grad * torch.broadcast_to(scale, (9,))[:, None]
    expected[target == options.ignore_index] = 0
    torch.testing.assert_close(grad, expected, **tolerances(dtype)["grad"])

    recomputed = torch.full_like(grad, float("nan"))
    _, lse = cross_entropy_rows(logits, target, weight, options, config=SHAPES[2][2])
    cross_entropy_rows_grad(
        logits, target, weight, options, lse, recomputed, row_scale=scale, config=SHAPES[2][2]
    )
    # (recomputed from the rounded lse: close to the one-sweep gradient, not bitwise; see
    # test_modes_are_bitwise_consistent)
    torch.testing.assert_close(recomputed, grad, **tolerances(dtype)["grad"])


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # 0 * inf in numpy
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("scale_kind", ["one", "scalar", "nan", "rows"])
@pytest.mark.parametrize("with_kept", [False, "mask", "target"])
def test_scale_rows(dtype_name, scale_kind, with_kept):
    """Kept rows equal ``(g.to(acc) * s.to(acc)).to(dtype)`` bit for bit (one rounding, the
    scale not rounded to a half type first); other rows, and rows scaled by exactly 1, keep
    every bit (NaN included). Rows are kept by a bool mask or by class indices other than
    ``ignore_index``."""
    dtype = DTYPES[dtype_name]
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    storage = torch.randn(6, 1100, dtype=torch.float64, device=DEVICE).to(dtype)
    grad = storage[:, 3:1003]  # strided rows
    grad[1, 7] = float("nan")
    grad[2, 8] = float("-inf")
    grad[4] = 0
    kept = torch.tensor([1, 1, 1, 0, 0, 1], dtype=torch.bool, device=DEVICE)
    scale = {
        "one": torch.tensor(1.0, device=DEVICE),
        "scalar": torch.tensor(0.3, device=DEVICE),
        "nan": torch.tensor(float("nan"), device=DEVICE),
        "rows": torch.tensor([0.3, 1.0, -2.0, float("inf"), 1.0, 7.0], device=DEVICE),
    }[scale_kind]
    rows_scale = torch.broadcast_to(scale, (6,)).to(acc)
    scaled = (grad.to(acc) * rows_scale[:, None]).to(dtype)
    active = rows_scale != 1
    if with_kept:
        active &= kept
    expected = torch.where(active[:, None], scaled, grad)
    before = storage.clone()
    if with_kept == "target":
        classes = torch.where(kept, torch.tensor([3, 0, 9, 5, 2, 1], device=DEVICE), 7)
        assert scale_rows_(grad, scale, classes, ignore_index=7) is grad
    else:
        assert scale_rows_(grad, scale, kept if with_kept else None) is grad
    # The Triton 3.6 interpreter converts float32 to bfloat16 by truncation, the GPU (and torch)
    # by rounding to nearest even: in the interpreter the two differ by at most one bf16 ulp.
    truncating = _interpreting() and dtype == torch.bfloat16
    exact = {"rtol": 2.0**-7 if truncating else 0.0, "atol": 0.0}
    torch.testing.assert_close(grad, expected, **exact, equal_nan=True)
    untouched = ~active
    assert torch.equal(storage[untouched].view(torch.uint8), before[untouched].view(torch.uint8))
    assert torch.equal(storage[:, :3], before[:, :3]) and torch.equal(
        storage[:, 1003:], before[:, 1003:]
    )


def test_errors():
    logits = torch.randn(4, 10, device=DEVICE)
    target = torch.zeros(4, dtype=torch.int64, device=DEVICE)
    options = RowOptions()
    with pytest.raises(ValueError, match="2-D logits"):
        cross_entropy_rows(logits[0], target, None, options)
    with pytest.raises(ValueError, match="unit stride"):
        cross_entropy_rows(logits.t(), target, None, options)
    with pytest.raises(ValueError, match="target of shape"):
        cross_entropy_rows(logits, target[:3], None, options)
    with pytest.raises(ValueError, match="weight of shape"):
        cross_entropy_rows(logits, target, torch.ones(9, device=DEVICE), options)
    with pytest.raises(ValueError, match="gradient buffer"):
        cross_entropy_rows(logits, target, None, options, logits.double())
    with pytest.raises(ValueError, match="row_scale"):
        cross_entropy_rows(
            logits, target, None, options, logits, row_scale=torch.ones(3, device=DEVICE)
        )
    with pytest.raises(ValueError, match="at least one class"):
        cross_entropy_rows(logits[:, :0], target, None, options)
    with pytest.raises(ValueError, match="0-d or"):
        scale_rows_(logits, torch.ones(2, device=DEVICE))
    with pytest.raises(ValueError, match="kept of shape"):
        scale_rows_(
            logits, torch.ones((), device=DEVICE), torch.ones(3, dtype=torch.bool, device=DEVICE)
        )
    empty_loss, empty_lse = cross_entropy_rows(logits[:0], target[:0], None, options)
    assert empty_loss.shape == empty_lse.shape == (0,)


def test_package_import_is_lazy():
    """Importing the backend package (and asking is_available) imports neither Triton nor torch."""
    code = (
        "import sys, crossent.backends.triton as b; assert b.is_available(); "
        "assert 'triton' not in sys.modules and 'torch' not in sys.modules, sorted(sys.modules)"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


@settings(max_examples=20, deadline=None)
@given(
    num_rows=st.integers(1, 6),
    num_classes=st.integers(1, 300),
    smoothing=st.sampled_from([0.0, 0.3]),
    z_loss=st.sampled_from([0.0, 0.05]),
    softcap=st.sampled_from([None, 1.5]),
    probabilities=st.booleans(),
    weighted=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_property_float64(
    num_rows, num_classes, smoothing, z_loss, softcap, probabilities, weighted, seed
):
    """Any shape and option mix agrees with the float64 reference."""
    options = RowOptions(ignore_index=1, label_smoothing=smoothing, z_loss=z_loss, softcap=softcap)
    inputs = make_inputs(
        num_rows, num_classes, torch.float64, options, probabilities, weighted, seed
    )
    config = KernelConfig(block=64, num_warps=1, programs=2)
    check(
        run_kernel(*inputs, options, "buffer", config),
        run_reference(*inputs, options),
        torch.float64,
    )


@pytest.mark.parametrize("probabilities", [False, True])
@pytest.mark.parametrize(
    "options", [RowOptions(), RowOptions(label_smoothing=0.1, z_loss=1e-4)], ids=["plain", "extras"]
)
def test_far_from_zero_logits_are_as_accurate_as_torch(options, probabilities):
    """Logits near 1e4 (|lse| large) and a first logit far below the rest: the kernel's float32
    error against float64 stays within a few times torch's own (log-probabilities as
    (z - max) - log_sum, moments relative to the lanes' maxima; review of 2026-11-27: it was
    ~1000x torch's error, from exp(z - lse) with lse rounded, and from centring on z[0])."""
    gen = torch.Generator().manual_seed(2)
    x64 = torch.randn(6, 50, generator=gen, dtype=torch.float64) + 1e4
    x64[:, 0] -= 2e4
    if probabilities:
        target = torch.softmax(torch.randn(6, 50, generator=gen, dtype=torch.float64), 1)
        target[:, 0] = 0.0
    else:
        target = torch.tensor([3, 7, 0, 49, 12, 5])
    x = x64.float().to(DEVICE)
    t = target.float() if probabilities else target
    # torch's own float32 error (the readable reference is torch's log_softmax in float32)
    ref_grad = torch.empty_like(x)
    ref_loss, _ = rows.cross_entropy_rows(x, t.to(DEVICE), None, options, ref_grad)
    grad = torch.empty_like(x)
    loss, _ = cross_entropy_rows(x, t.to(DEVICE), None, options, grad)

    def err(a, b):
        return float((a.double().cpu() - b).abs().max() / b.abs().max())

    # x64 rounded to float32 is the input both see: compare against float64 on that input
    exact_grad = torch.empty_like(x64)
    exact_loss, _ = rows.cross_entropy_rows(x.double().cpu(), target, None, options, exact_grad)
    floor = 4 * torch.finfo(torch.float32).eps
    assert err(loss, exact_loss) <= max(4 * err(ref_loss, exact_loss), floor)
    assert err(grad, exact_grad) <= max(4 * err(ref_grad, exact_grad), floor)


# ------------------------------------------------------------------------------------------------
# the column kernels: K-dim inputs as (N, C, S)

COLUMN_OPTIONS = {
    "plain": RowOptions(),
    "ignore2": RowOptions(ignore_index=2),
    "zloss": RowOptions(z_loss=0.01),
    "ignore0-zloss": RowOptions(ignore_index=0, z_loss=1e-3),
}


@pytest.mark.parametrize("dtype_name", ["f64", "f32", "bf16"])
@pytest.mark.parametrize("option_name", COLUMN_OPTIONS)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize(("positions", "scale_kind"), [(7, "none"), (130, "rows"), (33, "0-d")])
@pytest.mark.parametrize("grad_mode", GRAD_MODES)
def test_columns_match_the_reference_rows(dtype_name, option_name, weighted, positions,
                                          scale_kind, grad_mode):  # fmt: skip
    """(N, C, S) logits through the column kernel: the per-row losses, lse and gradient of the
    same logits as (N*S, C) rows by the reference contract; positions not a multiple of the
    block; a row scale of every kind; written into a buffer or into the logits."""
    dtype, options, n, c = DTYPES[dtype_name], COLUMN_OPTIONS[option_name], 3, 5
    rows_x, target, weight = make_inputs(n * positions, c, dtype, options, False, weighted, 4)
    columns = rows_x.reshape(n, positions, c).transpose(1, 2).contiguous()
    scale = {
        "none": None,
        "rows": torch.rand(n * positions, generator=torch.Generator().manual_seed(2)),
        "0-d": torch.tensor(0.37),
    }[scale_kind]
    scale = scale if scale is None else scale.to(DEVICE)
    # the reference in float64 on the same logits, scaled, then rounded once to the dtype
    wide = None if weight is None else weight.double()
    ref_grad = torch.empty_like(rows_x, dtype=torch.float64)
    ref_loss, ref_lse = rows.cross_entropy_rows(rows_x.double(), target, wide, options, ref_grad)
    if scale is not None:
        ref_grad *= scale.double().reshape(-1, 1)
    acc = rows.accumulation_dtype(dtype)
    ref = (ref_loss.to(acc), ref_lse.to(acc), ref_grad.to(dtype))
    grad = None
    if grad_mode == "buffer":
        grad = torch.full_like(columns, float("nan"))
    elif grad_mode == "inplace":
        columns = columns.clone()
        grad = columns
    loss, lse = cross_entropy_rows(columns, target, weight, options, grad, row_scale=scale)
    as_rows = None if grad is None else grad.transpose(1, 2).reshape(-1, c)
    check((loss, lse, as_rows), ref, dtype)


def test_columns_poison_an_out_of_range_index_and_zero_ignored_positions():
    x = torch.randn(2, 4, 9, dtype=torch.float64, device=DEVICE)
    target = torch.randint(0, 4, (18,), device=DEVICE)
    target[3], target[11] = 9, -100  # out of range (never checked here), ignored
    grad = torch.full_like(x, float("nan"))
    loss, lse = cross_entropy_rows(x, target, None, RowOptions(), grad)
    assert loss[3].isnan() and grad[0, :, 3].isnan().all()
    assert loss[11] == 0 and lse[11] == 0 and (grad[1, :, 2] == 0).all()
    others = torch.ones(18, dtype=torch.bool)
    others[[3, 11]] = False
    as_rows = grad.transpose(1, 2).reshape(18, 4)
    assert loss[others].isfinite().all() and as_rows[others].isfinite().all()


@pytest.mark.parametrize("scale_kind", ["one", "0-d", "rows", "inf"])
@pytest.mark.parametrize("with_kept", [False, "mask", "target"])
def test_scale_columns(scale_kind, with_kept):
    """scale_rows_ on an (N, C, S) gradient: factor 1 leaves it bit for bit; ignored positions
    stay 0 times any factor when ``kept`` is given."""
    gen = torch.Generator().manual_seed(6)
    grad = torch.randn(2, 3, 150, generator=gen, dtype=torch.float32).to(DEVICE)
    kept = torch.rand(300, generator=gen) > 0.3
    grad.transpose(1, 2).reshape(300, 3)[~kept] = 0.0  # ignored positions carry zeros
    kept = kept.to(DEVICE)
    scale = {
        "one": torch.tensor(1.0),
        "0-d": torch.tensor(2.5),
        "rows": torch.rand(300, generator=gen) + 0.5,
        "inf": torch.tensor(float("inf")),
    }[scale_kind].to(DEVICE)
    expected = grad.clone()
    factor = scale.reshape(-1).expand(300) if scale.dim() == 0 else scale
    positions = expected.transpose(1, 2).reshape(300, 3)  # (a copy)
    active = (factor != 1.0) & (kept if with_kept else torch.ones_like(kept))
    positions[active] = positions[active] * factor[active, None]
    expected = positions.reshape(2, 150, 3).transpose(1, 2)
    if with_kept == "target":
        classes = torch.where(kept, torch.arange(300, device=DEVICE) % 3, -100)
        out = scale_rows_(grad, scale, classes, ignore_index=-100)
    else:
        out = scale_rows_(grad, scale, kept if with_kept else None)
    assert out is grad
    torch.testing.assert_close(grad, expected, rtol=0, atol=0, equal_nan=True)


def test_public_k_dim_call_takes_the_column_kernel():
    """crossent.cross_entropy(impl='triton') on a K-dim input with enough positions: the
    column kernel (the input itself, viewed as (N, C, S)), torch's values and gradient, and an
    out-of-range target named by its position in the target's own shape."""
    import crossent
    from crossent.backends.triton import cross_entropy as launchers

    gen = torch.Generator().manual_seed(8)
    x = torch.randn(2, 5, 8, 16, generator=gen, dtype=torch.float64).to(DEVICE)
    target = torch.randint(0, 5, (2, 8, 16), generator=gen).to(DEVICE)
    target[0, 1] = -100
    weight = (torch.rand(5, generator=gen, dtype=torch.float64) + 0.2).to(DEVICE)
    seen = []
    original = launchers._launch_columns

    def spy(logits, *args):
        seen.append(logits.shape)
        return original(logits, *args)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(launchers, "_launch_columns", spy)
        for reduction in ("mean", "none"):
            leaf = x.clone().requires_grad_()
            ours = crossent.cross_entropy(leaf, target, weight, reduction=reduction,
                                          impl="triton")  # fmt: skip
            ref_leaf = x.clone().requires_grad_()
            theirs = torch.nn.functional.cross_entropy(ref_leaf, target, weight,
                                                       reduction=reduction)  # fmt: skip
            upstream = torch.rand(theirs.shape, generator=gen, dtype=torch.float64).to(DEVICE)
            ours.backward(upstream)
            theirs.backward(upstream)
            torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(leaf.grad, ref_leaf.grad, rtol=1e-10, atol=1e-12)
        assert seen == [(2, 5, 128)] * 2
        # 32 positions per sample, fewer than COLUMN_MIN_POSITIONS: through rows, same values
        narrow, narrow_target = x[..., :4].contiguous(), target[..., :4]
        small = crossent.cross_entropy(narrow, narrow_target, weight, impl="triton")
        expected = torch.nn.functional.cross_entropy(narrow, narrow_target, weight)
        torch.testing.assert_close(small, expected, rtol=1e-10, atol=1e-12)
        assert seen == [(2, 5, 128)] * 2
    target[1, 7, 15] = 5
    with pytest.raises(IndexError, match=r"got 5 at position \(1, 7, 15\)"):
        crossent.cross_entropy(x, target, impl="triton")


def test_columns_take_non_finite_logits_as_torch_does():
    """A +inf logit makes the whole position NaN (torch's log_softmax: inf - inf), as on the
    row path; -inf logits are ordinary zeros of the softmax."""
    x = torch.zeros(1, 3, 128, dtype=torch.float64)
    x[0, 0, 0] = float("inf")  # target 1: +inf elsewhere in the position
    x[0, 1, 1] = float("inf")  # target 1: +inf at the target
    x[0, 2, 2] = float("-inf")
    target = torch.ones(1, 128, dtype=torch.long)
    ours_x, ref_x = x.clone().requires_grad_(), x.clone().requires_grad_()
    import crossent

    ours = crossent.cross_entropy(ours_x, target.to(DEVICE), reduction="none", impl="triton")
    theirs = torch.nn.functional.cross_entropy(ref_x, target, reduction="none")
    ours.backward(torch.ones_like(ours))
    theirs.backward(torch.ones_like(theirs))
    torch.testing.assert_close(ours.cpu(), theirs, equal_nan=True)
    torch.testing.assert_close(ours_x.grad.cpu(), ref_x.grad, equal_nan=True)
    assert ours[0, :2].isnan().all() and ours_x.grad[0, :, :2].isnan().all()


@pytest.mark.parametrize("layout", ["rows", "columns"])
def test_strided_targets_and_factors_are_read_by_their_strides(layout):
    """A class-index target that flattens to a strided view, and upstream factors that are
    expanded (stride 0) or sliced: the kernels read each element where it is."""
    import crossent

    gen = torch.Generator().manual_seed(12)
    shape = (2, 3, 4, 32) if layout == "columns" else (128, 3)
    x = torch.randn(shape, generator=gen, dtype=torch.float64).to(DEVICE)
    wide = torch.randint(0, 3, (2, 4, 64) if layout == "columns" else (256,), generator=gen)
    target = wide[..., ::2].to(DEVICE)  # (its reshape(-1) is a stride-2 view)
    assert not target.is_contiguous()
    ours = crossent.cross_entropy(x, target, reduction="none", impl="triton")
    theirs = torch.nn.functional.cross_entropy(x, target, reduction="none")
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)
    # scale_rows_ with an expanded and a sliced factor vector
    grad = torch.randn(shape if layout == "rows" else (2, 3, 128), generator=gen).to(DEVICE)
    rows_count = 128 if layout == "rows" else 256
    for factor in (torch.tensor(2.5).expand(rows_count),
                   torch.rand(2 * rows_count, generator=gen)[::2]):  # fmt: skip
        factor = factor.to(DEVICE)
        expected = grad.clone()
        as_rows = expected if layout == "rows" else expected.transpose(1, 2).reshape(-1, 3)
        as_rows = (as_rows.double() * factor.double()[:, None]).float()
        if layout == "columns":
            as_rows = as_rows.reshape(2, 128, 3).transpose(1, 2)
        out = scale_rows_(grad.clone(), factor)
        torch.testing.assert_close(out, as_rows, rtol=0, atol=0)


@pytest.mark.filterwarnings("ignore:divide by zero encountered:RuntimeWarning")  # 1/0 in numpy
@pytest.mark.parametrize("chunk", [None, 1024])  # one program, or partials and a finishing one
@pytest.mark.parametrize(
    "positions, num_classes, ignore_index, weighted",
    [(1, 3, -100, False), (4097, 1000, -100, True), (5000, 7, 3, False), (5000, 7, 3, True),
     (0, 5, -100, True)],
)  # fmt: skip
def test_target_stats_match_torch(monkeypatch, chunk, positions, num_classes, ignore_index,
                                  weighted):  # fmt: skip
    """D (kept weight, or kept count), 1/D and the out-of-range count, against torch in
    float64; counts exactly."""
    from crossent.backends.triton import cross_entropy as launchers
    from crossent.backends.triton import target_stats

    if chunk is not None:
        monkeypatch.setattr(launchers, "TARGET_CHUNK", chunk)
    gen = torch.Generator().manual_seed(positions)
    target = torch.randint(-2, num_classes + 2, (positions,), generator=gen)
    target[::5] = ignore_index
    weight = torch.rand(num_classes, generator=gen, dtype=torch.float64) if weighted else None
    kept = target != ignore_index
    valid = kept & (target >= 0) & (target < num_classes)
    if weighted:
        expected = weight[target[valid]].sum()
    else:
        expected = valid.sum().double()
    for dtype in (torch.float64, torch.float32):
        stats = target_stats(
            target.to(DEVICE), None if weight is None else weight.to(DEVICE, dtype),
            num_classes, ignore_index, dtype,
        ).cpu()  # fmt: skip
        assert stats.shape == (3,) and stats.dtype == dtype
        # a sum of up to 5000 weights rounded to the dtype, in another order than torch's
        rtol = 1e-12 if dtype == torch.float64 else 1e-6
        torch.testing.assert_close(stats[0].double(), expected, rtol=rtol, atol=0)
        torch.testing.assert_close(stats[1].double(), 1 / expected, rtol=rtol, atol=0)
        assert stats[2].item() == (kept & ~valid).sum().item()


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # 0/0 in numpy
@pytest.mark.filterwarnings("ignore:divide by zero encountered:RuntimeWarning")
@pytest.mark.parametrize("chunk", [None, 1024])
@pytest.mark.parametrize("rows", [0, 1, 3000])
@pytest.mark.parametrize("denominator", ["tensor", 7.0, "zero"])
def test_reduce_rows_match_torch(monkeypatch, chunk, rows, denominator):
    """sum and mean (over a device D or a number) of per-row losses and z-loss terms against
    torch in float64; D = 0 gives torch's NaN (0/0) and, smoothed, a NaN loss."""
    from crossent.backends.triton import cross_entropy as launchers
    from crossent.backends.triton import reduce_rows

    if chunk is not None:
        monkeypatch.setattr(launchers, "TARGET_CHUNK", chunk)
    gen = torch.Generator().manual_seed(rows)
    loss = torch.rand(rows, generator=gen, dtype=torch.float64) * 5
    lse = torch.randn(rows, generator=gen, dtype=torch.float64) * 3
    d = {"tensor": torch.tensor(123.5, dtype=torch.float64), "zero": 0.0}.get(denominator,
                                                                                denominator)
    d_value = float(d)
    # rtol: the inputs rounded to the dtype and summed in another order (float32: about 1e-7 of
    # the sum over 3000 rows; 1e-5 still fails for one dropped or doubled row, 3e-4 of the sum);
    # atol 1e-6 only for the empty sums, exactly 0
    for dtype, rtol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        arg = d.to(DEVICE, dtype) if isinstance(d, torch.Tensor) else d
        rows_in, lse_in = loss.to(DEVICE, dtype), lse.to(DEVICE, dtype)
        total, z = reduce_rows(rows_in, lse_in, False, arg, 0.25)
        torch.testing.assert_close(total.cpu().double(), loss.sum(), rtol=rtol, atol=1e-6)
        torch.testing.assert_close(z.cpu().double(), 0.25 * (lse * lse).sum(), rtol=rtol,
                                   atol=1e-6)  # fmt: skip
        for smoothed in (False, True):
            mean, z = reduce_rows(rows_in, lse_in, True, arg, 0.0, nan_at_zero=smoothed)
            assert mean.shape == () and mean.dtype == dtype and z.dtype == dtype
            expected = loss.sum() / torch.tensor(d_value, dtype=torch.float64)  # (x/0: inf, NaN)
            if smoothed and d_value == 0:
                expected = torch.tensor(math.nan)
            torch.testing.assert_close(mean.cpu().double(), expected.double(), rtol=rtol,
                                       atol=1e-6, equal_nan=True)  # fmt: skip
            z_expected = torch.tensor(0.0) / torch.tensor(d_value)  # 0, or NaN for D = 0
            torch.testing.assert_close(z.cpu().double(), z_expected.double(), equal_nan=True)


@pytest.mark.skipif(DEVICE != "cpu", reason="counts the host path with the kernels stubbed out")
def test_eager_triton_call_launches_no_small_torch_operations():
    """The public Triton call's host path (kernels stubbed, benchmarks/host_ops.py): the target
    statistics and the reductions are Triton launches, so the only torch operation launching
    device work in a class-index fwd+bwd is autograd's seed (a probability target adds the fill
    of 1/M). Before the reduction kernels: 13 such operations (27 with weights, smoothing)."""
    from benchmarks.host_ops import cases, host_operations, stubbed_kernels

    with stubbed_kernels() as launches:
        for label, call in cases():
            call()
            launches.clear()
            device_ops, _ = host_operations(call)
            allowed = {"aten::ones_like"} | ({"aten::full"} if "probabilities" in label else set())
            assert set(device_ops) <= allowed and max(device_ops.values()) == 1, (label, device_ops)
            expected = {"cross_entropy_rows_kernel", "target_stats_kernel", "reduce_rows_kernel"}
            if "K-dim" in label:
                expected = expected - {"cross_entropy_rows_kernel"} | {
                    "cross_entropy_columns_kernel"
                }
            if "probabilities" in label:
                expected = expected - {"target_stats_kernel"}
            assert set(launches) == expected and set(launches.values()) == {1}, (label, launches)


_PTX_OF_REDUCTIONS = """
import triton, triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from crossent.backends.triton import reduction_kernels as k

def ptx(kernel, signature, constants):
    for name in constants:
        signature[name] = "constexpr"
    source = ASTSource(kernel, signature=signature, constexprs=constants)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32)).asm["ptx"]

stats = ptx(k.target_stats_kernel, {
    "target_ptr": "*i64", "weight_ptr": "*fp32", "stats_ptr": "*fp32",
    "weight_partials_ptr": "*fp32", "count_partials_ptr": "*i64", "n_positions": "i64",
    "chunk": "i64", "n_classes": "i32", "ignore_index": "i32",
}, dict(BLOCK=1024, HAS_WEIGHT=True, FINAL=True, ACC=tl.float32))
reduced = ptx(k.reduce_rows_kernel, {
    "loss_ptr": "*fp32", "lse_ptr": "*fp32", "partials_ptr": "*fp32", "out_ptr": "*fp32",
    "z_out_ptr": "*fp32", "stats_ptr": "*fp32", "n_rows": "i64", "chunk": "i64",
    "denominator": "fp64", "z_coefficient": "fp64",
}, dict(BLOCK=1024, Z_LOSS=True, FINAL=True, MEAN=True, STATS_DENOMINATOR=True,
        NAN_AT_ZERO=True, ACC=tl.float32))
for name, code in (("target_stats", stats), ("reduce_rows", reduced)):
    lines = [line.split()[0] for line in code.splitlines() if line.split()]
    print(name, sorted({op for op in lines if op.startswith("div.")}))
"""


def test_reduction_divisions_compile_to_correctly_rounded_ones():
    """On NVIDIA GPUs a float32 ``/`` in Triton is ``div.full.f32`` (up to 2 ulp); the mean, the
    z-loss mean and ``1/D`` must round as torch's division does (``div.rn.f32``). The
    interpreter divides exactly either way, so the PTX compiled for sm_90 (no GPU needed; in a
    process without ``TRITON_INTERPRET``) is checked."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    src = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run([sys.executable, "-c", _PTX_OF_REDUCTIONS], capture_output=True,
                          text=True, env=env, timeout=300, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    lines = dict(line.split(" ", 1) for line in done.stdout.strip().splitlines())
    for name in ("target_stats", "reduce_rows"):
        kinds = lines[name]
        assert "div.rn.f32" in kinds and "div.full.f32" not in kinds, (name, kinds)
        assert "div.approx" not in kinds, (name, kinds)

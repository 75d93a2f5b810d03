"""Triton kernels for K-dim inputs in their own layout: ``(N, C, S)`` columns.

Design
------
What is fused. A segmentation-style input ``(N, C, d1, ...)`` is contiguous as ``(N, C, S)``:
the ``C`` logits of one position ``(n, s)`` lie ``S`` elements apart, and neighbouring
positions are neighbours in memory. One program owns ``BLOCK_S`` neighbouring positions of one
sample; every lane of it is one position (one "row" of the row contract, row ``n * S + s``).
It walks the classes ``c = 0 .. C-1``, each step one coalesced load of ``BLOCK_S`` logits,
keeping per lane the online log-sum-exp pair (max, sum) and the target logit; then, when a
gradient is asked for, walks them again and writes ``p * a - b e_y`` (in place too: each element
is read before it is overwritten, and only by its own lane). No lane ever talks to another, so
there is no reduction across lanes and no synchronisation.

This serves class indices with weights, ``ignore_index``, z-loss and a per-row scale (the
reductions' ``1/D``, an upstream gradient); label smoothing, probability targets and
soft-capping go through rows (:mod:`crossent.backends.triton.kernels`).

What is recomputed. The gradient sweep re-reads the logits (``C * BLOCK_S`` elements per
program, in L2 when few programs are in flight). Compared with copying the input into
``(N*S, C)`` rows for the row kernel, this saves a read and a write of the whole input and
programs of a few classes each. On an H200 (2026-11-27, ``benchmarks/gpu.py`` section "column
kernel" and a probe, records ``gpu-h200-2026-11-27-columns*.md``) the kernel took 0.13-0.24 ms
at 8 x 21 x 512 x 512 (float32, bfloat16) and 16 x 150 x 128 x 128 (bfloat16), about 2.3-2.9
TB/s counted as three passes in float32; the public call through rows, 2.4-3.5 ms (the code
of commit 7cc1273: the int64 class offsets, the 1-D grid and the +inf handling came later and
have not been timed).

What memory is saved. Nothing of the input's size is allocated; per-row outputs are ``(N*S,)``.

Determinism: each lane sums its classes in a fixed order; no atomics. Offsets are ``int64``
(a sample of more than 2**31 logits is addressed correctly).
Ignored positions get a zero gradient; an out-of-range class index (only possible while a
CUDA graph is captured, when the host check cannot run) poisons its position with NaN.

``scale_columns_kernel`` applies the backward's upstream factor to such a gradient in place and
skips, on the device, every position whose factor is exactly 1 or that is ignored.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _lanes(n_positions, BLOCK_S: tl.constexpr):
    """This program's ``BLOCK_S`` positions of one sample (a 1-D grid of ``N * cdiv(S,
    BLOCK_S)`` programs): ``(sample, S, s, in_range, row)``, ``sample`` and ``S`` as int64 (so
    that ``c * S`` may pass 2**31), ``row = sample * S + s`` (int64)."""
    blocks = tl.cdiv(n_positions, BLOCK_S)
    sample = (tl.program_id(0) // blocks).to(tl.int64)
    stride = tl.zeros([], tl.int64) + n_positions
    s = (tl.program_id(0) % blocks) * BLOCK_S + tl.arange(0, BLOCK_S)
    return sample, stride, s, s < n_positions, sample * stride + s


@triton.jit
def cross_entropy_columns_kernel(
    logits_ptr,
    target_ptr,
    weight_ptr,
    grad_ptr,
    row_scale_ptr,
    row_scale_stride,
    loss_ptr,
    lse_ptr,
    n_classes,
    n_positions,
    ignore_index,
    z_loss: tl.float64,
    BLOCK_S: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    Z_LOSS: tl.constexpr,
    WRITE_GRAD: tl.constexpr,
    HAS_ROW_SCALE: tl.constexpr,
    ACC: tl.constexpr,
    LOWEST: tl.constexpr,
):
    """Per-position loss and log-sum-exp, and optionally the gradient, of ``(N, C, S)`` logits;
    a 1-D grid of ``N * cdiv(S, BLOCK_S)`` programs. ``LOWEST`` is the lowest finite ``ACC``
    value."""
    sample, stride, s, in_range, row = _lanes(n_positions, BLOCK_S)
    base = sample * n_classes * stride + s  # + c * S: logit c of each lane's position
    zeta = (tl.zeros([], ACC) + z_loss).to(ACC)

    y = tl.load(target_ptr + row, mask=in_range, other=ignore_index)
    kept = in_range & (y != ignore_index)
    valid = (y >= 0) & (y < n_classes)

    # statistics sweep: per-lane running max m and sum exp(z - m), and the target logit
    m = tl.full([BLOCK_S], LOWEST, ACC)
    total = tl.zeros([BLOCK_S], ACC)
    z_y = tl.zeros([BLOCK_S], ACC)
    c = 0
    while c < n_classes:
        z = tl.load(logits_ptr + base + c * stride, mask=in_range, other=0.0).to(ACC)
        grow = z > m
        e = tl.exp(tl.where(grow, m - z, z - m))
        total = tl.where(grow, total * e + 1.0, total + e)
        m = tl.maximum(m, z)
        z_y = tl.where(y == c, z, z_y)
        c += 1
    # A +inf logit makes torch's log_softmax NaN (inf - inf) for the whole position; the
    # running pair alone would give it a finite sum at an infinite max, so say so here.
    log_sum = tl.where(m == float("inf"), float("nan"), tl.log(total))
    lse = m + log_sum

    if HAS_WEIGHT:
        w_y = tl.load(weight_ptr + y, mask=kept & valid, other=0.0).to(ACC)
    else:
        w_y = tl.where(kept, 1.0, 0.0).to(ACC)
    loss = w_y * (log_sum - (z_y - m))  # -log p_y from the parts, as log_softmax forms it
    if Z_LOSS:
        loss += zeta * lse * lse
    poison = tl.where(kept & ~valid, float("nan"), 0.0)
    loss = tl.where(kept, loss + poison, 0.0)
    tl.store(loss_ptr + row, loss, mask=in_range)
    tl.store(lse_ptr + row, tl.where(kept, lse, 0.0), mask=in_range)

    if WRITE_GRAD:
        if HAS_ROW_SCALE:
            scale = tl.load(row_scale_ptr + row * row_scale_stride, mask=in_range, other=0.0)
            scale = scale.to(ACC)
        else:
            scale = tl.full([BLOCK_S], 1.0, ACC)
        scale = tl.where(kept, scale, 0.0)
        b = scale * w_y  # the target term
        extra = tl.zeros([BLOCK_S], ACC) + poison  # a - b: the z-loss part, formed on its own
        if Z_LOSS:
            extra += scale * (2.0 * zeta * lse)
        a = b + extra
        c = 0
        while c < n_classes:
            offsets = base + c * stride
            z = tl.load(logits_ptr + offsets, mask=in_range, other=0.0).to(ACC)
            p = tl.exp((z - m) - log_sum)
            # the target entry as b (p_y - 1) + p_y (a - b): a one-hot row keeps its z-loss part
            g = tl.where(y == c, b * (p - 1.0) + p * extra, a * p)
            g = tl.where(kept, g, 0.0)
            tl.store(grad_ptr + offsets, g.to(grad_ptr.dtype.element_ty), mask=in_range)
            c += 1


@triton.jit
def scale_columns_kernel(
    x_ptr,
    n_classes,
    n_positions,
    scale_ptr,
    scale_stride,
    kept_ptr,
    ignore_index,
    BLOCK_S: tl.constexpr,
    KEPT_MODE: tl.constexpr,
    ACC: tl.constexpr,
):
    """``x[n, :, s] *= scale[(n * S + s) * scale_stride]`` in place (``scale_stride`` 0: one
    factor for all) for kept positions whose factor is not exactly 1; a 1-D grid of
    ``N * cdiv(S, BLOCK_S)`` programs. A program whose positions all skip reads nothing more.
    ``KEPT_MODE`` as in :func:`crossent.backends.triton.kernels.scale_rows_kernel`."""
    sample, stride, s, in_range, row = _lanes(n_positions, BLOCK_S)
    scale = tl.load(scale_ptr + row * scale_stride, mask=in_range, other=1.0).to(ACC)
    active = in_range & (scale != 1.0)
    if KEPT_MODE == 1:
        active = active & (tl.load(kept_ptr + row, mask=in_range, other=0) != 0)
    elif KEPT_MODE == 2:
        active = active & (tl.load(kept_ptr + row, mask=in_range, other=0) != ignore_index)
    if tl.max(active.to(tl.int32), 0) > 0:
        base = sample * n_classes * stride + s
        c = 0
        while c < n_classes:
            offsets = base + c * stride
            x = tl.load(x_ptr + offsets, mask=active).to(ACC)
            tl.store(x_ptr + offsets, (x * scale).to(x_ptr.dtype.element_ty), mask=active)
            c += 1

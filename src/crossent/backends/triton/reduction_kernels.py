"""Triton kernels for the small reductions around the loss kernel: over the class-index
targets before it (the ``mean`` denominator and the range check) and over its per-row losses
after it (the reduced loss and z-loss).

Design
------
What is fused. Before the loss kernel runs, the fused path needs three numbers about the
targets: the ``mean`` denominator ``D = sum_i m_i * w[y_i]`` (the kept weight; the kept count
without class weights), its reciprocal (the ``row_scale`` the loss kernel folds into the
gradient) and whether any kept target lies outside ``[0, C)`` (the IndexError the host raises).
As torch operations on a CUDA tensor these were eight to fourteen launches (``!=``, ``<``,
``>=``, ``|``, ``&``, ``any``, ``sum``, ``reciprocal``; with weights also ``where``,
``index_select``, a cast, ``where``), each paid in host time: on a small call the device
waited for the host. :func:`target_stats_kernel` reads the targets once and writes all three.

Deterministic without atomics: up to ``MAX_PARTIALS`` (1024) programs each reduce a fixed,
contiguous chunk of the targets to one partial (per lane in a fixed order, then a fixed tree
across lanes); a single program (:func:`finish_target_stats_kernel`) sums the partials in a
fixed order. A call with at most one chunk of targets (most calls: up to ``TARGET_CHUNK`` =
32768 positions; both constants belong to the launchers in
:mod:`crossent.backends.triton.cross_entropy`) is one program that writes the final numbers
itself: one launch. Counts are kept as integers (exact at any size) and rounded once to the
accumulation dtype.

An out-of-range kept target reads no weight (a masked load) and adds nothing to ``D``; the host
raises before any result is used. What is written (``stats``, the accumulation dtype):
``stats[0] = D``, ``stats[1] = 1 / D`` (``inf`` when ``D = 0``, as torch's ``reciprocal``),
``stats[2]`` the number of kept out-of-range targets (exact below 2**24 in float32; only
whether it is 0 is used).

After the loss kernel, ``sum``/``mean`` of the per-row losses and of the z-loss terms
``z_loss * lse**2`` (sum, divide by ``D``, torch's NaN of a smoothed mean over ``D = 0``) were
two to nine more torch launches; :func:`reduce_rows_kernel` reads the per-row outputs once and
writes both reduced values, with the same chunked, atomic-free scheme (one launch up to
``TARGET_CHUNK`` rows, else partials and :func:`finish_reduce_rows_kernel`). The z-loss is
``sum_i z_loss * lse_i**2`` (ignored rows have ``lse = 0``), divided by ``D`` for ``mean``;
without a z-loss it is what reducing zeros gives: 0, or ``0 / D`` (NaN when ``D = 0``).

Sizes, chunk lengths, class counts and ``ignore_index`` are not specialised on (Triton would
otherwise compile a variant for each value that is 1 or a multiple of 16: a new batch size
could cost a compile mid-training); the loops over them are not where the time goes.

Divisions are correctly rounded (``div_rn`` in float32: a plain ``/`` compiles to an
approximate division on NVIDIA GPUs), as torch's ``reciprocal`` and ``/`` that they replace.

What is recomputed: nothing; each input is read once.

What memory is saved. Nothing of the targets' size is allocated (the torch version built four
boolean masks and, with weights, a gathered weight vector).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _divide(numerator, denominator, ACC: tl.constexpr):
    """``numerator / denominator`` correctly rounded, as torch's division: float32 ``/``
    compiles to an approximate division (``div.full.f32``, up to 2 ulp) on NVIDIA GPUs."""
    if ACC == tl.float32:
        return tl.math.div_rn(numerator.to(tl.float32), denominator.to(tl.float32))
    else:
        return numerator / denominator


@triton.jit
def _chunk_totals(
    target_ptr, weight_ptr, start, stop, n_classes, ignore_index,
    BLOCK: tl.constexpr, HAS_WEIGHT: tl.constexpr, ACC: tl.constexpr,
):  # fmt: skip
    """``(kept weight or count, bad count)`` of the targets in ``[start, stop)``: the weight as
    an ``ACC`` scalar with class weights, else the kept count as an int64 scalar."""
    lanes = tl.arange(0, BLOCK)
    weight_sum = tl.zeros([BLOCK], ACC)
    kept_count = tl.zeros([BLOCK], tl.int64)
    bad_count = tl.zeros([BLOCK], tl.int64)
    position = start
    while position < stop:
        index = position + lanes
        inside = index < stop
        t = tl.load(target_ptr + index, mask=inside, other=ignore_index)
        kept = inside & (t != ignore_index)
        valid = (t >= 0) & (t < n_classes)
        bad_count += (kept & ~valid).to(tl.int64)
        if HAS_WEIGHT:
            use = kept & valid
            weight_sum += tl.load(weight_ptr + tl.where(use, t, 0), mask=use, other=0.0).to(ACC)
        else:
            kept_count += (kept & valid).to(tl.int64)
        position += BLOCK
    if HAS_WEIGHT:
        kept_total = tl.sum(weight_sum, axis=0)
    else:
        kept_total = tl.sum(kept_count, axis=0)
    return kept_total, tl.sum(bad_count, axis=0)


@triton.jit
def _write_stats(stats_ptr, kept, bad, ACC: tl.constexpr):
    denominator = kept.to(ACC)
    tl.store(stats_ptr, denominator)
    tl.store(stats_ptr + 1, _divide(tl.full([], 1.0, ACC), denominator, ACC))
    tl.store(stats_ptr + 2, bad.to(ACC))


@triton.jit(do_not_specialize=['n_positions', 'chunk', 'n_classes', 'ignore_index'])
def target_stats_kernel(
    target_ptr, weight_ptr, stats_ptr, weight_partials_ptr, count_partials_ptr,
    n_positions, chunk, n_classes, ignore_index,
    BLOCK: tl.constexpr, HAS_WEIGHT: tl.constexpr, FINAL: tl.constexpr, ACC: tl.constexpr,
):  # fmt: skip
    """Program ``p`` reduces targets ``[p * chunk, (p + 1) * chunk)``: with ``FINAL`` (a grid
    of one) it writes ``stats`` itself, else its partials (weight or kept count; bad count) to
    ``weight_partials[p]`` / ``count_partials[2p], [2p + 1]``. ``chunk`` is a multiple of
    ``BLOCK``; ``target`` int64 and packed."""
    pid = tl.program_id(0).to(tl.int64)
    start = pid * chunk
    stop = tl.minimum(start + chunk, n_positions)
    kept, bad = _chunk_totals(
        target_ptr, weight_ptr, start, stop, n_classes, ignore_index, BLOCK, HAS_WEIGHT, ACC
    )
    if FINAL:
        _write_stats(stats_ptr, kept, bad, ACC)
    else:
        if HAS_WEIGHT:
            tl.store(weight_partials_ptr + pid, kept)
        else:
            tl.store(count_partials_ptr + 2 * pid, kept)
        tl.store(count_partials_ptr + 2 * pid + 1, bad)


@triton.jit(do_not_specialize=['n_partials'])
def finish_target_stats_kernel(
    stats_ptr, weight_partials_ptr, count_partials_ptr, n_partials,
    BLOCK: tl.constexpr, HAS_WEIGHT: tl.constexpr, ACC: tl.constexpr,
):  # fmt: skip
    """One program: the partials of :func:`target_stats_kernel` (``n_partials <= BLOCK``)
    summed in a fixed order into ``stats``."""
    lanes = tl.arange(0, BLOCK)
    inside = lanes < n_partials
    bad = tl.sum(tl.load(count_partials_ptr + 2 * lanes + 1, mask=inside, other=0), axis=0)
    if HAS_WEIGHT:
        kept = tl.sum(tl.load(weight_partials_ptr + lanes, mask=inside, other=0.0), axis=0)
    else:
        kept = tl.sum(tl.load(count_partials_ptr + 2 * lanes, mask=inside, other=0), axis=0)
    _write_stats(stats_ptr, kept, bad, ACC)


@triton.jit
def _row_totals(
    loss_ptr, lse_ptr, start, stop, z_coefficient, BLOCK: tl.constexpr, Z_LOSS: tl.constexpr,
    ACC: tl.constexpr,
):  # fmt: skip
    """``(sum of loss, sum of z_loss * lse**2)`` over rows ``[start, stop)`` (the second 0
    without ``Z_LOSS``; each term formed as the torch expression ``z_loss * lse * lse``)."""
    lanes = tl.arange(0, BLOCK)
    zeta = (tl.zeros([], ACC) + z_coefficient).to(ACC)
    loss_sum = tl.zeros([BLOCK], ACC)
    z_sum = tl.zeros([BLOCK], ACC)
    position = start
    while position < stop:
        index = position + lanes
        inside = index < stop
        loss_sum += tl.load(loss_ptr + index, mask=inside, other=0.0).to(ACC)
        if Z_LOSS:
            lse = tl.load(lse_ptr + index, mask=inside, other=0.0).to(ACC)
            z_sum += zeta * lse * lse
        position += BLOCK
    return tl.sum(loss_sum, axis=0), tl.sum(z_sum, axis=0)


@triton.jit
def _write_reduced(
    out_ptr, z_out_ptr, loss_total, z_total, stats_ptr, denominator,
    MEAN: tl.constexpr, STATS_DENOMINATOR: tl.constexpr, NAN_AT_ZERO: tl.constexpr,
    ACC: tl.constexpr,
):  # fmt: skip
    """The reduced loss and z-loss: sums, or (``MEAN``) sums over ``D`` (``stats[0]`` with
    ``STATS_DENOMINATOR``, else the ``denominator`` argument); ``NAN_AT_ZERO``: a loss of NaN
    where ``D = 0`` (smoothed class indices, see :func:`crossent._reduction.smoothed_index_mean`).
    An unused z-loss is ``0`` (``sum``) or ``0 / D`` (``mean``), what reducing zeros gives."""
    if MEAN:
        if STATS_DENOMINATOR:
            d = tl.load(stats_ptr).to(ACC)
        else:
            d = (tl.zeros([], ACC) + denominator).to(ACC)
        loss = _divide(loss_total, d, ACC)
        if NAN_AT_ZERO:
            loss = tl.where(d == 0.0, float("nan"), loss)
        tl.store(out_ptr, loss)
        tl.store(z_out_ptr, _divide(z_total, d, ACC))
    else:
        tl.store(out_ptr, loss_total)
        tl.store(z_out_ptr, z_total)


@triton.jit(do_not_specialize=['n_rows', 'chunk'])
def reduce_rows_kernel(
    loss_ptr, lse_ptr, partials_ptr, out_ptr, z_out_ptr, stats_ptr,
    n_rows, chunk, denominator: tl.float64, z_coefficient: tl.float64,
    BLOCK: tl.constexpr, Z_LOSS: tl.constexpr, FINAL: tl.constexpr, MEAN: tl.constexpr,
    STATS_DENOMINATOR: tl.constexpr, NAN_AT_ZERO: tl.constexpr, ACC: tl.constexpr,
):  # fmt: skip
    """Program ``p`` sums rows ``[p * chunk, (p + 1) * chunk)`` of the per-row losses (and
    z-loss terms): with ``FINAL`` (a grid of one) into the reduced outputs, else into
    ``partials[2p], [2p + 1]`` for :func:`finish_reduce_rows_kernel`."""
    pid = tl.program_id(0).to(tl.int64)
    start = pid * chunk
    stop = tl.minimum(start + chunk, n_rows)
    loss_total, z_total = _row_totals(
        loss_ptr, lse_ptr, start, stop, z_coefficient, BLOCK, Z_LOSS, ACC
    )
    if FINAL:
        _write_reduced(
            out_ptr, z_out_ptr, loss_total, z_total, stats_ptr, denominator, MEAN,
            STATS_DENOMINATOR, NAN_AT_ZERO, ACC,
        )  # fmt: skip
    else:
        tl.store(partials_ptr + 2 * pid, loss_total)
        tl.store(partials_ptr + 2 * pid + 1, z_total)


@triton.jit(do_not_specialize=['n_partials'])
def finish_reduce_rows_kernel(
    partials_ptr, out_ptr, z_out_ptr, stats_ptr, n_partials, denominator: tl.float64,
    BLOCK: tl.constexpr, MEAN: tl.constexpr,
    STATS_DENOMINATOR: tl.constexpr, NAN_AT_ZERO: tl.constexpr, ACC: tl.constexpr,
):  # fmt: skip
    """One program: the partials of :func:`reduce_rows_kernel` summed in a fixed order."""
    lanes = tl.arange(0, BLOCK)
    inside = lanes < n_partials
    loss_total = tl.sum(tl.load(partials_ptr + 2 * lanes, mask=inside, other=0.0), axis=0)
    z_total = tl.sum(tl.load(partials_ptr + 2 * lanes + 1, mask=inside, other=0.0), axis=0)
    _write_reduced(
        out_ptr, z_out_ptr, loss_total, z_total, stats_ptr, denominator, MEAN,
        STATS_DENOMINATOR, NAN_AT_ZERO, ACC,
    )  # fmt: skip

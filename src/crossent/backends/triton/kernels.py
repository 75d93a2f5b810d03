"""Triton kernels for the cross-entropy row contract (:mod:`crossent.backends.rows`).

Design
------
What is fused. One program owns whole rows (a persistent grid walks rows ``pid, pid + G, ...``).
For each kept row it makes at most two sweeps over the logits, block by block:

1. statistics sweep: softcap, online log-sum-exp, and (label smoothing / probability targets)
   the weighted sums the loss needs; it writes the row's loss and log-sum-exp;
2. gradient sweep (only when a gradient is asked for): ``p = exp(z - lse)``, every gradient term
   of the contract, the soft-cap chain rule and the caller's ``row_scale``, all in the
   accumulation dtype, then one rounding to the gradient's dtype and one store. The gradient
   may be the logits' own storage: each block is read before it is overwritten, and the two
   sweeps of a row belong to one program, so in-place is safe.

The online log-sum-exp keeps one running (max, sum) pair per lane of the block (a register
vector), not one per row: each element costs one exponential (``exp(-|z - m|)``, the side that
grew is rescaled), and the cross-warp reduction happens once per row instead of once per block.

What is recomputed. The gradient sweep re-reads the logits instead of keeping ``z`` on chip: a row
of a 128k vocabulary is 250 KB in bf16 and does not fit in registers or shared memory. Softcap's
``tanh`` is recomputed in the second sweep (cheaper than storing it). An ignored row costs one
store of zeros per gradient element and reads nothing. The kernel supports two ways of making that
second read cheap, both measured by ``benchmarks/gpu.py``: a persistent grid sized so that the rows
in flight fit in a fraction of L2 (``programs=None``), with the statistics sweep loading
``evict_last`` and the gradient sweep walking the row backwards with ``evict_first``; and one
program per row, scheduled by the hardware (``programs=0``). Measured on an H100 (2026-11-26,
N=8192, V=128256 bf16, ``benchmarks/records/``), one program per row is as fast as the best
persistent grid (63-65% of the copy bandwidth in the configuration sweep, 2.08 ms = 67% in the main
timing; one program per SM: 52%) and needs no tuning, so it is the default. 67% is what three
passes over device memory (read, re-read, write) cost at full bandwidth: the re-read is not served
by L2 at that concurrency, and the persistent grids that would keep it in L2 (about one row per SM
in flight) keep too few loads in flight to saturate the memory system. Reaching one read and one
write needs the row on chip between the sweeps (a row split across the SMs of a cluster, reduced
through distributed shared memory), which this kernel does not attempt.

What memory is saved. Nothing of size ``R x C`` is allocated: per-row outputs are ``(R,)``
vectors; the gradient goes to the caller's buffer (possibly the logits themselves).

Why the launch parameters (see ``cross_entropy.choose_config``). ``N_COLS`` is a compile-time
constant: the block loops then have constant trip counts (full blocks unmasked, one masked tail)
and can be software-pipelined (``NUM_STAGES`` > 1 turns the loads into ``cp.async`` copies that
run ahead of the arithmetic). A block is ``num_warps * 32`` lanes times one 16-byte access per
lane, so the per-lane state stays a few registers. Row offsets are ``int64``
(``row * row_stride``), so tensors beyond 2**31 elements are addressed correctly; column offsets
within a row are ``int32``. No atomics: every row is reduced by one program in a fixed order,
so results are bitwise reproducible for a fixed configuration. Nothing synchronises with the
host and nothing depends on data at launch time, so launches can be captured in a CUDA graph
(after a first, compiling call outside the capture).

``scale_rows_kernel`` applies the upstream gradient of the backward in place, row by row, and
skips (on the device) every row whose factor is exactly 1: with the reduction's ``1/D`` folded
into the forward's ``row_scale``, ``loss.backward()`` then adds no sweep over the gradient.

Float scalars are ``tl.float64`` parameters (Triton would otherwise pass Python floats as
float32), converted to the accumulation dtype once per program. Loops over rows are ``while``
loops (the Triton 3.6 interpreter cannot run ``range`` over run-time bounds with NumPy >= 2.4).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _as_acc(value, ACC: tl.constexpr):
    """A float64 scalar argument (or a Python float, in the interpreter) as an ``ACC`` scalar."""
    return (tl.zeros([], ACC) + value).to(ACC)


@triton.jit
def _tanh(u):
    """tanh(u) from ``exp`` alone (libdevice is unavailable in the interpreter).

    ``|u| < 1/8``: the odd Taylor series to ``u**17`` (truncation below 1e-19 relative);
    otherwise ``(1 - e) / (1 + e)`` with ``e = exp(-2|u|)`` (no overflow, at most a few ulp).
    """
    a = tl.abs(u)
    e = tl.exp(-2.0 * a)
    big = (1.0 - e) / (1.0 + e)
    u2 = a * a
    series = 6404582.0 / 10854718875.0
    series = series * u2 - 929569.0 / 638512875.0
    series = series * u2 + 21844.0 / 6081075.0
    series = series * u2 - 1382.0 / 155925.0
    series = series * u2 + 62.0 / 2835.0
    series = series * u2 - 17.0 / 315.0
    series = series * u2 + 2.0 / 15.0
    series = series * u2 - 1.0 / 3.0
    small = a + a * u2 * series
    t = tl.where(a < 0.125, small, big)
    return tl.where(u < 0, -t, t)


@triton.jit
def _softcapped(x, cap, inv_cap, SOFTCAP: tl.constexpr):
    """``(z, t)``: ``z = cap * tanh(x / cap)`` and ``t = tanh(x / cap)``; ``(x, x)`` without."""
    if SOFTCAP:
        t = _tanh(x * inv_cap)
        return cap * t, t
    else:
        return x, x


@triton.jit
def _load_block(ptr, cols, mask, MASKED: tl.constexpr, POLICY: tl.constexpr, ACC: tl.constexpr):
    if MASKED:
        value = tl.load(ptr + cols, mask=mask, other=0.0, eviction_policy=POLICY)
    else:
        value = tl.load(ptr + cols, eviction_policy=POLICY)
    return value.to(ACC)


@triton.jit
def _target_mass(
    target_row,
    weight_ptr,
    cols,
    mask,
    keep,
    share,
    MASKED: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    SMOOTHING: tl.constexpr,
    ACC: tl.constexpr,
):
    """``w_c * q'_c`` of a probability-target block (0 in masked lanes)."""
    q = _load_block(target_row, cols, mask, MASKED, "", ACC)
    if SMOOTHING:
        q = keep * q + share
    if HAS_WEIGHT:
        q = q * _load_block(weight_ptr, cols, mask, MASKED, "", ACC)
    if MASKED:
        q = tl.where(mask, q, 0.0)
    return q


@triton.jit
def _stats_block(
    logits_row,
    target_row,
    weight_ptr,
    cols,
    mask,
    m,
    s,
    mass,
    moment,
    shift,
    cap,
    inv_cap,
    keep,
    share,
    MASKED: tl.constexpr,
    PROB_TARGET: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    SMOOTHING: tl.constexpr,
    SOFTCAP: tl.constexpr,
    POLICY: tl.constexpr,
    ACC: tl.constexpr,
):
    """One block of the statistics sweep: per-lane online log-sum-exp and weighted sums.

    ``m``/``s``: per-lane running max (from the lowest finite value) and ``sum exp(z - m)``.
    ``mass``: per-lane ``sum w q'`` (probability targets) or ``sum w`` (smoothing). ``moment``:
    per-lane ``sum mass_c (z_c - shift)``, with a fixed per-row ``shift`` so that a large common
    offset of the logits does not cancel.
    """
    x = _load_block(logits_row, cols, mask, MASKED, POLICY, ACC)
    z, _ = _softcapped(x, cap, inv_cap, SOFTCAP)
    if MASKED:
        z = tl.where(mask, z, float("-inf"))
    # m starts at the lowest finite value, so m - z and z - m are never -inf - -inf.
    grow = z > m
    e = tl.exp(tl.where(grow, m - z, z - m))
    m = tl.maximum(m, z)
    s = tl.where(grow, s * e + 1.0, s + e)
    if PROB_TARGET or SMOOTHING:
        centred = z - shift
        if MASKED:
            centred = tl.where(mask, centred, 0.0)
        if PROB_TARGET:
            wq = _target_mass(
                target_row, weight_ptr, cols, mask, keep, share, MASKED, HAS_WEIGHT, SMOOTHING, ACC
            )
            mass += wq
            moment += wq * centred
        elif HAS_WEIGHT:
            w = _load_block(weight_ptr, cols, mask, MASKED, "", ACC)
            mass += w
            moment += w * centred
        else:
            moment += centred
    return m, s, mass, moment


@triton.jit
def _mass_block(
    target_row,
    weight_ptr,
    cols,
    mask,
    mass,
    keep,
    share,
    MASKED: tl.constexpr,
    PROB_TARGET: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    SMOOTHING: tl.constexpr,
    ACC: tl.constexpr,
):
    """``sum w q'`` (probability targets) or ``sum w`` without touching the logits."""
    if PROB_TARGET:
        mass += _target_mass(
            target_row, weight_ptr, cols, mask, keep, share, MASKED, HAS_WEIGHT, SMOOTHING, ACC
        )
    else:
        mass += _load_block(weight_ptr, cols, mask, MASKED, "", ACC)
    return mass


@triton.jit
def _grad_values(
    x,
    target_row,
    weight_ptr,
    cols,
    mask,
    lse,
    a,
    y,
    c_target,
    c_share,
    scale,
    cap,
    inv_cap,
    keep,
    share,
    MASKED: tl.constexpr,
    PROB_TARGET: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    SMOOTHING: tl.constexpr,
    SOFTCAP: tl.constexpr,
    ACC: tl.constexpr,
):
    """The gradient of one block of logits ``x`` (``ACC``), before rounding.

    ``g = scale * (p * A - B)`` with ``a = scale * A``; ``B`` is ``w * q'`` (probability
    targets) or ``(1 - eps) w_y e_y + (eps / C) w`` (``c_target``/``c_share`` carry the scale).
    """
    z, t = _softcapped(x, cap, inv_cap, SOFTCAP)
    g = tl.exp(z - lse) * a
    if PROB_TARGET:
        g -= scale * _target_mass(
            target_row, weight_ptr, cols, mask, keep, share, MASKED, HAS_WEIGHT, SMOOTHING, ACC
        )
    else:
        g -= tl.where(cols == y, c_target, 0.0)
        if SMOOTHING:
            if HAS_WEIGHT:
                g -= c_share * _load_block(weight_ptr, cols, mask, MASKED, "", ACC)
            else:
                g -= c_share
    if SOFTCAP:
        g = g * (1.0 - t * t)
    return g


@triton.jit
def _grad_block(
    logits_row,
    target_row,
    weight_ptr,
    grad_row,
    cols,
    mask,
    lse,
    a,
    y,
    c_target,
    c_share,
    scale,
    cap,
    inv_cap,
    keep,
    share,
    MASKED: tl.constexpr,
    PROB_TARGET: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    SMOOTHING: tl.constexpr,
    SOFTCAP: tl.constexpr,
    LOAD_POLICY: tl.constexpr,
    STORE_POLICY: tl.constexpr,
    ACC: tl.constexpr,
):
    """One block of the gradient sweep: read, :func:`_grad_values`, round once, store."""
    x = _load_block(logits_row, cols, mask, MASKED, LOAD_POLICY, ACC)
    g = _grad_values(
        x, target_row, weight_ptr, cols, mask, lse, a, y, c_target, c_share, scale, cap,
        inv_cap, keep, share, MASKED, PROB_TARGET, HAS_WEIGHT, SMOOTHING, SOFTCAP, ACC,
    )  # fmt: skip
    g = g.to(grad_row.dtype.element_ty)
    if MASKED:
        tl.store(grad_row + cols, g, mask=mask, eviction_policy=STORE_POLICY)
    else:
        tl.store(grad_row + cols, g, eviction_policy=STORE_POLICY)


@triton.jit
def _row_terms(
    z_y,
    weight_ptr,
    lse,
    total_mass,
    total_moment,
    shift,
    y,
    zeta,
    cap,
    inv_cap,
    keep,
    share,
    N_COLS: tl.constexpr,
    PROB_TARGET: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    SMOOTHING: tl.constexpr,
    Z_LOSS: tl.constexpr,
    SOFTCAP: tl.constexpr,
    WANT_LOSS: tl.constexpr,
    ACC: tl.constexpr,
):
    """``(loss, a, c_target, c_share)`` of a kept row from its log-sum-exp and weighted sums.

    ``z_y``: the (soft-capped) logit of the target class (index targets; read before any
    gradient is written, so that in-place gradients never overwrite it first).
    ``a``: the factor of ``p`` in the gradient; ``c_target``/``c_share``: the target's and the
    smoothing share's terms (index targets). ``total_mass``: ``sum w q'`` (probability
    targets) or ``sum w`` (smoothing with weights); ``total_moment``: ``sum mass_c (z_c - shift)``.
    ``loss`` is 0 unless ``WANT_LOSS``. An out-of-range class index (not checked on the host
    while a CUDA graph is captured) poisons the row's loss and gradient with NaN.
    """
    loss = tl.zeros([], ACC)
    if PROB_TARGET:
        a = total_mass
        if WANT_LOSS:
            loss = total_mass * (lse - shift) - total_moment
        c_target = 0.0 * a
        c_share = 0.0 * a
    else:
        valid = (y >= 0) & (y < N_COLS)
        if HAS_WEIGHT:
            w_y = tl.load(weight_ptr + y, mask=valid, other=0.0).to(ACC)
        else:
            w_y = tl.full([], 1.0, ACC)
        a = keep * w_y
        c_target = keep * w_y
        c_share = share
        if WANT_LOSS:
            loss = keep * w_y * (lse - z_y)
        if SMOOTHING:
            if HAS_WEIGHT:
                total_weight = total_mass
            else:
                total_weight = tl.full([], N_COLS, ACC)
            a += share * total_weight
            if WANT_LOSS:
                loss += share * (total_weight * (lse - shift) - total_moment)
    if Z_LOSS:
        a += 2.0 * zeta * lse
        if WANT_LOSS:
            loss += zeta * lse * lse
    if not PROB_TARGET:
        poison = tl.where(valid, 0.0, float("nan"))
        a += poison
        if WANT_LOSS:
            loss += poison
    return loss, a, c_target, c_share


@triton.jit
def cross_entropy_rows_kernel(
    logits_ptr,
    logits_row_stride,
    target_ptr,
    target_row_stride,
    weight_ptr,
    grad_ptr,
    grad_row_stride,
    row_scale_ptr,
    row_scale_stride,
    loss_ptr,
    lse_ptr,
    n_rows,
    ignore_index,
    label_smoothing: tl.float64,
    z_loss: tl.float64,
    softcap: tl.float64,
    N_COLS: tl.constexpr,
    BLOCK: tl.constexpr,
    PROB_TARGET: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    SMOOTHING: tl.constexpr,
    Z_LOSS: tl.constexpr,
    SOFTCAP: tl.constexpr,
    WRITE_GRAD: tl.constexpr,
    HAS_ROW_SCALE: tl.constexpr,
    GRAD_FROM_LSE: tl.constexpr,
    NUM_STAGES: tl.constexpr,
    STATS_POLICY: tl.constexpr,
    GRAD_LOAD_POLICY: tl.constexpr,
    STORE_POLICY: tl.constexpr,
    ACC: tl.constexpr,
    LOWEST: tl.constexpr,
):
    """Per-row loss and log-sum-exp, and optionally the gradient, of the row contract.

    ``LOWEST`` is the lowest finite ``ACC`` value. ``GRAD_FROM_LSE``: skip the statistics
    sweep, read each row's log-sum-exp from ``lse_ptr`` and write only the gradient (the
    recompute-in-backward mode; ``loss_ptr`` is unused).
    """
    NUM_FULL: tl.constexpr = N_COLS // BLOCK
    HAS_TAIL: tl.constexpr = N_COLS % BLOCK != 0
    NEEDS_SHIFT: tl.constexpr = PROB_TARGET or SMOOTHING
    cols0 = tl.arange(0, BLOCK)
    tail_cols = NUM_FULL * BLOCK + cols0
    tail_mask = tail_cols < N_COLS

    eps = _as_acc(label_smoothing, ACC)
    zeta = _as_acc(z_loss, ACC)
    cap = _as_acc(softcap, ACC)
    inv_cap = 1.0 / cap
    keep = 1.0 - eps  # the target's share; smoothing terms (share = eps / C) only if SMOOTHING
    share = eps / N_COLS

    row = tl.program_id(0)
    while row < n_rows:
        row64 = row.to(tl.int64)
        logits_row = logits_ptr + row64 * logits_row_stride
        target_row = target_ptr + row64 * target_row_stride
        if WRITE_GRAD:
            grad_row = grad_ptr + row64 * grad_row_stride
        else:
            grad_row = grad_ptr
        if PROB_TARGET:
            y = -1
            ignored = False
        else:
            y = tl.load(target_ptr + row64)
            ignored = y == ignore_index

        if ignored:
            if not GRAD_FROM_LSE:
                tl.store(loss_ptr + row64, tl.zeros([], ACC))
                tl.store(lse_ptr + row64, tl.zeros([], ACC))
            if WRITE_GRAD:
                zero = tl.zeros([BLOCK], ACC).to(grad_ptr.dtype.element_ty)
                for b in tl.range(0, NUM_FULL):
                    tl.store(grad_row + b * BLOCK + cols0, zero, eviction_policy=STORE_POLICY)
                if HAS_TAIL:
                    tl.store(
                        grad_row + tail_cols, zero, mask=tail_mask, eviction_policy=STORE_POLICY
                    )
        else:
            if NEEDS_SHIFT and not GRAD_FROM_LSE:
                first, _ = _softcapped(tl.load(logits_row).to(ACC), cap, inv_cap, SOFTCAP)
                shift = tl.where(tl.abs(first) < float("inf"), first, 0.0)
            else:
                shift = tl.zeros([], ACC)
            mass = tl.zeros([BLOCK], ACC)
            if GRAD_FROM_LSE:
                lse = tl.load(lse_ptr + row64).to(ACC)
                if PROB_TARGET or (SMOOTHING and HAS_WEIGHT):
                    for b in tl.range(0, NUM_FULL):
                        mass = _mass_block(
                            target_row,
                            weight_ptr,
                            b * BLOCK + cols0,
                            None,
                            mass,
                            keep,
                            share,
                            False,
                            PROB_TARGET,
                            HAS_WEIGHT,
                            SMOOTHING,
                            ACC,
                        )
                    if HAS_TAIL:
                        mass = _mass_block(
                            target_row,
                            weight_ptr,
                            tail_cols,
                            tail_mask,
                            mass,
                            keep,
                            share,
                            True,
                            PROB_TARGET,
                            HAS_WEIGHT,
                            SMOOTHING,
                            ACC,
                        )
            else:
                m = tl.full([BLOCK], LOWEST, ACC)
                s = tl.zeros([BLOCK], ACC)
                moment = tl.zeros([BLOCK], ACC)
                for b in tl.range(0, NUM_FULL, num_stages=NUM_STAGES):
                    m, s, mass, moment = _stats_block(
                        logits_row,
                        target_row,
                        weight_ptr,
                        b * BLOCK + cols0,
                        None,
                        m,
                        s,
                        mass,
                        moment,
                        shift,
                        cap,
                        inv_cap,
                        keep,
                        share,
                        False,
                        PROB_TARGET,
                        HAS_WEIGHT,
                        SMOOTHING,
                        SOFTCAP,
                        STATS_POLICY,
                        ACC,
                    )
                if HAS_TAIL:
                    m, s, mass, moment = _stats_block(
                        logits_row,
                        target_row,
                        weight_ptr,
                        tail_cols,
                        tail_mask,
                        m,
                        s,
                        mass,
                        moment,
                        shift,
                        cap,
                        inv_cap,
                        keep,
                        share,
                        True,
                        PROB_TARGET,
                        HAS_WEIGHT,
                        SMOOTHING,
                        SOFTCAP,
                        STATS_POLICY,
                        ACC,
                    )
                row_max = tl.max(m, 0)
                lse = row_max + tl.log(tl.sum(s * tl.exp(m - row_max), 0))

            if GRAD_FROM_LSE:
                total_moment = tl.zeros([], ACC)
            else:
                total_moment = tl.sum(moment, 0)
            z_y = tl.zeros([], ACC)
            if not PROB_TARGET and not GRAD_FROM_LSE:
                valid_y = (y >= 0) & (y < N_COLS)
                x_y = tl.load(logits_row + y, mask=valid_y, other=0.0).to(ACC)
                z_y, _ = _softcapped(x_y, cap, inv_cap, SOFTCAP)
            loss, a, c_target, c_share = _row_terms(
                z_y, weight_ptr, lse, tl.sum(mass, 0), total_moment, shift, y, zeta, cap,
                inv_cap, keep, share, N_COLS, PROB_TARGET, HAS_WEIGHT, SMOOTHING, Z_LOSS,
                SOFTCAP, not GRAD_FROM_LSE, ACC,
            )  # fmt: skip
            if not GRAD_FROM_LSE:
                tl.store(loss_ptr + row64, loss)
                tl.store(lse_ptr + row64, lse)

            if WRITE_GRAD:
                if HAS_ROW_SCALE:
                    scale = tl.load(row_scale_ptr + row64 * row_scale_stride).to(ACC)
                else:
                    scale = tl.full([], 1.0, ACC)
                a = a * scale
                c_target = c_target * scale
                c_share = c_share * scale
                # Backwards: the tail and the last full blocks are the freshest in cache.
                if HAS_TAIL:
                    _grad_block(
                        logits_row,
                        target_row,
                        weight_ptr,
                        grad_row,
                        tail_cols,
                        tail_mask,
                        lse,
                        a,
                        y,
                        c_target,
                        c_share,
                        scale,
                        cap,
                        inv_cap,
                        keep,
                        share,
                        True,
                        PROB_TARGET,
                        HAS_WEIGHT,
                        SMOOTHING,
                        SOFTCAP,
                        GRAD_LOAD_POLICY,
                        STORE_POLICY,
                        ACC,
                    )
                for i in tl.range(0, NUM_FULL, num_stages=NUM_STAGES):
                    cols = (NUM_FULL - 1 - i) * BLOCK + cols0
                    _grad_block(
                        logits_row,
                        target_row,
                        weight_ptr,
                        grad_row,
                        cols,
                        None,
                        lse,
                        a,
                        y,
                        c_target,
                        c_share,
                        scale,
                        cap,
                        inv_cap,
                        keep,
                        share,
                        False,
                        PROB_TARGET,
                        HAS_WEIGHT,
                        SMOOTHING,
                        SOFTCAP,
                        GRAD_LOAD_POLICY,
                        STORE_POLICY,
                        ACC,
                    )
        row += tl.num_programs(0)


@triton.jit
def scale_rows_kernel(
    x_ptr,
    row_stride,
    n_rows,
    n_cols,
    scale_ptr,
    scale_stride,
    kept_ptr,
    BLOCK: tl.constexpr,
    HAS_KEPT: tl.constexpr,
    ACC: tl.constexpr,
):
    """``x[r] *= scale[r]`` in place (``ACC`` arithmetic, one rounding) for kept rows whose
    scale is not exactly 1; other rows are left as they are.

    The checks happen on the device, so the usual ``loss.backward()`` (an upstream gradient of
    exactly 1) costs a launch and a scalar load per row, no sweep and no host synchronisation.
    Multiplying by 1 is the identity on every value, so skipping changes no bit.
    """
    cols = tl.arange(0, BLOCK)
    row = tl.program_id(0)
    while row < n_rows:
        row64 = row.to(tl.int64)
        scale = tl.load(scale_ptr + row64 * scale_stride).to(ACC)
        active = scale != 1.0
        if HAS_KEPT:
            active = active & (tl.load(kept_ptr + row64) != 0)
        if active:
            x_row = x_ptr + row64 * row_stride
            start = 0
            while start < n_cols:
                index = start + cols
                mask = index < n_cols
                x = tl.load(x_row + index, mask=mask).to(ACC)
                tl.store(x_row + index, (x * scale).to(x_ptr.dtype.element_ty), mask=mask)
                start += BLOCK
        row += tl.num_programs(0)


@triton.jit
def _chunk_statistics(
    x,
    target_row,
    weight_ptr,
    cols,
    mask,
    shift,
    cap,
    inv_cap,
    keep,
    share,
    PROB_TARGET: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    SMOOTHING: tl.constexpr,
    SOFTCAP: tl.constexpr,
    ACC: tl.constexpr,
    LOWEST: tl.constexpr,
):
    """``(m, s, mass, moment)`` of one chunk held in registers (``x`` in ``ACC``).

    ``m``: the chunk's max (at least ``LOWEST``); ``s``: ``sum exp(z - m)`` (a lane equal to an
    infinite ``m`` counts 1, as in the online sweep); ``mass``/``moment``: as in
    :func:`_stats_block`, summed over the chunk.
    """
    z, _ = _softcapped(x, cap, inv_cap, SOFTCAP)
    z = tl.where(mask, z, float("-inf"))
    m = tl.maximum(tl.max(z, 0), LOWEST)
    s = tl.sum(tl.where(z == m, 1.0, tl.exp(z - m)), 0)
    mass = tl.zeros([], ACC)
    moment = tl.zeros([], ACC)
    if PROB_TARGET or SMOOTHING:
        centred = tl.where(mask, z - shift, 0.0)
        if PROB_TARGET:
            wq = _target_mass(
                target_row, weight_ptr, cols, mask, keep, share, True, HAS_WEIGHT, SMOOTHING, ACC
            )
            mass = tl.sum(wq, 0)
            moment = tl.sum(wq * centred, 0)
        elif HAS_WEIGHT:
            w = _load_block(weight_ptr, cols, mask, True, "", ACC)
            mass = tl.sum(w, 0)
            moment = tl.sum(w * centred, 0)
        else:
            moment = tl.sum(centred, 0)
    return m, s, mass, moment


@triton.jit
def _chunk_load(
    logits_ptr,
    row_stride,
    target_ptr,
    row,
    n_rows,
    ignore_index,
    cols,
    mask,
    PROB_TARGET: tl.constexpr,
    POLICY: tl.constexpr,
):
    """One row's chunk of logits (zeros, and no traffic, past the last row or for an ignored
    row)."""
    row64 = row.to(tl.int64)
    wanted = mask & (row < n_rows)
    if not PROB_TARGET:
        y = tl.load(target_ptr + row64, mask=row < n_rows, other=0)
        wanted = wanted & (y != ignore_index)
    return tl.load(
        logits_ptr + row64 * row_stride + cols, mask=wanted, other=0.0, eviction_policy=POLICY
    )


@triton.jit
def _streamed_chunk_statistics(
    logits_row,
    target_row,
    weight_ptr,
    start,
    shift,
    cap,
    inv_cap,
    keep,
    share,
    NUM_FULL: tl.constexpr,
    TAIL: tl.constexpr,
    BLOCK: tl.constexpr,
    NUM_STAGES: tl.constexpr,
    PROB_TARGET: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    SMOOTHING: tl.constexpr,
    SOFTCAP: tl.constexpr,
    POLICY: tl.constexpr,
    ACC: tl.constexpr,
    LOWEST: tl.constexpr,
):
    """:func:`_chunk_statistics` of columns ``[start, start + NUM_FULL * BLOCK + TAIL)``, read
    block by block with the row kernel's per-lane online sweep."""
    cols0 = tl.arange(0, BLOCK)
    m = tl.full([BLOCK], LOWEST, ACC)
    s = tl.zeros([BLOCK], ACC)
    mass = tl.zeros([BLOCK], ACC)
    moment = tl.zeros([BLOCK], ACC)
    for b in tl.range(0, NUM_FULL, num_stages=NUM_STAGES):
        m, s, mass, moment = _stats_block(
            logits_row, target_row, weight_ptr, start + b * BLOCK + cols0, None, m, s, mass,
            moment, shift, cap, inv_cap, keep, share, False, PROB_TARGET, HAS_WEIGHT, SMOOTHING,
            SOFTCAP, POLICY, ACC,
        )  # fmt: skip
    if TAIL > 0:
        m, s, mass, moment = _stats_block(
            logits_row, target_row, weight_ptr, start + NUM_FULL * BLOCK + cols0, cols0 < TAIL,
            m, s, mass, moment, shift, cap, inv_cap, keep, share, True, PROB_TARGET, HAS_WEIGHT,
            SMOOTHING, SOFTCAP, POLICY, ACC,
        )  # fmt: skip
    chunk_max = tl.max(m, 0)
    chunk_sum = tl.sum(s * tl.exp(m - chunk_max), 0)
    return chunk_max, chunk_sum, tl.sum(mass, 0), tl.sum(moment, 0)


@triton.jit
def _streamed_chunk_gradient(
    logits_row,
    target_row,
    weight_ptr,
    grad_row,
    start,
    lse,
    a,
    y,
    c_target,
    c_share,
    scale,
    cap,
    inv_cap,
    keep,
    share,
    NUM_FULL: tl.constexpr,
    TAIL: tl.constexpr,
    BLOCK: tl.constexpr,
    NUM_STAGES: tl.constexpr,
    PROB_TARGET: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    SMOOTHING: tl.constexpr,
    SOFTCAP: tl.constexpr,
    LOAD_POLICY: tl.constexpr,
    STORE_POLICY: tl.constexpr,
    ACC: tl.constexpr,
):
    """The gradient of columns ``[start, start + NUM_FULL * BLOCK + TAIL)``, re-read block by
    block, backwards (the freshest blocks in L2 first)."""
    cols0 = tl.arange(0, BLOCK)
    if TAIL > 0:
        _grad_block(
            logits_row, target_row, weight_ptr, grad_row, start + NUM_FULL * BLOCK + cols0,
            cols0 < TAIL, lse, a, y, c_target, c_share, scale, cap, inv_cap, keep, share, True,
            PROB_TARGET, HAS_WEIGHT, SMOOTHING, SOFTCAP, LOAD_POLICY, STORE_POLICY, ACC,
        )  # fmt: skip
    for i in tl.range(0, NUM_FULL, num_stages=NUM_STAGES):
        _grad_block(
            logits_row, target_row, weight_ptr, grad_row,
            start + (NUM_FULL - 1 - i) * BLOCK + cols0, None, lse, a, y, c_target, c_share,
            scale, cap, inv_cap, keep, share, False, PROB_TARGET, HAS_WEIGHT, SMOOTHING, SOFTCAP,
            LOAD_POLICY, STORE_POLICY, ACC,
        )  # fmt: skip


@triton.jit
def cross_entropy_split_rows_kernel(
    logits_ptr,
    logits_row_stride,
    target_ptr,
    target_row_stride,
    weight_ptr,
    grad_ptr,
    grad_row_stride,
    row_scale_ptr,
    row_scale_stride,
    loss_ptr,
    lse_ptr,
    n_rows,
    ignore_index,
    label_smoothing: tl.float64,
    z_loss: tl.float64,
    softcap: tl.float64,
    partial_ptr,
    counter_ptr,
    N_COLS: tl.constexpr,
    CHUNK: tl.constexpr,
    SPLIT: tl.constexpr,
    SPLIT_P2: tl.constexpr,
    PHASE: tl.constexpr,
    HOLD: tl.constexpr,
    PREFETCH: tl.constexpr,
    BLOCK: tl.constexpr,
    NUM_STAGES: tl.constexpr,
    STATS_POLICY: tl.constexpr,
    PROB_TARGET: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    SMOOTHING: tl.constexpr,
    Z_LOSS: tl.constexpr,
    SOFTCAP: tl.constexpr,
    HAS_ROW_SCALE: tl.constexpr,
    LOAD_POLICY: tl.constexpr,
    STORE_POLICY: tl.constexpr,
    ACC: tl.constexpr,
    LOWEST: tl.constexpr,
):
    """Loss, log-sum-exp and gradient with each row split over ``SPLIT`` cooperating programs.

    Program ``pid`` owns columns ``[part * CHUNK, (part + 1) * CHUNK)`` (``part = pid % SPLIT``)
    of the rows ``group, group + groups, ...`` (``group = pid // SPLIT``). It loads its chunk
    once and keeps it in registers; the row's statistics are combined from ``SPLIT`` partial
    records in ``partial_ptr`` (``(rows, SPLIT, 8)``, ``ACC``: max, sum exp, mass, moment, the
    target's logit if the part holds it (else 0), the row's shift), combined in a fixed order,
    so every part computes the same log-sum-exp bit for bit. Everything a part needs from
    outside its own chunk is read before the first gradient chunk of the row is written, so
    the gradient may overwrite the logits (in place).

    ``PHASE``: 0 = cooperative: each part publishes its record, then waits on the group's
    counter (``counter_ptr[group]``, zero at launch, one increment per part per row) until all
    ``SPLIT`` records of the row are there, then writes its gradient chunk from registers (one
    read, one write). This needs every program of a group resident at once (the launcher sizes
    the grid to the device). 1 = publish the records only; 2 = combine them, re-read the chunk
    and write the gradient (two launches, no waiting: what the interpreter runs, since it
    executes programs one after another). ``PREFETCH``: load the group's next row before
    waiting on the current one, so that the memory system is busy during the wait.

    ``HOLD``: the chunk is held in registers (one read from device memory). Without it each part
    streams its chunk in ``BLOCK``-column blocks twice, like the row kernel: the statistics
    sweep, then (after the wait) the gradient sweep, whose re-read finds the chunk in L2 because
    only the chunks in flight (a few tens of KB per program) stand between the two reads, where
    the row kernel keeps whole rows in flight. Streaming needs few registers, so many programs
    share an SM and hide each other's waits.
    """
    CHUNK_FULL: tl.constexpr = CHUNK // BLOCK
    LAST_COLS: tl.constexpr = N_COLS - (SPLIT - 1) * CHUNK
    LAST_FULL: tl.constexpr = LAST_COLS // BLOCK
    LAST_TAIL: tl.constexpr = LAST_COLS % BLOCK
    eps = _as_acc(label_smoothing, ACC)
    zeta = _as_acc(z_loss, ACC)
    cap = _as_acc(softcap, ACC)
    inv_cap = 1.0 / cap
    keep = 1.0 - eps
    share = eps / N_COLS
    NEEDS_SHIFT: tl.constexpr = PROB_TARGET or SMOOTHING

    pid = tl.program_id(0)
    part = pid % SPLIT
    group = pid // SPLIT
    groups = tl.num_programs(0) // SPLIT
    cols = part * CHUNK + tl.arange(0, CHUNK)
    mask = cols < N_COLS
    parts = tl.arange(0, SPLIT_P2)
    parts_mask = parts < SPLIT
    syncs = 0

    row = group
    if PREFETCH:
        x_next = _chunk_load(
            logits_ptr, logits_row_stride, target_ptr, row, n_rows, ignore_index, cols, mask,
            PROB_TARGET, LOAD_POLICY,
        )  # fmt: skip
    while row < n_rows:
        row64 = row.to(tl.int64)
        logits_row = logits_ptr + row64 * logits_row_stride
        target_row = target_ptr + row64 * target_row_stride
        grad_row = grad_ptr + row64 * grad_row_stride
        record = partial_ptr + (row64 * SPLIT + part) * 8
        if PROB_TARGET:
            y = -1
            ignored = False
        else:
            y = tl.load(target_ptr + row64)
            ignored = y == ignore_index
        if PREFETCH:
            x_raw = x_next
            x_next = _chunk_load(
                logits_ptr, logits_row_stride, target_ptr, row + groups, n_rows, ignore_index,
                cols, mask, PROB_TARGET, LOAD_POLICY,
            )  # fmt: skip
        elif HOLD:
            x_raw = _chunk_load(
                logits_ptr, logits_row_stride, target_ptr, row, n_rows, ignore_index, cols, mask,
                PROB_TARGET, LOAD_POLICY,
            )  # fmt: skip

        if ignored:
            if PHASE != 1:
                if HOLD:
                    zero = tl.zeros([CHUNK], ACC).to(grad_ptr.dtype.element_ty)
                    tl.store(grad_row + cols, zero, mask=mask, eviction_policy=STORE_POLICY)
                else:
                    zero = tl.zeros([BLOCK], ACC).to(grad_ptr.dtype.element_ty)
                    block_cols = part * CHUNK + tl.arange(0, BLOCK)
                    for b in tl.range(0, CHUNK_FULL):
                        tl.store(
                            grad_row + block_cols + b * BLOCK,
                            zero,
                            mask=block_cols + b * BLOCK < N_COLS,
                            eviction_policy=STORE_POLICY,
                        )
                if part == 0:
                    tl.store(loss_ptr + row64, tl.zeros([], ACC))
                    tl.store(lse_ptr + row64, tl.zeros([], ACC))
        else:
            if HOLD:
                x = x_raw.to(ACC)
            if PHASE != 2:
                shift = tl.zeros([], ACC)
                if NEEDS_SHIFT:
                    first, _ = _softcapped(tl.load(logits_row).to(ACC), cap, inv_cap, SOFTCAP)
                    shift = tl.where(tl.abs(first) < float("inf"), first, 0.0)
                z_y = tl.zeros([], ACC)
                if not PROB_TARGET:
                    mine = (y >= part * CHUNK) & (y < part * CHUNK + CHUNK) & (y < N_COLS)
                    x_y = tl.load(logits_row + y, mask=mine, other=0.0).to(ACC)
                    z_y, _ = _softcapped(x_y, cap, inv_cap, SOFTCAP)
                    z_y = tl.where(mine, z_y, 0.0)
                if HOLD:
                    m, s, mass, moment = _chunk_statistics(
                        x, target_row, weight_ptr, cols, mask, shift, cap, inv_cap, keep, share,
                        PROB_TARGET, HAS_WEIGHT, SMOOTHING, SOFTCAP, ACC, LOWEST,
                    )  # fmt: skip
                elif part < SPLIT - 1:
                    m, s, mass, moment = _streamed_chunk_statistics(
                        logits_row, target_row, weight_ptr, part * CHUNK, shift, cap, inv_cap,
                        keep, share, CHUNK_FULL, 0, BLOCK, NUM_STAGES, PROB_TARGET, HAS_WEIGHT,
                        SMOOTHING, SOFTCAP, STATS_POLICY, ACC, LOWEST,
                    )  # fmt: skip
                else:
                    m, s, mass, moment = _streamed_chunk_statistics(
                        logits_row, target_row, weight_ptr, part * CHUNK, shift, cap, inv_cap,
                        keep, share, LAST_FULL, LAST_TAIL, BLOCK, NUM_STAGES, PROB_TARGET,
                        HAS_WEIGHT, SMOOTHING, SOFTCAP, STATS_POLICY, ACC, LOWEST,
                    )  # fmt: skip
                # Published before the barrier below; the counter's release then orders them
                # for the other parts (the pattern of a cooperative grid synchronisation).
                tl.store(record, m)
                tl.store(record + 1, s)
                tl.store(record + 2, mass)
                tl.store(record + 3, moment)
                tl.store(record + 4, z_y)
                tl.store(record + 5, shift)
            if PHASE == 0:
                syncs += 1
                if SPLIT > 1:
                    tl.debug_barrier()
                    seen = tl.atomic_add(counter_ptr + group, 1, sem="acq_rel") + 1
                    while seen < syncs * SPLIT:
                        seen = tl.atomic_add(counter_ptr + group, 0, sem="acquire")
                    tl.debug_barrier()
            if PHASE != 1:
                records = partial_ptr + row64 * SPLIT * 8 + parts * 8
                ms = tl.load(records, mask=parts_mask, other=float("-inf"), volatile=True)
                ss = tl.load(records + 1, mask=parts_mask, other=0.0, volatile=True)
                row_max = tl.max(ms, 0)
                scaled = tl.where(ms == row_max, ss, ss * tl.exp(ms - row_max))
                lse = row_max + tl.log(tl.sum(scaled, 0))
                total_mass = tl.zeros([], ACC)
                total_moment = tl.zeros([], ACC)
                shift = tl.load(record + 5, volatile=True)
                z_y = tl.zeros([], ACC)
                if not PROB_TARGET:  # one part holds the target: the others recorded 0
                    z_ys = tl.load(records + 4, mask=parts_mask, other=0.0, volatile=True)
                    z_y = tl.sum(z_ys, 0)
                if NEEDS_SHIFT:
                    masses = tl.load(records + 2, mask=parts_mask, other=0.0, volatile=True)
                    moments = tl.load(records + 3, mask=parts_mask, other=0.0, volatile=True)
                    total_mass = tl.sum(masses, 0)
                    total_moment = tl.sum(moments, 0)
                loss, a, c_target, c_share = _row_terms(
                    z_y, weight_ptr, lse, total_mass, total_moment, shift, y, zeta, cap,
                    inv_cap, keep, share, N_COLS, PROB_TARGET, HAS_WEIGHT, SMOOTHING, Z_LOSS,
                    SOFTCAP, True, ACC,
                )  # fmt: skip
                if part == 0:
                    tl.store(loss_ptr + row64, loss)
                    tl.store(lse_ptr + row64, lse)
                if HAS_ROW_SCALE:
                    scale = tl.load(row_scale_ptr + row64 * row_scale_stride).to(ACC)
                else:
                    scale = tl.full([], 1.0, ACC)
                a = a * scale
                c_target = c_target * scale
                c_share = c_share * scale
                if HOLD:
                    g = _grad_values(
                        x, target_row, weight_ptr, cols, mask, lse, a, y, c_target, c_share,
                        scale, cap, inv_cap, keep, share, True, PROB_TARGET, HAS_WEIGHT,
                        SMOOTHING, SOFTCAP, ACC,
                    )  # fmt: skip
                    tl.store(
                        grad_row + cols,
                        g.to(grad_ptr.dtype.element_ty),
                        mask=mask,
                        eviction_policy=STORE_POLICY,
                    )
                elif part < SPLIT - 1:
                    _streamed_chunk_gradient(
                        logits_row, target_row, weight_ptr, grad_row, part * CHUNK, lse, a, y,
                        c_target, c_share, scale, cap, inv_cap, keep, share, CHUNK_FULL, 0, BLOCK,
                        NUM_STAGES, PROB_TARGET, HAS_WEIGHT, SMOOTHING, SOFTCAP, LOAD_POLICY,
                        STORE_POLICY, ACC,
                    )  # fmt: skip
                else:
                    _streamed_chunk_gradient(
                        logits_row, target_row, weight_ptr, grad_row, part * CHUNK, lse, a, y,
                        c_target, c_share, scale, cap, inv_cap, keep, share, LAST_FULL,
                        LAST_TAIL, BLOCK, NUM_STAGES, PROB_TARGET, HAS_WEIGHT, SMOOTHING,
                        SOFTCAP, LOAD_POLICY, STORE_POLICY, ACC,
                    )  # fmt: skip
        row += groups

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
write needs the row on chip between the sweeps. A split-row kernel tried that (commit 286389a:
each row over 8-16 programs exchanging partial statistics through global memory behind an
acquire/release counter, the chunk held in registers or re-read from L2): correct, but slower
on an H200 at every shape measured (2.07-2.9 ms against 1.81 ms at 8192 x 128256, also for 16 to
1024 rows; ``benchmarks/records/gpu-h200-2026-11-26*.md``): the registers hold 32-64 KB of a
row per SM, too little to cover the several L2 round trips of each row's exchange. A wider launch
sweep on the H200 (2026-11-27, ``gpu-h200-2026-11-27-sweep.md``: persistent grids of 1-8 programs
per SM, 1-6 pipeline stages, blocks of 1024-16384 elements) found nothing above 58% of the copy
bandwidth; 2048-element blocks with 8 warps and one program per row, its best at
4096 x 256000 and within 2% of its best at 8192 x 128256, is the default since.
What is left is distributed shared memory within a cluster, which Triton's language does not
expose.

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
    ``mass``: per-lane ``sum w q'`` (probability targets), ``sum w`` or the element count
    (smoothing). ``moment``: per-lane ``sum mass_c (z_c - m)``, relative to the lane's own
    running max and rebased when it grows: every term is <= 0, so nothing cancels however far
    apart the logits of a row are.
    """
    x = _load_block(logits_row, cols, mask, MASKED, POLICY, ACC)
    z, _ = _softcapped(x, cap, inv_cap, SOFTCAP)
    if MASKED:
        z = tl.where(mask, z, float("-inf"))
    # m starts at the lowest finite value, so m - z and z - m are never -inf - -inf.
    grow = z > m
    e = tl.exp(tl.where(grow, m - z, z - m))
    new_m = tl.maximum(m, z)
    s = tl.where(grow, s * e + 1.0, s + e)
    if PROB_TARGET or SMOOTHING:
        # rebase the lane's earlier terms onto its new max (nothing to rebase while mass is 0:
        # the first step from the lowest finite value may be inf)
        moment -= tl.where(mass == 0.0, 0.0, mass * (new_m - m))
        centred = z - new_m
        if MASKED:
            centred = tl.where(mask, centred, 0.0)
        if PROB_TARGET:
            wq = _target_mass(
                target_row, weight_ptr, cols, mask, keep, share, MASKED, HAS_WEIGHT, SMOOTHING, ACC
            )
        elif HAS_WEIGHT:
            wq = _load_block(weight_ptr, cols, mask, MASKED, "", ACC)
        elif MASKED:
            wq = tl.where(mask, 1.0, 0.0).to(ACC)
        else:
            wq = tl.full(z.shape, 1.0, ACC)
        mass += wq
        moment += wq * centred
    return new_m, s, mass, moment


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
def _grad_block(
    logits_row,
    target_row,
    weight_ptr,
    grad_row,
    cols,
    mask,
    row_max,
    log_sum,
    a,
    y,
    c_target,
    extra,
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
    """One block of the gradient sweep, rounded once and stored.

    ``p = exp((z - max) - log_sum)`` (not ``exp(z - lse)``: ``lse`` rounded once carries an
    error of ulp(|lse|) into every ``p``). ``g = scale * (p * A - B)`` with ``a = scale * A``;
    ``B`` is ``w * q'`` (probability targets) or ``(1 - eps) w_y e_y + (eps / C) w``
    (``c_target``/``c_share`` carry the scale). The target entry is formed as
    ``c_target (p - 1) + p extra`` with ``extra = a - c_target`` computed on its own, so a
    one-hot softmax (``p_y = 1``) keeps the z-loss and smoothing parts of its gradient.
    """
    x = _load_block(logits_row, cols, mask, MASKED, LOAD_POLICY, ACC)
    z, t = _softcapped(x, cap, inv_cap, SOFTCAP)
    p = tl.exp((z - row_max) - log_sum)
    if PROB_TARGET:
        g = p * a - scale * _target_mass(
            target_row, weight_ptr, cols, mask, keep, share, MASKED, HAS_WEIGHT, SMOOTHING, ACC
        )
    else:
        g = tl.where(cols == y, c_target * (p - 1.0) + p * extra, p * a)
        if SMOOTHING:
            if HAS_WEIGHT:
                g -= c_share * _load_block(weight_ptr, cols, mask, MASKED, "", ACC)
            else:
                g -= c_share
    if SOFTCAP:
        g = g * (1.0 - t * t)
    g = g.to(grad_row.dtype.element_ty)
    if MASKED:
        tl.store(grad_row + cols, g, mask=mask, eviction_policy=STORE_POLICY)
    else:
        tl.store(grad_row + cols, g, eviction_policy=STORE_POLICY)


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
            mass = tl.zeros([BLOCK], ACC)
            if GRAD_FROM_LSE:
                # (the saved lse is all there is: p = exp(z - lse), ulp(|lse|) in each p)
                lse = tl.load(lse_ptr + row64).to(ACC)
                row_max = lse
                log_sum = tl.zeros([], ACC)
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
                log_sum = tl.log(tl.sum(s * tl.exp(m - row_max), 0))
                lse = row_max + log_sum  # (output and z-loss; log-probabilities use the parts)
                if PROB_TARGET or SMOOTHING:
                    # sum_c mass_c (z_c - row_max): each lane's moment rebased onto the row max
                    # (lanes that saw nothing have mass 0 and a moment of 0)
                    lag = tl.where(mass == 0.0, 0.0, mass * (m - row_max))
                    centred_moment = tl.sum(moment + lag, 0)

            # A = the factor of p in the gradient; the loss from the same pieces.
            if PROB_TARGET:
                total_mass = tl.sum(mass, 0)
                a = total_mass
                if not GRAD_FROM_LSE:
                    loss = total_mass * log_sum - centred_moment
                c_target = 0.0 * a
                c_share = 0.0 * a
                extra = 0.0 * a
            else:
                valid = (y >= 0) & (y < N_COLS)
                if HAS_WEIGHT:
                    w_y = tl.load(weight_ptr + y, mask=valid, other=0.0).to(ACC)
                else:
                    w_y = tl.full([], 1.0, ACC)
                c_target = keep * w_y
                c_share = share
                extra = tl.zeros([], ACC)  # a - c_target, formed on its own (see _grad_block)
                if not GRAD_FROM_LSE:
                    x_y = tl.load(logits_row + y, mask=valid, other=0.0).to(ACC)
                    z_y, _ = _softcapped(x_y, cap, inv_cap, SOFTCAP)
                    loss = keep * w_y * (log_sum - (z_y - row_max))  # -log p_y as log_softmax
                if SMOOTHING:
                    if HAS_WEIGHT:
                        total_weight = tl.sum(mass, 0)
                    else:
                        total_weight = tl.full([], N_COLS, ACC)
                    extra += share * total_weight
                    if not GRAD_FROM_LSE:
                        loss += share * (total_weight * log_sum - centred_moment)
            if Z_LOSS:
                if PROB_TARGET:
                    a += 2.0 * zeta * lse
                else:
                    extra += 2.0 * zeta * lse
                if not GRAD_FROM_LSE:
                    loss += zeta * lse * lse
            if not PROB_TARGET:
                # An out-of-range class index (not checked on the host while a CUDA graph is
                # captured) poisons its row's loss and gradient with NaN, never a wrong number.
                poison = tl.where(valid, 0.0, float("nan"))
                extra += poison
                a = c_target + extra
                if not GRAD_FROM_LSE:
                    loss += poison
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
                extra = extra * scale
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
                        row_max,
                        log_sum,
                        a,
                        y,
                        c_target,
                        extra,
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
                        row_max,
                        log_sum,
                        a,
                        y,
                        c_target,
                        extra,
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
    ignore_index,
    BLOCK: tl.constexpr,
    KEPT_MODE: tl.constexpr,
    ACC: tl.constexpr,
):
    """``x[r] *= scale[r]`` in place (``ACC`` arithmetic, one rounding) for kept rows whose
    scale is not exactly 1; other rows are left as they are. ``KEPT_MODE``: 0 every row is
    kept; 1 ``kept_ptr`` is a bool mask; 2 ``kept_ptr`` holds int64 class indices and a row is
    kept unless its index is ``ignore_index``.

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
        if KEPT_MODE == 1:
            active = active & (tl.load(kept_ptr + row64) != 0)
        elif KEPT_MODE == 2:
            active = active & (tl.load(kept_ptr + row64) != ignore_index)
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

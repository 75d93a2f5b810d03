"""Launchers for the Triton cross-entropy kernels: the row contract on CUDA tensors.

:func:`cross_entropy_rows` implements :func:`crossent.backends.rows.cross_entropy_rows` (same
arguments, same results up to rounding) with the CPU kernel's extension ``row_scale``;
:func:`cross_entropy_rows_grad` recomputes the gradient from saved log-sum-exps (one read of the
logits, one write of the gradient); :func:`scale_rows_` applies an upstream gradient in
place and costs no sweep when it is exactly 1. CPU tensors run through the Triton interpreter
(``TRITON_INTERPRET=1`` set before Triton is imported), which is how the test-suite checks them.

Launch configuration (:func:`choose_config`): fixed heuristics, no autotuning, so the choice is
deterministic and costs nothing at import or at the first call:

* a block of ``num_warps * 32`` lanes times one 16-byte access per lane (8 bf16/fp16, 4 fp32,
  2 fp64 elements), so the per-lane online-softmax state stays a few registers;
* ``num_warps = 8`` for long rows (a 2048-element bf16 block), fewer for short ones (at least
  one full access per lane). Measured on an H200 (bf16, in place, 2026-11-27,
  ``benchmarks/records/gpu-h200-2026-11-27-sweep.md``): 1.87 ms against 2.02 ms for 16 warps
  and 4096-element blocks at 8192 x 128256, 1.77 against 2.06 ms at 4096 x 256000; on an H100
  2% faster (2.17 against 2.22 ms, ``gpu-h100-2026-11-27-block2048.md``);
* ``num_stages = 3`` (two blocks of loads in flight ahead of the arithmetic);
* one program per row, scheduled by the hardware (``programs=0``). Measured on an H100 (bf16,
  8192 x 128256, in place, ``gpu-h100-2026-11-27-block2048.md``): 2.17 ms against 3.69 ms for a
  persistent grid sized to keep the rows in flight within ``L2_FRACTION`` of the L2 cache (still
  available as ``programs=None``), 2.57 ms for two programs per SM and 3.60 ms for one. No
  configuration of a wider sweep on the H200 (persistent grids of 1-8 programs per SM, 1-6
  pipeline stages, blocks of 1024-16384 elements) reached more than 58% of the copy bandwidth.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

from crossent.backends.rows import RowOptions, accumulation_dtype
from crossent.backends.rows import num_rows as rows_of

if TYPE_CHECKING:
    import torch

#: Fraction of the L2 cache the rows in flight may occupy (the rest is left to the gradient
#: writes, the weights/targets and other traffic).
L2_FRACTION = 0.6

_WARP = 32
_MAX_WARPS = 8


@dataclass(frozen=True, slots=True)
class KernelConfig:
    """Launch parameters of the row kernel.

    ``programs``: grid size; None = the persistent-grid heuristic on CUDA and one program per
    row in the interpreter; 0 = one program per row (hardware-scheduled). ``l2_hints``: load
    the statistics sweep with ``evict_last`` and the gradient sweep (and stores) with
    ``evict_first``.
    """

    block: int
    num_warps: int
    num_stages: int = 3
    programs: int | None = None
    l2_hints: bool = True


def _next_power_of_2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


@functools.lru_cache(maxsize=512)  # (a call's host cost matters: one lookup per launch)
def choose_config(num_cols: int, element_size: int) -> KernelConfig:
    """The default launch parameters for rows of ``num_cols`` elements of ``element_size``.

    >>> choose_config(128256, 2)
    KernelConfig(block=2048, num_warps=8, num_stages=3, programs=0, l2_hints=True)
    >>> choose_config(1000, 4)
    KernelConfig(block=1024, num_warps=8, num_stages=3, programs=0, l2_hints=True)
    """
    per_lane = max(1, 16 // element_size)
    block = min(_next_power_of_2(num_cols), _MAX_WARPS * _WARP * per_lane)
    block = max(block, 16)
    num_warps = max(1, min(_MAX_WARPS, block // (_WARP * per_lane)))
    return KernelConfig(block=block, num_warps=num_warps, programs=0)


def _interpreting() -> bool:
    from triton.runtime.interpreter import InterpretedFunction

    from crossent.backends.triton import kernels

    return isinstance(kernels.cross_entropy_rows_kernel, InterpretedFunction)


def _check_device(*tensors: torch.Tensor | None) -> None:
    """Every given tensor (None: absent) lies where the kernels run: CUDA, or the CPU under the
    interpreter."""
    for tensor in tensors:
        if tensor is None or tensor.is_cuda:
            continue
        if tensor.device.type == "cpu" and _interpreting():
            continue
        raise RuntimeError(
            "the Triton kernels run on CUDA tensors (or on CPU tensors under TRITON_INTERPRET=1 "
            f"set before triton is imported); got a tensor on {tensor.device}"
        )


@functools.cache
def _device_limits(index: int) -> tuple[int, int, int, int, int]:
    """(SMs, L2 bytes, registers per SM, shared memory per SM, threads per SM) of a CUDA device."""
    import torch

    props = torch.cuda.get_device_properties(index)
    return (
        props.multi_processor_count,
        int(getattr(props, "L2_cache_size", 50 * 2**20)),
        int(getattr(props, "regs_per_multiprocessor", 65536)),
        int(getattr(props, "shared_memory_per_multiprocessor", 228 * 1024)),
        int(getattr(props, "max_threads_per_multi_processor", 2048)),
    )


_occupancy_cache: dict[tuple, int] = {}


def _occupancy(key: tuple, device_index: int, warmup) -> int:
    """Programs of one compiled kernel that fit on an SM at once (compiled once, then cached).

    Read from the compiled kernel's registers, shared memory and warps. Should Triton's API not
    expose them, one program per SM is assumed (a safe grid, never an oversubscribed one).
    """
    if key not in _occupancy_cache:
        try:
            compiled = warmup()
            compiled._init_handles()
            _, _, regs, shared, threads = _device_limits(device_index)
            num_warps = compiled.metadata.num_warps
            regs_per_warp = -(-max(compiled.n_regs, 1) * _WARP // 256) * 256
            fits = [threads // (num_warps * _WARP), regs // (regs_per_warp * num_warps), 32]
            if compiled.metadata.shared:
                fits.append(shared // compiled.metadata.shared)
            _occupancy_cache[key] = max(1, min(fits))
        except (AttributeError, TypeError) as exc:  # pragma: no cover - Triton API drift
            warnings.warn(
                f"could not read the Triton kernel's occupancy ({exc!r}); using one program per SM",
                RuntimeWarning,
                stacklevel=4,
            )
            _occupancy_cache[key] = 1
    return _occupancy_cache[key]


def _grid_size(
    config: KernelConfig, num_rows: int, row_bytes: int, device: torch.device, occupancy
) -> int:
    if config.programs is not None:
        return num_rows if config.programs == 0 else max(1, min(num_rows, config.programs))
    if device.type != "cuda":
        return num_rows
    index = device.index if device.index is not None else 0
    sms, l2_bytes, *_ = _device_limits(index)
    in_flight = int(L2_FRACTION * l2_bytes) // max(1, row_bytes)
    resident = sms * occupancy(index)
    return max(1, min(num_rows, resident, max(sms, in_flight)))


def _checked_weight_and_scale(weight, row_scale, num_classes: int, num_rows: int):
    """``(weight, row_scale)`` as the kernels read them (contiguous, flat), after their shape
    checks (ValueError)."""
    if weight is not None:
        if weight.shape != (num_classes,):
            raise ValueError(
                f"expected a weight of shape ({num_classes},), got {tuple(weight.shape)}"
            )
        weight = weight.contiguous()
    if row_scale is not None:
        if row_scale.numel() not in (1, num_rows):
            raise ValueError(
                f"expected a 0-d or ({num_rows},) row_scale, got {tuple(row_scale.shape)}"
            )
        row_scale = row_scale.reshape(-1)
    return weight, row_scale


def _vector_stride(vector) -> int:
    """The element stride a kernel reads a flat factor vector with: 0 for a single factor, else
    the vector's own (an expanded upstream gradient has stride 0, a slice another)."""
    return vector.stride(0) if vector.numel() > 1 else 0


def _launch(logits, target, weight, options, grad, row_scale, lse_in, config):
    """Shared launch path of the forward and recompute modes; returns (loss, lse)."""
    import torch

    from crossent.backends.triton import kernels

    _check_device(logits, target, weight, grad, row_scale, lse_in)
    if logits.dim() != 2:
        raise ValueError(f"expected 2-D logits (rows, classes), got shape {tuple(logits.shape)}")
    num_rows, num_cols = logits.shape
    if num_cols == 0:
        raise ValueError("expected at least one class, got logits with 0 columns")
    if logits.stride(1) != 1 and num_cols > 1:
        raise ValueError(f"expected unit stride along the classes, got {logits.stride()}")
    prob_target = target.dtype.is_floating_point
    if prob_target:
        if target.shape != logits.shape or (target.stride(1) != 1 and num_cols > 1):
            raise ValueError(
                f"expected a probability target of shape {tuple(logits.shape)} with unit class "
                f"stride, got shape {tuple(target.shape)} strides {target.stride()}"
            )
    elif target.shape != (num_rows,):
        raise ValueError(f"expected a target of shape ({num_rows},), got {tuple(target.shape)}")
    else:
        target = target.contiguous()  # the kernel reads class indices packed
    weight, row_scale = _checked_weight_and_scale(weight, row_scale, num_cols, num_rows)
    if grad is not None and (
        grad.shape != logits.shape
        or grad.dtype != logits.dtype
        or (grad.stride(1) != 1 and num_cols > 1)
    ):
        raise ValueError(
            f"expected a gradient buffer of shape {tuple(logits.shape)}, dtype {logits.dtype} "
            f"and unit class stride, got {tuple(grad.shape)}, {grad.dtype}, {grad.stride()}"
        )

    acc = accumulation_dtype(logits.dtype)
    grad_from_lse = lse_in is not None
    if grad_from_lse:
        loss = lse = lse_in
    else:
        loss = torch.empty(num_rows, dtype=acc, device=logits.device)
        lse = torch.empty(num_rows, dtype=acc, device=logits.device)
    if num_rows == 0:
        return loss, lse

    eps = float(options.label_smoothing)
    zeta = float(options.z_loss)
    cap = options.softcap
    if config is None:
        config = choose_config(num_cols, logits.element_size())
    hints = config.l2_hints
    constexprs = dict(
        N_COLS=num_cols,
        BLOCK=config.block,
        PROB_TARGET=prob_target,
        HAS_WEIGHT=weight is not None,
        SMOOTHING=eps > 0,
        Z_LOSS=zeta != 0,
        SOFTCAP=cap is not None,
        WRITE_GRAD=grad is not None,
        HAS_ROW_SCALE=row_scale is not None,
        GRAD_FROM_LSE=grad_from_lse,
        NUM_STAGES=config.num_stages,
        STATS_POLICY="evict_last" if hints else "",
        GRAD_LOAD_POLICY="evict_first" if hints else "",
        STORE_POLICY="evict_first" if hints else "",
        ACC=_triton_dtype(acc),
        LOWEST=torch.finfo(acc).min,
        num_warps=config.num_warps,
    )
    args = (
        logits,
        logits.stride(0),
        target,
        target.stride(0) if prob_target else 0,
        weight,
        grad,
        grad.stride(0) if grad is not None else 0,
        row_scale,
        _vector_stride(row_scale) if row_scale is not None else 0,
        loss,
        lse,
        num_rows,
        int(options.ignore_index),
        eps,
        zeta,
        float(cap) if cap is not None else 1.0,
    )
    kernel = kernels.cross_entropy_rows_kernel

    def occupancy(device_index: int) -> int:
        key = (
            device_index,
            logits.dtype,
            target.dtype,
            None if weight is None else weight.dtype,
            None if grad is None else grad.dtype,
            tuple(sorted((k, str(v)) for k, v in constexprs.items())),
        )
        return _occupancy(key, device_index, lambda: kernel.warmup(*args, grid=(1,), **constexprs))

    grid = _grid_size(config, num_rows, num_cols * logits.element_size(), logits.device, occupancy)
    with _on_device(logits.device):
        kernel[(grid,)](*args, **constexprs)
    return loss, lse


def _triton_dtype(dtype):
    import torch
    import triton.language as tl

    return tl.float64 if dtype == torch.float64 else tl.float32


def _on_device(device):
    import contextlib

    import torch

    if device.type == "cuda" and device.index is not None:
        return torch.cuda.device(device.index)
    return contextlib.nullcontext()


def cross_entropy_rows(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    options: RowOptions,
    grad: torch.Tensor | None = None,
    *,
    row_scale: torch.Tensor | None = None,
    config: KernelConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row losses and log-sum-exps, and optionally the gradient, in one Triton launch.

    Same contract as :func:`crossent.backends.rows.cross_entropy_rows`: ``logits`` is ``(R, C)``
    with unit class stride (any row stride); ``target`` is ``(R,)`` int64 class indices or
    ``(R, C)`` probabilities; ``grad`` (None, a buffer, or ``logits`` itself) receives the
    gradient of ``sum_i row_scale_i * loss_i`` (``row_scale``: 0-d or ``(R,)`` tensor, default
    1; ignored rows get 0 whatever their scale). Class indices must be valid (the functional
    layer checks them): an out-of-range index reads weight and logit as 0 instead of faulting.
    ``config`` overrides :func:`choose_config` (tests and benchmarks use it).

    Returns ``(loss, lse)``: ``(R,)`` tensors, float32 (float64 for float64 logits).

    Column layout: ``logits`` (and ``grad``) may also be a contiguous ``(N, C, S)`` K-dim input
    whose ``R = N * S`` rows are its positions (row ``n * S + s`` is ``logits[n, :, s]``), for
    class indices without label smoothing or soft-capping (see
    :mod:`crossent.backends.triton.column_kernels`); there ``config`` sets the positions per
    program (``block``) and ``num_warps`` only.
    """
    if logits.dim() == 3:
        return _launch_columns(logits, target, weight, options, grad, row_scale, config)
    return _launch(logits, target, weight, options, grad, row_scale, None, config)


#: The fewest positions per sample for which the fused path hands a K-dim input to the column
#: kernel (one lane per position: fewer leave most lanes of a program idle; such inputs go
#: through rows).
COLUMN_MIN_POSITIONS = 128


def _column_block(num_positions: int) -> tuple[int, int]:
    """``(BLOCK_S, num_warps)`` of the column kernels: up to 1024 positions per program with 8
    warps (on an H200, 2026-11-27, record ``gpu-h200-2026-11-27-columns-probe.md``: the fastest
    of six launches at 8 x 21 x 512 x 512 float32 and bfloat16, within 7% of the fastest at
    16 x 150 x 128 x 128 bfloat16)."""
    block = min(1024, max(32, _next_power_of_2(num_positions)))
    return block, max(1, min(8, block // 128))


def _launch_columns(logits, target, weight, options, grad, row_scale, config=None):
    """:func:`cross_entropy_rows` for ``(N, C, S)`` logits (the column kernel)."""
    import torch

    from crossent.backends.triton import column_kernels

    _check_device(logits, target, weight, grad, row_scale)
    if not logits.is_contiguous():
        raise ValueError(f"expected contiguous (N, C, S) logits, got strides {logits.stride()}")
    num_samples, num_classes, num_positions = logits.shape
    num_rows = num_samples * num_positions
    if num_classes == 0:
        raise ValueError("expected at least one class, got logits with 0 classes")
    if target.dtype.is_floating_point or options.label_smoothing or options.softcap is not None:
        raise ValueError(
            "the column kernel serves class indices without label smoothing or soft-capping"
        )
    if target.shape != (num_rows,):
        raise ValueError(f"expected a target of shape ({num_rows},), got {tuple(target.shape)}")
    target = target.contiguous()  # the kernel reads class indices packed
    weight, row_scale = _checked_weight_and_scale(weight, row_scale, num_classes, num_rows)
    if grad is not None and (
        grad.shape != logits.shape or grad.dtype != logits.dtype or not grad.is_contiguous()
    ):
        raise ValueError(
            f"expected a contiguous gradient buffer of shape {tuple(logits.shape)} and dtype "
            f"{logits.dtype}, got {tuple(grad.shape)}, {grad.dtype}, {grad.stride()}"
        )
    acc = accumulation_dtype(logits.dtype)
    loss = torch.empty(num_rows, dtype=acc, device=logits.device)
    lse = torch.empty(num_rows, dtype=acc, device=logits.device)
    if num_rows == 0:
        return loss, lse
    block, num_warps = _column_block(num_positions)
    if config is not None:
        block, num_warps = config.block, config.num_warps
    grid = (num_samples * _cdiv(num_positions, block),)
    with _on_device(logits.device):
        column_kernels.cross_entropy_columns_kernel[grid](
            logits, target, weight, grad, row_scale,
            _vector_stride(row_scale) if row_scale is not None else 0,
            loss, lse, num_classes, num_positions, int(options.ignore_index),
            float(options.z_loss),
            BLOCK_S=block,
            HAS_WEIGHT=weight is not None,
            Z_LOSS=float(options.z_loss) != 0,
            WRITE_GRAD=grad is not None,
            HAS_ROW_SCALE=row_scale is not None,
            ACC=_triton_dtype(acc),
            LOWEST=torch.finfo(acc).min,
            num_warps=num_warps,
        )  # fmt: skip
    return loss, lse


def _cdiv(a: int, b: int) -> int:
    """``ceil(a / b)`` for positive ``b``."""
    return -(-a // b)


def cross_entropy_rows_grad(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    options: RowOptions,
    lse: torch.Tensor,
    grad: torch.Tensor,
    *,
    row_scale: torch.Tensor | None = None,
    config: KernelConfig | None = None,
) -> None:
    """Write the gradient of ``sum_i row_scale_i * loss_i`` from saved log-sum-exps.

    ``lse`` is the ``lse`` returned by :func:`cross_entropy_rows` for the same arguments. One
    read of the logits and one write of ``grad`` (probability targets also re-read the
    targets): the backward of a recompute scheme, e.g. for ``reduction="none"`` where the
    upstream gradient (``row_scale``) is known only in backward.
    """
    if lse.dtype != accumulation_dtype(logits.dtype) or lse.shape != (logits.shape[0],):
        raise ValueError(
            f"expected lse of shape ({logits.shape[0]},) and dtype "
            f"{accumulation_dtype(logits.dtype)}, got {tuple(lse.shape)} {lse.dtype}"
        )
    _launch(logits, target, weight, options, grad, row_scale, lse.contiguous(), config)


def scale_rows_(
    grad: torch.Tensor,
    scale: torch.Tensor,
    kept: torch.Tensor | None = None,
    *,
    ignore_index: int | None = None,
) -> torch.Tensor:
    """Scale gradient rows in place by an upstream factor read on the device; returns ``grad``.

    ``grad`` is ``(R, C)`` with unit class stride (or the column layout's contiguous
    ``(N, C, S)``, whose ``R = N * S`` rows are its positions), ``scale`` a 0-d (one factor)
    or ``(R,)`` tensor, ``kept`` None or an ``(R,)`` tensor: a bool mask, or (with
    ``ignore_index``) int64 class indices, a row being kept unless its index is
    ``ignore_index`` (no mask to build). Row ``r`` becomes
    ``(grad[r].to(acc) * scale[r].to(acc)).to(grad.dtype)`` (``acc`` float32, float64 for
    float64: one rounding, and the scale is not first rounded to a half type) when ``kept[r]``;
    rows not kept are left as they are (the row kernel wrote zeros there, which therefore stay
    zero even times a non-finite scale, as in torch). A row whose scale is exactly 1 is skipped,
    on the device: the usual ``loss.backward()`` then costs one launch and no sweep over the
    gradient, with no host synchronisation.
    """
    import torch

    from crossent.backends.triton import kernels

    _check_device(grad, scale, kept)
    columns = grad.dim() == 3 and grad.is_contiguous()
    if not columns and (grad.dim() != 2 or (grad.stride(1) != 1 and grad.shape[1] > 1)):
        raise ValueError(
            f"expected a 2-D gradient with unit class stride, got shape {tuple(grad.shape)} "
            f"strides {grad.stride()}"
        )
    num_rows = rows_of(grad)
    if scale.numel() not in (1, num_rows):
        raise ValueError(f"expected a 0-d or ({num_rows},) scale, got shape {tuple(scale.shape)}")
    if kept is not None and kept.shape != (num_rows,):
        raise ValueError(f"expected kept of shape ({num_rows},), got {tuple(kept.shape)}")
    if kept is not None and (ignore_index is None) != (kept.dtype == torch.bool):
        raise ValueError(
            f"expected a bool kept mask, or int64 class indices with an ignore_index; got "
            f"{kept.dtype} with ignore_index={ignore_index}"
        )
    if grad.numel() == 0:
        return grad
    scale = scale.reshape(-1)
    kept = None if kept is None else kept.contiguous()  # (read packed)
    mode = 0 if kept is None else 1 if ignore_index is None else 2
    ignored = 0 if ignore_index is None else int(ignore_index)
    if columns:
        return _scale_columns_(grad, scale, kept, mode, ignored)
    num_cols = grad.shape[1]
    config = choose_config(num_cols, grad.element_size())
    programs = num_rows
    if grad.device.type == "cuda":
        index = grad.device.index if grad.device.index is not None else 0
        programs = min(num_rows, 4 * _device_limits(index)[0])
    with _on_device(grad.device):
        kernels.scale_rows_kernel[(programs,)](
            grad,
            grad.stride(0),
            num_rows,
            num_cols,
            scale,
            _vector_stride(scale),
            kept,
            ignored,
            BLOCK=config.block,
            KEPT_MODE=mode,
            ACC=_triton_dtype(accumulation_dtype(grad.dtype)),
            num_warps=config.num_warps,
        )
    return grad


def _scale_columns_(grad, scale, kept, mode, ignored):
    """:func:`scale_rows_` for a contiguous, non-empty ``(N, C, S)`` gradient (the column
    layout); ``scale`` flat, ``kept`` checked and its ``KEPT_MODE`` chosen by the caller."""
    from crossent.backends.triton import column_kernels

    num_samples, num_classes, num_positions = grad.shape
    block, num_warps = _column_block(num_positions)
    with _on_device(grad.device):
        column_kernels.scale_columns_kernel[(num_samples * _cdiv(num_positions, block),)](
            grad, num_classes, num_positions, scale, _vector_stride(scale), kept, ignored,
            BLOCK_S=block,
            KEPT_MODE=mode,
            ACC=_triton_dtype(accumulation_dtype(grad.dtype)),
            num_warps=num_warps,
        )  # fmt: skip
    return grad


#: Targets per program of :func:`target_stats` (a multiple of ``_TARGET_BLOCK``): a call with
#: at most this many positions is one launch of one program.
TARGET_CHUNK = 1 << 15
#: The most partials :func:`target_stats` combines (its grid's largest size); chunks grow
#: beyond ``TARGET_CHUNK`` when the targets need more programs than this.
MAX_PARTIALS = 1024
_TARGET_BLOCK = 1024


def _chunks(length: int) -> tuple[int, int]:
    """``(programs, chunk)`` of the reduction kernels over ``length`` entries: one program per
    ``TARGET_CHUNK`` entries, at most ``MAX_PARTIALS``, each a whole number of blocks."""
    programs = max(1, min(MAX_PARTIALS, _cdiv(length, TARGET_CHUNK)))
    return programs, _cdiv(_cdiv(max(length, 1), programs), _TARGET_BLOCK) * _TARGET_BLOCK


def target_stats(
    target: torch.Tensor,
    weight: torch.Tensor | None,
    num_classes: int,
    ignore_index: int,
    dtype: torch.dtype,
) -> torch.Tensor:
    """The class-index targets' ``mean`` denominator, its reciprocal and range check in one
    read (see :mod:`crossent.backends.triton.reduction_kernels`): a ``(3,)`` tensor of ``dtype``
    on the targets' device holding ``D = sum_i m_i * w[y_i]`` (kept count without weights),
    ``1 / D`` and the number of kept targets outside ``[0, num_classes)``.

    ``target``: int64 class indices of any shape (read packed: made contiguous); ``weight``:
    ``(num_classes,)`` or None. Nothing is read on the host.
    """
    import torch

    from crossent.backends.triton import reduction_kernels

    _check_device(target, weight)
    if target.dtype != torch.int64:
        raise ValueError(f"expected int64 class indices, got {target.dtype}")
    weight, _ = _checked_weight_and_scale(weight, None, num_classes, 0)
    target = target.contiguous()
    positions = target.numel()
    programs, chunk = _chunks(positions)
    final = programs == 1
    # one buffer: the three results, then (several programs) the weight partials; the count
    # partials are int64 (unused by a single program, which writes the results itself)
    stats = torch.empty(3 if final else 3 + programs, dtype=dtype, device=target.device)
    weight_partials = stats if final else stats[3:]
    counts = stats if final else torch.empty(2 * programs, dtype=torch.int64,
                                             device=target.device)  # fmt: skip
    common = dict(HAS_WEIGHT=weight is not None, ACC=_triton_dtype(dtype), num_warps=4)
    with _on_device(target.device):
        reduction_kernels.target_stats_kernel[(programs,)](
            target, weight, stats, weight_partials, counts, positions, chunk, num_classes,
            int(ignore_index), BLOCK=_TARGET_BLOCK, FINAL=final, **common,
        )  # fmt: skip
        if not final:
            reduction_kernels.finish_target_stats_kernel[(1,)](
                stats, weight_partials, counts, programs,
                BLOCK=_next_power_of_2(programs), **common,
            )  # fmt: skip
    return stats if final else stats[:3]


def reduce_rows(
    loss: torch.Tensor,
    lse: torch.Tensor,
    mean: bool,
    denominator: torch.Tensor | float,
    z_loss: float = 0.0,
    *,
    nan_at_zero: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``sum`` or (``mean``) ``sum / D`` of per-row losses and of the z-loss terms ``z_loss *
    lse**2``, in one read of the ``(R,)`` rows (see
    :mod:`crossent.backends.triton.reduction_kernels`): two 0-d tensors of the rows' dtype.

    ``denominator``: ``D`` as a 0-d tensor on the rows' device (e.g. ``target_stats(...)[0]``)
    or a Python float. ``nan_at_zero``: the loss is NaN where ``D = 0`` (a smoothed
    class-index mean, as torch). Without a z-loss the second value is 0, or ``0 / D`` for
    ``mean``, what reducing zeros gives.
    """
    import torch

    from crossent.backends.triton import reduction_kernels

    on_device = isinstance(denominator, torch.Tensor)
    _check_device(loss, lse, denominator if on_device else None)
    if loss.dim() != 1 or lse.shape != loss.shape or lse.dtype != loss.dtype:
        raise ValueError(
            f"expected (R,) loss and lse rows of one dtype, got {tuple(loss.shape)} "
            f"{loss.dtype} and {tuple(lse.shape)} {lse.dtype}"
        )
    loss, lse = loss.contiguous(), lse.contiguous()
    rows = loss.shape[0]
    programs, chunk = _chunks(rows)
    final = programs == 1
    out = torch.empty((), dtype=loss.dtype, device=loss.device)
    z_out = torch.empty((), dtype=loss.dtype, device=loss.device)
    partials = out if final else torch.empty(2 * programs, dtype=loss.dtype,
                                             device=loss.device)  # fmt: skip
    flags = dict(
        MEAN=mean,
        STATS_DENOMINATOR=on_device,
        NAN_AT_ZERO=nan_at_zero,
        ACC=_triton_dtype(loss.dtype),
        num_warps=4,
    )
    d_tensor = denominator if on_device else out
    d_value = 0.0 if on_device else float(denominator)
    with _on_device(loss.device):
        reduction_kernels.reduce_rows_kernel[(programs,)](
            loss, lse, partials, out, z_out, d_tensor, rows, chunk, d_value, float(z_loss),
            BLOCK=_TARGET_BLOCK, Z_LOSS=z_loss != 0, FINAL=final, **flags,
        )  # fmt: skip
        if not final:
            reduction_kernels.finish_reduce_rows_kernel[(1,)](
                partials, out, z_out, d_tensor, programs, d_value,
                BLOCK=_next_power_of_2(programs), **flags,
            )  # fmt: skip
    return out, z_out

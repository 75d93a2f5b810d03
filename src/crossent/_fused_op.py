"""The fused torch path: ``torch.library`` custom ops around the row kernels, and their autograd.

Only torch code paths import this module (it registers the ``crossent::`` ops on import).

Forward (``crossent::fused_cross_entropy_v3``): one sweep of the row kernel computes the per-row
losses, the log-sum-exps and, when a gradient will be needed, the gradient itself. For ``mean``
the row kernel folds ``1/D`` into the gradient rows while they are in cache (``row_scale``), so
the saved gradient is final up to the upstream factor. Nothing of size ``N x C`` is saved except
the gradient. With the Triton kernel, ``D``, ``1/D`` and the target check's flag come from one
launch over the targets before it and the reduced loss and z-loss from one launch over its
per-row outputs after it (:mod:`crossent.backends.triton.reduction_kernels`): on a small call
the host's launches are the cost, and torch operations took 5-26 of them
(``benchmarks/host_ops.py``).

Backward (``crossent::scale_gradient_rows_``): multiplies the saved gradient **in place** by the
upstream gradient (a scalar for ``mean``/``sum``, one value per row for ``none``) and returns it,
so the backward allocates nothing and peak memory stays at one logits-size buffer. A factor of
exactly 1 (``loss.backward()``) skips the multiply (read on the host on CPU, on the device by the
Triton scaler), so the backward is then O(1). Because the saved buffer is consumed, a second
backward through the same graph (``retain_graph=True``) raises a ``RuntimeError`` instead of
returning a doubly scaled gradient; so does ``create_graph=True`` (no double backward).

In-place mode (``inplace_backward=True``): the gradient is written into the logits' own storage
(no gradient buffer at all). See :func:`check_inplace_allowed` for exactly what is refused and
what cannot be detected.

The custom ops have fake kernels, so ``torch.compile(fullgraph=True)`` traces through them
without graph breaks; the forward never reads a tensor value on the host.

Eager calls skip the custom ops' dispatch. A ``torch.library`` op costs about 0.1 ms of Python
per call in the forward and as much again in the backward (timed in a loop on a 2-core EPYC, torch
2.13: 0.64 ms against 0.37 ms for the same computation behind a plain ``autograd.Function`` at
64 x 1000 float32), a large part of a small call and, on CUDA, host time the device waits
through after the target check. So a call on plain CPU/CUDA tensors, outside ``torch.compile``,
fake tensors, functorch transforms and dispatch modes (:func:`_runs_eagerly`), runs the same
functions (:func:`_forward`, :func:`_scale_rows`) behind :class:`_FusedCrossEntropy`;
everything else goes through the ops, which those systems understand.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils import _python_dispatch

from crossent import _reduction
from crossent._array import needs_grad
from crossent.backends import cpu
from crossent.backends.rows import (
    RowOptions,
    accumulation_dtype,
    num_rows,
    rows_without_classes,
)

KERNELS: tuple[str, ...] = ("cpu", "triton")
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

_SECOND_BACKWARD = (
    "crossent's fused cross-entropy saves one gradient buffer and scales it in place during the "
    "backward pass, so it cannot be backpropagated through twice (retain_graph=True). Run the "
    "loss forward again, or use impl='reference' for repeated backward passes."
)

_DOUBLE_BACKWARD = (
    "crossent's fused cross-entropy has no double backward (create_graph=True): its gradient is "
    "computed in the forward pass. Use impl='reference' (or 'torch') for higher-order gradients."
)


class FusedUnsupported(NotImplementedError):
    """The fused path cannot serve this combination of arguments (the message says why)."""


def _torch_namespace() -> Any:
    import array_api_compat.torch as xp

    return xp


# ------------------------------------------------------------------------------------------------
# the forward computation shared by the functional and the in-place op


def _rows_kernel(kernel: str):
    if kernel == "cpu":
        return cpu.cross_entropy_rows
    try:
        from crossent.backends.triton.cross_entropy import cross_entropy_rows
    except ImportError as exc:  # triton missing, or the backend is not there yet
        raise FusedUnsupported(f"the 'triton' kernel is not available: {exc}") from exc
    return cross_entropy_rows


def _checked_denominator(
    target: torch.Tensor, num_classes: int, weight: torch.Tensor | None, ignore_index: int,
    dtype: torch.dtype, *, kernel: str = "cpu", defer: bool = False, target_check: str = "host",
) -> tuple[torch.Tensor | float, torch.Tensor | None, Callable[[], None]]:
    """``mean`` denominator as a 0-d tensor (total kept weight for class indices, M for
    probabilities; with the ``triton`` kernel M is a Python float), its reciprocal when
    computed on the way (else None), and the check that every kept class index lies in
    ``[0, C)``: done before returning, or (``defer``) started, with the returned function
    finishing it.

    An out-of-range index raises IndexError (value, position, valid range). The check runs
    inside the custom op, so ``torch.compile`` sees no data-dependent Python. On CUDA it reads
    one flag (a synchronisation); while a CUDA graph is being captured it cannot, so it is
    skipped and the Triton kernel poisons such rows with NaN instead: never a silently wrong
    number. With the ``triton`` kernel one launch (:func:`crossent.backends.triton.target_stats`)
    computes the denominator, its reciprocal and the check's flag, where torch operations took
    eight to fourteen launches, and the check may be deferred: ``defer`` is for a kernel that
    is safe with any index (the Triton kernel: masked loads, NaN rows) and does not overwrite
    the logits, which the caller queues before waiting for the verdict, so the device computes
    while the host waits instead of idling through the host's wait and launch.
    ``target_check="device"`` on CUDA tensors replaces the flag's read by a device-side
    assertion (see :func:`fused_cross_entropy`), also while a CUDA graph is captured: no
    synchronisation at all.
    """
    if target.is_floating_point():
        # torch divides by numel / C: the M positions, or 0/0 (NaN) with no classes. The Triton
        # path takes it as a number (no host-to-device copy).
        positions = float(num_rows(target)) if num_classes else math.nan
        if kernel == "triton":
            return positions, None, _checked
        return torch.tensor(positions, dtype=dtype, device=target.device), None, _checked
    capturing = captured(target)
    if kernel == "triton":
        from crossent.backends.triton.cross_entropy import target_stats

        stats = target_stats(target, weight, num_classes, ignore_index, dtype)
        finish = _checked
        if asserts_on_device(target, target_check):  # (captured in a CUDA graph too)
            assert_on_device(stats[2] == 0)
        elif not capturing:
            finish = _start_flag_read(stats[2], target, num_classes, ignore_index)
            if not defer:
                finish()
                finish = _checked
        return stats[0], stats[1], finish
    xp = _torch_namespace()
    if asserts_on_device(target, target_check):  # (the ``cpu`` kernel on CUDA tensors; its own
        # indexing would assert on the device too, this one names crossent)
        assert_in_range_on_device(target, num_classes, ignore_index)
    elif not capturing:  # (the ``cpu`` kernel: checked before it runs)
        from crossent._validation import check_target_range

        check_target_range(xp, target, num_classes, ignore_index)
    if weight is None:
        return (target != ignore_index).sum(dtype=dtype), None, _checked
    denominator = _reduction.index_mean_denominator(xp, target, weight, ignore_index, dtype)
    return denominator, None, _checked


def _checked() -> None:
    """A finished target check."""


_DEVICE_ASSERT_MESSAGE = (
    "crossent: a class-index target is out of range (target_check='device'); rerun with the "
    "default target_check='host' for the value and its position"
)


def asserts_on_device(target: torch.Tensor, target_check: str) -> bool:
    """Whether the class-index check of ``target`` is a device-side assertion: with
    ``target_check="device"`` on CUDA tensors of a CUDA build (ROCm builds may compile kernel
    assertions out, so there the check stays on the host)."""
    return target_check == "device" and target.is_cuda and torch.version.hip is None


def captured(tensor: torch.Tensor) -> bool:
    """Whether work on this CUDA tensor is being captured into a CUDA graph, where no host read
    of tensor values can run."""
    return tensor.is_cuda and torch.cuda.is_current_stream_capturing()


def assert_on_device(ok: torch.Tensor) -> None:
    """``torch._assert_async``: fail the stream unless the 0-d ``ok`` is true (immediately, as a
    RuntimeError, for a CPU tensor)."""
    torch._assert_async(ok, _DEVICE_ASSERT_MESSAGE)


def assert_in_range_on_device(target: torch.Tensor, num_classes: int, ignore_index: int) -> None:
    """The class-index range check as a device-side assertion (:func:`assert_on_device` of the
    kept targets' out-of-range mask, reduced on the device): no host read."""
    from crossent._validation import out_of_range

    xp = _torch_namespace()
    assert_on_device(~xp.any(out_of_range(xp, target, num_classes, ignore_index)))


def _start_flag_read(
    flag: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int
) -> Callable[[], None]:
    """Start reading a 0-d flag that is nonzero when some kept target is out of range: on CUDA
    a copy to pinned host memory, queued behind the check on the stream. The returned
    ``finish()`` waits for that copy alone (not for work queued after it) and then raises the
    IndexError (value, position, range) if the flag is set."""
    done = None
    if target.is_cuda:
        host = torch.empty((), dtype=flag.dtype, pin_memory=True)
        host.copy_(flag, non_blocking=True)
        flag = host
        done = torch.cuda.Event()
        done.record(torch.cuda.current_stream(target.device))  # (the copy's device, not the
        # current one: with the target on another GPU the wait would not cover the copy)

    def finish() -> None:
        if done is not None:
            done.synchronize()
        if bool(flag):
            from crossent._validation import check_target_range

            check_target_range(_torch_namespace(), target, num_classes, ignore_index)

    return finish


def _reduce(rows: torch.Tensor, reduction: str, denominator: torch.Tensor) -> torch.Tensor:
    return _reduction.reduce(_torch_namespace(), rows, reduction, denominator)


def _forward(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    options: RowOptions,
    reduction: str,
    kernel: str,
    grad: torch.Tensor | None,
    loss_dtype: torch.dtype | None = None,
    target_check: str = "host",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the row kernel (writing ``grad`` if given) and reduce: ``(loss, z_loss, lse)``, the
    losses in ``loss_dtype`` (default: the logits' dtype; float32 under autocast);
    ``target_check`` as in :func:`fused_cross_entropy`.

    The gradient written is final up to the upstream factor: the row kernel folds ``1/D`` of
    ``mean`` into the rows while they are in cache (measured: a whole-tensor multiply in the
    backward costs more than that).
    """
    acc = accumulation_dtype(logits.dtype)
    in_place = grad is not None and grad.data_ptr() == logits.data_ptr()
    denominator, reciprocal, finish_check = _checked_denominator(
        target, logits.shape[1], weight, options.ignore_index, acc,
        kernel=kernel, defer=kernel == "triton" and not in_place, target_check=target_check,
    )  # fmt: skip
    row_scale = None
    if reduction == "mean" and grad is not None:
        row_scale = reciprocal if reciprocal is not None else _reciprocal(denominator, logits)
    if logits.shape[1] == 0:
        rows, lse = rows_without_classes(logits, target, options, acc)
    else:
        rows, lse = _rows_kernel(kernel)(
            logits, target, weight, options, grad, row_scale=row_scale
        )
    smoothed = options.label_smoothing > 0 and not target.is_floating_point()
    if kernel == "triton" and reduction != "none":
        from crossent.backends.triton.cross_entropy import reduce_rows

        loss, z_loss = reduce_rows(rows, lse, reduction == "mean", denominator, options.z_loss,
                                   nan_at_zero=smoothed)  # fmt: skip
    else:
        loss, z_loss = _reduce_with_torch(rows, lse, reduction, denominator, options, smoothed)
    if target.is_floating_point() and reduction == "sum" and num_rows(logits) == 0:
        loss = -loss  # torch's soft-target sum of nothing is -0.0
    if smoothed and reduction == "sum":
        loss = _reduction.smoothed_index_sum(loss, logits.shape[1], options.label_smoothing)
    out = loss_dtype or logits.dtype
    loss, z_loss = loss.to(out), z_loss.to(out)
    finish_check()  # (raises IndexError for an out-of-range target; the results are dropped)
    return loss, z_loss, lse


def _reciprocal(denominator: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """``1 / D`` as a 0-d tensor of the accumulation dtype, as torch's ``reciprocal`` of ``D`` in
    that dtype (``inf`` for 0); a Python float ``D`` (probability targets on the Triton path)
    is rounded to that dtype and inverted there on the host (NumPy), then filled in: no
    host-to-device copy."""
    if isinstance(denominator, torch.Tensor):
        return denominator.reciprocal()
    acc = accumulation_dtype(like.dtype)
    wide = acc == torch.float64
    d = np.float64(denominator) if wide else np.float32(denominator)
    with np.errstate(divide="ignore", invalid="ignore"):
        value = float(d.dtype.type(1) / d)
    return torch.full((), value, dtype=acc, device=like.device)


def _reduce_with_torch(rows, lse, reduction, denominator, options, smoothed):
    """``(loss, z_loss)`` reduced by torch operations (the ``cpu`` kernel, and ``none``)."""
    loss = _reduce(rows, reduction, denominator)
    if reduction == "mean" and smoothed:
        loss = _reduction.smoothed_index_mean(
            _torch_namespace(), loss, denominator, options.label_smoothing
        )
    if options.z_loss:
        return loss, _reduce(options.z_loss * lse * lse, reduction, denominator)
    # what reducing zeros gives: 0 for sum, 0/D for mean (NaN when D = 0)
    z_loss = torch.zeros(lse.shape if reduction == "none" else (), dtype=lse.dtype,
                         device=lse.device)  # fmt: skip
    return loss, z_loss / denominator if reduction == "mean" else z_loss


def _options(ignore_index: int, label_smoothing: float, z_loss: float, softcap: float | None):
    return RowOptions(
        ignore_index=ignore_index, label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap
    )


def _fake_outputs(logits, target, reduction, loss_dtype):
    acc = accumulation_dtype(logits.dtype)
    shape = (num_rows(logits),) if reduction == "none" else ()
    dtype = loss_dtype or logits.dtype
    loss, z_loss = logits.new_empty(shape, dtype=dtype), logits.new_empty(shape, dtype=dtype)
    lse = logits.new_empty((num_rows(logits),), dtype=acc)
    return loss, z_loss, lse


_ARGS = (
    "Tensor target, Tensor? weight, int ignore_index, float label_smoothing, float z_loss, "
    "float? softcap, str reduction, str kernel, ScalarType? loss_dtype, str target_check"
)


# Rename an op (e.g. a ``_v2`` suffix) whenever its schema changes: compiled-graph caches key on
# the name, so an old cached graph could otherwise meet a new op.
@torch.library.custom_op(
    "crossent::fused_cross_entropy_v3",
    mutates_args=(),
    schema=f"(Tensor logits, {_ARGS}, bool compute_grad) -> (Tensor, Tensor, Tensor, Tensor)",
)
def _fused_op(
    logits, target, weight, ignore_index, label_smoothing, z_loss, softcap, reduction, kernel,
    loss_dtype, target_check, compute_grad,
):  # fmt: skip
    options = _options(ignore_index, label_smoothing, z_loss, softcap)
    grad = cpu.empty_gradient(logits) if compute_grad else None
    loss, z, lse = _forward(logits, target, weight, options, reduction, kernel, grad, loss_dtype,
                            target_check)  # fmt: skip
    if grad is None:
        grad = logits.new_empty((0,))
    return loss, z, lse, grad


@_fused_op.register_fake
def _(
    logits, target, weight, ignore_index, label_smoothing, z_loss, softcap, reduction, kernel,
    loss_dtype, target_check, compute_grad,
):  # fmt: skip
    grad = logits.new_empty(logits.shape if compute_grad else (0,))
    return (*_fake_outputs(logits, target, reduction, loss_dtype), grad)


@torch.library.custom_op(
    "crossent::fused_cross_entropy_inplace_v3_",
    mutates_args=("logits",),
    schema=f"(Tensor(a!) logits, {_ARGS}) -> (Tensor, Tensor, Tensor)",
)
def _fused_inplace_op(
    logits, target, weight, ignore_index, label_smoothing, z_loss, softcap, reduction, kernel,
    loss_dtype, target_check,
):  # fmt: skip
    options = _options(ignore_index, label_smoothing, z_loss, softcap)
    return _forward(logits, target, weight, options, reduction, kernel, logits, loss_dtype,
                    target_check)  # fmt: skip


@_fused_inplace_op.register_fake
def _(
    logits, target, weight, ignore_index, label_smoothing, z_loss, softcap, reduction, kernel,
    loss_dtype, target_check,
):  # fmt: skip
    return _fake_outputs(logits, target, reduction, loss_dtype)


@torch.library.custom_op(
    "crossent::scale_gradient_rows_",
    mutates_args=("grad",),
    schema="(Tensor(a!) grad, Tensor scale, Tensor? kept) -> ()",
)
def _scale_op(grad, scale, kept):
    _scale_rows(grad, scale, kept)


def _scale_rows(grad, scale, kept):
    """``grad *= scale`` (0-d) or ``grad *= scale[:, None]`` ((M,)); rows with ``kept`` False
    stay 0 (times a non-finite scale too, as in torch)."""
    if grad.numel() == 0:
        return
    if grad.is_cuda and _triton_layout(grad) and _triton_scaler() is not None:
        _triton_scaler()(grad, scale, kept)  # skips rows whose factor is 1, on the device
        return
    if scale.dim() == 0 and grad.device.type == "cpu" and scale.device.type == "cpu":
        value = float(scale)  # a CPU read, not a device synchronisation
        if value == 1.0:
            return
        if math.isfinite(value) or kept is None:
            grad.mul_(scale)
            return
    rows = torch.broadcast_to(scale.to(grad.dtype), (num_rows(grad),))
    if kept is not None:
        rows = torch.where(kept, rows, torch.zeros((), dtype=rows.dtype, device=rows.device))
    if grad.dim() == 3:  # the (N, C, S) layout: row n * S + s is grad[n, :, s]
        grad.mul_(rows.reshape(grad.shape[0], 1, grad.shape[2]))
    else:
        grad.mul_(rows[:, None])


def _triton_layout(grad: torch.Tensor) -> bool:
    """Whether the Triton scaler takes this gradient: rows, or contiguous ``(N, C, S)``."""
    return grad.dim() == 2 or grad.is_contiguous()


def _triton_scaler():
    """``crossent.backends.triton.scale_rows_`` if Triton is importable, else None."""
    try:
        from crossent.backends.triton.cross_entropy import scale_rows_
    except ImportError:
        return None
    return scale_rows_


@_scale_op.register_fake
def _(grad, scale, kept):
    return None


# ------------------------------------------------------------------------------------------------
# autograd


def _scale_saved_gradient(ctx, grad_loss: torch.Tensor) -> torch.Tensor:
    """Scale the saved gradient in place by the upstream gradient and return it."""
    grad, target = ctx.saved_tensors
    factor = grad_loss
    if not _runs_eagerly(grad, factor):
        kept = None if ctx.soft_target else target != ctx.ignore_index
        torch.ops.crossent.scale_gradient_rows_(grad, factor, kept)
        return grad
    scaler = _triton_scaler() if grad.is_cuda and _triton_layout(grad) else None
    if scaler is not None:  # as _scale_rows, with ignored rows read from the target on the
        # device (no mask to build)
        if ctx.soft_target:
            scaler(grad, factor)
        else:
            scaler(grad, factor, target, ignore_index=ctx.ignore_index)
        return grad
    # The kept mask only matters for a non-finite factor (ignored rows stay 0); a 0-d CPU
    # factor is read on the host, without a device synchronisation.
    finite = factor.dim() == 0 and factor.device.type == "cpu" and math.isfinite(float(factor))
    kept = None if ctx.soft_target or finite else target != ctx.ignore_index
    _scale_rows(grad, factor, kept)
    return grad


_PLAIN_TENSOR_TYPES = (torch.Tensor, torch.nn.Parameter)


def _runs_eagerly(*tensors: torch.Tensor) -> bool:
    """Whether a call may skip the custom ops' dispatch (see the module's docstring): plain
    CPU/CUDA tensors (``nn.Parameter`` too: a tensor that overrides nothing) outside
    torch.compile, fake tensors, functorch transforms and dispatch modes."""
    if torch.compiler.is_compiling() or _python_dispatch._get_current_dispatch_mode() is not None:
        return False
    return not transformed(*tensors) and all(
        type(t) in _PLAIN_TENSOR_TYPES and (t.is_cuda or t.is_cpu) for t in tensors
    )


def _remember(ctx, target, ignore_index) -> None:
    ctx.soft_target = target.is_floating_point()
    ctx.ignore_index = ignore_index
    ctx.consumed = False


def _consume(ctx) -> None:
    if ctx.consumed:
        raise RuntimeError(_SECOND_BACKWARD)
    if torch.is_grad_enabled():
        raise RuntimeError(_DOUBLE_BACKWARD)
    ctx.consumed = True


def _setup_context(ctx, inputs, output) -> None:
    target, ignore_index = inputs[1], inputs[3]
    _, z, lse, grad = output
    ctx.mark_non_differentiable(z, lse, grad)
    ctx.set_materialize_grads(False)  # no N x C zeros for the unused gradient outputs
    ctx.save_for_backward(grad, target)
    _remember(ctx, target, ignore_index)


def _backward(ctx, grad_loss, *unused):
    _consume(ctx)
    if grad_loss is None:
        return (None,) * 12
    return (_scale_saved_gradient(ctx, grad_loss), *([None] * 11))


_fused_op.register_autograd(_backward, setup_context=_setup_context)


class _FusedCrossEntropy(torch.autograd.Function):
    """The fused loss's autograd outside the out-of-place custom op: the in-place mode (its
    forward overwrites ``logits`` with the gradient; through the in-place op unless the call
    runs eagerly) and eager out-of-place calls (:func:`_runs_eagerly`: the same computation as
    ``crossent::fused_cross_entropy_v3`` without the op's dispatch). The backward scales the
    gradient in place and returns that storage."""

    @staticmethod
    def forward(
        ctx, logits, target, weight, ignore_index, eps, zeta, cap, reduction, kernel, loss_dtype,
        target_check, inplace,
    ):  # fmt: skip
        if inplace and not _runs_eagerly(logits, target):
            args = (target, weight, ignore_index, eps, zeta, cap, reduction, kernel, loss_dtype,
                    target_check)  # fmt: skip
            loss, z, lse = torch.ops.crossent.fused_cross_entropy_inplace_v3_(logits, *args)
            grad = logits
        else:
            grad = logits if inplace else cpu.empty_gradient(logits)
            options = _options(ignore_index, eps, zeta, cap)
            loss, z, lse = _forward(
                logits, target, weight, options, reduction, kernel, grad, loss_dtype, target_check
            )
        ctx.mark_non_differentiable(z, lse)
        ctx.set_materialize_grads(False)
        # In place, saved after the mutation: a later write to the logits fails torch's version
        # check.
        ctx.save_for_backward(grad, target)
        _remember(ctx, target, ignore_index)
        return loss, z, lse

    @staticmethod
    def backward(ctx, grad_loss, *unused):
        _consume(ctx)
        if grad_loss is None:
            return (None,) * 13
        return (_scale_saved_gradient(ctx, grad_loss), *([None] * 12))


# ------------------------------------------------------------------------------------------------
# checks and the entry point


def check_supported(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    loss_dtype: torch.dtype | None = None,
) -> None:
    """Raise :class:`FusedUnsupported` when the fused path cannot compute this call exactly."""
    if transformed(logits, target, weight):
        raise FusedUnsupported(
            "torch.func transforms (grad, vmap, jacrev, ...): the fused path computes its "
            "gradient in the forward pass, which they cannot see through"
        )
    if has_tangent(logits, target, weight):
        raise FusedUnsupported("forward-mode AD (a dual tensor): the fused path has no forward "
                               "derivative")  # fmt: skip
    if logits.dtype not in FLOAT_DTYPES:
        raise FusedUnsupported(f"logits dtype {logits.dtype} (supported: float16/bfloat16/32/64)")
    if needs_grad(weight):
        raise FusedUnsupported("class weights that require grad (the fused path has no weight "
                               "gradient)")  # fmt: skip
    if target.is_floating_point():
        if needs_grad(target):
            raise FusedUnsupported("a probability target that requires grad (the fused path has "
                                   "no target gradient)")  # fmt: skip
        promoted = torch.promote_types(logits.dtype, target.dtype)
        if weight is not None:
            promoted = torch.promote_types(promoted, weight.dtype)
        if promoted != (loss_dtype or logits.dtype):
            raise FusedUnsupported(
                f"probability target/weight dtypes promote the loss to {promoted} while the logits "
                f"are {logits.dtype} (the fused kernel computes in the logits' precision)"
            )


def transformed(*tensors: torch.Tensor | None) -> bool:
    """Whether a tensor is wrapped by a torch.func transform (grad, vmap, ...). Not asked while
    torch.compile traces (dynamo cannot call the check; compiled code runs the custom ops)."""
    if torch.compiler.is_compiling():
        return False
    wrapped = torch._C._functorch.is_functorch_wrapped_tensor
    for t in tensors:
        if t is not None and wrapped(t):
            return True
    return False


def has_tangent(*tensors: torch.Tensor | None) -> bool:
    """Whether a tensor is a forward-mode AD dual tensor (inside ``forward_ad.dual_level()``)."""
    if torch.autograd.forward_ad._current_level < 0 or torch.compiler.is_compiling():
        return False
    unpack = torch.autograd.forward_ad.unpack_dual
    return any(t is not None and unpack(t).tangent is not None for t in tensors)


def _shares_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    try:
        return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
    except RuntimeError:  # pragma: no cover - tensors without storage
        return False


def _saved_tensors_of(node: Any) -> list[torch.Tensor]:
    found = []
    for name in dir(node):
        if not name.startswith("_saved_"):
            continue
        try:
            value = getattr(node, name)
        except RuntimeError:  # saved tensors already freed
            continue
        values = value if isinstance(value, (tuple, list)) else (value,)
        found.extend(v for v in values if isinstance(v, torch.Tensor))
    return found


def _may_overlap(rows: torch.Tensor) -> bool:
    """Whether two elements of a 2-D row block may share memory: unless its rows lie apart
    (row stride past a row's reach, columns distinct) or its columns do (the transpose),
    conservatively. Comparisons only, so symbolic sizes under torch.compile trace. (An
    ``(N, C, S)`` block is contiguous, so its elements are distinct.)"""
    if rows.dim() == 3:
        return not rows.is_contiguous()
    (n0, n1), (s0, s1) = rows.shape, rows.stride()
    if n0 <= 1 or n1 <= 1:
        return (n0 > 1 and s0 == 0) or (n1 > 1 and s1 == 0)
    rows_apart = s1 >= 1 and s0 > s1 * (n1 - 1)
    columns_apart = s0 >= 1 and s1 > s0 * (n0 - 1)
    return not (rows_apart or columns_apart)


def check_inplace_allowed(logits: torch.Tensor) -> None:
    """Refuse (RuntimeError) an in-place gradient write that would corrupt autograd state.

    Refused:

    * ``logits`` has elements that share memory (an expanded tensor: one gradient per element
      cannot be stored there);
    * ``logits`` is a leaf that requires grad, or a view of one (its ``.grad`` would alias its own
      values, and the user's parameters would be overwritten);
    * the autograd node that produced ``logits`` (or, through view nodes, any node up to three
      levels back) saved a tensor sharing the logits' storage, e.g. the output of ``tanh``,
      ``exp``, ``sigmoid`` or ``softmax`` (``grad_fn._saved_result``), which its backward would
      read after it was overwritten.

    Caught by torch itself, because the write bumps the logits' version counter: any other
    autograd node that saved the logits (a second loss term computed from them before this call)
    raises "modified by an inplace operation" during backward, and so does a write to the logits
    after this call.

    Under torch.compile only the first two are checked (the autograd graph is not traced).

    Not detectable: plain reads of the logits after this call outside autograd (metrics such as
    ``logits.argmax()`` then see gradient values, not logits), and consumers that compute from the
    logits only after this call. With ``inplace_backward=True`` the logits are consumed.
    """
    if _may_overlap(logits):
        raise RuntimeError(
            "inplace_backward=True cannot write the gradient into logits whose elements share "
            f"memory (an expanded or otherwise overlapping tensor, strides {logits.stride()}): "
            "each element needs its own gradient. Use inplace_backward=False."
        )
    base = logits._base if logits._base is not None else logits
    if any(t.is_leaf and t.requires_grad for t in (logits, base)):  # (a view made a leaf
        # itself, ``storage[:, :5].requires_grad_()``, is a parameter as much as its base)
        raise RuntimeError(
            "inplace_backward=True would write the gradient into a leaf tensor that requires "
            "grad (its .grad would alias its own values). Pass logits produced by an operation "
            "(e.g. the classifier's output), or use inplace_backward=False."
        )
    if torch.compiler.is_compiling():
        return  # (the autograd graph below is not traceable; the checks above are metadata)
    frontier = [fn for fn in (logits.grad_fn, base.grad_fn) if fn is not None]
    seen: set[int] = set()
    for _ in range(3):
        following = []
        for node in frontier:
            if id(node) in seen:
                continue
            seen.add(id(node))
            if any(_shares_storage(t, logits) for t in _saved_tensors_of(node)):
                raise RuntimeError(
                    f"inplace_backward=True would overwrite the logits, but autograd still needs "
                    f"their values: {type(node).__name__} saved them for its backward. Use "
                    f"inplace_backward=False (or produce the logits with an op that does not save "
                    f"its result)."
                )
            following.extend(fn for fn, _ in node.next_functions if fn is not None)
        frontier = following


def column_layout_serves(
    kernel: str, logits: torch.Tensor, target: torch.Tensor, options: RowOptions
) -> bool:
    """Whether the fused path takes a K-dim input, ``logits`` as its ``(N, C, S)`` view, as
    columns (no copy into rows): the ``cpu`` kernel on CPU tensors (every target kind and
    option); the ``triton`` kernel for class indices without label smoothing or soft-capping
    and at least :data:`crossent.backends.triton.COLUMN_MIN_POSITIONS` positions per sample."""
    if kernel == "cpu":
        return logits.device.type == "cpu"
    from crossent.backends.triton.cross_entropy import COLUMN_MIN_POSITIONS

    plain = (not target.is_floating_point() and options.label_smoothing == 0
             and options.softcap is None)  # fmt: skip
    return kernel == "triton" and plain and logits.shape[2] >= COLUMN_MIN_POSITIONS


def fused_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    options: RowOptions,
    reduction: str,
    *,
    kernel: str = "cpu",
    inplace_backward: bool = False,
    loss_dtype: torch.dtype | None = None,
    target_check: str = "host",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fused cross-entropy over rows: return ``(loss, z_loss, lse)``.

    Args:
        logits: ``(M, C)`` floating tensor, class dimension last (made contiguous if its class
            stride is not 1); or, where :func:`column_layout_serves` says so, ``(N, C, S)`` (made
            contiguous), whose ``M = N * S`` rows are its positions (row ``n * S + s`` is
            ``logits[n, :, s]``): a K-dim input as it is.
        target: ``(M,)`` int64/uint8 class indices or ``(M, C)`` floating probabilities
            (``(N, C, S)`` with ``(N, C, S)`` logits).
        weight: ``(C,)`` class weights or None (validated by the caller).
        options: ignore_index, label_smoothing, z_loss, softcap (validated by the caller).
        reduction: ``"none"``, ``"mean"`` or ``"sum"``; ``mean`` divides by
            :func:`crossent._reduction.index_mean_denominator` (the kept weight ``sum_i m_i
            w[y_i]``) for class indices and by ``M`` for probabilities.
        kernel: ``"cpu"`` (blocked torch ops, :mod:`crossent.backends.cpu`) or ``"triton"``.
        inplace_backward: write the gradient into ``logits``' storage (see
            :func:`check_inplace_allowed`).
        loss_dtype: the dtype of ``loss`` and ``z_loss`` (None: the logits'; float32 under
            autocast, as torch's own loss gives).
        target_check: how class-index targets are checked. ``"host"`` (the default) reads the
            verdict on the host and raises IndexError naming the value, its position and the
            valid range (on CUDA one synchronisation per call, after the kernel is queued);
            ``"device"`` asserts on CUDA devices instead (``torch._assert_async``), so the
            fused call does not synchronise for the check: an out-of-range target then fails
            the CUDA stream as torch's own kernel does (a device-side assert, reported as a
            RuntimeError by whichever later CUDA call comes first; the CUDA context is lost),
            also in a captured CUDA graph.
            On the CPU, and on ROCm builds (whose kernel assertions may be compiled out), both
            raise the IndexError.

    Returns:
        ``loss`` (differentiable w.r.t. ``logits``; ``loss_dtype``; shape ``(M,)`` for
        ``none``, else 0-d), ``z_loss`` (the ``z_loss * lse**2`` part of ``loss``, reduced the
        same way, detached) and ``lse`` (``(M,)`` per-row log-sum-exp of the soft-capped logits
        in float32, float64 for float64 logits, 0 for ignored rows, detached).

    The plain PyTorch equivalent of ``loss`` (without z-loss and softcap) is
    ``F.cross_entropy(logits, target, weight, ignore_index=..., reduction=...,
    label_smoothing=...)``.

    Raises:
        FusedUnsupported: the fused path cannot serve the call (see :func:`check_supported`).
        ValueError: unknown ``kernel`` or ``reduction``.
        RuntimeError: ``inplace_backward=True`` on logits autograd still needs.

    >>> import torch
    >>> x = torch.tensor([[2.0, 4.0, 0.5]], requires_grad=True)
    >>> loss, z, lse = fused_cross_entropy(x, torch.tensor([1]), None, RowOptions(), "mean")
    >>> loss.backward()
    >>> round(loss.item(), 6), [round(v, 4) for v in x.grad[0].tolist()]
    (0.153178, [0.1161, -0.142, 0.0259])
    """
    if kernel not in KERNELS:
        raise ValueError(f"unknown fused kernel {kernel!r}; available: {', '.join(KERNELS)}")
    from crossent._validation import check_target_check

    check_target_check(target_check)
    if reduction not in _reduction.REDUCTIONS:
        raise ValueError(f"{reduction} is not a valid value for reduction")
    if logits.dim() == 3:
        if not column_layout_serves(kernel, logits, target, options):
            raise ValueError(
                "fused_cross_entropy takes (N, C, S) logits for the 'cpu' kernel on CPU tensors, "
                "and for the 'triton' kernel with class indices without label smoothing or "
                "soft-capping"
            )
    elif logits.dim() != 2:
        raise ValueError(f"fused_cross_entropy expects 2-D logits (M, C), got {logits.dim()}-D")
    check_supported(logits, target, weight, loss_dtype)
    if target.is_floating_point():
        if target.stride(-1) != 1 or (target.dim() == 3 and not target.is_contiguous()):
            target = target.contiguous()
    elif target.dtype != torch.int64:
        target = target.long()
    elif not target.is_contiguous():  # (a flattened strided target: the kernels read it packed)
        target = target.contiguous()
    if logits.dim() == 3 and not logits.is_contiguous():
        logits = logits.contiguous()
    elif logits.dim() == 2 and logits.stride(-1) != 1:
        logits = logits.contiguous()
    args = (
        target,
        weight,
        int(options.ignore_index),
        float(options.label_smoothing),
        float(options.z_loss),
        None if options.softcap is None else float(options.softcap),
        reduction,
        kernel,
        loss_dtype,
        target_check,
    )
    compute_grad = torch.is_grad_enabled() and logits.requires_grad
    if inplace_backward and compute_grad:
        check_inplace_allowed(logits)  # (under torch.compile: its metadata checks)
        return _FusedCrossEntropy.apply(logits, *args, True)
    if _runs_eagerly(logits, target) and (weight is None or _runs_eagerly(weight)):
        if compute_grad:
            return _FusedCrossEntropy.apply(logits, *args, False)
        options = _options(*args[2:6])
        return _forward(logits, target, weight, options, reduction, kernel, None, loss_dtype,
                        target_check)  # fmt: skip
    loss, z_loss, lse, _ = torch.ops.crossent.fused_cross_entropy_v3(logits, *args, compute_grad)
    return loss, z_loss, lse

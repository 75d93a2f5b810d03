"""``linear_cross_entropy``: a linear layer and cross-entropy that never materialise the logits.

``linear_cross_entropy(input, linear_weight, target, ...)`` equals
``cross_entropy(input @ linear_weight.T + linear_bias, target, ...)`` (and torch 2.13's
``F.linear_cross_entropy``), plus z-loss, soft-capping and a log-sum-exp output, but computes it
through blocks of rows (and of the vocabulary, when one row block is too big for the memory
budget) with :mod:`crossent.backends.linear_blocks`. (Under ``impl="auto"`` a small problem,
whose logits one block would hold anyway, is ``F.cross_entropy(F.linear(...))`` after crossent's
checks instead: see :func:`_small_on_torch`.)

Autograd. For ``mean`` and ``sum`` the forward computes ``dX``, ``dW`` and ``db`` while the
logits of a block are at hand (gradients of the *reduced* loss: ``1/D`` is folded in), so the
backward only multiplies them by the upstream gradient, in place, and hands the buffers to
autograd (an upstream gradient of exactly 1 on CPU skips the multiply). A second backward through
the same graph (``retain_graph=True``) finds the buffers consumed and recomputes the gradients
from the saved inputs (correct, at the cost of one more forward+backward sweep). For ``none``
the upstream gradient differs per row, so ``dW = sum_i g_i dZ_i^T x_i`` cannot be scaled after the
fact: the forward runs only the logits GEMM (no gradients), and the backward reruns the engine
with ``g`` as the row scale (logits, ``dX`` and ``dW`` GEMMs: 4 GEMMs in all instead of 3).

Only torch code paths import this module (it registers two ``crossent::`` custom ops on import).
"""

from __future__ import annotations

import math
import os
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from crossent import _reduction
from crossent import _validation as check
from crossent._array import needs_grad
from crossent._dispatch import fused_impl, resolve_impl
from crossent.backends import linear_blocks
from crossent.backends.linear_blocks import BlockPlan
from crossent.backends.rows import RowOptions, accumulation_dtype
from crossent.functional import CrossEntropyOutput, _checked_target, cross_entropy_with_extras
from crossent.nn import _WeightedLoss

__all__ = [
    "BlockPlan",
    "CrossEntropyOutput",
    "LinearCrossEntropyLoss",
    "default_memory_budget",
    "linear_cross_entropy",
    "linear_cross_entropy_with_extras",
    "plan_blocks",
]

#: The default working-memory budget holds this many rows of full-vocabulary logits ...
DEFAULT_BUDGET_ROWS = 384
#: ... but at least this many bytes ...
DEFAULT_BUDGET_MIN = 32 * 2**20
#: ... and at most this many, and at most 1/DEFAULT_BUDGET_MEMORY_FRACTION of the device memory.
DEFAULT_BUDGET_MAX = 256 * 2**20
DEFAULT_BUDGET_MEMORY_FRACTION = 16
#: On CUDA: room for this many rows of logits in the input dtype (at most 1/16 of the device).
DEFAULT_GPU_BUDGET_ROWS = 8192
#: ``impl="auto"`` on CUDA computes 2-D logits below this many (that fit the memory budget three
#: times over) as ``F.cross_entropy(F.linear(...))`` after crossent's checks. On an H200
#: (2026-11-27, benchmarks/gpu.py section "small calls", record
#: gpu-h200-2026-11-27-linear-small.md; bf16 forward+backward, back to back) the blocked Triton
#: path took 2.0-2.8 ms per call at 64x1024x32000 to 1024x2048x32000 (2**21-2**25 logits), almost
#: all of it host time, and torch's expression 0.29-0.76 ms; its cross-entropy costs some 3e-12 s
#: per logit more device time than the Triton kernel (torch eager's 4.5e-12 at 8192x32000 in
#: section "small calls", against the row kernel's 1.6e-12 at 8192x128256 in the same run's
#: logits table, record gpu-h200-2026-11-27-small-calls.md), about 0.2 ms at this threshold,
#: against some 2 ms of host time per call.
CUDA_TORCH_MAX_LOGITS = 1 << 26


# ------------------------------------------------------------------------------------------------
# memory budget and block plan


@torch.compiler.assume_constant_result
def _device_memory(device: torch.device) -> int:
    """Total memory of ``device`` (physical RAM for CPU), read once per trace under compile."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):  # pragma: no cover - non-POSIX
        return 8 * 2**30


def default_memory_budget(
    num_classes: int,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    in_features: int = 0,
) -> int:
    """The working-memory budget used when ``memory_budget=None`` (bytes).

    ``clamp(DEFAULT_BUDGET_ROWS * num_classes * b, DEFAULT_BUDGET_MIN, DEFAULT_BUDGET_MAX)``, where
    ``b`` is the bytes per logit of a block (4 for float32, 8 for float64, 6 for
    float16/bfloat16: the float32 block and its rounded copy), and at most 1/16 of the device's
    total memory (physical RAM on CPU). On CUDA: room for ``DEFAULT_GPU_BUDGET_ROWS`` rows of
    logits in the input dtype (with their ``in_features``-wide row buffers), at most 1/16 of the
    device's memory: tall blocks keep the three GEMMs on the tensor cores and touch the float32
    ``dW`` accumulator few times (measured on an H100, Llama-3-8B head, bf16: 8192-row blocks
    682 TFLOP/s, 4096-row 654, 2048-row 615). It depends only on the shapes, the dtype and the
    device size, so the plan, and with it every result bit, is reproducible on a given machine.

    >>> default_memory_budget(32768) // 2**20, default_memory_budget(128256) // 2**20
    (48, 187)
    """
    device = torch.device(device)
    if device.type == "cuda":
        # Tall row blocks keep the three GEMMs at tensor-core speed and read and write the
        # float32 dW accumulator few times: room for DEFAULT_GPU_BUDGET_ROWS rows of logits.
        row = num_classes * dtype.itemsize + 2 * in_features * dtype.itemsize
        wanted = DEFAULT_GPU_BUDGET_ROWS * (row + linear_blocks.ROW_VECTOR_BYTES) + 8 * num_classes
        return int(min(wanted, _device_memory(device) // DEFAULT_BUDGET_MEMORY_FRACTION))
    acc = accumulation_dtype(dtype)
    per_logit = acc.itemsize + (dtype.itemsize if dtype != acc else 0)
    wanted = DEFAULT_BUDGET_ROWS * num_classes * per_logit
    budget = min(max(wanted, DEFAULT_BUDGET_MIN), DEFAULT_BUDGET_MAX)
    return int(min(budget, _device_memory(device) // DEFAULT_BUDGET_MEMORY_FRACTION))


def plan_blocks(
    num_rows: int,
    in_features: int,
    num_classes: int,
    dtype: torch.dtype = torch.float32,
    memory_budget: int | None = None,
    *,
    probabilities: bool = False,
    label_smoothing: float = 0.0,
    softcap: bool = False,
    gradients: bool = True,
    kernel: str = "cpu",
    device: torch.device | str = "cpu",
) -> BlockPlan:
    """The block plan :func:`linear_cross_entropy` uses for these shapes (deterministic).

    ``memory_budget`` (bytes; None = :func:`default_memory_budget`) bounds the working memory:
    the logits block, its low-precision copy, the row kernel's scratch and per-row buffers, as
    counted by :func:`crossent.backends.linear_blocks.working_bytes`. Rule
    (:func:`crossent.backends.linear_blocks.plan_blocks`): as many rows of full-vocabulary
    logits as fit, if at least ``min(num_rows, 128)`` do; otherwise vocabulary blocks of about
    1024 classes and as many rows as fit (two passes over the vocabulary: one extra logits GEMM);
    blocks are then evened out. The keywords describe the call (probability targets, smoothing,
    soft-capping and whether every pass computes gradients change the scratch needed).

    >>> plan = plan_blocks(2048, 1024, 32768)
    >>> plan.rows, plan.vocab, plan.vocab_blocked
    (342, 32768, False)
    >>> plan = plan_blocks(4096, 2048, 128256, memory_budget=8 * 2**20)
    >>> plan.rows, plan.vocab, plan.vocab_blocked, plan.working_bytes <= 8 * 2**20
    (274, 1440, True, True)
    """
    for name, value in (("num_rows", num_rows), ("in_features", in_features),
                        ("num_classes", num_classes)):  # fmt: skip
        if check.int_argument(value, name) < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value}")
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype, got {type(dtype).__name__} ({dtype!r})")
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating dtype (the input's), got {dtype}")
    memory_budget = _check_memory_budget(memory_budget)
    if memory_budget is None:
        memory_budget = default_memory_budget(num_classes, dtype, device, in_features)
    work = linear_blocks.workload(
        num_classes, in_features, dtype, probabilities=probabilities, softcap=softcap,
        smoothing=label_smoothing > 0, gradients=gradients, kernel=kernel,
    )  # fmt: skip
    return linear_blocks.plan_blocks(work, num_rows, memory_budget)


# ------------------------------------------------------------------------------------------------
# the custom ops


class _OpOptions(NamedTuple):
    """The non-tensor arguments of both custom ops, in schema order (before the grad flags)."""

    ignore_index: int
    label_smoothing: float
    z_loss: float
    softcap: float | None
    reduction: str
    kernel: str
    rows: int
    vocab: int
    vocab_blocked: bool
    kernel_rows: int
    loss_dtype: torch.dtype | None  # None: torch's rule for the operands (float32 under autocast)
    target_check: str  # "host" or "device" (crossent._fused_op.fused_cross_entropy)


_TENSOR_ARGS = (
    "Tensor input, Tensor linear_weight, Tensor target, Tensor? linear_bias, Tensor? weight"
)
_OPTION_ARGS = (
    "int ignore_index, float label_smoothing, float z_loss, float? softcap, str reduction, "
    "str kernel, int rows, int vocab, bool vocab_blocked, int kernel_rows, "
    "ScalarType? loss_dtype, str target_check, bool grad_input, bool grad_weight, bool grad_bias"
)
_NUM_ARGS = 5 + len(_OpOptions._fields) + 3


def _result_dtype(
    input: Tensor, target: Tensor, weight: Tensor | None, loss_dtype: torch.dtype | None = None
) -> torch.dtype:
    """torch's loss dtype: the input's for class indices, the promotion for probabilities
    (``loss_dtype`` when given: float32 under autocast)."""
    if loss_dtype is not None:
        return loss_dtype
    if not target.dtype.is_floating_point:
        return input.dtype
    dtype = torch.promote_types(input.dtype, target.dtype)
    return dtype if weight is None else torch.promote_types(dtype, weight.dtype)


def _denominator(target: Tensor, weight: Tensor | None, ignore_index: int, dtype) -> Tensor:
    """``mean`` denominator (0-d): the kept weight for class indices, the row count otherwise."""
    import array_api_compat.torch as xp

    if target.dtype.is_floating_point:
        return torch.tensor(float(target.shape[0]), dtype=dtype, device=target.device)
    return _reduction.index_mean_denominator(xp, target, weight, ignore_index, dtype)


def _mean_of_sum(total: Tensor, denominator: Tensor, nothing_kept: Tensor) -> Tensor:
    """``total / denominator`` as torch divides, detached where no position is kept: torch's
    gradient there is 0, where ``d(total / 0) = inf`` would meet the zero gradients of the
    parts as NaN."""
    safe = torch.where(nothing_kept, 1.0, denominator)
    return torch.where(nothing_kept, (total / denominator).detach(), total / safe)


def _reduce(rows: Tensor, reduction: str, denominator: Tensor) -> Tensor:
    import array_api_compat.torch as xp

    return _reduction.reduce(xp, rows, reduction, denominator)


def _run_engine(tensors, opts: _OpOptions, row_scale, grads) -> linear_blocks.BlockResult:
    input, linear_weight, target, linear_bias, weight = tensors
    options = RowOptions(opts.ignore_index, opts.label_smoothing, opts.z_loss, opts.softcap)
    plan = BlockPlan(opts.rows, opts.vocab, opts.kernel_rows, opts.vocab_blocked, 0, 0)
    return linear_blocks.linear_cross_entropy_blocks(
        input, linear_weight, linear_bias, target, weight, options, plan, kernel=opts.kernel,
        row_scale=row_scale, grad_input=grads[0], grad_weight=grads[1], grad_bias=grads[2],
    )  # fmt: skip


def _gradients(res: linear_blocks.BlockResult, tensors, grads) -> tuple[Tensor, Tensor, Tensor]:
    """The requested gradients, empty tensors for the others (custom ops return tensors)."""
    input = tensors[0]
    return tuple(
        g if wanted else input.new_empty((0,))
        for g, wanted in zip((res.grad_input, res.grad_weight, res.grad_bias), grads, strict=True)
    )


def _fake_gradients(tensors, grads) -> tuple[Tensor, Tensor, Tensor]:
    input, linear_weight, _, linear_bias, _ = tensors
    return tuple(
        torch.empty_like(like) if wanted else input.new_empty((0,))
        for like, wanted in zip((input, linear_weight, linear_bias), grads, strict=True)
    )


@torch.library.custom_op(
    "crossent::linear_cross_entropy_v3",
    mutates_args=(),
    schema=f"({_TENSOR_ARGS}, {_OPTION_ARGS}) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)",
)
def _forward_op(input, linear_weight, target, linear_bias, weight, *args):
    """Loss, z-loss, per-row lse and (for mean/sum, on request) the gradients of the loss."""
    return _forward_impl(input, linear_weight, target, linear_bias, weight, *args)


def _forward_impl(input, linear_weight, target, linear_bias, weight, *args):
    """The body of ``crossent::linear_cross_entropy_v3``, also run without the op's dispatch
    (see :class:`_EagerLinearCrossEntropy`)."""
    tensors = (input, linear_weight, target, linear_bias, weight)
    opts, grads = _OpOptions(*args[:-3]), args[-3:]
    if not target.dtype.is_floating_point:
        import array_api_compat.torch as xp

        from crossent._fused_op import assert_in_range_on_device, asserts_on_device

        num_classes = linear_weight.shape[0]
        if asserts_on_device(target, opts.target_check):  # (no host synchronisation)
            assert_in_range_on_device(target, num_classes, opts.ignore_index)
        else:  # (on CUDA one Triton count and one read first; the full check names an offender)
            _checked_target(xp, target, num_classes, opts.ignore_index)
    acc = accumulation_dtype(input.dtype)
    denominator = _denominator(target, weight, opts.ignore_index, acc)
    row_scale = 1.0 / denominator if opts.reduction == "mean" and any(grads) else None
    res = _run_engine(tensors, opts, row_scale, grads)
    out_dtype = _result_dtype(input, target, weight, opts.loss_dtype)
    loss = _reduce(res.loss, opts.reduction, denominator)
    if opts.reduction == "mean" and not target.dtype.is_floating_point:
        import array_api_compat.torch as xp

        loss = _reduction.smoothed_index_mean(xp, loss, denominator, opts.label_smoothing)
    if target.dtype.is_floating_point and opts.reduction == "sum" and input.shape[0] == 0:
        loss = -loss  # torch's probability-target sum over no rows is -0.0
    z_rows = opts.z_loss * res.lse * res.lse if opts.z_loss else torch.zeros_like(res.lse)
    z = _reduce(z_rows, opts.reduction, denominator)
    return loss.to(out_dtype), z.to(out_dtype), res.lse, *_gradients(res, tensors, grads)


@_forward_op.register_fake
def _(input, linear_weight, target, linear_bias, weight, *args):
    opts, grads = _OpOptions(*args[:-3]), args[-3:]
    shape = (input.shape[0],) if opts.reduction == "none" else ()
    out_dtype = _result_dtype(input, target, weight, opts.loss_dtype)
    lse = input.new_empty((input.shape[0],), dtype=accumulation_dtype(input.dtype))
    loss, z = input.new_empty(shape, dtype=out_dtype), input.new_empty(shape, dtype=out_dtype)
    return (
        loss,
        z,
        lse,
        *_fake_gradients((input, linear_weight, target, linear_bias, weight), grads),
    )


@torch.library.custom_op(
    "crossent::linear_cross_entropy_backward_v3",
    mutates_args=(),
    schema=f"(Tensor grad_output, {_TENSOR_ARGS}, {_OPTION_ARGS}) -> (Tensor, Tensor, Tensor)",
)
def _backward_op(grad_output, input, linear_weight, target, linear_bias, weight, *args):
    """Gradients of ``sum_i g_i loss_i`` recomputed from the inputs (``g`` the upstream gradient
    of a ``none`` loss, or of a ``sum``/``mean`` loss whose saved gradients were consumed)."""
    return _backward_impl(grad_output, input, linear_weight, target, linear_bias, weight, *args)


def _backward_impl(grad_output, input, linear_weight, target, linear_bias, weight, *args):
    """The body of ``crossent::linear_cross_entropy_backward_v3`` (and of the eager route)."""
    tensors = (input, linear_weight, target, linear_bias, weight)
    opts, grads = _OpOptions(*args[:-3]), args[-3:]
    acc = accumulation_dtype(input.dtype)
    scale = grad_output.to(acc)
    if opts.reduction == "mean":
        scale = scale / _denominator(target, weight, opts.ignore_index, acc)
    return _gradients(_run_engine(tensors, opts, scale, grads), tensors, grads)


@_backward_op.register_fake
def _(grad_output, input, linear_weight, target, linear_bias, weight, *args):
    return _fake_gradients((input, linear_weight, target, linear_bias, weight), args[-3:])


# ------------------------------------------------------------------------------------------------
# autograd

_HIGHER_ORDER = (
    "linear_cross_entropy does not support higher-order gradients (backward with "
    "create_graph=True): its gradients are computed by the forward kernels, not by "
    "differentiable operations. Use impl='reference' for double backward."
)


def _setup_context(ctx, inputs, output, eager: bool = False) -> None:
    """``eager``: the eager route's context, whose backward calls the ops' bodies."""
    tensors, opts = inputs[:5], _OpOptions(*inputs[5:-3])
    _, z, lse, grad_input, grad_weight, grad_bias = output
    ctx.mark_non_differentiable(z, lse, grad_input, grad_weight, grad_bias)
    ctx.set_materialize_grads(False)
    ctx.options = opts
    ctx.owned = None
    ctx.eager = eager
    if opts.reduction == "none":
        ctx.mode = "recompute"
        ctx.save_for_backward(*tensors)
    elif torch.compiler.is_compiling():
        # A traced backward cannot hand buffers over through ``ctx``: save and scale a copy.
        ctx.mode = "saved"
        ctx.save_for_backward(grad_input, grad_weight, grad_bias)
    else:
        ctx.mode = "owned"
        ctx.save_for_backward(*tensors)  # for a second backward (retain_graph=True)
        ctx.owned = (grad_input.detach(), grad_weight.detach(), grad_bias.detach())


def _scale_in_place(
    grads: tuple[Tensor, ...], grad_output: Tensor, kept_rows: Tensor | None, eager: bool = False
) -> None:
    """``grad *= grad_output`` for each gradient, through the fused loss's row scaler for the
    2-D ones (``crossent::scale_gradient_rows_``: a factor of exactly 1 is skipped, read on the
    host for a CPU factor and on the device for a CUDA one, so the usual ``loss.backward()``
    adds no sweep over dW and no host synchronisation). ``kept_rows``: the rows of ``dX``
    (``grads[0]``) whose target is kept; the others stay 0 whatever the factor (NaN or inf
    included), as torch's gradient of an ignored row is. ``eager``: the op's body, without its
    dispatch."""
    from crossent import _fused_op  # (registers the crossent:: ops)

    scale = _fused_op._scale_rows if eager else torch.ops.crossent.scale_gradient_rows_
    for i, grad in enumerate(grads):
        if grad.dim() == 2:
            kept = kept_rows if i == 0 else None
            scale(grad, grad_output, kept)
        elif grad_output.device.type != "cpu" or float(grad_output) != 1.0:
            grad.mul_(grad_output)  # the (V,) bias gradient


def _backward(ctx, grad_loss, grad_z, grad_lse, grad_gx, grad_gw, grad_gb):
    result = [None] * _NUM_ARGS
    if grad_loss is None:
        return tuple(result)
    if torch.is_grad_enabled() and not torch.compiler.is_compiling():
        raise RuntimeError(_HIGHER_ORDER)
    wanted = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[3])
    if ctx.mode == "saved":
        grads = tuple(g * grad_loss.to(g.dtype) for g in ctx.saved_tensors)
    elif ctx.owned is not None:  # first backward: scale the forward's buffers and hand them over
        grads, ctx.owned = ctx.owned, None
        # reading the saved tensors runs autograd's version check: an input changed in place
        # since the forward raises, as in torch, instead of giving the old input's gradients
        _, _, target, _, _ = ctx.saved_tensors
        kept = None
        if wanted[0] and not target.is_floating_point():
            kept = target.reshape(-1) != ctx.options.ignore_index
        _scale_in_place(
            tuple(g for g, w in zip(grads, wanted, strict=True) if w), grad_loss, kept, ctx.eager
        )
    else:  # reduction="none", or a second backward through the same graph
        recompute = (_backward_impl if ctx.eager
                     else torch.ops.crossent.linear_cross_entropy_backward_v3)  # fmt: skip
        grads = recompute(grad_loss, *ctx.saved_tensors, *ctx.options, *wanted)
    result[0], result[1], result[3] = (g if w else None for g, w in zip(grads, wanted, strict=True))
    return tuple(result)


_forward_op.register_autograd(_backward, setup_context=_setup_context)


class _EagerLinearCrossEntropy(torch.autograd.Function):
    """The eager route: the ops' bodies and autograd formulas without the custom ops' dispatch
    and its Python cost per call (argument defaults, aliasing checks; three op calls: on a
    2-core CPU the blocked path's speed relative to torch eager at 64 x 32 x 10 went from
    0.12x-0.14x to 0.17x-0.19x without it, record
    ``cpu-epyc-2cores-2026-11-27-linear_small-eager-route.md``). For plain CPU/CUDA tensors outside
    torch.compile, transforms and dispatch modes (:func:`crossent._fused_op._runs_eagerly`;
    ``nn.Parameter`` weights included), as the fused cross-entropy's eager route; tests check
    the two routes agree bitwise. Forward-mode AD is refused before either route
    (:func:`_unsupported`)."""

    @staticmethod
    def forward(ctx, *inputs):
        output = _forward_impl(*inputs)
        _setup_context(ctx, inputs, output, eager=True)
        return output

    @staticmethod
    def backward(ctx, *grad_outputs):
        return _backward(ctx, *grad_outputs)


# ------------------------------------------------------------------------------------------------
# validation


class _Logits(NamedTuple):
    """Shape/dtype stand-in of the logits for the shared cross_entropy checks (no tensor)."""

    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)


class _Call(NamedTuple):
    """A validated call: what the dispatch needs beyond the tensors."""

    probabilities: bool
    ignore_index: int
    reduction: str
    label_smoothing: float
    z_loss: float
    softcap: float | None
    out_features: tuple[int, ...]
    batched: bool
    memory_budget: int | None  # bytes; None = default_memory_budget
    loss_dtype: torch.dtype | None = None  # float32 under autocast; None: torch's rule
    target_check: str = "host"


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _check_linear_args(input, linear_weight, linear_bias) -> tuple[int, ...]:
    """torch's checks of the linear part (order, types, messages); returns ``out_features``."""
    for name, value in (("input", input), ("linear_weight", linear_weight)):
        if not isinstance(value, Tensor):
            raise check.NotAnArrayError(
                f"linear_cross_entropy(): {name} must be a Tensor, got {type(value).__name__}"
            )
    if linear_bias is not None and not isinstance(linear_bias, Tensor):
        raise check.NotAnArrayError(
            f"linear_cross_entropy(): linear_bias must be a Tensor or None, got "
            f"{type(linear_bias).__name__}"
        )
    if input.dim() < 1 or input.dim() > 2:
        raise RuntimeError(f"expected input with dimensionality 1 or 2, got {input.dim()}")
    if linear_weight.dim() < 2:
        raise RuntimeError(
            f"expected linear_weight with dimensionality at least 2, got {linear_weight.dim()}"
        )
    if input.shape[-1] != linear_weight.shape[-1]:
        raise RuntimeError(
            f"expected equal input and linear_weight last dimensions (in_features), got "
            f"{input.shape[-1]} and {linear_weight.shape[-1]}, respectively"
        )
    out_features = tuple(linear_weight.shape[1:-1])
    num_classes = linear_weight.shape[0]
    if linear_bias is not None and tuple(linear_bias.shape) != (num_classes, *out_features):
        raise RuntimeError(
            f"expected linear_bias shape {(num_classes, *out_features)}, got "
            f"{tuple(linear_bias.shape)}"
        )
    if out_features and input.dim() == 1:
        raise RuntimeError(
            f"K-dimensional loss defined by linear_weight shape {tuple(linear_weight.shape)} "
            f"requires batched input, (N, {input.shape[-1]}), got unbatched input with shape "
            f"{tuple(input.shape)}"
        )
    if input.dtype != linear_weight.dtype:
        raise RuntimeError(
            f"expected m1 and m2 to have the same dtype, but got: {_dtype_name(input.dtype)} != "
            f"{_dtype_name(linear_weight.dtype)} (input and linear_weight must share a dtype)"
        )
    if linear_bias is not None and linear_bias.dtype != input.dtype:
        raise RuntimeError(
            f"self and mat2 must have the same dtype, but got {_dtype_name(linear_bias.dtype)} "
            f"and {_dtype_name(input.dtype)} (linear_bias must have the input's dtype)"
        )
    return out_features


def _check_memory_budget(memory_budget: Any) -> int | None:
    if memory_budget is None:
        return None
    memory_budget = check.int_argument(memory_budget, "memory_budget (bytes)")
    if memory_budget <= 0:
        raise ValueError(f"memory_budget must be a positive number of bytes, got {memory_budget}")
    return memory_budget


def _prepare(
    input,
    linear_weight,
    target,
    linear_bias,
    weight,
    reduction,
    ignore_index,
    label_smoothing,
    z_loss,
    softcap,
    memory_budget,
    loss_dtype=None,
    target_check="host",
) -> _Call:
    """Validate a call with torch's exception types (and crossent's documented deviations).

    ``loss_dtype`` (autocast): the dtype the logits count as in the cross-entropy checks."""
    import array_api_compat.torch as xp

    out_features = _check_linear_args(input, linear_weight, linear_bias)
    for name, value in (("target", target), ("weight", weight)):
        if not isinstance(value, Tensor) and not (name == "weight" and value is None):
            allowed = "a Tensor or None" if name == "weight" else "a Tensor"
            raise check.NotAnArrayError(
                f"linear_cross_entropy(): {name} must be {allowed}, got {type(value).__name__}"
            )
    logits_shape = (*input.shape[:-1], linear_weight.shape[0], *out_features)
    logits = _Logits(logits_shape, loss_dtype or input.dtype)
    probabilities = tuple(target.shape) == logits.shape
    if probabilities and ignore_index is not None:
        raise RuntimeError(
            "ignore_index cannot be specified when target contains probabilities (got "
            f"ignore_index={ignore_index!r}; leave it None)"
        )
    ignore_index = -100 if ignore_index is None else check.check_ignore_index(ignore_index)
    reduction = check.check_reduction(reduction)
    label_smoothing = check.check_label_smoothing(label_smoothing)
    check.check_cross_entropy_args(
        xp, logits, target, weight, ignore_index, label_smoothing, reduction
    )
    check.check_same_device(
        "linear_cross_entropy", input=input, linear_weight=linear_weight,
        linear_bias=linear_bias, target=target, weight=weight,
    )  # fmt: skip
    z_loss, softcap = check.check_extras(z_loss, softcap)
    return _Call(
        probabilities,
        ignore_index,
        reduction,
        label_smoothing,
        z_loss,
        softcap,
        out_features,
        input.dim() == 2,
        _check_memory_budget(memory_budget),
        loss_dtype,
        check.check_target_check(target_check),
    )


# ------------------------------------------------------------------------------------------------
# dispatch


def _kept(target: Tensor, call: _Call) -> Tensor:
    """Kept positions, shaped like the ``none`` loss."""
    if call.probabilities:
        shape = target.shape[:1] + target.shape[2:] if call.batched else ()
        return torch.ones(shape, dtype=torch.bool, device=target.device)
    kept = target != call.ignore_index
    return kept if call.batched else kept.reshape(())


def _materialised_logits(input, linear_weight, linear_bias, call: _Call) -> Tensor:
    """``F.linear`` of the whole input: ``(..., C, *out_features)`` logits."""
    num_classes = linear_weight.shape[0]
    flat_classes = num_classes * math.prod(call.out_features)
    return F.linear(
        input,
        linear_weight.reshape(flat_classes, input.shape[-1]),
        None if linear_bias is None else linear_bias.reshape(flat_classes),
    ).reshape((*input.shape[:-1], num_classes, *call.out_features))


def _torch_logits_limit(device: str, out_features: tuple[int, ...]) -> int | None:
    """The logits below which ``impl="auto"`` hands a call on this device type to torch's
    expression, or None where it never does: K-dim logits on CUDA (torch's kernel sums them
    with atomics) and devices other than the CPU and CUDA."""
    from crossent import _torch_native

    if device == "cpu":
        return _torch_native.CROSS_ENTROPY_MAX_ELEMENTS
    if device == "cuda" and not out_features:
        return CUDA_TORCH_MAX_LOGITS
    return None


def _small_on_torch(input, linear_weight, target, linear_bias, weight, call: _Call):
    """``impl="auto"``'s route for a small problem, or None: below 2**20 logits on the CPU, and
    below :data:`CUDA_TORCH_MAX_LOGITS` 2-D logits on CUDA (torch's K-dim CUDA kernel is not
    deterministic), that fit the memory budget three times over (logits, log-probabilities,
    their gradient), the blocked path would hold them all in one block anyway, and its fixed
    cost per call (tens of Python steps and torch ops, and on CUDA Triton launches: about 2 ms
    of host time) outweighs the work. Then this is
    ``F.cross_entropy(F.linear(input, W, b), ...)`` after crossent's checks (``_prepare``'s and
    the target range, which on CUDA torch's kernel makes on the device with
    ``target_check="device"`` and while a CUDA graph is captured): torch's result bit for bit.
    Not for the extras (z-loss, soft-capping), autocast or torch.compile (compiled code keeps
    the custom ops)."""
    from crossent import _torch_native
    from crossent._fused_op import transformed
    from crossent.functional import _torch_kernel_checks

    limit = _torch_logits_limit(input.device.type, call.out_features)
    if limit is None or call.z_loss or call.softcap is not None:
        return None
    if transformed(input, linear_weight, linear_bias, target, weight):
        return None  # (the blocked paths refuse transforms and point to impl="reference")
    if call.loss_dtype is not None or torch.compiler.is_compiling():
        return None
    num_classes = linear_weight.shape[0]
    logits = math.prod(input.shape[:-1]) * num_classes * math.prod(call.out_features)
    if logits >= limit:
        return None
    if call.memory_budget is not None:  # too small for the blocked path: the same error here
        plan_blocks(max(logits // num_classes, 1), input.shape[-1], num_classes, input.dtype,
                    call.memory_budget, probabilities=call.probabilities,
                    label_smoothing=call.label_smoothing,
                    kernel=_kernel_for(fused_impl(input)),
                    device=input.device)  # fmt: skip
    budget = call.memory_budget or default_memory_budget(
        num_classes, input.dtype, input.device, input.shape[-1]
    )
    if 3 * logits * input.element_size() > budget:
        return None
    if _torch_native.why_not(input, target, weight) is not None:
        return None
    if not call.probabilities and not _torch_kernel_checks(input, call.target_check):
        # (the rest of cross_entropy's checks ran in _prepare)
        import array_api_compat.torch as xp

        target = _checked_target(xp, target, num_classes, call.ignore_index)
    if weight is not None and weight.dim() != 1:  # K-dim: any weight of C elements
        weight = weight.reshape(-1)
    options = {"ignore_index": call.ignore_index, "reduction": call.reduction,
               "label_smoothing": call.label_smoothing}  # fmt: skip
    logits = _materialised_logits(input, linear_weight, linear_bias, call)
    return _torch_native.cross_entropy(logits, target, weight, options)


def _reference(
    input, linear_weight, target, linear_bias, weight, call: _Call
) -> CrossEntropyOutput:
    """Materialise the logits and use crossent's reference (autograd, double backward)."""
    logits = _materialised_logits(input, linear_weight, linear_bias, call)
    return cross_entropy_with_extras(
        logits,
        target,
        weight,
        call.ignore_index,
        call.reduction,
        call.label_smoothing,
        z_loss=call.z_loss,
        softcap=call.softcap,
        impl="reference",
    )


def _kernel_for(choice: str) -> str:
    return "triton" if choice == "triton" else "cpu"


def _blocked_2d(
    input,
    linear_weight,
    target,
    linear_bias,
    weight,
    call: _Call,
    kernel: str,
    memory_budget: int | None,
    reduction: str,
) -> tuple[Tensor, Tensor, Tensor]:
    """One op call on 2-D operands: ``(N, D)``, ``(V, D)``, ``(N,)`` or ``(N, V)``."""
    if input.stride(-1) != 1:
        input = input.contiguous()
    if linear_weight.stride(-1) != 1:
        linear_weight = linear_weight.contiguous()
    if not call.probabilities and target.dtype != torch.int64:
        target = target.long()
    if call.probabilities and target.stride(-1) != 1:  # (a K-dim position's slice, a transposed
        target = target.contiguous()  # view: the Triton kernel reads each row's classes packed)
    n, d = input.shape
    grad_on = torch.is_grad_enabled() and reduction != "none"
    grads = (
        grad_on and input.requires_grad,
        grad_on and linear_weight.requires_grad,
        grad_on and linear_bias is not None and linear_bias.requires_grad,
    )
    plan = plan_blocks(
        n, d, linear_weight.shape[0], input.dtype, memory_budget,
        probabilities=call.probabilities, label_smoothing=call.label_smoothing,
        softcap=call.softcap is not None, gradients=any(grads), kernel=kernel, device=input.device,
    )  # fmt: skip
    opts = _OpOptions(
        call.ignore_index, call.label_smoothing, call.z_loss, call.softcap, reduction, kernel,
        plan.rows, plan.vocab, plan.vocab_blocked, plan.kernel_rows, call.loss_dtype,
        call.target_check,
    )  # fmt: skip
    from crossent._fused_op import _runs_eagerly

    operands = [t for t in (input, linear_weight, target, linear_bias, weight) if t is not None]
    op = (_EagerLinearCrossEntropy.apply if _runs_eagerly(*operands)
          else torch.ops.crossent.linear_cross_entropy_v3)  # fmt: skip
    loss, z, lse, *_ = op(input, linear_weight, target, linear_bias, weight, *opts, *grads)
    return loss, z, lse


def _blocked(
    input,
    linear_weight,
    target,
    linear_bias,
    weight,
    call: _Call,
    kernel: str,
    memory_budget: int | None,
) -> CrossEntropyOutput:
    """Batch the input, run one op per output position (K-dimensional loss), unbatch."""
    x = input if call.batched else input.unsqueeze(0)
    if call.batched:
        t = target
    else:  # a () or (1,) class index, or a (C,) probability vector
        t = target.unsqueeze(0) if call.probabilities else target.reshape(1)
    if not call.out_features:
        loss, z, lse = _blocked_2d(
            x, linear_weight, t, linear_bias, weight, call, kernel, memory_budget, call.reduction
        )
        if not call.batched:
            lse = lse.squeeze(0)
            if call.reduction == "none":
                loss, z = loss.squeeze(0), z.squeeze(0)
        return CrossEntropyOutput(loss, z, lse)
    # K-dimensional loss: position k has its own (V, D) weight slice and targets.
    positions = math.prod(call.out_features)
    num_classes, d = linear_weight.shape[0], linear_weight.shape[-1]
    w3 = linear_weight.reshape(num_classes, positions, d)
    b2 = None if linear_bias is None else linear_bias.reshape(num_classes, positions)
    if call.probabilities:
        t_k = t.reshape(t.shape[0], num_classes, positions)
    else:
        t_k = t.reshape(t.shape[0], positions)
    per_position = "none" if call.reduction == "none" else "sum"
    try:
        parts = [
            _blocked_2d(
                x, w3[:, k], t_k[:, :, k] if call.probabilities else t_k[:, k],
                None if b2 is None else b2[:, k], weight, call, kernel, memory_budget,
                per_position,
            )
            for k in range(positions)
        ]
    except IndexError:  # (a position's check names its offender in its (N,) slice)
        if not torch.compiler.is_compiling():
            import array_api_compat.torch as xp

            check.recheck_target_range(xp, t, num_classes, call.ignore_index)
        raise
    out_shape = (x.shape[0], *call.out_features)
    lse = torch.stack([p[2] for p in parts], dim=1).reshape(out_shape)
    if call.reduction == "none":
        loss = torch.stack([p[0] for p in parts], dim=1).reshape(out_shape)
        z = torch.stack([p[1] for p in parts], dim=1).reshape(out_shape)
        return CrossEntropyOutput(loss, z, lse)
    acc = accumulation_dtype(input.dtype)
    loss = torch.stack([p[0] for p in parts]).to(acc).sum()
    z = torch.stack([p[1] for p in parts]).to(acc).sum()
    if call.reduction == "mean":
        if call.probabilities:  # the number of positions
            denominator = torch.tensor(float(x.shape[0] * positions), dtype=acc, device=x.device)
            nothing_kept = torch.tensor(x.shape[0] * positions == 0, device=x.device)
        else:
            denominator = _denominator(t.reshape(-1), weight, call.ignore_index, acc)
            nothing_kept = (t == call.ignore_index).all()
        loss = _mean_of_sum(loss, denominator, nothing_kept)
        z = _mean_of_sum(z, denominator, nothing_kept)
        if not call.probabilities:
            import array_api_compat.torch as xp

            loss = _reduction.smoothed_index_mean(xp, loss, denominator, call.label_smoothing)
    dtype = parts[0][0].dtype
    return CrossEntropyOutput(loss.to(dtype), z.to(dtype), lse)


def _unsupported(input, linear_weight, linear_bias, target, weight) -> str | None:
    from crossent._fused_op import has_tangent, transformed

    if transformed(input, linear_weight, linear_bias, target, weight):
        return ("torch.func transforms (grad, vmap, ...), which cannot see through its "
                "gradient")  # fmt: skip
    if has_tangent(input, linear_weight, linear_bias, target, weight):
        return "forward-mode AD (a dual tensor): the blocked paths have no forward derivative"
    if linear_weight.shape[0] == 0:
        return "a vocabulary of no classes"
    if needs_grad(target):
        return "a probability target that requires grad (it computes no target gradient)"
    if needs_grad(weight):
        return "class weights that require grad (it computes no weight gradient)"
    if target.is_floating_point():
        loss_dtype = _result_dtype(input, target, weight)
        if loss_dtype.itemsize > accumulation_dtype(input.dtype).itemsize:
            return (
                f"a probability target or class weight that promotes the loss to {loss_dtype} "
                f"while the input is {input.dtype} (its blocks compute in "
                f"{accumulation_dtype(input.dtype)}; cast them to {input.dtype})"
            )
    return None


def linear_cross_entropy_with_extras(
    input: Tensor,
    linear_weight: Tensor,
    target: Tensor,
    *,
    linear_bias: Tensor | None = None,
    weight: Tensor | None = None,
    reduction: str = "mean",
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    memory_budget: int | None = None,
    impl: str = "auto",
    target_check: str = "host",
) -> CrossEntropyOutput:
    """:func:`linear_cross_entropy` returning ``(loss, z_loss, lse)`` (:class:`CrossEntropyOutput`).

    >>> import torch
    >>> x = torch.tensor([[1.0, 0.0]]); W = torch.tensor([[2.0, 0.0], [0.0, 4.0], [0.5, 0.5]])
    >>> out = linear_cross_entropy_with_extras(x, W, torch.tensor([0]), z_loss=1e-2)
    >>> [round(v.item(), 5) for v in out]
    [0.35955, 0.05319, 2.30636]
    """
    options = dict(
        reduction=reduction, ignore_index=ignore_index, label_smoothing=label_smoothing,
        z_loss=z_loss, softcap=softcap, memory_budget=memory_budget, impl=impl,
        target_check=target_check,
    )  # fmt: skip
    return _dispatch(input, linear_weight, target, linear_bias, weight, options)


def _dispatch(input, linear_weight, target, linear_bias, weight, options, want_extras=True):
    """Autocast, then the validated call; ``want_extras=False`` (``linear_cross_entropy``):
    the caller reads only ``loss``, so a small problem may go to torch's own kernels."""
    from crossent import _autocast

    if (
        isinstance(input, Tensor)
        and _autocast.enabled(input.device.type)
        # (the reference meets autocast op by op)
        and resolve_impl(options["impl"], input, "linear_cross_entropy") != "reference"
    ):
        return _under_autocast(input, linear_weight, target, linear_bias, weight, options)
    return _linear_cross_entropy(
        input, linear_weight, target, linear_bias, weight, **options, want_extras=want_extras
    )


def _under_autocast(input, linear_weight, target, linear_bias, weight, options):
    """What ``F.cross_entropy(F.linear(x, W, b), target, weight, ...)`` does under autocast:
    ``linear`` casts ``x``, ``W`` and ``b`` to the autocast dtype, ``cross_entropy`` widens its
    arguments (see :mod:`crossent._autocast`, also for the CUDA composite's rounded
    log-probabilities, which crossent does not copy). The blocked path does both with autocast off:
    the GEMMs in the autocast dtype, the loss in the dtype torch's cross_entropy gives."""
    from crossent import _autocast

    low = torch.get_autocast_dtype(input.device.type)

    def lower(tensor: Tensor | None) -> Tensor | None:
        eligible = tensor is not None and tensor.dtype in (torch.float16, torch.bfloat16,
                                                            torch.float32)  # fmt: skip
        return tensor.to(low) if eligible else tensor

    with _autocast.scope("cross_entropy", input) as (cast, wide):
        return _linear_cross_entropy(
            lower(input), lower(linear_weight), cast(target), lower(linear_bias), cast(weight),
            **options, loss_dtype=wide,
        )  # fmt: skip


def _linear_cross_entropy(
    input, linear_weight, target, linear_bias, weight, *, reduction, ignore_index,
    label_smoothing, z_loss, softcap, memory_budget, impl, loss_dtype=None, want_extras=True,
    target_check="host",
) -> CrossEntropyOutput:  # fmt: skip
    call = _prepare(
        input,
        linear_weight,
        target,
        linear_bias,
        weight,
        reduction,
        ignore_index,
        label_smoothing,
        z_loss,
        softcap,
        memory_budget,
        loss_dtype,
        target_check,
    )
    choice = resolve_impl(impl, input, "linear_cross_entropy")
    if impl == "auto" and not want_extras:
        loss = _small_on_torch(input, linear_weight, target, linear_bias, weight, call)
        if loss is not None:
            return CrossEntropyOutput(loss, None, None)
    why = (
        _unsupported(input, linear_weight, linear_bias, target, weight)
        if choice != "reference"
        else None
    )
    if why is not None:
        raise NotImplementedError(
            f"linear_cross_entropy(impl={impl!r}) cannot serve {why}; use "
            f"impl='reference' (it materialises the logits)"
        )
    if choice == "reference":
        return _reference(input, linear_weight, target, linear_bias, weight, call)
    return _blocked(
        input, linear_weight, target, linear_bias, weight, call, _kernel_for(choice),
        call.memory_budget,
    )  # fmt: skip


def linear_cross_entropy(
    input: Tensor,
    linear_weight: Tensor,
    target: Tensor,
    *,
    linear_bias: Tensor | None = None,
    weight: Tensor | None = None,
    reduction: str = "mean",
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    memory_budget: int | None = None,
    impl: str = "auto",
    target_check: str = "host",
) -> Tensor:
    r"""Cross-entropy of the logits ``input @ linear_weight.T + linear_bias``, computed by blocks.

    Equals ``torch.nn.functional.cross_entropy(input @ linear_weight.T + linear_bias, target,
    weight, ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing)``
    and torch 2.13's ``F.linear_cross_entropy`` with the same arguments (same shapes, K-dimensional
    ``(C, d1, ..., dK, D)`` weights, class-index and probability targets, errors of the same
    types). With logits ``z`` (soft-capped: ``softcap * tanh(z / softcap)`` when ``softcap`` is
    set), ``lse_i = logsumexp(z_i)``, class weights ``w``, kept mask ``m_i = [y_i !=
    ignore_index]``, smoothing ``eps`` and ``zeta = z_loss``:

    .. math::

        L_i = m_i \left[(1-\varepsilon) w_{y_i} (lse_i - z_{i,y_i})
              + \tfrac{\varepsilon}{C} \textstyle\sum_c w_c (lse_i - z_{ic})
              + \zeta\, lse_i^2\right]
        \qquad \text{mean} = \frac{\sum_i L_i}{\sum_i m_i w_{y_i}}

    (probability targets: ``L_i = sum_c w_c q'_ic (lse_i - z_ic) + zeta lse_i**2`` and ``mean``
    divides by the number of positions). ``ignore_index=None`` means -100 (class indices) and
    must stay None for probability targets, as in torch.

    The ``N x C`` logits exist only one block at a time: ``memory_budget`` (bytes, None =
    :func:`default_memory_budget`) bounds the working memory and determines the block plan
    (:func:`plan_blocks`). Exact (no skipped terms) and deterministic (bitwise-identical loss and
    gradients run to run). Gradients for ``mean``/``sum`` are computed in the forward pass (3
    GEMMs in all); ``none`` recomputes in backward (4 GEMMs); vocabulary blocking (a budget
    smaller than 128 rows of logits) adds one logits GEMM.

    ``impl``: ``"auto"`` (Triton row kernel for CUDA tensors when Triton is installed, else the
    blocked torch-ops kernel; a problem of fewer than 2**20 logits on the CPU, or fewer than
    2**26 2-D logits on CUDA, that fit the memory budget three times over, which the blocked
    path would hold in one block anyway, is ``F.cross_entropy(F.linear(input, W, b), ...)``
    after crossent's checks: torch's result bit for bit, without the blocked path's fixed cost
    per call; not for the extras, under autocast or torch.compile), ``"fused"`` (blocked torch
    ops, any device), ``"triton"``,
    ``"reference"`` (materialises the logits; supports double backward and gradients w.r.t.
    probability targets and their class weights, which the blocked paths refuse with
    NotImplementedError). ``target_check`` as in :func:`crossent.cross_entropy`: ``"device"``
    makes the blocked paths' class-index range check a device-side assertion on CUDA (no host
    synchronisation; an out-of-range target fails the CUDA stream), as torch's own kernel's is
    where ``"auto"`` hands a small CUDA problem to it; the reference and the CPU keep the
    IndexError.

    Limitations of the blocked paths: no higher-order gradients (``create_graph=True`` raises);
    ``torch.func`` transforms are not supported; under ``torch.compile`` the ops are opaque
    custom ops (``fullgraph=True`` works) and the ``mean``/``sum`` backward scales a copy of the
    saved gradients instead of the buffers themselves (one extra ``dW``-sized allocation); on
    CUDA ignored rows are masked rather than skipped (skipping needs their count on the host);
    a K-dimensional weight runs one blocked pass per output position ``k`` (its ``(C, D)`` slice),
    and autograd assembles ``dW`` from the slices (a full-size temporary per position).

    >>> import torch
    >>> x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    >>> W = torch.tensor([[2.0, 0.0], [0.0, 4.0], [0.5, 0.5]])
    >>> y = torch.tensor([0, 1])
    >>> round(linear_cross_entropy(x, W, y).item(), 6)
    0.176864
    >>> round(torch.nn.functional.cross_entropy(x @ W.T, y).item(), 6)
    0.176864
    """
    options = dict(
        reduction=reduction, ignore_index=ignore_index, label_smoothing=label_smoothing,
        z_loss=z_loss, softcap=softcap, memory_budget=memory_budget, impl=impl,
        target_check=target_check,
    )  # fmt: skip
    return _dispatch(
        input, linear_weight, target, linear_bias, weight, options, want_extras=False
    ).loss


# ------------------------------------------------------------------------------------------------
# module


class LinearCrossEntropyLoss(_WeightedLoss):
    """Drop-in for ``torch.nn.LinearCrossEntropyLoss``: an owned ``Linear`` plus the loss.

    Same constructor keywords as torch 2.13 (``options`` replaced by crossent's ``z_loss``,
    ``softcap``, ``memory_budget``, ``impl`` and ``target_check``), the same base class
    (torch's ``_WeightedLoss``, as the other loss modules) and the same parameters and
    buffers (``linear.weight`` of shape ``(C * prod(out_features), in_features)``,
    ``linear.bias``, ``weight``), so state dicts are interchangeable.
    """

    target_check: str = "host"  # (modules pickled before it existed)

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        *,
        out_features: tuple[int, ...] = (),
        bias: bool = False,
        device=None,
        dtype=None,
        reduction: str = "mean",
        weight: Tensor | None = None,
        ignore_index: int | None = None,
        label_smoothing: float = 0.0,
        z_loss: float = 0.0,
        softcap: float | None = None,
        memory_budget: int | None = None,
        impl: str = "auto",
        target_check: str = "host",
    ) -> None:
        if weight is not None and weight.shape != (num_classes,):
            raise RuntimeError(
                f"expected weight shape to be {(num_classes,)}, got {tuple(weight.shape)}"
            )
        if label_smoothing < 0 or label_smoothing > 1.0:
            raise RuntimeError(
                f"expected label_smoothing to be in range [0, 1], got {label_smoothing}"
            )
        _WeightedLoss.__init__(self, weight, reduction=reduction)
        self.num_classes = num_classes
        self.out_features = tuple(out_features)
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing
        self.z_loss = z_loss
        self.softcap = softcap
        self.memory_budget = memory_budget
        self.impl = impl
        self.target_check = target_check
        self.linear = torch.nn.Linear(
            in_features,
            math.prod(self.out_features, start=num_classes),
            bias=bias,
            device=device,
            dtype=dtype,
        )

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        shape = (self.num_classes, *self.out_features)
        bias = None if self.linear.bias is None else self.linear.bias.reshape(shape)
        return linear_cross_entropy(
            input,
            self.linear.weight.reshape(*shape, self.linear.in_features),
            target,
            linear_bias=bias,
            weight=self.weight,
            reduction=self.reduction,
            ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing,
            z_loss=self.z_loss,
            softcap=self.softcap,
            memory_budget=self.memory_budget,
            impl=self.impl,
            target_check=self.target_check,
        )

    def extra_repr(self) -> str:
        return (
            f"in_features={self.linear.in_features}, num_classes={self.num_classes}, "
            f"out_features={self.out_features}, bias={self.linear.bias is not None}, "
            f"reduction={self.reduction}, ignore_index={self.ignore_index}, "
            f"label_smoothing={self.label_smoothing}, z_loss={self.z_loss}, "
            f"softcap={self.softcap}, memory_budget={self.memory_budget}, impl={self.impl}, "
            f"target_check={self.target_check}"
        )

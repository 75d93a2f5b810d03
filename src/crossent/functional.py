"""The public functional API: validate at the boundary, then dispatch.

Every function accepts torch tensors (the result is a tensor, autograd works), NumPy arrays and
any Array API array (the result has the input's array type). For arrays without autograd, the
``*_and_grad`` functions return the loss together with its analytic gradients.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, NamedTuple

import numpy as np

from crossent import _validation as check
from crossent import diagnostics, reference
from crossent._array import (
    default_float,
    device_of,
    is_floating,
    is_integral,
    is_torch,
    is_torch_namespace,
    namespace,
)
from crossent._dispatch import fused_impl, resolve_impl

__all__ = [
    "CrossEntropyOutput",
    "LossAndGrad",
    "binary_cross_entropy",
    "binary_cross_entropy_and_grad",
    "binary_cross_entropy_with_logits",
    "binary_cross_entropy_with_logits_and_grad",
    "cross_entropy",
    "cross_entropy_and_grad",
    "cross_entropy_with_extras",
    "log_softmax",
    "logsumexp",
    "nll_loss",
    "nll_loss_and_grad",
    "softmax",
]


class CrossEntropyOutput(NamedTuple):
    """A cross-entropy loss with its extras (:func:`cross_entropy_with_extras`,
    :func:`crossent.linear_cross_entropy_with_extras`).

    ``loss``: the loss, z-loss term included (differentiable). ``z_loss``: that term alone,
    ``z_loss * lse**2`` reduced like the loss (detached, for logging). ``lse``: the log-sum-exp
    of each position's (soft-capped) logits, shaped like the ``reduction="none"`` loss, float32
    (float64 for float64 inputs), 0 at ignored positions (detached).
    """

    loss: Any
    z_loss: Any
    lse: Any


class LossAndGrad(NamedTuple):
    """A loss and its gradients: ``grad_target`` is None where PyTorch gives no target gradient
    (class-index targets, nll_loss)."""

    loss: Any
    grad_input: Any
    grad_target: Any | None


def _as_array(value: Any) -> Any:
    """NumPy reductions and 0-d arithmetic give NumPy scalars; hand back 0-d arrays instead, so
    the result has the input's array type (other array types are returned as they are)."""
    return np.asarray(value) if isinstance(value, np.generic) else value


def _quiet(xp: Any) -> contextlib.AbstractContextManager:
    """NaN and inf are legitimate results (an all-ignored mean is 0/0, BCE's gradient at p = 0
    is inf), as in torch: NumPy-backed namespaces must not warn about them. (torch never warns
    about them, and torch.compile cannot trace NumPy's errstate.)"""
    if is_torch_namespace(xp):
        return contextlib.nullcontext()
    return np.errstate(all="ignore")


# ------------------------------------------------------------------------------------------
# softmax family


def _cast(xp: Any, input: Any, dtype: Any, op: str) -> Any:
    """The input cast to ``dtype``; a non-floating input is refused unless it is empty (torch
    runs no kernel then and returns it unchanged)."""
    if dtype is not None:
        input = xp.astype(input, dtype)
    if not is_floating(xp, input.dtype) and math.prod(input.shape) > 0:
        raise NotImplementedError(
            f"{op} expects a floating-point input, got {input.dtype}; pass dtype=... "
            f"(e.g. a float32 dtype) to cast before the op"
        )
    return input


def softmax(input: Any, dim: int, dtype: Any = None) -> Any:
    r"""Softmax along ``dim``: ``exp(x - max) / sum(exp(x - max))``.

    .. math:: \mathrm{softmax}(x)_c = \frac{e^{x_c - m}}{\sum_j e^{x_j - m}},\quad m = \max_j x_j

    Equals ``torch.softmax(input, dim, dtype=dtype)``; for torch tensors it *is* that kernel.
    ``dtype`` casts the input before the op. Rows with a ``+inf`` or only ``-inf`` entries give
    NaN, as in PyTorch.

    >>> import numpy as np, crossent
    >>> crossent.softmax(np.array([2.0, 4.0, 0.5]), dim=0).round(6)
    array([0.116115, 0.857977, 0.025909])
    """
    xp = namespace(input)
    axis = check.normalize_dim(dim, input.ndim)
    input = _cast(xp, input, dtype, "softmax")
    if not is_floating(xp, input.dtype):  # empty: nothing to compute
        return input
    if is_torch(input):
        import torch

        return torch.softmax(input, axis)
    with _quiet(xp):
        return _as_array(reference.softmax(xp, input, axis))


def log_softmax(input: Any, dim: int, dtype: Any = None) -> Any:
    r"""Log-softmax along ``dim``: ``(x - max) - log(sum(exp(x - max)))``.

    .. math:: \log\mathrm{softmax}(x)_c = (x_c - m) - \log\sum_j e^{x_j - m}

    Equals ``torch.log_softmax(input, dim, dtype=dtype)``; for torch tensors it *is* that
    kernel.

    >>> import numpy as np, crossent
    >>> crossent.log_softmax(np.array([2.0, 4.0, 0.5]), dim=0).round(6)
    array([-2.153178, -0.153178, -3.653178])
    """
    xp = namespace(input)
    axis = check.normalize_dim(dim, input.ndim)
    input = _cast(xp, input, dtype, "log_softmax")
    if not is_floating(xp, input.dtype):  # empty: nothing to compute
        return input
    if is_torch(input):
        import torch

        return torch.log_softmax(input, axis)
    with _quiet(xp):
        return _as_array(reference.log_softmax(xp, input, axis))


def logsumexp(input: Any, dim: int | tuple[int, ...], keepdim: bool = False) -> Any:
    r"""``log(sum(exp(input)))`` over ``dim`` (an int or a tuple), computed stably.

    .. math:: \mathrm{lse}(x) = m + \log\sum_j e^{x_j - m}

    Equals ``torch.logsumexp(input, dim, keepdim)``. An all ``-inf`` slice gives ``-inf``, a
    ``+inf`` entry gives ``+inf``; integer and bool inputs are promoted to the library's default
    floating dtype (torch: float32, NumPy: float64).

    >>> import numpy as np, crossent
    >>> float(crossent.logsumexp(np.array([2.0, 4.0, 0.5]), dim=0))  # doctest: +ELLIPSIS
    4.153178...
    """
    xp = namespace(input)
    axes = check.normalize_dims(dim, tuple(input.shape), keepdim)
    if is_integral(xp, input.dtype):
        input = xp.astype(input, default_float(xp, device_of(input)))
    if is_torch(input):
        import torch

        return torch.logsumexp(input, axes, keepdim)
    with _quiet(xp):
        return _as_array(reference.logsumexp(xp, input, axes, keepdim))


# ------------------------------------------------------------------------------------------
# class-index / probability losses


def _ce_fn(xp, input, target, weight, pos_weight, **kw):  # adapter for autograd
    return reference.cross_entropy(xp, input, target, weight, **kw)


def _nll_fn(xp, input, target, weight, pos_weight, **kw):
    return reference.nll_loss(xp, input, target, weight, **kw)


def _bce_fn(xp, input, target, weight, pos_weight, **kw):
    return reference.binary_cross_entropy(xp, input, target, weight, **kw)


def _bcel_fn(xp, input, target, weight, pos_weight, **kw):
    return reference.binary_cross_entropy_with_logits(xp, input, target, weight, pos_weight, **kw)


def _autocast_scope(op: str, input: Any) -> Any:
    """:func:`crossent._autocast.scope` for torch tensors (None for every other array)."""
    if not is_torch(input):
        return None
    from crossent import _autocast

    return _autocast.scope(op, input)


def _run_reference(fn, options, input, target, weight, pos_weight=None):
    """Loss only: through autograd for torch tensors, plainly for every other array."""
    xp = namespace(input, target, weight, pos_weight)
    if is_torch(input):
        import crossent._torch_reference as torch_reference

        return torch_reference.apply(fn, options, input, target, weight, pos_weight)
    with _quiet(xp):
        return _as_array(fn(xp, input, target, weight, pos_weight, **options).loss)


def _run_reference_grad(fn, options, input, target, weight, pos_weight, grad_output):
    xp = namespace(input, target, weight, pos_weight, grad_output)
    context = contextlib.nullcontext()
    if is_torch(input):
        import torch

        context = torch.no_grad()
    with context, _quiet(xp):
        out = fn(
            xp, input, target, weight, pos_weight, want_grad=True, grad_output=grad_output,
            **options,
        )
    return type(out)(*(_as_array(part) for part in out))


def _check_grad_output(xp: Any, grad_output: Any, reduction: str, loss_shape: tuple) -> None:
    if grad_output is None:
        return
    if not hasattr(grad_output, "shape"):  # (namespace() names a mixed library later)
        raise TypeError(
            f"grad_output must be an array of the loss's library (or None), got "
            f"{type(grad_output).__name__}"
        )
    check.check_real(xp, grad_output, "grad_output", "backward")
    expected = loss_shape if reduction == "none" else ()
    if tuple(grad_output.shape) != tuple(expected):
        raise RuntimeError(  # (torch's backward: "Mismatch in shape", a RuntimeError)
            f"Mismatch in shape: grad_output must have the loss's shape {tuple(expected)} for "
            f"reduction={reduction!r}, got {tuple(grad_output.shape)}"
        )


def _prepare_cross_entropy(
    input, target, weight, ignore_index, reduction, label_smoothing, *, check_range=True
):
    """Validate; the target range is checked here unless the caller defers it to the fused op
    (which checks it inside a custom op, invisible to torch.compile). Returns the weight as the
    kernels take it: 1-D (torch accepts any weight of C elements for K-dim inputs)."""
    check.check_given(input, target, "cross_entropy")
    xp = namespace(input, target, weight)
    check.check_same_device("cross_entropy", input=input, target=target, weight=weight)
    reduction = check.check_reduction(reduction)
    ignore_index = check.check_ignore_index(ignore_index)
    label_smoothing = check.check_label_smoothing(label_smoothing)
    layout = check.check_cross_entropy_args(
        xp, input, target, weight, ignore_index, label_smoothing, reduction
    )
    if check_range and not layout.probabilities:
        target = _checked_target(xp, target, layout.num_classes, ignore_index)
    options = {
        "probabilities": layout.probabilities,
        "ignore_index": ignore_index,
        "reduction": reduction,
        "label_smoothing": label_smoothing,
    }
    if weight is not None and weight.ndim != 1:  # K-dim inputs take any weight of C elements
        weight = xp.reshape(weight, (-1,))
    return xp, layout, options, target, weight


def _checked_target(xp: Any, target: Any, num_classes: int, ignore_index: int) -> Any:
    """:func:`crossent._validation.check_target_range`, returning the target to use from here
    on: under torch.compile the check runs inside a custom op (a copy of the target comes
    back), so the compiled graph holds no host read of tensor values. An int64 CUDA target,
    with Triton installed, is first counted by one launch (:func:`crossent.backends.triton.
    target_stats`) and one read, where the full check's masks took about five launches; only
    a target with an offender goes on to the full check, which names it."""
    if is_torch(target):
        import torch

        if torch.compiler.is_compiling():
            from crossent._torch_reference import checked_class_indices

            return checked_class_indices(target, num_classes, ignore_index)
        if _counted_in_range(target, num_classes, ignore_index):
            return target
    check.check_target_range(xp, target, num_classes, ignore_index)
    return target


def _counted_in_range(target: Any, num_classes: int, ignore_index: int) -> bool:
    """Whether the Triton target count of a plain int64 CUDA target (outside CUDA graph
    capture, transforms and dispatch modes) finds every kept index in ``[0, C)``; False when it
    finds an offender, does not apply, or Triton cannot run here (no compiler for its launcher,
    an unsupported card): the full check then runs, as it did before this shortcut."""
    import torch

    from crossent._dispatch import triton_usable

    if not (target.is_cuda and target.dtype == torch.int64 and triton_usable(target)):
        return False
    from crossent._fused_op import _runs_eagerly, captured

    if not _runs_eagerly(target) or captured(target):
        return False
    from crossent.backends.triton.cross_entropy import target_stats

    try:
        stats = target_stats(target, None, num_classes, ignore_index, torch.float32)
    except Exception:  # (an optional shortcut: the full check decides instead)
        return False
    return not stats[2].item()  # (one synchronisation, as the full check's)


def cross_entropy(
    input: Any,
    target: Any,
    weight: Any = None,
    size_average: bool | None = None,
    ignore_index: int = -100,
    reduce: bool | None = None,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    *,
    impl: str = "auto",
    inplace_backward: bool = False,
    target_check: str = "host",
) -> Any:
    r"""Cross-entropy between logits ``input`` and class indices or class probabilities.

    ``input`` is ``(C,)``, ``(N, C)`` or ``(N, C, d1, ..., dk)`` (classes in dim 1). A target
    with the input's shape holds class probabilities; otherwise it holds class indices of shape
    ``()``, ``(N,)`` or ``(N, d1, ..., dk)``. With ``l = log_softmax(input, dim=1)``, class
    weights ``w`` (ones if None), ``m_i = [y_i != ignore_index]`` and smoothing ``eps``:

    .. math::

        L_i = (1-\varepsilon)\, m_i w_{y_i} (-l_{i,y_i})
              + \tfrac{\varepsilon}{C}\, m_i \textstyle\sum_c w_c (-l_{i,c})
        \qquad \text{mean} = \frac{\sum_i L_i}{\sum_i m_i w_{y_i}}

    For probability targets ``q`` (smoothed ``q' = (1-eps) q + eps/C``),
    ``L_i = -sum_c w_c q'_ic l_ic`` and ``mean`` divides by the number of positions ``M``, not by
    weights. An all-ignored ``mean`` is NaN (0/0), its gradient zero.

    Equals ``torch.nn.functional.cross_entropy(input, target, weight, ignore_index=ignore_index,
    reduction=reduction, label_smoothing=label_smoothing)``, with errors of the same types; the
    positional order is torch's, the deprecated ``size_average``/``reduce`` included (mapped onto
    ``reduction`` with torch's warning), as in all four losses.
    Deviations: a negative or NaN ``label_smoothing`` raises ValueError (torch ignores it); an
    out-of-range target raises IndexError on every device (torch asserts on CUDA).

    ``impl`` selects the implementation for torch tensors: ``"auto"``, ``"reference"``,
    ``"torch"`` (torch's own kernel, called after crossent's checks: torch's result bit for
    bit), ``"fused"``, ``"triton"``. ``"auto"`` picks, on the CPU, torch's own kernel below
    2**20 logits (2**23 for float16/bfloat16; where a call's fixed cost decides) and the fused
    blocked torch-ops kernel for 2-D inputs from there on; for K-dim inputs ``(N, C, d1, ...)``
    torch's kernel below 2**22 logits and the fused kernel from there on where it takes the
    input as it lies (contiguous float32/float64 inputs with class indices: 2x-2.7x torch
    eager's speed at half to two thirds of its memory on 25 M logits), torch's kernel at any
    size otherwise; on CUDA torch's own kernel for 1-D/2-D inputs below 2**24 logits (where
    the Triton path's fixed host cost of about a millisecond decides), and from there on, and for
    K-dim inputs, the Triton kernel when Triton is installed, else the fused kernel.
    Where torch's kernel cannot serve the arguments (an unbatched ``(C,)`` input with a ``(1,)``
    target, on which its backward fails; ``inplace_backward=True``) it takes the fused kernel,
    and where that cannot either (a probability target or class weight that requires grad, a
    torch.func transform) the reference. An explicit ``impl="torch"`` refuses (ValueError) what
    it cannot serve, torch.func transforms included. Under ``torch.autocast`` the loss is
    computed as torch's is there (half arguments count as float32, the loss is float32; on CUDA
    torch's own composite rounds its log-probabilities to the half dtype first, crossent does
    not, see :mod:`crossent._autocast`). NumPy and other arrays always use the reference. The
    fused paths compute the gradient in the forward pass and save only it; they support neither
    double backward nor a second backward through the same graph (both raise; use
    ``impl="reference"`` or ``"torch"``).

    ``target_check`` (``"host"``, the default, or ``"device"``): how class-index targets are
    checked. ``"host"`` raises the IndexError above; on CUDA that reads one flag, a host
    synchronisation per call (on the Triton path queued after its kernel, so the device keeps
    computing; before torch's kernel on the torch route), skipped while a CUDA graph is
    captured (torch's kernel then asserts on the device; the Triton kernel's out-of-range rows
    become NaN). ``"device"`` (opt-in) removes it: the Triton path (``impl="triton"``, and
    ``"auto"`` on CUDA from 2**24 logits and for K-dim inputs) asserts on the device
    (``torch._assert_async``) and torch's own kernel (``impl="torch"``, and ``"auto"`` on CUDA
    below 2**24 logits) asserts as it always does on CUDA, so an out-of-range target fails the
    CUDA stream as in torch: a generic "device-side assert triggered" RuntimeError from
    whichever later CUDA call comes first (possibly within this call), the CUDA context lost.
    On the CPU, on ROCm builds (whose kernel assertions may be compiled out) and on the
    reference path (also where ``"auto"`` falls back to it), both modes raise the IndexError,
    reading the targets on the host.

    ``inplace_backward=True`` (opt-in; fused/triton only) writes the gradient into the logits'
    own storage, so the loss needs no memory of the logits' size: the logits are consumed. It is
    refused (RuntimeError) for a leaf tensor and for logits autograd still needs (e.g. the saved
    output of a ``tanh``); it saves memory for 1-D/2-D inputs with unit class stride and for
    contiguous K-dim inputs that the fused kernels take as ``(N, C, d1*...)`` columns (on the
    CPU all, with Triton class indices without smoothing or soft-capping over at least 128
    positions per sample; others are brought to rows first, which may copy).

    >>> import numpy as np, crossent
    >>> float(crossent.cross_entropy(np.array([2.0, 4.0, 0.5]), np.array(1)))  # doctest: +ELLIPSIS
    0.153178...
    >>> x = np.array([[0.1, 0.2, 0.7], [0.8, 0.1, 0.1]])
    >>> w = np.array([0.2, 0.5, 0.3])
    >>> float(crossent.cross_entropy(x, np.array([2, 0]), weight=w))  # doctest: +ELLIPSIS
    0.7366603...
    """
    reduction = check.legacy_reduction(size_average, reduce, reduction)
    diagnostics.maybe_warn(
        "cross_entropy", input, target, weight, ignore_index=ignore_index, reduction=reduction,
        label_smoothing=label_smoothing,
    )
    return _cross_entropy_dispatch(
        input, target, weight, ignore_index, reduction, label_smoothing, 0.0, None, impl,
        inplace_backward, want_extras=False, target_check=target_check,
    ).loss


def cross_entropy_with_extras(
    input: Any,
    target: Any,
    weight: Any = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    *,
    z_loss: float = 0.0,
    softcap: float | None = None,
    impl: str = "auto",
    inplace_backward: bool = False,
    target_check: str = "host",
) -> CrossEntropyOutput:
    r""":func:`cross_entropy` with the extras large-vocabulary training asks for, computed in
    the same sweep by the fused kernels: returns :class:`CrossEntropyOutput`
    ``(loss, z_loss, lse)``.

    * ``softcap`` (None = off): the logits are replaced by ``softcap * tanh(input / softcap)``
      before anything else (Gemma-style soft-capping; the gradient has its chain rule).
    * ``z_loss`` (>= 0): ``z_loss * lse_i**2`` is added to each kept position's loss before the
      reduction, with the same ``mean`` denominator (PaLM's z-loss; pulls ``log Z`` to 0).
    * ``lse``: the per-position log-sum-exp of the (soft-capped) logits.

    With ``z_loss=0`` and ``softcap=None``, ``loss`` equals :func:`cross_entropy`. The plain
    PyTorch expression it equals::

        z = softcap * torch.tanh(x / softcap)            # or x
        lse = torch.logsumexp(z, dim=1)                  # 0 at ignored positions
        loss = F.cross_entropy(z, target, ...) + reduce(z_loss * lse**2)

    >>> import numpy as np, crossent
    >>> out = crossent.cross_entropy_with_extras(np.array([[2.0, 4.0, 0.5]]), np.array([1]),
    ...                                          z_loss=1e-4)
    >>> round(float(out.lse[0]), 6), round(float(out.z_loss), 8), round(float(out.loss), 6)
    (4.153178, 0.00172489, 0.154903)
    """
    return _cross_entropy_dispatch(
        input, target, weight, ignore_index, reduction, label_smoothing, z_loss, softcap, impl,
        inplace_backward, target_check=target_check,
    )


def _cross_entropy_dispatch(
    input, target, weight, ignore_index, reduction, label_smoothing, z_loss, softcap, impl,
    inplace_backward, *, want_extras=True, loss_dtype=None, target_check="host",
) -> CrossEntropyOutput:
    """Validate once, then run the fused torch path or the reference (which computes the
    ``z_loss``/``lse`` extras only when ``want_extras``).

    ``loss_dtype`` (set under autocast, see :mod:`crossent._autocast`): float16/bfloat16
    logits count as this dtype; the fused kernels read them as they are and return the loss in
    it, the reference casts them."""
    outside = _autocast_scope("cross_entropy", input) if loss_dtype is None else None
    if outside is not None:
        from crossent._autocast import HALF_DTYPES

        with outside as (cast, wide):
            half = input.dtype in HALF_DTYPES  # the fused kernels read these as they are
            return _cross_entropy_dispatch(
                input, cast(target), cast(weight), ignore_index, reduction, label_smoothing,
                z_loss, softcap, impl, inplace_backward, want_extras=want_extras,
                loss_dtype=wide if half else None, target_check=target_check,
            )
    z_loss, softcap = check.check_extras(z_loss, softcap)
    check.check_target_check(target_check)
    columns = (  # a K-dim call the fused CPU kernel takes as it lies, with class indices
        getattr(input, "ndim", 0) > 2 and hasattr(target, "is_floating_point")
        and not target.is_floating_point() and input.is_contiguous()
    )  # fmt: skip
    choice = resolve_impl(impl, input, columns=columns)
    checked = input
    if loss_dtype is not None:  # metadata only: the dtype the checks compare against
        import torch

        checked = torch.empty((), dtype=loss_dtype, device=input.device).expand(input.shape)
    xp, layout, options, target, weight = _prepare_cross_entropy(
        checked, target, weight, ignore_index, reduction, label_smoothing,
        check_range=choice == "reference",
    )
    if choice == "torch":
        refusal = None
        if inplace_backward:
            refusal = "inplace_backward=True (torch's kernel keeps the logits)"
        elif want_extras:
            refusal = "the z_loss/softcap/lse extras (torch has no such kernel)"
        native = _torch_kernel(choice, impl, "cross_entropy", input, target, weight,
                               refusal=refusal)  # fmt: skip
        if native is not None:
            if not layout.probabilities and not _torch_kernel_checks(input, target_check):
                target = _checked_target(
                    xp, target, layout.num_classes, options["ignore_index"]
                )
            if loss_dtype is not None:
                input = input.to(loss_dtype)
            return CrossEntropyOutput(native.cross_entropy(input, target, weight, options), None,
                                      None)  # fmt: skip
        choice = fused_impl(input)  # impl="auto": the fused kernel, or the reference after it
    if choice != "reference":
        from crossent import _torch_dispatch

        out = _torch_dispatch.cross_entropy(
            choice, impl, input, target, weight, layout, options, z_loss, softcap,
            inplace_backward, loss_dtype, target_check,
        )
        if out is not None:
            return CrossEntropyOutput(*out)
        if not layout.probabilities:  # the fused path declined: check here instead
            target = _checked_target(xp, target, layout.num_classes, options["ignore_index"])
    if loss_dtype is not None:
        input = input.to(loss_dtype)
    if inplace_backward:
        raise ValueError(
            "inplace_backward=True needs the fused kernels (impl='fused' or 'triton' on torch "
            "tensors); the reference path serves this call"
            + ("" if is_torch(input) else f" ({type(input).__module__.split('.')[0]} arrays)")
        )
    if not want_extras:
        return CrossEntropyOutput(_run_reference(_ce_fn, options, input, target, weight), None,
                                  None)
    return _reference_extras(xp, input, target, weight, layout, options, z_loss, softcap)


def _torch_kernel_checks(input: Any, target_check: str) -> bool:
    """Whether torch's own kernel is left to check the class indices, on the device (it
    asserts there): with ``target_check="device"`` on CUDA, and while a CUDA graph is captured,
    where a host read of the targets cannot run (the fused kernels skip their read there too):
    capture checks as ``"device"`` does."""
    from crossent._fused_op import asserts_on_device, captured

    return asserts_on_device(input, "device" if captured(input) else target_check)


def _torch_kernel(choice, impl, op, input, target, weight, pos_weight=None, *, refusal=None):
    """:mod:`crossent._torch_native` when a call resolved to ``"torch"`` can be served by
    torch's own kernel (:func:`crossent._torch_native.why_not`); None when it was not resolved
    so, or for ``impl="auto"`` when it cannot (the caller falls back); ValueError, with the
    reason, for an explicit ``impl="torch"``. Called after the arguments are validated."""
    if choice != "torch":
        return None
    from crossent import _torch_native

    why = refusal or _torch_native.why_not(input, target, weight, pos_weight)
    if why is None:
        return _torch_native
    if impl == "auto":
        return None
    raise ValueError(
        f"impl='torch' cannot serve this {op} call: {why}; use impl='auto', which picks an "
        f"implementation that can"
    )


def _reference_extras(xp, input, target, weight, layout, options, z_loss, softcap):
    """The extras composed from the reference: softcap, cross_entropy, logsumexp, z-term."""
    from crossent._array import compute_dtype
    from crossent._reduction import index_mean_denominator, reduce
    from crossent.reference.softmax import constant

    z = input if softcap is None else softcap * xp.tanh(input / softcap)
    loss = _run_reference(_ce_fn, options, z, target, weight)
    class_axis = 0 if input.ndim == 1 else 1
    with _quiet(xp):
        wide = xp.astype(z, compute_dtype(xp, z.dtype, device_of(z)))
        lse = reference.logsumexp(xp, wide, (class_axis,))
        acc = xp.float64 if str(input.dtype).endswith("float64") else xp.float32
        lse = xp.astype(lse, acc)
        # a +inf logit: torch's log_softmax row is NaN (inf - inf), and so is the fused paths' lse
        nan = xp.asarray(xp.nan, dtype=acc, device=device_of(lse))
        lse = xp.where(lse == xp.inf, nan, lse)
        if layout.probabilities:
            denominator = math.prod(lse.shape)  # M positions (1 when unbatched)
        else:
            target = xp.astype(target, xp.int64)  # (a uint8 target cannot meet ignore_index=-100)
            kept = xp.reshape(target, lse.shape) != options["ignore_index"]
            lse = xp.where(kept, lse, xp.zeros_like(lse))
            denominator = index_mean_denominator(
                xp, xp.reshape(target, (-1,)), weight, options["ignore_index"], acc
            )
        # (z_loss = 0: zeros, also where lse is NaN, as on the fused paths)
        z_lse = lse if z_loss else xp.zeros_like(lse)
        z_term = reduce(xp, z_loss * z_lse * z_lse, options["reduction"], denominator)
        z_term = xp.astype(z_term, loss.dtype)
    if z_loss:
        loss = loss + z_term
    return CrossEntropyOutput(*(_as_array(v) for v in (loss, constant(z_term), constant(lse))))


def cross_entropy_and_grad(
    input: Any,
    target: Any,
    weight: Any = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    *,
    grad_output: Any = None,
) -> LossAndGrad:
    r""":func:`cross_entropy` and its analytic gradients, for arrays without autograd.

    ``grad_input = s_i m_i [(1-eps) w[y_i] (softmax(x_i) - onehot(y_i)) + (eps/C)(W p_i - w)]``
    (``softmax - target``, generalised), with ``s`` the upstream gradient ``grad_output``
    (default 1; shape of the loss for ``reduction="none"``) divided by the ``mean``
    denominator. Probability targets also get ``grad_target = -s (1 - eps) w log_softmax(x)``.
    Torch tensors are accepted too (computed without autograd).

    >>> import numpy as np, crossent
    >>> out = crossent.cross_entropy_and_grad(np.array([2.0, 4.0, 0.5]), np.array(1))
    >>> out.grad_input.round(6)
    array([ 0.116115, -0.142023,  0.025909])
    """
    diagnostics.maybe_warn(
        "cross_entropy", input, target, weight, ignore_index=ignore_index, reduction=reduction,
        label_smoothing=label_smoothing,
    )
    xp, layout, options, target, weight = _prepare_cross_entropy(
        input, target, weight, ignore_index, reduction, label_smoothing
    )
    _check_grad_output(xp, grad_output, options["reduction"], _loss_shape(input, layout))
    g = _run_reference_grad(_ce_fn, options, input, target, weight, None, grad_output)
    return LossAndGrad(g.loss, g.grad_input, g.grad_target)


def _loss_shape(input: Any, layout: check.ClassTargetLayout) -> tuple[int, ...]:
    if not layout.batched:
        return ()
    return (input.shape[0], *input.shape[2:])


def _prepare_nll(input, target, weight, ignore_index, reduction, *, check_range=True):
    """Validate; the target range too unless the caller leaves it to the device
    (``target_check="device"`` on torch's CUDA kernel, which asserts)."""
    check.check_given(input, target, "nll_loss")
    xp = namespace(input, target, weight)
    check.check_same_device("nll_loss", input=input, target=target, weight=weight)
    reduction = check.check_reduction(reduction)
    ignore_index = check.check_ignore_index(ignore_index)
    num_classes = check.check_nll_args(xp, input, target, weight)
    if check_range:
        target = _checked_target(xp, target, num_classes, ignore_index)
    if weight is not None and weight.ndim != 1:
        weight = xp.reshape(weight, (-1,))
    options = {"ignore_index": ignore_index, "reduction": reduction}
    return xp, target, weight, options, num_classes


def nll_loss(
    input: Any,
    target: Any,
    weight: Any = None,
    size_average: bool | None = None,
    ignore_index: int = -100,
    reduce: bool | None = None,
    reduction: str = "mean",
    *,
    impl: str = "auto",
    target_check: str = "host",
) -> Any:
    r"""Negative log-likelihood of log-probabilities ``input`` at class indices ``target``.

    .. math::

        L_i = -m_i\, w_{y_i}\, \mathrm{input}_{i, y_i}
        \qquad \text{mean} = \frac{\sum_i L_i}{\sum_i m_i w_{y_i}}

    Equals ``torch.nn.functional.nll_loss(input, target, weight, ignore_index=ignore_index,
    reduction=reduction)``. Like PyTorch, nothing checks that ``input`` holds log-probabilities
    (:func:`crossent.diagnose` does). ``impl`` (torch tensors): ``"auto"`` (torch's own kernel
    after crossent's checks, traced by torch.compile or not, on the CPU and where torch's CUDA
    kernel is deterministic; else the reference), ``"reference"``, ``"torch"``.
    ``target_check`` as in :func:`cross_entropy`: ``"device"`` leaves the range check to torch's
    CUDA kernel, which asserts on the device (no host synchronisation).

    >>> import numpy as np, crossent
    >>> logp = np.array([[-1.2, -0.5, -2.0], [-0.3, -1.5, -2.5]])
    >>> float(crossent.nll_loss(logp, np.array([1, 2]), weight=np.array([1.0, 2.0, 3.0])))
    1.7
    """
    reduction = check.legacy_reduction(size_average, reduce, reduction)
    outside = _autocast_scope("nll_loss", input)
    if outside is not None:
        with outside as (cast, _):
            return nll_loss(
                cast(input), target, cast(weight), ignore_index=ignore_index, reduction=reduction,
                impl=impl, target_check=target_check,
            )  # fmt: skip
    diagnostics.maybe_warn(
        "nll_loss", input, target, weight, ignore_index=ignore_index, reduction=reduction
    )
    check.check_target_check(target_check)
    choice = resolve_impl(impl, input, "nll_loss")
    on_device = choice == "torch" and _torch_kernel_checks(input, target_check)
    xp, target, weight, options, num_classes = _prepare_nll(
        input, target, weight, ignore_index, reduction, check_range=not on_device
    )
    native = _torch_kernel(choice, impl, "nll_loss", input, target, weight)
    if native is not None:
        return native.nll_loss(input, target, weight, options)
    if on_device:  # (auto fell back to the reference, which reads the targets on the host)
        target = _checked_target(xp, target, num_classes, options["ignore_index"])
    return _run_reference(_nll_fn, options, input, target, weight)


def nll_loss_and_grad(
    input: Any,
    target: Any,
    weight: Any = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    *,
    grad_output: Any = None,
) -> LossAndGrad:
    """:func:`nll_loss` and its gradient ``-s_i m_i w[y_i] onehot(y_i)``."""
    diagnostics.maybe_warn(
        "nll_loss", input, target, weight, ignore_index=ignore_index, reduction=reduction
    )
    xp, target, weight, options, _ = _prepare_nll(input, target, weight, ignore_index, reduction)
    shape = () if input.ndim == 1 else (input.shape[0], *input.shape[2:])
    _check_grad_output(xp, grad_output, options["reduction"], shape)
    g = _run_reference_grad(_nll_fn, options, input, target, weight, None, grad_output)
    return LossAndGrad(g.loss, g.grad_input, None)


# ------------------------------------------------------------------------------------------
# binary losses


def _prepare_bce(input, target, weight, reduction):
    """Validate; returns ``(xp, options, checked)``. ``checked`` is None, or under torch.compile a
    0-d zero from a custom op that checks the [0, 1] domain (the check's read of tensor values
    stays out of the graph); subtracting it from the loss changes no bit and keeps the op."""
    xp = namespace(input, target, weight)
    reduction = check.check_reduction(reduction)
    check.check_bce_args(xp, input, target, weight)
    if is_torch(input):
        import torch

        if torch.compiler.is_compiling():
            from crossent._torch_reference import checked_unit_interval

            return xp, {"reduction": reduction}, checked_unit_interval(input, target)
    check.check_unit_interval(xp, input, "input")
    check.check_unit_interval(xp, target, "target")
    return xp, {"reduction": reduction}, None


def binary_cross_entropy(
    input: Any,
    target: Any,
    weight: Any = None,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
    *,
    impl: str = "auto",
) -> Any:
    r"""Binary cross-entropy between probabilities ``input`` and targets in [0, 1].

    .. math::

        L = -w\,[\,y \max(\log p, -100) + (1-y)\max(\log(1-p), -100)\,]
        \qquad \text{mean} = \frac{\sum L}{\mathrm{numel}}

    Each log term is clamped at -100, as in PyTorch; ``weight`` broadcasts to the input
    (trailing dims) but never enters the ``mean`` denominator. Equals
    ``torch.nn.functional.binary_cross_entropy(input, target, weight, reduction=reduction)``.
    ``impl`` as in :func:`nll_loss`.

    >>> import numpy as np, crossent
    >>> crossent.binary_cross_entropy(np.array([0.0, 1.0, 0.0, 0.5]),
    ...                               np.array([1.0, 0.0, 0.25, 0.3]), reduction="none")
    array([100.        , 100.        ,  25.        ,   0.69314718])
    """
    check.check_given(input, target, "binary_cross_entropy")
    reduction = check.legacy_reduction(size_average, reduce, reduction)
    outside = _autocast_scope("binary_cross_entropy", input)
    if outside is not None:
        with outside as (cast, _):
            return binary_cross_entropy(
                cast(input), cast(target), cast(weight), reduction=reduction, impl=impl
            )
    diagnostics.maybe_warn("binary_cross_entropy", input, target, weight, reduction=reduction)
    choice = resolve_impl(impl, input, "binary_cross_entropy")
    _, options, checked = _prepare_bce(input, target, weight, reduction)
    native = _torch_kernel(choice, impl, "binary_cross_entropy", input, target, weight)
    if native is not None:
        loss = native.binary_cross_entropy(input, target, weight, options)
    else:
        loss = _run_reference(_bce_fn, options, input, target, weight)
    return loss if checked is None else loss - checked


def binary_cross_entropy_and_grad(
    input: Any, target: Any, weight: Any = None, reduction: str = "mean", *, grad_output=None
) -> LossAndGrad:
    """:func:`binary_cross_entropy` with ``dL/dp = s w (p - y) / max(p (1 - p), 1e-12)`` and
    ``dL/dy = s w (log(1 - p) - log p)`` (unclamped, as in PyTorch)."""
    check.check_given(input, target, "binary_cross_entropy_and_grad")
    diagnostics.maybe_warn("binary_cross_entropy", input, target, weight, reduction=reduction)
    xp, options, _ = _prepare_bce(input, target, weight, reduction)
    _check_grad_output(xp, grad_output, options["reduction"], tuple(input.shape))
    g = _run_reference_grad(_bce_fn, options, input, target, weight, None, grad_output)
    return LossAndGrad(g.loss, g.grad_input, g.grad_target)


def _prepare_bce_logits(input, target, weight, pos_weight, reduction):
    xp = namespace(input, target, weight, pos_weight)
    reduction = check.check_reduction(reduction)
    check.check_bce_with_logits_args(xp, input, target, weight, pos_weight)
    return xp, {"reduction": reduction}


def binary_cross_entropy_with_logits(
    input: Any,
    target: Any,
    weight: Any = None,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
    pos_weight: Any = None,
    *,
    impl: str = "auto",
) -> Any:
    r"""Binary cross-entropy on logits, with an optional weight for the positive term.

    .. math::

        L = w\,[\,(1-y)\,x - (1 + (p_w - 1)\,y)\,\log\sigma(x)\,]
        \qquad \text{mean} = \frac{\sum L}{\mathrm{numel}}

    which is ``-w [p_w y log(sigmoid(x)) + (1 - y) log(1 - sigmoid(x))]``. ``weight`` and
    ``pos_weight`` broadcast along trailing dims (a ``(C,)`` pos_weight applies to the last
    dim). The result has the *target's* dtype, as in PyTorch. Equals
    ``torch.nn.functional.binary_cross_entropy_with_logits(input, target, weight,
    reduction=reduction, pos_weight=pos_weight)``. ``impl`` as in :func:`nll_loss`.

    >>> import numpy as np, crossent
    >>> z = np.array([[0.5, -1.0, 3.0], [2.0, 0.0, -4.0]])
    >>> y = np.array([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    >>> float(crossent.binary_cross_entropy_with_logits(z, y))  # doctest: +ELLIPSIS
    0.5290251...
    """
    check.check_given(input, target, "binary_cross_entropy_with_logits")
    reduction = check.legacy_reduction(size_average, reduce, reduction)
    outside = _autocast_scope("binary_cross_entropy_with_logits", input)
    if outside is not None:
        with outside as (cast, _):
            return binary_cross_entropy_with_logits(
                cast(input), cast(target), cast(weight), reduction=reduction,
                pos_weight=cast(pos_weight), impl=impl,
            )  # fmt: skip
    diagnostics.maybe_warn(
        "binary_cross_entropy_with_logits", input, target, weight, reduction=reduction,
        pos_weight=pos_weight,
    )
    op = "binary_cross_entropy_with_logits"
    choice = resolve_impl(impl, input, op)
    _, options = _prepare_bce_logits(input, target, weight, pos_weight, reduction)
    native = _torch_kernel(choice, impl, op, input, target, weight, pos_weight)
    if native is not None:
        return native.binary_cross_entropy_with_logits(input, target, weight, pos_weight, options)
    return _run_reference(_bcel_fn, options, input, target, weight, pos_weight)


def binary_cross_entropy_with_logits_and_grad(
    input: Any,
    target: Any,
    weight: Any = None,
    reduction: str = "mean",
    pos_weight: Any = None,
    *,
    grad_output: Any = None,
) -> LossAndGrad:
    """:func:`binary_cross_entropy_with_logits` with
    ``dL/dx = s w (sigmoid(x) (1 + (pw - 1) y) - pw y)`` (``sigmoid(x) - y`` without weights)
    and ``dL/dy = s w (-x - (pw - 1) log_sigmoid(x))``."""
    check.check_given(input, target, "binary_cross_entropy_with_logits_and_grad")
    diagnostics.maybe_warn(
        "binary_cross_entropy_with_logits", input, target, weight, reduction=reduction,
        pos_weight=pos_weight,
    )
    xp, options = _prepare_bce_logits(input, target, weight, pos_weight, reduction)
    _check_grad_output(xp, grad_output, options["reduction"], tuple(input.shape))
    g = _run_reference_grad(_bcel_fn, options, input, target, weight, pos_weight, grad_output)
    return LossAndGrad(g.loss, g.grad_input, g.grad_target)


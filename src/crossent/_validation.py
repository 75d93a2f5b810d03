"""Argument checks at the public boundary, with PyTorch's exception types.

Every check raises the exception *type* torch 2.13 raises for the same input (so code that
catches torch's errors catches ours), with a message that says what was expected and what was
got. Shape, dtype and argument checks read metadata only. Value checks (target range, BCE's
[0, 1] domain) read array values; they live in separate functions so that the fused torch path
can run them inside its custom op (no graph break under ``torch.compile``).

Deliberate deviations from torch, each documented where it applies:

* a negative or NaN ``label_smoothing`` raises ValueError (torch silently treats it as 0);
* an unbatched ``(C,)`` input with a ``(1,)`` target and ``label_smoothing > 0`` works (torch
  crashes with a broadcasting RuntimeError although its unsmoothed path accepts that target).
"""

from __future__ import annotations

import math
import numbers
import operator
import sys
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from crossent._array import (
    dtype_name,
    is_dtype,
    is_floating,
    is_integral,
    is_torch,
    needs_grad,
    requires_grad,
    shape_str,
)
from crossent._reduction import REDUCTIONS


def check_reduction(reduction: Any) -> str:
    """Return the reduction name; ``'elementwise_mean'`` warns and maps to ``'mean'``."""
    if reduction == "elementwise_mean":
        warnings.warn(
            "reduction='elementwise_mean' is deprecated, please use reduction='mean' instead.",
            UserWarning,
            stacklevel=3,
        )
        return "mean"
    if not isinstance(reduction, str) or reduction not in REDUCTIONS:
        raise ValueError(
            f"{reduction} is not a valid value for reduction: "
            f"expected one of {', '.join(repr(r) for r in REDUCTIONS)}"
        )
    return reduction


def int_argument(value: Any, name: str) -> int:
    """An integer argument as torch's parser takes it: ints, NumPy integers and 0-d integer
    tensors (anything with ``__index__``), not bools or floats (TypeError)."""
    if not isinstance(value, bool):
        try:
            return operator.index(value)
        except TypeError:
            pass
    raise TypeError(f"{name} must be an int, not {type(value).__name__} ({value!r})")


def float_argument(value: Any, name: str) -> float:
    """A float argument as torch's parser takes it: Python and NumPy numbers (bools too) and
    0-d tensors or arrays; anything else is a TypeError, as are exact fractions and decimals
    and a tensor that requires grad (no gradient would reach it)."""
    if type(value) is float:  # the common case, decided first
        return value
    exact = isinstance(value, numbers.Real) and not isinstance(value, (float, int, np.number))
    differentiable = is_torch(value) and requires_grad(value)
    if differentiable or exact:
        raise TypeError(
            f"{name} must be a float, not {type(value).__name__} ({value!r})"
            + (": it requires grad, and no gradient flows to it" * differentiable)
        )
    if isinstance(value, numbers.Real) or (
        getattr(value, "ndim", None) == 0 and not isinstance(value, (str, bytes))
    ):
        try:
            return float(value)
        except (TypeError, ValueError):
            pass
    raise TypeError(f"{name} must be a float, not {type(value).__name__} ({value!r})")


def _finite(value: Any) -> bool:
    """``math.isfinite`` by comparisons, which torch.compile's symbolic floats support."""
    return bool(-math.inf < value < math.inf)


def check_extras(z_loss: Any, softcap: Any) -> tuple[float, float | None]:
    """The fused extras: ``z_loss`` a finite coefficient >= 0, ``softcap`` None or finite > 0."""
    z = float_argument(z_loss, "z_loss")
    if not (_finite(z) and z >= 0):
        raise ValueError(f"z_loss must be a finite coefficient >= 0, got {z_loss}")
    if softcap is None:
        return z, None
    cap = float_argument(softcap, "softcap")
    if not (_finite(cap) and cap > 0):
        raise ValueError(f"softcap must be a finite value > 0 (or None), got {softcap}")
    return z, cap


def legacy_reduction(
    size_average: Any, reduce: Any, reduction: Any, *, stacklevel: int = 3
) -> Any:
    """torch's mapping of the deprecated ``size_average``/``reduce`` pair onto ``reduction``
    (either given: a UserWarning, and None reads as True); ``reduction`` when neither is."""
    if size_average is None and reduce is None:
        return reduction
    size_average = True if size_average is None else size_average
    reduce = True if reduce is None else reduce
    result = "none" if not reduce else ("mean" if size_average else "sum")
    warnings.warn(
        f"size_average and reduce args will be deprecated, please use reduction='{result}' "
        f"instead.",
        UserWarning,
        stacklevel=stacklevel,
    )
    return result


class NotAnArrayError(TypeError, AttributeError):
    """A required array argument is None or not an array. A TypeError, and also the
    AttributeError torch raises where it reads ``.size()`` or ``.shape`` of such an argument
    (its binary losses; linear_cross_entropy's target)."""


def check_given(input: Any, target: Any, op: str) -> None:
    """``input`` and ``target`` are required arrays: None is a TypeError, as in torch (an
    AttributeError too: :class:`NotAnArrayError`)."""
    for position, (name, value) in enumerate((("input", input), ("target", target)), start=1):
        if value is None:
            raise NotAnArrayError(
                f"{op}(): argument {name!r} (position {position}) must be an array (a tensor "
                f"for torch), not NoneType"
            )


def check_same_device(op: str, **arrays: Any) -> None:
    """The torch tensors of one call lie on one device: a RuntimeError otherwise, as torch's
    (the fused CPU kernel would read a tensor of another device as if it were its own). Other
    arrays' libraries check their devices themselves."""
    torch = sys.modules.get("torch")
    if torch is None:
        return
    tensors = [(name, a) for name, a in arrays.items() if isinstance(a, torch.Tensor)]
    if not tensors:
        return
    device = tensors[0][1].device
    if device.type == "meta":
        return  # (shapes only: nothing is read, and torch mixes a 0-d CPU target in)
    if any(a.device != device for _, a in tensors[1:]):
        where = ", ".join(f"{name} on {a.device}" for name, a in tensors)
        raise RuntimeError(
            f"Expected all tensors to be on the same device, but found at least two devices: "
            f"{op}() got {where}"
        )


#: The ways the fused path may check class-index targets (``target_check``; what each does:
#: :func:`crossent._fused_op.fused_cross_entropy`).
TARGET_CHECKS = ("host", "device")


def check_target_check(target_check: Any) -> str:
    """``target_check`` is one of :data:`TARGET_CHECKS` (crossent's own option: ValueError)."""
    if not isinstance(target_check, str) or target_check not in TARGET_CHECKS:
        raise ValueError(
            f"target_check must be one of {', '.join(map(repr, TARGET_CHECKS))}, got "
            f"{target_check!r}"
        )
    return target_check


def check_ignore_index(ignore_index: Any) -> int:
    """ignore_index must be an integer (torch: TypeError for a float or a bool) that fits in
    int64 (torch: ValueError)."""
    value = int_argument(ignore_index, "ignore_index")
    if not -(2**63) <= value < 2**63:
        raise ValueError(
            f"Overflow when unpacking long long: ignore_index must fit in int64 "
            f"([-2**63, 2**63)), got {value}"
        )
    return value


def check_real(xp: Any, array: Any, arg: str, op: str) -> None:
    """Weights, targets and upstream gradients must not be complex: mixed with a real input
    they would be cast to real, dropping the imaginary part (torch: RuntimeError)."""
    if array is None:
        return
    if is_dtype(xp, array.dtype, "complex floating"):
        raise RuntimeError(
            f"{op}: {arg} must be real (floating, integer or bool), got "
            f"{dtype_name(array.dtype)}"
        )


def check_label_smoothing(label_smoothing: Any) -> float:
    """label_smoothing in [0, 1]: >1 is torch's RuntimeError; <0 or NaN is our ValueError."""
    value = float_argument(label_smoothing, "label_smoothing")
    if not value >= 0:  # NaN fails it too (a comparison: torch.compile's symbolic floats)
        raise ValueError(
            f"label_smoothing must be between 0.0 and 1.0, got {value}. (PyTorch silently "
            f"treats a negative or NaN value as 0.0; crossent rejects it.)"
        )
    if value > 1:
        raise RuntimeError(f"label_smoothing must be between 0.0 and 1.0. Got: {value}")
    return value


def check_floating_input(xp: Any, input: Any, op: str) -> None:
    """Losses need floating inputs (torch raises NotImplementedError for integer ones)."""
    if not is_floating(xp, input.dtype):
        raise NotImplementedError(
            f"{op} expects a floating-point input (float16, bfloat16, float32 or float64), "
            f"got {dtype_name(input.dtype)}"
        )


def check_not_differentiable(tensor: Any, op: str, arg: str) -> None:
    """torch refuses autograd through class weights of the index path, BCE weights, pos_weight
    (only while autograd records: under ``no_grad`` or ``inference_mode`` it computes the loss)."""
    if needs_grad(tensor):
        raise RuntimeError(
            f"The function '{op}' is not differentiable with respect to argument '{arg}'. "
            f"This input cannot have requires_grad True."
        )


# --------------------------------------------------------------------------------------------
# nll_loss and cross_entropy


@dataclass(frozen=True)
class ClassTargetLayout:
    """How a (validated) class-index or probability target lines up with the input."""

    probabilities: bool  # True: target has the input's shape and holds class probabilities
    num_classes: int
    batched: bool  # False for an unbatched (C,) input


def _index_target_checks(xp: Any, input: Any, target: Any) -> None:
    """nll_loss's shape and dtype rules for class-index targets, in torch's order and with its
    exception types (for a 1-D input torch checks the dtype between its two shape rules)."""
    ndim = input.ndim
    if ndim == 0:
        raise ValueError("Expected 1 or more dimensions (got 0)")
    if ndim == 1:
        if target.ndim > 1:
            raise RuntimeError(
                f"0D or 1D target tensor expected, multi-target not supported: a (C,) input "
                f"takes a 0-d (or (1,)) class index, got a target of shape "
                f"{shape_str(target.shape)}"
            )
        _index_target_dtype_check(xp, input, target)
        if target.ndim == 1 and target.shape[0] != 1:
            raise ValueError(
                f"For 1D input, 1D target must have size 1, but got target size: "
                f"{target.shape[0] if target.ndim == 1 else shape_str(target.shape)}"
            )
        return
    target_batch = target.shape[0] if target.ndim > 0 else 0
    if input.shape[0] != target_batch:
        raise ValueError(
            f"Expected input batch_size ({input.shape[0]}) to match target batch_size "
            f"({target_batch})."
        )
    if target.ndim == 0:
        raise IndexError(
            f"Dimension specified as 0 but tensor has no dimensions: an input of shape "
            f"{shape_str(input.shape)} takes class indices of shape "
            f"{shape_str(_index_shape(tuple(input.shape)))}, got a 0-d target"
        )
    if ndim == 2:
        if target.ndim != 1:
            raise RuntimeError(
                f"0D or 1D target tensor expected, multi-target not supported: an (N, C) input "
                f"takes an (N,) target of class indices, got a target of shape "
                f"{shape_str(target.shape)} (a target with the input's shape "
                f"{shape_str(input.shape)} is read as class probabilities)"
            )
    else:
        expected = (input.shape[0], *input.shape[2:])
        if tuple(target.shape) != expected:
            raise RuntimeError(
                f"Expected target size {shape_str(expected)}, got {shape_str(target.shape)} "
                f"(input {shape_str(input.shape)} has its classes in dim 1; an (N, L, C) model "
                f"output must be permuted to (N, C, L))"
            )
    _index_target_dtype_check(xp, input, target)


def _index_target_dtype_check(xp: Any, input: Any, target: Any) -> None:
    name = dtype_name(target.dtype)
    if name == "uint8" and input.ndim > 2 and math.prod(input.shape) > 0:
        raise RuntimeError(
            f"expected scalar type Long but found Byte: uint8 class-index targets are accepted "
            f"only for 1-D and 2-D inputs, got an input of {input.ndim} dimensions; "
            f"use int64 targets"
        )
    if name not in ("int64", "uint8"):
        if is_floating(xp, target.dtype):
            hint = (
                f"; a floating target is read as class probabilities only when it has the "
                f"input's shape {shape_str(input.shape)}, got {shape_str(target.shape)}"
            )
        else:
            hint = ""
        raise RuntimeError(
            f"expected target dtype to be Long or Byte, but got {name}: class-index targets "
            f"must be int64 (or uint8 for 1-D/2-D inputs){hint}"
        )


def check_class_weight(
    xp: Any, input: Any, weight: Any, num_classes: int, *, probabilities: bool, op: str
) -> None:
    """Class weights: numel C (1-D except nll's K-dim path); index path needs the input dtype."""
    _check_weight_size(weight, num_classes, input.ndim, probabilities=probabilities, op=op)
    if not probabilities:  # torch promotes integer and bool weights of the probability path
        _check_weight_dtype(xp, input, weight)


def _check_weight_dtype(xp: Any, input: Any, weight: Any) -> None:
    """Index-path class weights are floating, in the input's dtype (torch: RuntimeError)."""
    if weight is None:
        return
    if not is_floating(xp, weight.dtype):
        raise RuntimeError(
            f"class weight must be floating point, got {dtype_name(weight.dtype)}"
        )
    if dtype_name(weight.dtype) != dtype_name(input.dtype):
        raise RuntimeError(
            f"expected scalar type {dtype_name(input.dtype)} but found "
            f"{dtype_name(weight.dtype)}: class weights must have the input's dtype"
        )


def _check_weight_size(
    weight: Any, num_classes: int, input_ndim: int, *, probabilities: bool, op: str
) -> None:
    """numel C, and 1-D except on nll's K-dim path (torch: RuntimeError)."""
    if weight is None:
        return
    size = math.prod(weight.shape)
    one_dim_required = probabilities or input_ndim <= 2 or op == "cross_entropy"
    if size != num_classes or (one_dim_required and weight.ndim != 1):
        prefix = "cross_entropy: " if probabilities else ""
        raise RuntimeError(
            f"{prefix}weight tensor should be defined either for all {num_classes} classes or no "
            f"classes but got weight tensor of shape: {shape_str(weight.shape)}"
        )


def check_nll_args(xp: Any, input: Any, target: Any, weight: Any) -> int:
    """All metadata checks of nll_loss, in torch's order (target, weight size, input dtype,
    weight dtype); returns the number of classes."""
    _index_target_checks(xp, input, target)
    num_classes = input.shape[0] if input.ndim == 1 else input.shape[1]
    if (input.ndim == 3 or input.ndim > 4) and num_classes == 0 and math.prod(target.shape) > 0:
        # torch views such inputs as (N, C, 1, d1*d2*...), which fails with no classes
        rest = math.prod(target.shape[1:])
        raise RuntimeError(
            f"an input of shape {shape_str(input.shape)} has no classes for its "
            f"{math.prod(target.shape)} target positions: torch fails on it ('size mismatch "
            f"(got input: [{input.shape[0]}, 0, 0, 0] , target: [{target.shape[0]}, 1, "
            f"{rest}]'), as nll_loss and cross_entropy of class indices"
        )
    _check_weight_size(weight, num_classes, input.ndim, probabilities=False, op="nll_loss")
    check_floating_input(xp, input, "nll_loss")
    _check_weight_dtype(xp, input, weight)
    check_not_differentiable(weight, "nll_loss_forward", "weight")
    return num_classes


def check_cross_entropy_args(
    xp: Any, input: Any, target: Any, weight: Any, ignore_index: int, label_smoothing: float,
    reduction: str,
) -> ClassTargetLayout:  # fmt: skip
    """cross_entropy's checks in torch's dispatch order (spec section 4.1)."""
    if tuple(input.shape) == tuple(target.shape):
        if not is_floating(xp, target.dtype):
            raise RuntimeError(
                f"Expected floating point type for target with class probabilities, got "
                f"{dtype_name(target.dtype)}: a target with the input's shape "
                f"{shape_str(input.shape)} is read as class probabilities (convert a one-hot "
                f"target to float, or pass class indices of shape "
                f"{shape_str(_index_shape(input.shape))})"
            )
        if ignore_index >= 0:
            raise RuntimeError(
                f"ignore_index is not supported for floating point target: probability "
                f"targets take no ignore_index, got ignore_index={ignore_index}"
            )
        if input.ndim == 0:
            raise IndexError(
                "Dimension specified as 1 but tensor has no dimensions: cross_entropy needs an "
                "input of shape (C,), (N, C) or (N, C, d1, ...)"
            )
        check_floating_input(xp, input, "cross_entropy")
        check_real(xp, weight, "weight", "cross_entropy")
        num_classes = input.shape[0] if input.ndim == 1 else input.shape[1]
        check_class_weight(
            xp, input, weight, num_classes, probabilities=True, op="cross_entropy"
        )
        return ClassTargetLayout(True, num_classes, input.ndim > 1)
    # torch takes the log-softmax over dim 1 (dim 0 for a (C,) input) before nll_loss's checks
    if input.ndim == 0:
        raise IndexError(
            "Dimension out of range (expected to be in range of [-1, 0], but got 1): "
            "cross_entropy needs an input of shape (C,), (N, C) or (N, C, d1, ...), got a 0-d one"
        )
    check_floating_input(xp, input, "cross_entropy")
    num_classes = check_nll_args(xp, input, target, weight)
    if label_smoothing > 0 and weight is not None and weight.ndim != 1:
        check_class_weight(
            xp, input, weight, num_classes, probabilities=False, op="cross_entropy"
        )
    smoothed_mean = label_smoothing > 0 and reduction == "mean"
    if smoothed_mean and weight is not None and dtype_name(target.dtype) == "uint8":
        # torch fails here (RuntimeError); refused the same way on every impl and library
        raise RuntimeError(
            "cross_entropy with label_smoothing, class weights and reduction='mean' needs int64 "
            "class indices, got uint8 (torch gathers the weights with the target there and "
            "fails: 'gather(): Expected dtype int32/int64 for index'); convert the target to "
            "int64"
        )
    return ClassTargetLayout(False, num_classes, input.ndim > 1)


def _index_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    if len(shape) <= 1:
        return ()
    return (shape[0], *shape[2:])


def out_of_range(
    xp: Any, target: Any, num_classes: int, ignore_index: int, *, kept: Any = None
) -> Any:
    """The mask of kept class indices outside ``[0, C)`` (array ops only: no synchronisation).
    ``kept``: the caller's ``target != ignore_index``, when it has it already."""
    t = target if target.dtype == xp.int64 else xp.astype(target, xp.int64)
    bad = (t < 0) | (t >= num_classes)
    if not 0 <= ignore_index < num_classes:  # else an ignored target is never out of range
        bad = bad & (t != ignore_index if kept is None else kept)
    return bad


def recheck_target_range(xp: Any, target: Any, num_classes: int, ignore_index: int) -> None:
    """After a kernel's IndexError about a flattened or sliced view of ``target``: the same
    check on the target as given, so the error names the first offender in its own shape and
    order, raised alone (without the kernel's error, and its other position, as context)."""
    try:
        check_target_range(xp, target, num_classes, ignore_index)
    except IndexError as exc:
        raise exc from None


def check_target_range(
    xp: Any, target: Any, num_classes: int, ignore_index: int, *, kept: Any = None
) -> None:
    """Every kept class index lies in [0, C); names the first offender and its position.

    Reads values (a device synchronisation for GPU arrays). torch raises IndexError on CPU and
    a device-side assert on CUDA; crossent raises the IndexError on every device. ``kept``: the
    caller's ``target != ignore_index``, when it has it already.
    """
    target = _outside_transforms(target)
    if _without_values(target) or _plainly_in_range(target, num_classes):
        return
    bad = out_of_range(xp, target, num_classes, ignore_index, kept=kept)
    if not bool(xp.any(bad)):
        return
    t = target if target.dtype == xp.int64 else xp.astype(target, xp.int64)
    flat_bad = xp.reshape(bad, (-1,))
    first = int(xp.argmax(xp.astype(flat_bad, xp.int8)))
    position = _unravel(first, tuple(target.shape))
    value = int(xp.reshape(t, (-1,))[first])
    count = int(xp.sum(xp.astype(flat_bad, xp.int64)))
    more = f" ({count} targets are out of range)" if count > 1 else ""
    expected = (
        f"a class index in [0, {num_classes})"
        if num_classes
        else "no class index (the input has 0 classes)"
    )
    raise IndexError(
        f"Target {value} is out of bounds: expected {expected} or "
        f"ignore_index={ignore_index}, got {value} at position {position}{more}"
    )


def _cpu_extremes(array: Any) -> tuple[Any, Any] | None:
    """``(min, max)`` of a non-empty real CPU torch tensor from one ``aminmax`` (a small call's
    largest host cost was the masks of the full checks); None for every other array. NaN
    entries make both NaN, which every range comparison fails."""
    torch = sys.modules.get("torch")
    if torch is None or not isinstance(array, torch.Tensor) or array.device.type != "cpu":
        return None
    if array.numel() == 0 or array.dtype == torch.bool or array.is_complex():
        return None
    low, high = torch.aminmax(array.detach() if array.requires_grad else array)
    return low.item(), high.item()


def _plainly_in_range(target: Any, num_classes: int) -> bool:
    """Every entry of a CPU torch target in [0, C) (False: look closer, the entries may be
    ignored or out of range)."""
    extremes = _cpu_extremes(target)
    return extremes is not None and 0 <= extremes[0] and extremes[1] < num_classes


def _without_values(array: Any) -> bool:
    """Meta tensors have shapes and dtypes but no values to check (torch checks none there)."""
    return getattr(getattr(array, "device", None), "type", None) == "meta"


def _outside_transforms(array: Any) -> Any:
    """A torch tensor wrapped by torch.func transforms as the plain tensor underneath (under
    ``vmap`` all batch entries at once, batch dimensions first), whose values Python can read;
    any other array as it is."""
    torch = sys.modules.get("torch")
    if torch is None or not isinstance(array, torch.Tensor) or torch.compiler.is_compiling():
        return array
    functorch = torch._C._functorch
    while functorch.is_functorch_wrapped_tensor(array):
        array = functorch.get_unwrapped(array)
    return array


def _unravel(index: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    out = []
    for size in reversed(shape):
        out.append(index % size)
        index //= size
    return tuple(reversed(out))


# --------------------------------------------------------------------------------------------
# binary losses


def _torch_size(shape: tuple[int, ...]) -> str:
    return "torch.Size([" + ", ".join(str(int(s)) for s in shape) + "])"


def _broadcast_shape(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...] | None:
    out = []
    for i in range(1, max(len(a), len(b)) + 1):
        x = a[-i] if i <= len(a) else 1
        y = b[-i] if i <= len(b) else 1
        if x != y and 1 not in (x, y):
            return None
        out.append(max(x, y) if 0 not in (x, y) else 0)
    return tuple(reversed(out))


def check_broadcast_weight(weight: Any, shape: tuple[int, ...], arg: str) -> None:
    """A weight must broadcast to the loss shape without enlarging it (torch: RuntimeError)."""
    if weight is None:
        return
    joint = _broadcast_shape(tuple(weight.shape), shape)
    if joint is None:
        raise RuntimeError(
            f"{arg} of shape {shape_str(weight.shape)} does not broadcast to the input shape "
            f"{shape_str(shape)} (dimensions are aligned from the right, so a per-class vector "
            f"applies along the last dimension)"
        )
    if joint != shape:
        raise RuntimeError(
            f"output with shape {shape_str(shape)} doesn't match the broadcast shape "
            f"{shape_str(joint)}: {arg} must not enlarge the input"
        )


def check_bce_args(xp: Any, input: Any, target: Any, weight: Any) -> None:
    """binary_cross_entropy: equal shapes, equal dtypes, floating, broadcastable weight."""
    if tuple(target.shape) != tuple(input.shape):
        raise ValueError(
            f"Using a target size ({_torch_size(target.shape)}) that is different to the input "
            f"size ({_torch_size(input.shape)}) is deprecated. Please ensure they have the same "
            f"size."
        )
    if dtype_name(target.dtype) != dtype_name(input.dtype):
        raise RuntimeError(
            f"Found dtype {dtype_name(target.dtype)} but expected {dtype_name(input.dtype)}: "
            f"binary_cross_entropy needs the target in the input's dtype"
        )
    check_floating_input(xp, input, "binary_cross_entropy")
    check_real(xp, weight, "weight", "binary_cross_entropy")
    check_broadcast_weight(weight, tuple(input.shape), "weight")
    check_not_differentiable(weight, "binary_cross_entropy", "weight")


def check_unit_interval(xp: Any, values: Any, what: str) -> None:
    """BCE's domain check: every element in [0, 1] (NaN fails). Under torch.func transforms
    the values underneath are checked (under vmap all batch entries at once)."""
    values = _outside_transforms(values)
    if _without_values(values):
        return
    extremes = _cpu_extremes(values)
    if extremes is not None and 0 <= extremes[0] and extremes[1] <= 1:
        return
    if values.ndim == 0 or math.prod(values.shape) > 0:
        inside = (values >= 0) & (values <= 1)
        if not bool(xp.all(inside)):
            flat = xp.reshape(inside, (-1,))
            first = int(xp.argmin(xp.astype(flat, xp.int8)))
            value = float(xp.reshape(values, (-1,))[first])
            raise RuntimeError(
                f"all elements of {what} should be between 0 and 1: got {value} at position "
                f"{_unravel(first, tuple(values.shape))}"
                + (" (pass logits to binary_cross_entropy_with_logits)" if what == "input" else "")
            )


def check_bce_with_logits_args(
    xp: Any, input: Any, target: Any, weight: Any, pos_weight: Any
) -> None:
    """binary_cross_entropy_with_logits: equal shapes, floating target, non-enlarging weights."""
    if tuple(target.shape) != tuple(input.shape):
        raise ValueError(
            f"Target size ({_torch_size(target.shape)}) must be the same as input size "
            f"({_torch_size(input.shape)})"
        )
    check_floating_input(xp, input, "binary_cross_entropy_with_logits")
    if is_integral(xp, target.dtype):
        raise RuntimeError(
            f"result type Float can't be cast to the desired output type "
            f"{dtype_name(target.dtype)}: binary_cross_entropy_with_logits needs a floating "
            f"target (its output takes the target's dtype)"
        )
    for arg, array in (("target", target), ("weight", weight), ("pos_weight", pos_weight)):
        check_real(xp, array, arg, "binary_cross_entropy_with_logits")
    check_broadcast_weight(weight, tuple(input.shape), "weight")
    check_broadcast_weight(pos_weight, tuple(input.shape), "pos_weight")
    if pos_weight is not None and dtype_name(pos_weight.dtype) == "bool":
        raise RuntimeError(
            "Subtraction, the `-` operator, with a bool tensor is not supported: pos_weight must "
            "be a numeric tensor (torch computes pos_weight - 1), got bool"
        )
    check_not_differentiable(weight, "binary_cross_entropy_with_logits", "weight")
    check_not_differentiable(pos_weight, "binary_cross_entropy_with_logits", "pos_weight")


# --------------------------------------------------------------------------------------------
# softmax family


def normalize_dim(dim: Any, ndim: int, *, scalar: bool = True) -> int:
    """A dim in [-max(ndim,1), max(ndim,1)) -> [0, ndim); IndexError otherwise (torch's text).

    ``scalar``: a one-element array of ndim >= 1 (which has ``__index__``) is a TypeError, as
    torch's softmax refuses it; logsumexp's dims (an int list to torch) take it."""
    if scalar and getattr(dim, "ndim", 0) != 0:
        raise TypeError(
            f"dim must be an int, not a {dim.ndim}-d {type(dim).__name__} ({dim!r})"
        )
    dim = int_argument(dim, "dim")
    rank = max(ndim, 1)
    if not -rank <= dim < rank:
        raise IndexError(
            f"Dimension out of range (expected to be in range of [{-rank}, {rank - 1}], but got "
            f"{dim})"
        )
    return dim % rank


def normalize_dims(
    dim: Any, shape: tuple[int, ...], keepdim: bool = False
) -> tuple[int, ...]:
    """logsumexp's dim: an int or a tuple of distinct dims. An empty tuple means every dim, as
    torch reads it; torch then fails without ``keepdim`` unless the input is 0-d or empty, and
    so does this (RuntimeError)."""
    ndim = len(shape)
    dims = tuple(dim) if isinstance(dim, (tuple, list)) else (dim,)
    if len(dims) == 0:
        if not keepdim and ndim > 0 and math.prod(shape) > 0:
            raise RuntimeError(
                f"output with shape [] doesn't match the broadcast shape "
                f"[{', '.join(['1'] * ndim)}]: torch reads dim=() as every dim and then fails "
                f"without keepdim=True; pass keepdim=True or the dims themselves"
            )
        return tuple(range(ndim))
    out = tuple(normalize_dim(d, ndim, scalar=False) for d in dims)
    for d in out:
        if out.count(d) > 1:
            raise RuntimeError(f"dim {d} appears multiple times in the list of dims")
    return out

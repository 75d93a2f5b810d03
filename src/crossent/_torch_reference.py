"""Autograd for the reference losses on torch tensors.

The forward runs the Array API reference on torch tensors; the backward runs the *same*
function with ``want_grad=True`` and the upstream gradient, so torch's autograd sees exactly the
analytic gradients of the spec (BCE's clamped ``p (1 - p)``, zero gradients for ignored rows,
...). The backward is itself written with differentiable torch ops over the saved inputs, so
double backward works (``gradgradcheck`` passes).

Imported only when torch tensors are used.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import array_api_compat.torch as xp_torch
import torch


class _ReferenceLoss(torch.autograd.Function):
    # The forward/setup_context split is what torch.func transforms (grad, jacrev, ...) need.
    generate_vmap_rule = True

    @staticmethod
    def forward(loss_fn, options, input, target, weight, pos_weight):  # type: ignore[override]
        return loss_fn(xp_torch, input, target, weight, pos_weight, **options).loss

    @staticmethod
    def setup_context(ctx, inputs, output):  # type: ignore[override]
        loss_fn, options, input, target, weight, pos_weight = inputs
        ctx.loss_fn = loss_fn
        ctx.options = options
        ctx.loss_shape = tuple(output.shape)
        ctx.set_materialize_grads(False)  # forward mode: no zero tangents for constant inputs
        ctx.save_for_backward(input, target, weight, pos_weight)
        ctx.save_for_forward(input, target, weight, pos_weight)

    @staticmethod
    def backward(ctx, grad_output):  # type: ignore[override]
        return _reference_backward(ctx, grad_output)


def _reference_backward(ctx, grad_output):
    """The analytic gradients of the reference, as differentiable torch ops (shared by the
    autograd Functions below)."""
    from crossent._fused_op import transformed

    if grad_output is None:  # an undefined output gradient (grads are not materialised)
        return (None,) * 6
    input, target, weight, pos_weight = ctx.saved_tensors
    grads = ctx.loss_fn(
        xp_torch, input, target, weight, pos_weight, want_grad=True,
        grad_output=grad_output, **ctx.options,
    )
    need = ctx.needs_input_grad
    grad_input = grads.grad_input
    if (
        need[2]
        and torch.is_grad_enabled()
        and not grad_input.requires_grad
        and not torch.compiler.is_compiling()
        and not transformed(input)  # (torch.func handles an input-free gradient itself)
    ):
        # create_graph=True, and a gradient that does not depend on the input (nll_loss's):
        # still a function of it, with zero derivative, as torch's is (double backward
        # then gives zeros instead of "does not require grad")
        grad_input = _ZeroDerivative.apply(grad_input, input)
    return (
        None,
        None,
        grad_input if need[2] else None,
        grads.grad_target if need[3] else None,
        grads.grad_weight if need[4] else None,
        None,
    )


class _ReferenceLossEager(torch.autograd.Function):
    """:class:`_ReferenceLoss` for plain eager calls: a forward that takes ``ctx`` (no
    ``setup_context``), so that ``apply`` skips binding its arguments through
    ``inspect.signature`` (a third of a small call's host time); transforms, forward mode and
    torch.compile use the others."""

    @staticmethod
    def forward(ctx, loss_fn, options, input, target, weight, pos_weight):  # type: ignore[override]
        loss = loss_fn(xp_torch, input, target, weight, pos_weight, **options).loss
        ctx.loss_fn = loss_fn
        ctx.options = options
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(input, target, weight, pos_weight)
        return loss

    @staticmethod
    def backward(ctx, grad_output):  # type: ignore[override]
        return _reference_backward(ctx, grad_output)


class _ZeroDerivative(torch.autograd.Function):
    """``value``, recorded as a function of ``input`` whose derivative is zero."""

    @staticmethod
    def forward(ctx, value, input):  # type: ignore[override]
        ctx.save_for_backward(input)
        return value.clone()

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (input,) = ctx.saved_tensors
        return grad, torch.zeros_like(input)


class _ReferenceLossWithJvp(_ReferenceLoss):
    """:class:`_ReferenceLoss` with forward mode (torch.func.jvp, jacfwd, hessian). Separate
    because torch.compile cannot trace an autograd.Function that defines ``jvp``: compiled code
    uses the parent."""

    @staticmethod
    def jvp(ctx, fn_t, options_t, input_t, target_t, weight_t, pos_weight_t):  # type: ignore[override]
        """Forward mode from the same analytic gradients: ``<dL/dx, x_t> + <dL/dy, y_t> (+
        <dL/dw, w_t>)``, per position for ``reduction="none"`` (a position's loss depends on
        its own row only)."""
        input, target, weight, pos_weight = ctx.saved_tensors
        per_position = ctx.options.get("reduction") == "none"
        ones = torch.ones(ctx.loss_shape, dtype=input.dtype, device=input.device)
        grads = ctx.loss_fn(
            xp_torch, input, target, weight, pos_weight, want_grad=True,
            grad_output=ones if per_position else None, **ctx.options,
        )  # fmt: skip
        pairs = [(grads.grad_input, input_t, "input"), (grads.grad_target, target_t, "target"),
                 (grads.grad_weight, weight_t, "weight"), (None, pos_weight_t, "pos_weight")]
        tangent = torch.zeros(ctx.loss_shape, dtype=grads.loss.dtype, device=input.device)
        for grad, tangent_in, name in pairs:
            if tangent_in is None:
                continue
            if grad is None or (per_position and name == "weight"):
                raise NotImplementedError(
                    f"crossent's reference has no forward-mode derivative with respect to {name}"
                    + (" for reduction='none'" if grad is not None else "")
                )
            product = grad * tangent_in
            if not per_position:
                product = product.sum()
            elif tuple(product.shape) != ctx.loss_shape:  # the class dimension: dim 1, or all
                product = product.sum(1) if product.dim() > 1 else product.sum()
            tangent = tangent + product.to(tangent.dtype)
        return tangent


def apply(
    loss_fn: Callable[..., Any],
    options: dict[str, Any],
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    pos_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Run ``loss_fn(xp, input, target, weight, pos_weight, **options)`` under autograd."""
    if torch.compiler.is_compiling():
        loss = _ReferenceLoss
    elif _plain(input, target, weight, pos_weight):
        loss = _ReferenceLossEager
    else:
        loss = _ReferenceLossWithJvp
    return loss.apply(loss_fn, options, input, target, weight, pos_weight)


def _plain(*tensors: torch.Tensor | None) -> bool:
    """No torch.func wrapper and no forward-mode tangent on any argument."""
    from crossent._fused_op import transformed

    if transformed(*tensors):
        return False
    if torch.autograd.forward_ad._current_level >= 0:  # inside a forward-mode dual level
        return False
    return True


@torch.library.custom_op("crossent::checked_class_indices", mutates_args=())
def checked_class_indices(
    target: torch.Tensor, num_classes: int, ignore_index: int
) -> torch.Tensor:
    """A copy of ``target`` once every kept class index is known to lie in ``[0, C)``
    (IndexError otherwise). Used under torch.compile, to which the op is opaque: the check's
    read of tensor values stays out of the graph."""
    from crossent._validation import check_target_range

    check_target_range(xp_torch, target, num_classes, ignore_index)
    return target.clone()


@checked_class_indices.register_fake
def _(target: torch.Tensor, num_classes: int, ignore_index: int) -> torch.Tensor:
    return torch.empty_like(target)


@torch.library.custom_op("crossent::checked_unit_interval", mutates_args=())
def _checked_unit_interval(input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    from crossent._validation import check_unit_interval

    check_unit_interval(xp_torch, input, "input")
    check_unit_interval(xp_torch, target, "target")
    return input.new_zeros(())


@_checked_unit_interval.register_fake
def _(input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return input.new_zeros(())


def checked_unit_interval(input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """A 0-d zero once binary_cross_entropy's input and target are known to lie in [0, 1]
    (RuntimeError otherwise). Used under torch.compile, to which the op is opaque; it sees the
    values without their autograd history, so it needs no gradient."""
    return _checked_unit_interval(input.detach(), target.detach())

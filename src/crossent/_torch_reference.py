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
        ctx.save_for_backward(input, target, weight, pos_weight)

    @staticmethod
    def backward(ctx, grad_output):  # type: ignore[override]
        input, target, weight, pos_weight = ctx.saved_tensors
        grads = ctx.loss_fn(
            xp_torch, input, target, weight, pos_weight, want_grad=True,
            grad_output=grad_output, **ctx.options,
        )
        need = ctx.needs_input_grad
        return (
            None,
            None,
            grads.grad_input if need[2] else None,
            grads.grad_target if need[3] else None,
            grads.grad_weight if need[4] else None,
            None,
        )


def apply(
    loss_fn: Callable[..., Any],
    options: dict[str, Any],
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    pos_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Run ``loss_fn(xp, input, target, weight, pos_weight, **options)`` under autograd."""
    return _ReferenceLoss.apply(loss_fn, options, input, target, weight, pos_weight)

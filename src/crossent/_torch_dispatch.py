"""Route a validated torch cross-entropy call to the fused kernels.

The functional layer has validated the arguments; here the input is brought to 2-D rows
``(M, C)`` (classes last), handed to :func:`crossent._fused_op.fused_cross_entropy` with the
``cpu`` (blocked torch ops) or ``triton`` row kernel, and the per-position outputs are shaped
back. A contiguous K-dim input ``(N, C, d1, ...)`` goes to the kernel as its view ``(N, C,
d1*...)`` (its probability target likewise) where :func:`crossent._fused_op.column_layout_serves`
says so (the ``cpu`` kernel always, the ``triton`` one for plain class indices over enough
positions), and is otherwise brought to rows (a view for a channels-last input, a copy for
others). Imported only for torch tensors.
"""

from __future__ import annotations

from typing import Any

import torch

from crossent._fused_op import FusedUnsupported, column_layout_serves, fused_cross_entropy
from crossent.backends.rows import RowOptions


def _rows(x: torch.Tensor) -> torch.Tensor:
    """(C,) -> (1, C); (N, C) as is; (N, C, d...) -> (N*d..., C) (a copy, classes last)."""
    if x.dim() == 1:
        return x.unsqueeze(0)
    if x.dim() == 2:
        return x
    moved = x.movedim(1, -1)
    return moved.reshape(moved.shape[:-1].numel(), x.shape[1])  # (-1 is ambiguous when C = 0)


def cross_entropy(
    choice: str,
    impl: str,
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    layout: Any,
    options: dict,
    z_loss: float,
    softcap: float | None,
    inplace_backward: bool,
    loss_dtype: torch.dtype | None = None,
    target_check: str = "host",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """``(loss, z_loss, lse)`` from the fused path; None when ``impl="auto"`` must fall back to
    the reference (the fused path cannot serve these arguments). ``loss_dtype``: the loss's
    dtype when it is not the input's (autocast)."""
    row_options = RowOptions(
        ignore_index=options["ignore_index"],
        label_smoothing=options["label_smoothing"],
        z_loss=z_loss,
        softcap=softcap,
    )
    kernel = "triton" if choice == "triton" else "cpu"
    columns = None
    if input.dim() > 2 and input.is_contiguous():
        shape = (input.shape[0], input.shape[1], input.shape[2:].numel())
        columns = input.view(shape)
        if not column_layout_serves(kernel, columns, target, row_options):
            columns = None
    if columns is not None:
        rows = columns
        target_rows = target.reshape(shape) if layout.probabilities else target.reshape(-1)
    else:
        rows = _rows(input)  # (channels-last K-dim inputs: a view too)
        target_rows = _rows(target) if layout.probabilities else target.reshape(-1)
    try:
        loss, z, lse = fused_cross_entropy(
            rows, target_rows, weight, row_options, options["reduction"], kernel=kernel,
            inplace_backward=inplace_backward, loss_dtype=loss_dtype, target_check=target_check,
        )  # fmt: skip
    except IndexError:
        if target.dim() != 1 and not layout.probabilities and not torch.compiler.is_compiling():
            # the same check on the target as given, for the position in its own shape (the
            # kernel's names the flattened one), raised alone: no traceback of the first
            from crossent._fused_op import _torch_namespace
            from crossent._validation import recheck_target_range

            recheck_target_range(_torch_namespace(), target, layout.num_classes,
                                 row_options.ignore_index)  # fmt: skip
        raise
    except FusedUnsupported as exc:
        if impl == "auto":
            return None
        raise ValueError(
            f"impl={impl!r} cannot serve this call: {exc}; use impl='reference' (or 'auto')"
        ) from exc
    shape = () if input.dim() == 1 else (input.shape[0], *input.shape[2:])
    if options["reduction"] == "none":
        loss, z = loss.reshape(shape), z.reshape(shape)
    return loss, z, lse.reshape(shape)

"""Which implementation serves a call: resolved per call from the arguments, never at import.

``impl="auto"`` picks, for torch tensors, torch's own kernel after crossent's checks where
:func:`crossent._torch_native.auto_serves` says so (the one statement of those rules); else for
``cross_entropy`` and ``linear_cross_entropy`` the fused blocked torch-ops kernel, or on CUDA
the Triton kernel when Triton is importable; the reference for the rest. Every other array type
uses the Array API reference. An explicit choice that cannot serve the input raises ValueError
naming the ones that can.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

from crossent._array import is_torch

#: The losses with a fused kernel (the others are served by the reference or torch's own).
FUSED_OPS = ("cross_entropy", "linear_cross_entropy")
#: The losses ``impl="torch"`` names (``linear_cross_entropy`` has no such choice: torch's
#: expression materialises the logits; its ``auto`` does that only for problems one block holds).
TORCH_OPS = ("cross_entropy", "nll_loss", "binary_cross_entropy",
             "binary_cross_entropy_with_logits")


_triton_found: list[bool] = []  # a plain memo (torch.compile warns about functools.cache)


def _triton_installed() -> bool:
    # Looked up once: find_spec walks sys.path (about 0.15 ms per call in a profiled loop).
    if not _triton_found:
        _triton_found.append(importlib.util.find_spec("triton") is not None)
    return _triton_found[0]


def triton_usable(input: Any) -> bool:
    """Triton serves CUDA tensors (and CPU tensors under ``TRITON_INTERPRET=1``, for tests)."""
    device = getattr(getattr(input, "device", None), "type", None)
    if device == "cuda":
        return _triton_installed()
    return device == "cpu" and os.environ.get("TRITON_INTERPRET") == "1" and _triton_installed()


def available_impls(input: Any, op: str = "cross_entropy") -> tuple[str, ...]:
    """The ``impl`` values that can serve ``op`` on ``input``."""
    if not is_torch(input):
        return ("auto", "reference")
    names = ["auto", "reference"]
    if op in TORCH_OPS:
        names.append("torch")
    if op in FUSED_OPS:
        names.append("fused")
        if triton_usable(input):
            names.append("triton")
    return tuple(names)


def _describe(input: Any) -> str:
    if is_torch(input):
        return f"torch tensors on {input.device.type}"
    return f"{type(input).__module__.split('.')[0]} arrays"


def resolve_impl(impl: Any, input: Any, op: str = "cross_entropy", *, columns: bool = False) -> str:
    """Map ``impl`` to a concrete implementation name for ``op`` on this input. ``"torch"``
    from ``"auto"`` is a first choice: the caller falls back (to the fused kernel or the
    reference) where :func:`crossent._torch_native.why_not` gives a reason. ``columns``: a
    K-dim cross-entropy the fused kernel takes as it lies (see
    :func:`crossent._torch_native.auto_serves`)."""
    if impl != "auto":
        available = available_impls(input, op)
        if impl not in available:
            why = ""
            if impl == "triton":
                why = (
                    " (Triton needs CUDA tensors and the 'triton' extra: "
                    "pip install 'crossent[triton]')"
                )
            raise ValueError(
                f"impl={impl!r} is not available for {op} on {_describe(input)}{why}; "
                f"choose one of {', '.join(repr(a) for a in available)}"
            )
        return impl
    if not is_torch(input):
        return "reference"
    if op in TORCH_OPS:
        from crossent._torch_native import auto_serves

        if auto_serves(op, input, columns=columns):
            return "torch"
    if op not in FUSED_OPS:
        return "reference"
    return fused_impl(input)


def fused_impl(input: Any) -> str:
    """The fused kernel ``impl="auto"`` runs on this torch tensor: ``"triton"`` on CUDA with
    Triton installed, else ``"fused"`` (torch ops in cache-sized blocks)."""
    return "triton" if input.device.type == "cuda" and _triton_installed() else "fused"

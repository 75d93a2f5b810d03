"""Which implementation serves a call: resolved per call from the arguments, never at import.

``impl="auto"`` picks, for torch tensors, the Triton kernel on CUDA when Triton is importable,
else the fused blocked torch-ops kernel; every other array type uses the Array API reference.
An explicit choice that cannot serve the input raises ValueError naming the ones that can.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

from crossent._array import is_torch

IMPLS: tuple[str, ...] = ("auto", "reference", "fused", "triton")


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


def available_impls(input: Any) -> tuple[str, ...]:
    """The ``impl`` values that can serve ``input``."""
    if not is_torch(input):
        return ("auto", "reference")
    names = ["auto", "reference", "fused"]
    if triton_usable(input):
        names.append("triton")
    return tuple(names)


def _describe(input: Any) -> str:
    if is_torch(input):
        return f"torch tensors on {input.device.type}"
    return f"{type(input).__module__.split('.')[0]} arrays"


def resolve_impl(impl: Any, input: Any) -> str:
    """Map ``impl`` to a concrete implementation name for this input."""
    available = available_impls(input)
    if impl not in available:
        why = ""
        if impl == "triton":
            why = (
                " (Triton needs CUDA tensors and the 'triton' extra: "
                "pip install 'crossent[triton]')"
            )
        raise ValueError(
            f"impl={impl!r} is not available for {_describe(input)}{why}; "
            f"choose one of {', '.join(repr(a) for a in available)}"
        )
    if impl != "auto":
        return impl
    if not is_torch(input):
        return "reference"
    return "triton" if "triton" in available and input.device.type == "cuda" else "fused"

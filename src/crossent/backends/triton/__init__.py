"""Triton kernels for CUDA tensors (optional: needs the ``triton`` extra).

Importing this package imports nothing heavy; Triton is imported when a kernel is first used.
The kernels implement the row contract of :mod:`crossent.backends.rows` (and its column
layout for K-dim inputs, :mod:`crossent.backends.triton.column_kernels`).
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

__all__ = [
    "COLUMN_MIN_POSITIONS",
    "KernelConfig",
    "choose_config",
    "cross_entropy_rows",
    "cross_entropy_rows_grad",
    "is_available",
    "reduce_rows",
    "scale_rows_",
    "target_stats",
]

_LAZY = frozenset(__all__) - {"is_available"}


def is_available() -> bool:
    """True when both torch and triton can be imported (checked without importing them)."""
    return all(importlib.util.find_spec(name) is not None for name in ("torch", "triton"))


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module("crossent.backends.triton.cross_entropy")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

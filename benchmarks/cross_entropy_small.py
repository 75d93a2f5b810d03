"""Suite ``cross_entropy_small``: where the fused CPU path does not pay, through the public call.

The ``cross_entropy`` suite times the fused op itself at the issue's large shapes. Here the
provider is the public ``crossent.cross_entropy(logits, target)`` (validation, dispatch, custom
op, autograd: everything a user pays per call) at small and medium shapes, against torch eager,
to show the fixed per-call cost and the shape from which the fused sweep wins.
``--quick`` keeps the two smallest shapes.
"""

from __future__ import annotations

from benchmarks.cross_entropy import BASELINE, _case, _torch_eager
from benchmarks.harness import Case, Provider

__all__ = ["BASELINE", "cases", "providers"]

SHAPES = [(64, 1000), (256, 1000), (256, 10000), (1024, 10000), (512, 32768), (2048, 32768)]


def cases(quick: bool) -> list[Case]:
    shapes = SHAPES[:2] if quick else SHAPES
    return [_case(n, c, dtype) for n, c in shapes for dtype in ("float32", "bfloat16")]


def _crossent_public(case: Case):
    import crossent

    return lambda state: crossent.cross_entropy(state["logits"], state["target"])


def providers() -> list[Provider]:
    """crossent.cross_entropy (public call) and torch eager."""
    return [
        Provider("crossent.cross_entropy", _crossent_public),
        Provider("torch eager", _torch_eager),
    ]

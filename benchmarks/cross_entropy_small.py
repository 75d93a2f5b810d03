"""Suite ``cross_entropy_small``: the public call at small and medium shapes.

The ``cross_entropy`` suite times the fused op itself at the issue's large shapes. Here the
providers are public calls (validation, dispatch, autograd: everything a user pays per call)
against torch eager:

* ``crossent.cross_entropy``: the default ``impl="auto"``; on the CPU torch's own kernel after
  crossent's checks below 2**20 logits (2**23 in float16/bfloat16), the fused kernel from there
  on;
* ``crossent fused``: ``impl="fused"`` at every shape, to show where the switch pays.

Two K-dimensional (segmentation-style) cases show why ``auto`` keeps torch's kernel for K-dim
inputs at every size on the CPU.

``--quick`` keeps the three smallest shapes.
"""

from __future__ import annotations

import math

from benchmarks.cross_entropy import BASELINE, _case, _torch_eager
from benchmarks.harness import Case, Provider

__all__ = ["BASELINE", "cases", "providers"]

SHAPES = [(64, 10), (64, 1000), (256, 1000), (1024, 1000), (256, 10000), (512, 8192),
          (1024, 8192), (1024, 10000), (512, 32768), (2048, 32768)]  # fmt: skip


#: K-dimensional (segmentation-style) inputs ``(N, C, H, W)``, float32.
KDIM_SHAPES = [(4, 21, 256, 256), (8, 21, 384, 384)]


def _kdim_case(shape: tuple[int, ...]) -> Case:
    def make():
        import torch

        gen = torch.Generator().manual_seed(0)
        logits = torch.randn(shape, generator=gen).requires_grad_()
        target = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=gen)
        return {"logits": logits, "target": target}

    def reference(inputs):
        import torch.nn.functional as F

        return F.cross_entropy(inputs["logits"], inputs["target"])

    return Case(
        name="N,C,H,W=" + "x".join(map(str, shape)) + " float32",
        params={"shape": shape, "dtype": "float32"},
        make_inputs=make,
        reference_loss=reference,
        dtype="float32",
        reference_bytes=4 * math.prod(shape),
        reference_label="logits",
    )


def cases(quick: bool) -> list[Case]:
    shapes = SHAPES[:3] if quick else SHAPES
    flat = [_case(n, c, dtype) for n, c in shapes for dtype in ("float32", "bfloat16")]
    return flat + ([] if quick else [_kdim_case(shape) for shape in KDIM_SHAPES])


def _crossent_public(impl: str):
    def build(case: Case):
        import crossent

        return lambda state: crossent.cross_entropy(state["logits"], state["target"], impl=impl)

    return build


def providers() -> list[Provider]:
    """crossent.cross_entropy (auto and fused, public calls) and torch eager."""
    return [
        Provider("crossent.cross_entropy", _crossent_public("auto")),
        Provider("crossent fused", _crossent_public("fused")),
        Provider("torch eager", _torch_eager),
    ]

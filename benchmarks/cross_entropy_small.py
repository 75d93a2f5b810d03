"""Suite ``cross_entropy_small``: the public call at small and medium shapes.

The ``cross_entropy`` suite times the fused op itself at the issue's large shapes. Here the
providers are public calls (validation, dispatch, autograd: everything a user pays per call)
against torch eager:

* ``crossent.cross_entropy``: the default ``impl="auto"``; on the CPU torch's own kernel after
  crossent's checks below 2**20 logits (2**23 in float16/bfloat16), the fused kernel from there
  on;
* ``crossent fused``: ``impl="fused"`` at every shape, to show where the switch pays.

K-dimensional (segmentation-style) cases show where ``auto`` switches K-dim inputs from torch's
kernel to the fused kernel's column layout (float32, from 2**22 logits) and why it keeps
torch's kernel for bfloat16 ones.

``--quick`` keeps the three smallest shapes.
"""

from __future__ import annotations

import math

from benchmarks.cross_entropy import BASELINE, _case, _torch_eager
from benchmarks.harness import Case, Provider

__all__ = ["BASELINE", "cases", "providers"]

SHAPES = [(64, 10), (64, 1000), (256, 1000), (1024, 1000), (256, 10000), (512, 8192),
          (1024, 8192), (1024, 10000), (512, 32768), (2048, 32768)]  # fmt: skip


#: K-dimensional (segmentation-style) inputs ``(N, C, H, W)``, their dtypes and label smoothing.
KDIM_SHAPES = [
    ((2, 21, 64, 64), "float32", 0.0), ((4, 21, 128, 128), "float32", 0.0),
    ((4, 21, 256, 256), "float32", 0.0), ((4, 21, 256, 256), "bfloat16", 0.0),
    ((8, 21, 384, 384), "float32", 0.0), ((16384, 10, 4, 8), "float32", 0.0),
    ((4, 21, 256, 256), "float32", 0.1), ((8, 21, 384, 384), "float32", 0.1),
]  # fmt: skip


def _kdim_case(shape: tuple[int, ...], dtype: str = "float32", smoothing: float = 0.0) -> Case:
    def make():
        import torch

        gen = torch.Generator().manual_seed(0)
        logits = torch.randn(shape, generator=gen).to(getattr(torch, dtype)).requires_grad_()
        target = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=gen)
        return {"logits": logits, "target": target}

    def reference(inputs):
        import torch.nn.functional as F

        return F.cross_entropy(inputs["logits"], inputs["target"], label_smoothing=smoothing)

    smoothed = f" smoothing={smoothing}" if smoothing else ""
    return Case(
        name="N,C,H,W=" + "x".join(map(str, shape)) + f" {dtype}{smoothed}",
        params={"shape": shape, "dtype": dtype, "label_smoothing": smoothing},
        make_inputs=make,
        reference_loss=reference,
        dtype=dtype,
        reference_bytes=(4 if dtype == "float32" else 2) * math.prod(shape),
        reference_label="logits",
    )


def cases(quick: bool) -> list[Case]:
    shapes = SHAPES[:3] if quick else SHAPES
    flat = [_case(n, c, dtype) for n, c in shapes for dtype in ("float32", "bfloat16")]
    return flat + ([] if quick else [_kdim_case(*spec) for spec in KDIM_SHAPES])


def _crossent_public(impl: str):
    def build(case: Case):
        import crossent

        smoothing = case.params.get("label_smoothing", 0.0)
        return lambda state: crossent.cross_entropy(
            state["logits"], state["target"], label_smoothing=smoothing, impl=impl
        )

    return build


def _torch_eager_smoothed(case: Case):
    """torch eager, with the case's label smoothing (none for the 2-D cases)."""
    import torch.nn.functional as F

    smoothing = case.params.get("label_smoothing", 0.0)
    if not smoothing:
        return _torch_eager(case)
    return lambda state: F.cross_entropy(state["logits"], state["target"],
                                         label_smoothing=smoothing)  # fmt: skip


def providers() -> list[Provider]:
    """crossent.cross_entropy (auto and fused, public calls) and torch eager."""
    return [
        Provider("crossent.cross_entropy", _crossent_public("auto")),
        Provider("crossent fused", _crossent_public("fused")),
        Provider("torch eager", _torch_eager_smoothed),
    ]

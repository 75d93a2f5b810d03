"""Suite ``linear_small``: ``crossent.linear_cross_entropy`` at small shapes, the public call.

Providers (``mean`` loss of ``x @ W.T``, gradients for ``x`` and ``W``):

* ``crossent (auto)``: the default; on the CPU below 2**20 logits (that fit the memory budget
  three times over) ``F.cross_entropy(F.linear(x, W))`` after crossent's checks, the blocked
  path from there on;
* ``crossent blocked``: ``impl="fused"``, the blocked path at every shape;
* ``torch eager``: ``F.cross_entropy(x @ W.T, y)`` (the baseline of the ratios);
* ``torch chunked``: torch 2.13's ``F.linear_cross_entropy``.

``--quick`` keeps the two smallest shapes.
"""

from __future__ import annotations

from benchmarks.harness import Case, Provider
from benchmarks.linear import _eager_reference, _inputs, _torch_chunked, _torch_eager

BASELINE = "torch eager"

SHAPES = [(64, 32, 10), (64, 128, 1000), (256, 256, 1000), (1024, 256, 1000),
          (256, 512, 10000)]  # fmt: skip


def _case(n: int, d: int, v: int) -> Case:
    return Case(
        name=f"N={n} D={d} V={v} float32",
        params={"N": n, "D": d, "V": v},
        make_inputs=_inputs(n, d, v),
        reference_loss=_eager_reference,
        dtype="float32",
        reference_bytes=n * v * 4,
        reference_label="logits",
    )


def cases(quick: bool) -> list[Case]:
    return [_case(*shape) for shape in (SHAPES[:2] if quick else SHAPES)]


def _crossent(impl: str):
    def build(case: Case):
        from crossent.linear import linear_cross_entropy

        return lambda s: linear_cross_entropy(s["x"], s["w"], s["y"], impl=impl)

    return build


def providers() -> list[Provider]:
    """crossent auto and blocked, torch eager and chunked."""
    return [
        Provider("crossent (auto)", _crossent("auto")),
        Provider("crossent blocked", _crossent("fused")),
        Provider("torch eager", _torch_eager),
        Provider("torch chunked", _torch_chunked),
    ]

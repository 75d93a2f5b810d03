"""Suite ``cross_entropy``: crossent's fused CPU path against torch eager and torch.compile.

Providers (all compute ``mean`` cross-entropy of ``(N, C)`` logits with class-index targets):

* ``crossent fused``: :func:`crossent._fused_op.fused_cross_entropy` (the path behind
  ``crossent.cross_entropy(..., impl="fused")``), gradient written during the forward;
* ``crossent in-place``: the same with ``inplace_backward=True``; its untimed ``prepare`` clones
  the logits into a non-leaf tensor (as the output of a classifier would be) that it overwrites;
* ``torch eager``: ``torch.nn.functional.cross_entropy`` (the baseline of the ratios);
* ``torch.compile``: ``torch.compile(F.cross_entropy)`` with the default (inductor) backend;
  compilation happens in the first (warm-up) call and is reported as ``warmup_s``.

The targets of issue 3 are the full cases; ``--quick`` uses small shapes.
"""

from __future__ import annotations

from benchmarks.harness import Case, Provider

BASELINE = "torch eager"


def _inputs(n: int, c: int, dtype_name: str, seed: int = 0):
    def make():
        import torch

        gen = torch.Generator().manual_seed(seed)
        dtype = getattr(torch, dtype_name)
        logits = torch.randn(n, c, generator=gen).to(dtype).requires_grad_()
        target = torch.randint(0, c, (n,), generator=gen)
        return {"logits": logits, "target": target}

    return make


def _reference(inputs):
    import torch.nn.functional as F

    return F.cross_entropy(inputs["logits"], inputs["target"])


def _case(n: int, c: int, dtype_name: str) -> Case:
    element = {"float32": 4, "float64": 8, "bfloat16": 2, "float16": 2}[dtype_name]
    return Case(
        name=f"N={n} C={c} {dtype_name}",
        params={"N": n, "C": c, "dtype": dtype_name},
        make_inputs=_inputs(n, c, dtype_name),
        reference_loss=_reference,
        dtype=dtype_name,
        reference_bytes=n * c * element,
        reference_label="logits",
    )


def cases(quick: bool) -> list[Case]:
    """The issue's target shapes, or small ones for ``--quick``."""
    if quick:
        return [_case(512, 4096, "float32"), _case(512, 4096, "bfloat16")]
    return [
        _case(4096, 32768, "float32"),
        _case(4096, 32768, "bfloat16"),
        _case(1024, 128256, "float32"),
    ]


def _fused(inplace: bool):
    def build(case: Case):
        from crossent._fused_op import fused_cross_entropy
        from crossent.backends.rows import RowOptions

        options = RowOptions()

        def loss(state):
            # The in-place provider takes the only reference to its (prepared) logits, so that
            # autograd can hand their storage, now holding the gradient, to the leaf's .grad.
            logits = state.pop("logits") if inplace else state["logits"]
            value, _, _ = fused_cross_entropy(
                logits, state["target"], None, options, "mean", inplace_backward=inplace
            )
            return value

        return loss

    return build


def _clone_logits(inputs):
    state = dict(inputs)
    state["logits"] = inputs["logits"].clone()  # a non-leaf the in-place mode may overwrite
    return state


def _torch_eager(case: Case):
    import torch.nn.functional as F

    return lambda state: F.cross_entropy(state["logits"], state["target"])


def _torch_compile(case: Case):
    import torch
    import torch.nn.functional as F

    compiled = torch.compile(F.cross_entropy)
    return lambda state: compiled(state["logits"], state["target"])


def providers() -> list[Provider]:
    """crossent fused, crossent in-place, torch eager, torch.compile."""
    return [
        Provider("crossent fused", _fused(inplace=False)),
        Provider("crossent in-place", _fused(inplace=True), prepare=_clone_logits),
        Provider("torch eager", _torch_eager),
        Provider("torch.compile", _torch_compile),
    ]

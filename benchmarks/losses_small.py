"""Suite ``losses_small``: ``nll_loss`` and the binary losses through the public call.

Each case times forward + backward of the ``mean`` loss, as a user calls it:

* ``crossent (auto)``: the default; on the CPU torch's own kernel after crossent's checks;
* ``crossent reference``: ``impl="reference"``, the Array API reference under autograd (the
  executable specification, computed one dtype wider);
* ``torch eager``: ``torch.nn.functional`` (the baseline of the ratios);
* ``crossent compiled`` and ``torch.compile``: both under ``torch.compile`` (inductor; the
  first, untimed call compiles, reported as warm-up). Traced, crossent's ``auto`` uses torch's
  ops too, its checks in custom ops.

The sizes span a call's fixed cost (64 rows) to a memory-bound one (a million elements).
``--quick`` keeps the small sizes.
"""

from __future__ import annotations

from benchmarks.harness import Case, Provider

BASELINE = "torch eager"

#: (op, rows, classes or None for the elementwise binary losses)
SIZES = [
    ("nll_loss", 64, 10), ("nll_loss", 4096, 1000),
    ("binary_cross_entropy", 64, None), ("binary_cross_entropy", 1 << 20, None),
    ("binary_cross_entropy_with_logits", 64, None),
    ("binary_cross_entropy_with_logits", 1 << 20, None),
]  # fmt: skip


def _inputs(op: str, n: int, c: int | None, seed: int = 0):
    def make():
        import torch

        gen = torch.Generator().manual_seed(seed)
        if op == "nll_loss":
            logp = torch.log_softmax(torch.randn(n, c, generator=gen), 1)
            return {"input": logp.requires_grad_(), "target": torch.randint(0, c, (n,),
                                                                            generator=gen)}
        x = torch.randn(n, generator=gen)
        if op == "binary_cross_entropy":
            x = torch.sigmoid(x)
        return {"input": x.requires_grad_(), "target": torch.rand(n, generator=gen)}

    return make


def _call(module_name: str, op: str, compiled: bool = False, **kwargs):
    import functools
    import importlib

    fn = getattr(importlib.import_module(module_name), op)
    if kwargs:
        fn = functools.partial(fn, **kwargs)
    if compiled:
        import torch

        fn = torch.compile(fn)
    return lambda state: fn(state["input"], state["target"])


def _case(op: str, n: int, c: int | None) -> Case:
    return Case(
        name=f"{op} N={n}" + ("" if c is None else f" C={c}"),
        params={"op": op, "N": n, "C": c, "dtype": "float32"},
        make_inputs=_inputs(op, n, c),
        reference_loss=_call("torch.nn.functional", op),
        dtype="float32",
        reference_bytes=n * (c or 1) * 4,
        reference_label="input",
    )


def cases(quick: bool) -> list[Case]:
    return [_case(*size) for size in SIZES if not quick or size[1] == 64]


def providers() -> list[Provider]:
    """crossent auto and reference, torch eager, both compiled."""
    return [
        Provider("crossent (auto)", lambda case: _call("crossent", case.params["op"])),
        Provider("crossent reference",
                 lambda case: _call("crossent", case.params["op"], impl="reference")),
        Provider("torch eager", lambda case: _call("torch.nn.functional", case.params["op"])),
        Provider("crossent compiled",
                 lambda case: _call("crossent", case.params["op"], compiled=True)),
        Provider("torch.compile",
                 lambda case: _call("torch.nn.functional", case.params["op"], compiled=True)),
    ]  # fmt: skip

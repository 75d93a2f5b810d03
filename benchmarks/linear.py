"""Suite ``linear``: ``crossent.linear_cross_entropy`` against torch 2.13 and the bare GEMMs.

Run: ``PYTHONPATH=src python -m benchmarks linear [--quick] [--repeats K] [--cases ...]``.

Every case computes the ``mean`` cross-entropy of ``x @ W.T`` (``x``: ``(N, D)``, ``W``:
``(V, D)``, class-index targets) and its gradients with respect to ``x`` and ``W``. Providers:

* ``crossent``: ``crossent.linear_cross_entropy`` with the case's ``memory_budget`` (None = the
  default budget);
* ``crossent vocab-blocked``: the same with an 8 MiB budget, which forces vocabulary blocks (two
  passes, one extra logits GEMM): the cost of that regime;
* ``3 GEMMs (no CE)``: only the three matrix products any implementation needs (logits
  ``x @ W.T`` into a preallocated buffer, ``dX = dZ @ W``, ``dW = dZ.T @ x``), with ``dZ`` and the
  loss computed beforehand in the untimed ``prepare`` (so it validates like the others): the
  floor the issue's "<= 1.25x the three GEMMs" refers to;
* ``torch chunked``: ``F.linear_cross_entropy(..., options=LinearCrossEntropyOptions())``
  (the baseline of the speedup column);
* ``torch eager``: ``F.cross_entropy(x @ W.T, y)`` (skipped where the logits need gigabytes).

The large case is validated against a float64 computation with plain torch ops over row blocks
(the eager float64 reference would need ~13 GB); the others against eager float64.
"""

from __future__ import annotations

from benchmarks.harness import Case, Provider

BASELINE = "torch chunked"

MIB = 2**20
#: Budget of the ``crossent vocab-blocked`` provider.
VOCAB_BLOCKED_BUDGET = 8 * MIB


def _inputs(n: int, d: int, v: int, seed: int = 0):
    def make():
        import torch

        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(n, d, generator=gen).requires_grad_()
        w = (torch.randn(v, d, generator=gen) / d**0.5).requires_grad_()
        y = torch.randint(0, v, (n,), generator=gen)
        return {"x": x, "w": w, "y": y}

    return make


def _eager_reference(inputs):
    import torch.nn.functional as F

    return F.cross_entropy(inputs["x"] @ inputs["w"].T, inputs["y"])


def _rowwise_reference(inputs):
    """The float64 reference for shapes whose logits do not fit: plain torch ops over blocks of
    256 rows, gradients computed directly (``(softmax - onehot) / N``) instead of by autograd,
    which would keep every block's log-softmax alive."""
    import torch

    class RowwiseMeanCrossEntropy(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, w, y):
            n = x.shape[0]
            total = x.new_zeros(())
            dx, dw = torch.empty_like(x), torch.zeros_like(w)
            for r0 in range(0, n, 256):
                xb, yb = x[r0 : r0 + 256], y[r0 : r0 + 256]
                z = xb @ w.T
                total += (torch.logsumexp(z, 1) - z.gather(1, yb[:, None]).squeeze(1)).sum()
                dz = torch.softmax(z, 1)
                dz[torch.arange(len(yb)), yb] -= 1
                dz /= n
                dx[r0 : r0 + 256] = dz @ w
                dw += dz.T @ xb
            ctx.save_for_backward(dx, dw)
            return total / n

        @staticmethod
        def backward(ctx, grad):
            dx, dw = ctx.saved_tensors
            return dx * grad, dw * grad, None

    return RowwiseMeanCrossEntropy.apply(inputs["x"], inputs["w"], inputs["y"])


def _case(n: int, d: int, v: int, budget: int | None, *, big: bool = False) -> Case:
    label = "default" if budget is None else f"{budget // MIB}MiB"
    return Case(
        name=f"N={n} D={d} V={v} float32 budget={label}",
        params={"N": n, "D": d, "V": v, "budget": budget, "big": big},
        make_inputs=_inputs(n, d, v),
        reference_loss=_rowwise_reference if big else _eager_reference,
        dtype="float32",
        reference_bytes=n * v * 4,
        reference_label="logits",
    )


def cases(quick: bool) -> list[Case]:
    """The issue's shapes, or small ones for ``--quick``."""
    if quick:
        return [_case(512, 256, 8192, None), _case(512, 512, 32768, 32 * MIB, big=True)]
    return [_case(2048, 1024, 32768, None), _case(4096, 2048, 128256, 512 * MIB, big=True)]


# ------------------------------------------------------------------------------------------------
# providers


def _crossent(budget_of):
    def build(case: Case):
        from crossent.linear import linear_cross_entropy

        budget = budget_of(case)
        return lambda s: linear_cross_entropy(s["x"], s["w"], s["y"], memory_budget=budget)

    return build


_GEMM_CACHE: dict[str, object] = {}


def _precompute_gradient(inputs):
    """Untimed: ``dZ`` (gradient of the mean loss w.r.t. the logits) and the loss, in row chunks,
    plus a logits-sized output buffer for the timed logits GEMM (kept across calls)."""
    import torch

    x, w, y = inputs["x"], inputs["w"], inputs["y"]
    cached = _GEMM_CACHE.get("key")
    if cached is not None and cached[0] is x:
        return cached[1]
    _GEMM_CACHE.clear()
    with torch.no_grad():
        n, v = x.shape[0], w.shape[0]
        dz = torch.empty(n, v)
        total = torch.zeros((), dtype=torch.float64)
        for r0 in range(0, n, 256):
            r1 = min(r0 + 256, n)
            z = x[r0:r1] @ w.T
            lse = torch.logsumexp(z, 1)
            total += (lse - z.gather(1, y[r0:r1, None]).squeeze(1)).double().sum()
            p = torch.softmax(z, 1)
            p[torch.arange(r1 - r0), y[r0:r1]] -= 1
            dz[r0:r1] = p / n
        extra = (dz, (total / n).float(), torch.empty(n, v))
    _GEMM_CACHE["key"] = (x, extra)
    return extra


def _gemms_only(case: Case):
    import torch

    class GemmsOnly(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, w, dz, loss, logits_buffer):
            torch.mm(x, w.t(), out=logits_buffer)  # GEMM 1: the logits
            ctx.save_for_backward(x, w, dz)
            return loss.clone()

        @staticmethod
        def backward(ctx, grad):
            x, w, dz = ctx.saved_tensors
            dx = torch.mm(dz, w)  # GEMM 2
            dw = torch.mm(dz.t(), x)  # GEMM 3
            if float(grad) != 1.0:
                dx.mul_(grad)
                dw.mul_(grad)
            return dx, dw, None, None, None

    return lambda s: GemmsOnly.apply(s["x"], s["w"], s["dz"], s["loss"], s["logits"])


def _gemms_prepare(inputs):
    state = dict(inputs)
    state["dz"], state["loss"], state["logits"] = _precompute_gradient(inputs)
    return state


def _torch_chunked(case: Case):
    import torch
    import torch.nn.functional as F

    options = torch.nn.LinearCrossEntropyOptions()
    return lambda s: F.linear_cross_entropy(s["x"], s["w"], s["y"], options=options)


def _torch_eager(case: Case):
    import torch.nn.functional as F

    return lambda s: F.cross_entropy(s["x"] @ s["w"].T, s["y"])


def providers() -> list[Provider]:
    """crossent (case budget), crossent vocab-blocked, 3 GEMMs, torch chunked, torch eager."""
    return [
        Provider("crossent", _crossent(lambda case: case.params["budget"])),
        Provider(
            "crossent vocab-blocked",
            _crossent(lambda case: VOCAB_BLOCKED_BUDGET),
            supports=lambda case: not case.params["big"],
        ),
        Provider("3 GEMMs (no CE)", _gemms_only, prepare=_gemms_prepare),
        Provider("torch chunked", _torch_chunked),
        Provider("torch eager", _torch_eager, supports=lambda case: not case.params["big"]),
    ]

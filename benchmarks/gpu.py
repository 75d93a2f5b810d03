"""One-call GPU check and benchmark of crossent's Triton kernels (see benchmarks/GPU.md).

Sections, in order (each guarded, so one failure never ends the run):

1. the card: name, SMs, L2, versions; measured copy bandwidth (device-to-device copy, bytes read
   plus written) and bf16 GEMM rate;
2. correctness of the row kernel against a float64 reference on the GPU (several option sets,
   dtypes and vocabularies, an upstream row scale), bitwise repeat, in-place == buffer,
   recompute-from-lse == forward gradient, CUDA-graph replay == eager, rows beyond 2**31
   elements, ``scale_rows_``;
3. correctness of linear cross-entropy (``crossent.linear_cross_entropy``, when it exists, and
   this script's reference recipe of the CUDA loop) against float64, next to torch's own bf16
   error, plus a bitwise repeat;
4. timing (CUDA events, median) and peak extra memory, side by side in this run: logits-level
   (N=8192, V=128256, bf16) and linear heads (Llama-3-8B, Gemma-2-2B), crossent vs torch eager,
   torch.compile, Liger-Kernel and Cut Cross-Entropy (when importable); a launch-configuration
   sweep of the row kernel; bf16 GEMMs with float32 output (``out_dtype``) for the dW
   accumulation;
5. Markdown tables last (also written, with a JSON, to ``--out``).

``--dry-run`` runs every crossent code path on the CPU through the Triton interpreter with tiny
shapes (third-party providers and torch.compile are skipped), to catch mistakes before the one
GPU call. ``--compile-check`` compiles the kernel variants for sm_90 on a machine without a GPU
and prints registers, spills and shared memory.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import json
import math
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))


# ------------------------------------------------------------------------------------------------
# run state: budget, log, results


class Run:
    """Budget, results and the log of one run."""

    def __init__(self, args):
        self.args = args
        self.start = time.monotonic()
        self.results: dict = {"info": {}, "checks": [], "timings": [], "sweep": [], "gemm": []}
        self.failures: list[str] = []

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def remaining(self) -> float:
        return self.args.budget_s - self.elapsed()

    def log(self, *parts) -> None:
        print(f"[{self.elapsed():6.1f}s]", *parts, flush=True)

    def check(self, name: str, ok: bool, detail: str = "") -> None:
        self.results["checks"].append({"check": name, "ok": bool(ok), "detail": detail})
        self.log(("PASS" if ok else "FAIL"), name, detail)
        if not ok:
            self.failures.append(name)

    def guarded(self, name: str, fn, *args, **kwargs):
        """Run one section; an exception is logged (and counted as a failure), not raised."""
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            self.log(f"ERROR in {name}: {type(exc).__name__}: {exc}")
            traceback.print_exc(limit=6)
            self.failures.append(f"{name}: {type(exc).__name__}")
            return None
        finally:
            free_memory()


# ------------------------------------------------------------------------------------------------
# timing and memory


def device_is_cuda() -> bool:
    import torch

    return torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1"


def synchronize():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def median_ms(fn, reps: int, warmup: int = 1, setup=None) -> float:
    """Median wall time of ``fn()`` in ms (CUDA events on the GPU, perf_counter on the CPU).

    ``setup()`` runs before every call, outside the timed region.
    """
    import torch

    for _ in range(warmup):
        if setup:
            setup()
        fn()
    synchronize()
    times = []
    cuda = torch.cuda.is_available()
    for _ in range(reps):
        if setup:
            setup()
        if cuda:
            begin = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            begin.record()
            fn()
            end.record()
            end.synchronize()
            times.append(begin.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times)


def peak_extra_bytes(fn, setup=None) -> int | None:
    """Peak allocated bytes during ``fn()`` above what was allocated just before it."""
    import torch

    if not torch.cuda.is_available():
        return None
    if setup:
        setup()
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def free_memory():
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def rel_err(actual, expected) -> float:
    """``||actual - expected|| / ||expected||`` in float64 (NaN if either has a NaN)."""
    a = actual.double()
    e = expected.double()
    denom = e.norm().item()
    num = (a - e).norm().item()
    return num / denom if denom > 0 else num


# ------------------------------------------------------------------------------------------------
# 1. the card


def device_info(run: Run, device):
    import torch
    import triton

    info = {
        "torch": torch.__version__,
        "triton": triton.__version__,
        "python": sys.version.split()[0],
        "interpreter": os.environ.get("TRITON_INTERPRET") == "1",
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            card=props.name,
            sms=props.multi_processor_count,
            l2_mb=getattr(props, "L2_cache_size", 0) / 2**20,
            memory_gb=props.total_memory / 2**30,
            cuda=torch.version.cuda,
            capability=f"{props.major}.{props.minor}",
        )
    else:
        info.update(card="CPU (Triton interpreter dry run)")
    run.results["info"].update(info)
    run.log("device:", json.dumps(info))


def copy_bandwidth(run: Run, device):
    """Device-to-device copy of a large buffer: (bytes read + bytes written) / time."""
    import torch

    nbytes = 2 * 2**30 if device.type == "cuda" else 2**22
    src = torch.randint(0, 255, (nbytes,), dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src), reps=10 if device.type == "cuda" else 2)
    bandwidth = 2 * nbytes / (ms * 1e-3) / 1e12
    run.results["info"]["copy_tb_s"] = bandwidth
    run.log(f"copy bandwidth: {bandwidth:.3f} TB/s ({nbytes / 2**30:.1f} GiB copy, {ms:.3f} ms)")


def gemm_rate(run: Run, device):
    import torch

    n = 8192 if device.type == "cuda" else 256
    a = torch.randn(n, n, dtype=torch.bfloat16, device=device)
    b = torch.randn(n, n, dtype=torch.bfloat16, device=device)
    ms = median_ms(lambda: torch.mm(a, b), reps=10 if device.type == "cuda" else 2)
    rate = 2 * n**3 / (ms * 1e-3) / 1e12
    run.results["info"]["gemm_bf16_tflops"] = rate
    run.log(f"bf16 GEMM {n}^3: {rate:.1f} TFLOP/s ({ms:.3f} ms)")


# ------------------------------------------------------------------------------------------------
# 2. row-kernel correctness


GRAD_REL_TOL = {"bfloat16": 4e-3, "float16": 6e-4, "float32": 1e-5, "float64": 1e-12}
STAT_REL_TOL = {"bfloat16": 1e-5, "float16": 1e-5, "float32": 1e-5, "float64": 1e-12}


def make_row_inputs(num_rows, num_classes, dtype, kind, weighted, ignore_index, device, seed):
    import torch

    gen = torch.Generator(device=device).manual_seed(seed)
    x = (3 * torch.randn(num_rows, num_classes, generator=gen, device=device)).to(dtype)
    if kind == "prob":
        target = torch.softmax(
            2 * torch.randn(num_rows, num_classes, generator=gen, device=device), dim=1
        ).to(dtype)
    else:
        target = torch.randint(0, num_classes, (num_rows,), generator=gen, device=device)
        target[::4] = ignore_index
    weight = None
    if weighted:
        weight = torch.rand(num_classes, generator=gen, device=device) + 0.1
        if dtype == torch.float64:
            weight = weight.double()
    return x, target, weight


def row_correctness(run: Run, device, small: bool):
    import torch

    from crossent.backends import rows
    from crossent.backends.rows import RowOptions
    from crossent.backends.triton import cross_entropy_rows, cross_entropy_rows_grad

    big_v = 1000 if small else 128256
    huge_v = 1500 if small else 256000
    cases = [
        ("bf16 V=128256 ignore", 64, big_v, torch.bfloat16, "index", False, RowOptions(), False),
        (
            "fp16 C=4097 smooth+weight",
            48,
            4097,
            torch.float16,
            "index",
            True,
            RowOptions(label_smoothing=0.1),
            False,
        ),
        (
            "bf16 prob-target smooth+weight",
            32,
            1000 if small else 32000,
            torch.bfloat16,
            "prob",
            True,
            RowOptions(label_smoothing=0.05),
            False,
        ),
        (
            "fp32 C=50257 zloss+softcap+ignore7",
            40,
            1003 if small else 50257,
            torch.float32,
            "index",
            False,
            RowOptions(ignore_index=7, z_loss=1e-4, softcap=30.0),
            False,
        ),
        (
            "bf16 V=256000 softcap+zloss+smooth",
            16,
            huge_v,
            torch.bfloat16,
            "index",
            True,
            RowOptions(label_smoothing=0.1, z_loss=1e-3, softcap=20.0),
            False,
        ),
        (
            "fp64 C=1000 everything prob",
            24,
            1000,
            torch.float64,
            "prob",
            True,
            RowOptions(label_smoothing=0.2, z_loss=0.01, softcap=5.0),
            False,
        ),
        (
            "bf16 V=128256 upstream row scale (reduction none)",
            64,
            big_v,
            torch.bfloat16,
            "index",
            False,
            RowOptions(z_loss=1e-4),
            True,
        ),
    ]
    if not small:
        cases = [(n, r * 4, *rest) for (n, r, *rest) in cases]
    for seed, (name, num_rows, num_classes, dtype, kind, weighted, options, scaled) in enumerate(
        cases
    ):
        x, target, weight = make_row_inputs(
            num_rows, num_classes, dtype, kind, weighted, options.ignore_index, device, seed
        )
        scale = None
        if scaled:
            scale = torch.randn(num_rows, device=device, dtype=torch.float32)
        grad = torch.full_like(x, float("nan"))
        loss, lse = cross_entropy_rows(x, target, weight, options, grad, row_scale=scale)
        grad64 = torch.empty_like(x, dtype=torch.float64)
        t64 = target.double() if kind == "prob" else target
        loss64, lse64 = rows.cross_entropy_rows(
            x.double(), t64, None if weight is None else weight.double(), options, grad64
        )
        if scale is not None:
            grad64 *= scale.double()[:, None]
        key = str(dtype).removeprefix("torch.")
        errors = {
            "loss": rel_err(loss, loss64),
            "lse": rel_err(lse, lse64),
            "grad": rel_err(grad, grad64),
        }
        # torch's own error on the same input: the readable reference computes with torch's
        # log_softmax in the kernel's accumulation dtype; the kernel may not be more than 4x
        # worse (nor worse than the fixed table), a floor of 4 roundoffs of that dtype and one
        # of the gradient's own dtype aside (half-precision gradients: the table decides)
        ref_grad = torch.empty_like(x)
        ref_loss, _ = rows.cross_entropy_rows(x, target, weight, options, ref_grad)
        if scale is not None:
            ref_grad = (ref_grad.float() * scale[:, None]).to(x.dtype)
        floor = 4 * torch.finfo(lse.dtype).eps
        grad_floor = max(floor, torch.finfo(x.dtype).eps)
        bound = {
            "loss": min(STAT_REL_TOL[key], max(4 * rel_err(ref_loss, loss64), floor)),
            "grad": min(GRAD_REL_TOL[key], max(4 * rel_err(ref_grad, grad64), grad_floor)),
        }
        finite = bool(torch.isfinite(grad).all())
        ok = (
            errors["loss"] <= bound["loss"]
            and errors["lse"] <= STAT_REL_TOL[key]
            and errors["grad"] <= bound["grad"]
            and finite
        )
        run.check(
            f"rows vs float64: {name}",
            ok,
            " ".join(f"{k}={v:.2e}" for k, v in errors.items())
            + f" (bounds: loss {bound['loss']:.1e}, grad {bound['grad']:.1e}) all-written={finite}",
        )

        again = torch.empty_like(x)
        loss2, lse2 = cross_entropy_rows(x, target, weight, options, again, row_scale=scale)
        inplace = x.clone()
        loss3, _ = cross_entropy_rows(inplace, target, weight, options, inplace, row_scale=scale)
        recomputed = torch.full_like(x, float("nan"))
        cross_entropy_rows_grad(x, target, weight, options, lse, recomputed, row_scale=scale)
        bitwise = (
            torch.equal(loss, loss2)
            and torch.equal(lse, lse2)
            and torch.equal(grad, again)
            and torch.equal(loss, loss3)
            and torch.equal(grad, inplace)
        )
        run.check(f"bitwise repeat/in-place: {name}", bitwise)
        # the gradient recomputed from the rounded lse: close, not bitwise (exp(z - lse))
        recompute_err = rel_err(recomputed, grad64)
        run.check(f"recompute from lse vs float64: {name}", recompute_err <= GRAD_REL_TOL[key],
                  f"grad={recompute_err:.2e}")  # fmt: skip
        del x, target, weight, grad, grad64, again, inplace, recomputed
        free_memory()


def graph_capture(run: Run, device):
    """The kernel captured in a CUDA graph replays to the eager bits; so does the public call,
    forward and backward, through ``torch.cuda.make_graphed_callables``."""
    import torch

    from crossent.backends.rows import RowOptions
    from crossent.backends.triton import cross_entropy_rows, scale_rows_

    if device.type != "cuda":
        run.log("graph capture: skipped (no CUDA)")
        return
    options = RowOptions(label_smoothing=0.1, z_loss=1e-4)
    x, target, _ = make_row_inputs(512, 128256, torch.bfloat16, "index", False, -100, device, 11)
    inv = 1.0 / (target != -100).sum().to(torch.float32)
    one = torch.ones((), device=device)
    eager_grad = torch.empty_like(x)
    eager = cross_entropy_rows(x, target, None, options, eager_grad, row_scale=inv)
    graph_grad = torch.empty_like(x)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):  # warm-up on the side stream, as torch's docs recommend
            cross_entropy_rows(x, target, None, options, graph_grad, row_scale=inv)
            scale_rows_(graph_grad, one)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = cross_entropy_rows(x, target, None, options, graph_grad, row_scale=inv)
        scale_rows_(graph_grad, one)
    graph_grad.zero_()
    graph.replay()
    torch.cuda.synchronize()
    ok = (
        torch.equal(captured[0], eager[0])
        and torch.equal(captured[1], eager[1])
        and torch.equal(graph_grad, eager_grad)
    )
    run.check("CUDA graph capture + replay == eager (bitwise)", ok)

    # The public call, forward and backward, captured by torch.cuda.make_graphed_callables (the
    # target check is skipped while capturing; the target statistics and reductions are kernels)
    import crossent

    xp = (3 * torch.randn(256, 32000, device=device)).to(torch.bfloat16)
    tp = torch.randint(0, 32000, (256,), device=device)
    tp[::7] = -100
    wp = torch.rand(32000, device=device) + 0.5
    for target_check in ("host", "device"):

        def loss_fn(a, target_check=target_check):
            return crossent.cross_entropy(a, tp, wp.to(a.dtype), label_smoothing=0.1,
                                          impl="triton", target_check=target_check)

        ok = _graphed_matches_eager(loss_fn, xp)
        run.check(f"public call (fwd+bwd, weights, smoothing, target_check={target_check!r}) "
                  f"in make_graphed_callables == eager (bitwise)", ok)  # fmt: skip

    # impl="auto" where it hands the call to torch's kernel (cross_entropy of a small 2-D input,
    # nll_loss): crossent's host-side range check is skipped while capturing, torch's kernel
    # checks on the device
    small_x = (3 * torch.randn(64, 1000, device=device)).to(torch.bfloat16)
    small_t = torch.randint(0, 1000, (64,), device=device)
    small_t[::5] = -100
    small_w = (torch.randn(1000, 1000, device=device) / 32).to(torch.bfloat16)
    calls = {
        "cross_entropy 64x1000 (auto: torch's kernel)": lambda a: crossent.cross_entropy(
            a, small_t, label_smoothing=0.1),
        "nll_loss 64x1000 (auto: torch's kernel)": lambda a: crossent.nll_loss(
            a.float().log_softmax(1), small_t),
        "linear_cross_entropy 64x1000x1000 (auto: torch's expression)":
            lambda a: crossent.linear_cross_entropy(a, small_w, small_t),
    }  # fmt: skip
    for name, loss_fn in calls.items():
        ok = _graphed_matches_eager(loss_fn, small_x)
        run.check(f"{name} in make_graphed_callables == eager (bitwise)", ok)


def _graphed_matches_eager(loss_fn, x) -> bool:
    """Whether ``loss_fn`` of a leaf copy of ``x``, forward and backward, through
    ``torch.cuda.make_graphed_callables`` gives the eager loss and gradient bit for bit."""
    import torch

    leaf = x.detach().clone().requires_grad_()
    eager_loss = loss_fn(leaf)
    eager_loss.backward()
    graphed = torch.cuda.make_graphed_callables(loss_fn, (x.detach().clone().requires_grad_(),))
    again = x.detach().clone().requires_grad_()
    graph_loss = graphed(again)
    graph_loss.backward()
    torch.cuda.synchronize()
    return torch.equal(graph_loss.detach(), eager_loss.detach()) and torch.equal(
        again.grad, leaf.grad
    )


def beyond_int32(run: Run, device, small: bool):
    """Rows past 2**31 elements (in place) equal the same rows computed on their own."""
    import torch

    from crossent.backends import rows
    from crossent.backends.rows import RowOptions
    from crossent.backends.triton import cross_entropy_rows

    if small:
        run.log("beyond 2**31 elements: skipped (dry run)")
        return
    num_classes = 128256
    num_rows = 2**31 // num_classes + 64
    x = torch.randn(num_rows, num_classes, dtype=torch.bfloat16, device=device)
    target = torch.randint(0, num_classes, (num_rows,), device=device)
    boundary = 2**31 // num_classes
    picked = torch.tensor(
        [0, boundary - 1, boundary, boundary + 1, num_rows - 2, num_rows - 1], device=device
    )
    rows_alone = x[picked].clone()
    options = RowOptions(label_smoothing=0.1)
    loss, lse = cross_entropy_rows(x, target, None, options, x)  # in place: x becomes the grad
    grad_alone = torch.empty_like(rows_alone)
    loss_alone, lse_alone = cross_entropy_rows(
        rows_alone, target[picked], None, options, grad_alone
    )
    grad64 = torch.empty_like(rows_alone, dtype=torch.float64)
    loss64, _ = rows.cross_entropy_rows(rows_alone.double(), target[picked], None, options, grad64)
    ok = (
        torch.equal(loss[picked], loss_alone)
        and torch.equal(lse[picked], lse_alone)
        and torch.equal(x[picked], grad_alone)
        and rel_err(loss_alone, loss64) < 1e-5
        and rel_err(grad_alone, grad64) < GRAD_REL_TOL["bfloat16"]
    )
    run.check(
        f"rows beyond 2**31 elements ({num_rows}x{num_classes} = {num_rows * num_classes:.3e})",
        ok,
        f"loss rel err vs float64 {rel_err(loss_alone, loss64):.2e}",
    )
    del x, target, rows_alone, grad_alone
    free_memory()


def scale_rows_check(run: Run, device):
    import torch

    from crossent.backends.triton import scale_rows_

    g = torch.randn(256, 4097, device=device).to(torch.bfloat16)
    before = g.clone()
    scale_rows_(g, torch.ones((), device=device))
    same = torch.equal(g.view(torch.int16), before.view(torch.int16))
    kept = torch.rand(256, device=device) > 0.3
    scale_rows_(g, torch.tensor(0.37, device=device), kept)
    expected = torch.where(kept[:, None], (before.float() * 0.37).to(torch.bfloat16), before)
    if device_is_cuda():
        scaled_ok = torch.equal(g, expected)
    else:  # the interpreter truncates float32 -> bfloat16 (the GPU rounds): one ulp allowed
        scaled_ok = bool(
            ((g.float() - expected.float()).abs() <= expected.float().abs() / 128).all()
        )
    run.check(
        "scale_rows_: scale 1 untouched, 0.37 == (g.float() * 0.37).bfloat16()",
        same and scaled_ok,
    )


# ------------------------------------------------------------------------------------------------
# 3. linear correctness


def crossent_linear(x, w, target, **kwargs):
    """``crossent.linear_cross_entropy(x, w, target, impl="triton", ...)`` if it exists."""
    import importlib

    import crossent

    fn = getattr(crossent, "linear_cross_entropy", None)
    if fn is None:
        try:
            fn = importlib.import_module("crossent.linear").linear_cross_entropy
        except (ImportError, AttributeError) as exc:
            raise LookupError("crossent.linear_cross_entropy does not exist yet") from exc
    try:
        return fn(x, w, target, impl="triton", **kwargs)
    except TypeError as exc:
        if "impl" not in str(exc):
            raise
        return fn(x, w, target, **kwargs)


def linear_recipe(x, w, target, block_rows: int, options=None):
    """The CUDA loop this script recommends for ``linear_cross_entropy`` (mean, class indices).

    Per block of rows: ``Z = X_b W^T`` (bf16 cuBLAS GEMM into one reused block), the Triton row
    kernel turns ``Z`` into ``dZ`` in place (``row_scale = 1/D`` folded in, one rounding),
    ``dX_b = dZ W`` (bf16), ``dW (+)= dZ^T X_b`` into a float32 accumulator
    (``mm/addmm(out_dtype=float32)``; a single block writes dW directly). Gradients are computed
    in the forward; the backward multiplies by the upstream gradient with ``scale_rows_``
    (skipped on the device when it is exactly 1).
    """
    import torch

    from crossent.backends.rows import RowOptions
    from crossent.backends.triton import cross_entropy_rows, scale_rows_

    options = options or RowOptions()

    class Recipe(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, w):
            n, d = x.shape
            v = w.shape[0]
            kept = (target != options.ignore_index).sum().to(torch.float32)
            inv = 1.0 / kept
            loss_rows = torch.empty(n, dtype=torch.float32, device=x.device)
            dx = torch.empty_like(x)
            rows = min(block_rows, n)
            logits = torch.empty(rows, v, dtype=x.dtype, device=x.device)
            single = rows >= n
            acc = dw = None
            if single:
                dw = torch.empty_like(w)
            else:
                acc = torch.empty(v, d, dtype=torch.float32, device=x.device)
            for i, r0 in enumerate(range(0, n, rows)):
                r1 = min(n, r0 + rows)
                x_b = x[r0:r1]
                z = logits[: r1 - r0]
                torch.mm(x_b, w.t(), out=z)
                loss_b, _ = cross_entropy_rows(z, target[r0:r1], None, options, z, row_scale=inv)
                loss_rows[r0:r1] = loss_b
                torch.mm(z, w, out=dx[r0:r1])
                if single:
                    torch.mm(z.t(), x_b, out=dw)
                else:
                    accumulate_float32(acc, z.t(), x_b, first=i == 0)
            del logits
            if acc is not None:
                dw = acc.to(w.dtype)
                del acc
            ctx.save_for_backward(dx, dw)
            return loss_rows.sum() * inv

        @staticmethod
        def backward(ctx, grad_loss):
            dx, dw = ctx.saved_tensors
            scale_rows_(dx, grad_loss)
            scale_rows_(dw, grad_loss)
            return dx, dw

    return Recipe.apply(x, w)


def accumulate_float32(acc, a, b, first: bool) -> None:
    """``acc (+)= a @ b`` for bf16 ``a``/``b`` into a float32 ``acc``: cuBLAS with float32
    output and accumulation on CUDA (``out_dtype``); float32 copies on the CPU (dry run), where
    torch has no ``out_dtype`` kernel."""
    import torch

    if acc.device.type != "cuda":
        if first:
            torch.mm(a.float(), b.float(), out=acc)
        else:
            acc.addmm_(a.float(), b.float())
    elif first:
        torch.mm(a, b, out_dtype=torch.float32, out=acc)
    else:
        torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)


def make_linear_inputs(n, d, v, device, seed, requires_grad=True):
    import torch

    gen = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(n, d, generator=gen, device=device).to(torch.bfloat16)
    w = (torch.randn(v, d, generator=gen, device=device) * (2.0 / math.sqrt(d))).to(torch.bfloat16)
    target = torch.randint(0, v, (n,), generator=gen, device=device)
    target[::7] = -100
    x.requires_grad_(requires_grad)
    w.requires_grad_(requires_grad)
    return x, w, target


def linear_correctness(run: Run, device, small: bool):
    import torch
    import torch.nn.functional as F

    n, d, v = (64, 32, 1000) if small else (2048, 1024, 32003)
    x, w, target = make_linear_inputs(n, d, v, device, seed=21)
    x64 = x.detach().double().requires_grad_()
    w64 = w.detach().double().requires_grad_()
    loss64 = F.cross_entropy(x64 @ w64.t(), target)
    loss64.backward()

    def grads_of(loss_fn):
        x.grad = w.grad = None
        loss = loss_fn()
        loss.backward()
        return loss.detach().clone(), x.grad.clone(), w.grad.clone()

    def errors(result):
        loss, dx, dw = result
        return {
            "loss": rel_err(loss, loss64.detach()),
            "dX": rel_err(dx, x64.grad),
            "dW": rel_err(dw, w64.grad),
        }

    torch_err = errors(grads_of(lambda: F.cross_entropy(x @ w.t(), target)))
    run.log("linear: torch eager bf16 error vs float64:", fmt_errors(torch_err))
    providers = [
        ("recipe (this script)", lambda: linear_recipe(x, w, target, block_rows=max(16, n // 3))),
        ("crossent.linear_cross_entropy", lambda: crossent_linear(x, w, target)),
    ]
    for name, fn in providers:
        try:
            first = grads_of(fn)
        except LookupError as exc:
            run.log(f"linear {name}: skipped ({exc})")
            continue
        second = grads_of(fn)
        x.grad = w.grad = None
        (2.5 * fn()).backward()  # an upstream factor other than 1 scales dX and dW on the device
        scaled_ok = max(rel_err(x.grad, 2.5 * first[1]), rel_err(w.grad, 2.5 * first[2])) < 1e-2
        run.check(f"linear upstream factor 2.5 scales dX, dW: {name}", scaled_ok)
        err = errors(first)
        # bf16 logits/gradients: the error must be of torch's own order (which rounds the
        # logits, dZ and dX to bf16 too), with a floor of 4e-3 for dX/dW and 1e-3 for the loss.
        ok = (
            err["loss"] <= max(2 * torch_err["loss"], 1e-3)
            and err["dX"] <= max(2 * torch_err["dX"], 4e-3)
            and err["dW"] <= max(2 * torch_err["dW"], 4e-3)
        )
        run.check(f"linear vs float64: {name}", ok, fmt_errors(err))
        same = all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
        run.check(f"linear bitwise repeat: {name}", same)


def fmt_errors(errors: dict) -> str:
    return " ".join(f"{k}={v:.2e}" for k, v in errors.items())


# ------------------------------------------------------------------------------------------------
# 4. timing


def record_timing(run: Run, group: str, provider: str, ms, peak, flops=None, nbytes=None, note=""):
    row = {"group": group, "provider": provider, "ms": ms, "peak_extra_gib": None, "note": note}
    if peak is not None:
        row["peak_extra_gib"] = peak / 2**30
    if ms is not None and nbytes is not None:
        row["tb_s"] = nbytes / (ms * 1e-3) / 1e12
        copy = run.results["info"].get("copy_tb_s")
        if copy:
            row["pct_copy_bw"] = 100 * row["tb_s"] / copy
    if ms is not None and flops is not None:
        row["tflops"] = flops / (ms * 1e-3) / 1e12
    run.results["timings"].append(row)
    extra = " ".join(
        f"{k}={row[k]:.3g}"
        for k in ("tb_s", "pct_copy_bw", "tflops", "peak_extra_gib")
        if row.get(k)
    )
    run.log(f"time {group} | {provider}: {ms if ms is None else f'{ms:.3f} ms'} {extra} {note}")


def triton_launches(fn) -> str:
    """Names and counts of the Triton kernels one call of ``fn`` launches, crossent's or any
    other's (GPU only)."""
    import triton

    hook_chain = getattr(getattr(triton, "knobs", None), "runtime", None)
    if hook_chain is None or not hasattr(hook_chain.launch_enter_hook, "add"):
        return "launches: unknown (no Triton launch hook)"
    counts: dict[str, int] = {}

    def hook(metadata):
        name = metadata.get()["name"] if metadata is not None else "?"
        counts[name] = counts.get(name, 0) + 1

    hook_chain.launch_enter_hook.add(hook)
    try:
        fn()
        synchronize()
    finally:
        hook_chain.launch_enter_hook.remove(hook)
    if not counts:
        return "no Triton kernel launched"
    return "launches: " + ", ".join(f"{k}x{v}" for k, v in sorted(counts.items()))


def time_provider(
    run: Run, group, name, build, reps, flops=None, nbytes=None, needs=None, trace=False
):
    """Build (may compile), time fwd+bwd and measure peak extra memory of one provider.

    ``trace``: also report which Triton kernels one call launches, by name and count (to show
    which of crossent's kernels a public entry point reaches, or "no Triton kernel launched")."""
    if needs and run.remaining() < needs:
        record_timing(
            run, group, name, None, None, note=f"skipped: budget ({run.remaining():.0f}s)"
        )
        return
    try:
        fn, setup = build()
        t0 = time.monotonic()
        if setup:
            setup()
        fn()
        synchronize()
        first_s = time.monotonic() - t0
        note = f"first call {first_s:.1f}s"
        if trace and device_is_cuda():
            if setup:
                setup()
            note += "; " + triton_launches(fn)
        ms = median_ms(fn, reps=reps, warmup=1, setup=setup)
        peak = peak_extra_bytes(fn, setup=setup)
        record_timing(run, group, name, ms, peak, flops, nbytes, note=note)
    except Exception as exc:
        message = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
        record_timing(run, group, name, None, None, note=f"failed: {message}")
    finally:
        free_memory()


def logits_timings(run: Run, device, small: bool):
    import torch
    import torch.nn.functional as F

    from crossent.backends.rows import RowOptions
    from crossent.backends.triton import cross_entropy_rows, scale_rows_

    n, v = (64, 1000) if small else (8192, 128256)
    group = f"logits N={n} V={v} bf16"
    reps = 2 if small else 10
    nbytes = 4 * n * v  # one bf16 read of the logits + one bf16 write of the gradient
    gen = torch.Generator(device=device).manual_seed(31)
    base = (3 * torch.randn(n, v, generator=gen, device=device)).to(torch.bfloat16)
    target = torch.randint(0, v, (n,), generator=gen, device=device)
    target[::11] = -100
    options = RowOptions()
    state = {}

    def fresh_leaf():
        state["x"] = base.detach().clone().requires_grad_()

    def autograd_build(loss_fn):
        def fn():
            loss_fn(state["x"], target).backward()

        return fn, fresh_leaf

    def kernel_inplace():
        work = base.clone()
        inv = 1.0 / (target != -100).sum().to(torch.float32)
        one = torch.ones((), device=device)

        def fn():
            cross_entropy_rows(work, target, None, options, work, row_scale=inv)
            scale_rows_(work, one)  # the backward of the recommended wiring: skipped at 1

        return fn, None

    def kernel_buffer():
        grad = torch.empty_like(base)

        def fn():
            cross_entropy_rows(base, target, None, options, grad)

        return fn, None

    def kernel_forward_only():
        def fn():
            cross_entropy_rows(base, target, None, options)

        return fn, None

    def crossent_api():
        import crossent

        return autograd_build(lambda x, t: crossent.cross_entropy(x, t, impl="triton"))

    def torch_eager():
        return autograd_build(lambda x, t: F.cross_entropy(x, t))

    def liger():
        from liger_kernel.transformers.functional import liger_cross_entropy

        return autograd_build(lambda x, t: liger_cross_entropy(x, t))

    def compiled():
        compiled_ce = torch.compile(lambda x, t: F.cross_entropy(x, t), dynamic=False)
        return autograd_build(compiled_ce)

    providers = [
        ("crossent kernel, in place + scale_rows_ (fwd+bwd floor)", kernel_inplace, None),
        ("crossent kernel, gradient buffer", kernel_buffer, None),
        ("crossent kernel, forward only (loss, lse)", kernel_forward_only, None),
        ("crossent.cross_entropy(impl='triton') fwd+bwd", crossent_api, None),
        ("torch eager F.cross_entropy fwd+bwd", torch_eager, None),
    ]
    if not small:
        providers.append(("Liger liger_cross_entropy fwd+bwd", liger, None))
    for name, build, needs in providers:
        size = nbytes if "forward only" not in name else nbytes // 2
        trace = name.startswith("crossent.")
        time_provider(run, group, name, build, reps, nbytes=size, needs=needs, trace=trace)
    # The closure keeps base/target alive for the torch.compile run at the end.
    run.results.setdefault("deferred", []).append(
        (group, "torch.compile F.cross_entropy fwd+bwd", compiled, reps, nbytes)
    )


def config_sweep(run: Run, device, small: bool):
    """The row kernel (in place, no options) under several launch configurations."""
    import torch

    from crossent.backends.rows import RowOptions
    from crossent.backends.triton import KernelConfig, choose_config, cross_entropy_rows

    sms = 2 if small else torch.cuda.get_device_properties(device).multi_processor_count
    default = choose_config(128256, 2)
    b, w = default.block, default.num_warps
    main = [
        ("default", None),
        ("stages=1", KernelConfig(b, w, num_stages=1)),
        ("stages=2", KernelConfig(b, w, num_stages=2)),
        ("stages=4", KernelConfig(b, w, num_stages=4)),
        ("no L2 hints", KernelConfig(b, w, l2_hints=False)),
        ("no hints, stages=1", KernelConfig(b, w, 1, l2_hints=False)),
        ("grid = rows", KernelConfig(b, w, programs=0)),
        ("grid = rows, stages=1", KernelConfig(b, w, 1, programs=0)),
        ("grid = 1/SM", KernelConfig(b, w, programs=sms)),
        ("grid = 2/SM", KernelConfig(b, w, programs=2 * sms)),
        ("grid = 2/SM, stages=1", KernelConfig(b, w, 1, programs=2 * sms)),
        ("block 8192, 32 warps", KernelConfig(8192, 32)),
        ("block 8192, 32 warps, 1/SM", KernelConfig(8192, 32, programs=sms)),
        ("block 8192, 16 warps", KernelConfig(8192, 16)),
        ("block 2048, 8 warps", KernelConfig(2048, 8)),
        ("block 2048, 8 warps, 4/SM", KernelConfig(2048, 8, programs=4 * sms)),
        ("block 4096, 16 warps, grid = rows (default before 2026-11-27)",
         KernelConfig(4096, 16, programs=0)),
    ]  # fmt: skip
    gemma = [
        ("default", None),
        ("stages=1", KernelConfig(b, w, num_stages=1)),
        ("grid = rows", KernelConfig(b, w, programs=0)),
        ("grid = 2/SM", KernelConfig(b, w, programs=2 * sms)),
        main[-1],
    ]
    if run.args.wide_sweep:  # more persistent grids, deeper pipelines, bigger blocks
        wide = [
            (f"{per}/SM, block {blk}, {warps} warps, stages {stages}{tag}",
             KernelConfig(blk, warps, stages, programs=per * sms, l2_hints=not tag))
            for per, blk, warps, stages, tag in [
                (1, 8192, 32, 4, ""), (1, 8192, 32, 6, ""), (1, 16384, 32, 3, ""),
                (1, 4096, 16, 6, ""), (2, 4096, 16, 4, ""), (2, 4096, 16, 6, ""),
                (2, 8192, 16, 3, ""), (3, 4096, 16, 1, ""), (4, 2048, 8, 1, ""),
                (4, 2048, 8, 4, ""), (6, 2048, 8, 3, ""), (8, 1024, 4, 3, ""),
                (8, 2048, 4, 3, ""), (4, 2048, 8, 3, ", no hints"),
            ]
        ] + [
            ("rows, block 2048, 8 warps, stages 3", KernelConfig(2048, 8, 3, programs=0)),
            ("rows, block 2048, 8 warps, stages 1", KernelConfig(2048, 8, 1, programs=0)),
            ("rows, block 8192, 32 warps, stages 3", KernelConfig(8192, 32, 3, programs=0)),
        ]  # fmt: skip
        main = main[:1] + main[-1:] + wide
        gemma = gemma[:1] + main[-1:] + wide
    shapes = [((64, 1000), main[:3]) if small else ((8192, 128256), main)]
    if not small:
        shapes.append(((4096, 256000), gemma))
    reps = 2 if small else 10
    for (n, v), configs in shapes:
        x = (3 * torch.randn(n, v, device=device)).to(torch.bfloat16)
        target = torch.randint(0, v, (n,), device=device)
        nbytes = 4 * n * v
        for name, config in configs:
            if run.remaining() < 60:
                run.log(f"sweep: stopping before {name!r} (budget)")
                break
            try:
                ms = median_ms(
                    functools.partial(
                        cross_entropy_rows, x, target, None, RowOptions(), x, config=config
                    ),
                    reps=reps,
                )
                tb_s = nbytes / (ms * 1e-3) / 1e12
                copy = run.results["info"].get("copy_tb_s") or float("nan")
                row = {
                    "shape": f"{n}x{v}",
                    "config": name,
                    "spec": repr(config or choose_config(v, 2)),
                    "ms": ms,
                    "tb_s": tb_s,
                    "pct_copy_bw": 100 * tb_s / copy,
                }
                run.results["sweep"].append(row)
                run.log(f"sweep {n}x{v} {name}: {ms:.3f} ms, {tb_s:.3f} TB/s, "
                        f"{row['pct_copy_bw']:.1f}% of copy")  # fmt: skip
            except Exception as exc:
                run.log(f"sweep {name}: failed {type(exc).__name__}: {exc}")
        del x
        free_memory()


def api_overhead(run: Run, device, small: bool):
    """Where the public path's time goes: public call vs the kernel alone, and a profile."""
    import torch

    import crossent

    n, v = (64, 1000) if small else (8192, 128256)
    reps = 2 if small else 20
    base = (3 * torch.randn(n, v, device=device)).to(torch.bfloat16)
    target = torch.randint(0, v, (n,), device=device)
    target[::11] = -100
    state = {}

    def setup():
        state["x"] = base.detach().clone().requires_grad_()

    def call(reduction="mean"):
        loss = crossent.cross_entropy(state["x"], target, impl="triton", reduction=reduction)
        loss.sum().backward()

    from crossent import _fused_op

    original = _fused_op._runs_eagerly
    for route in ("eager", "custom ops"):
        if route == "custom ops":
            _fused_op._runs_eagerly = lambda *tensors: False
        try:
            for reduction in ("mean", "sum"):
                ms = median_ms(functools.partial(call, reduction), reps=reps, setup=setup)
                run.log(f"api overhead: {route} route, reduction={reduction}: {ms:.3f} ms")
        finally:
            _fused_op._runs_eagerly = original

    def plain_kernel():
        from crossent.backends.rows import RowOptions
        from crossent.backends.triton import cross_entropy_rows

        grad = torch.empty_like(base)
        cross_entropy_rows(base, target, None, RowOptions(), grad)

    run.log(f"api overhead: kernel alone {median_ms(plain_kernel, reps=reps):.3f} ms")
    if device.type != "cuda":
        return
    from torch.profiler import ProfilerActivity, profile

    setup()
    call()
    setup()
    synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        call()
        synchronize()
    table = prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=25)
    run.log("api profile (one mean call):\n" + table)
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
    run.log("api profile by CPU time:\n" + table)


def host_ms(fn, reps: int, setup=None) -> float:
    """Median host time of ``fn()`` in ms: what the calling thread spends in the call (enqueueing
    work, Python, and any wait of its own, such as the target check's flag), with the device
    drained before each call and after it, outside the timed region."""
    times = []
    for _ in range(reps):
        if setup:
            setup()
        synchronize()
        t0 = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - t0))
        synchronize()
    return statistics.median(times)


def reductions_check(run: Run, device, small: bool):
    """The target statistics and row reductions around the loss kernel (several programs and a
    finishing one at these sizes) against float64 torch, and one public call that uses both."""
    import torch
    import torch.nn.functional as F

    import crossent
    from crossent.backends.triton import reduce_rows, target_stats

    positions = 5000 if small else 3_000_000
    if small:  # several programs in the interpreter too
        from crossent.backends.triton import cross_entropy as launchers

        launchers_chunk, launchers.TARGET_CHUNK = launchers.TARGET_CHUNK, 1024
    try:
        gen = torch.Generator(device=device).manual_seed(41)
        classes = 1000
        target = torch.randint(-1, classes + 1, (positions,), device=device, generator=gen)
        target[::9] = -100
        weight = torch.rand(classes, device=device, generator=gen, dtype=torch.float64) + 0.5
        kept = target != -100
        valid = kept & (target >= 0) & (target < classes)
        expected = weight[target[valid]].sum()
        bad = int((kept & ~valid).sum())
        # float32 sums of 3e6 positive terms: at most 32 sequential additions per lane, then a
        # tree of about 17 levels: tens of ulps at worst (1 ulp = 6e-8 relative)
        for dtype, bound in ((torch.float32, 4e-6), (torch.float64, 1e-12)):
            stats = target_stats(target, weight.to(dtype), classes, -100, dtype)
            err = abs(float(stats[0]) - float(expected)) / float(expected)
            ok = err < bound and int(stats[2]) == bad
            ok = ok and abs(float(stats[1]) * float(expected) - 1) < 2 * bound
            run.check(f"target_stats vs float64: {positions} targets {dtype}", ok,
                      f"D err {err:.1e} (bound {bound:.0e}), bad {int(stats[2])} == {bad}")
            rows = torch.rand(positions, device=device, generator=gen, dtype=torch.float64)
            lse = torch.randn(positions, device=device, generator=gen, dtype=torch.float64)
            total, z = reduce_rows(rows.to(dtype), lse.to(dtype), True, stats[0], 0.5)
            want = rows.to(dtype).double().sum() / stats[0].double()
            want_z = 0.5 * (lse.to(dtype).double() ** 2).sum() / stats[0].double()
            errs = [abs(float(total) / float(want) - 1), abs(float(z) / float(want_z) - 1)]
            run.check(f"reduce_rows vs float64: {positions} rows {dtype}",
                      max(errs) < bound, f"errors {errs[0]:.1e} {errs[1]:.1e}")
    finally:
        if small:
            launchers.TARGET_CHUNK = launchers_chunk
    n, v = (64, 1000) if small else (4096, 32000)
    x = 3 * torch.randn(n, v, device=device, generator=gen)  # float32: bounds of its rounding
    t = torch.randint(0, v, (n,), device=device, generator=gen)
    t[::7] = -100
    w = torch.rand(v, device=device, generator=gen) + 0.5
    for reduction in ("mean", "sum"):
        leaf = x.detach().clone().requires_grad_()
        out = crossent.cross_entropy_with_extras(leaf, t, w, label_smoothing=0.1, z_loss=1e-4,
                                                 reduction=reduction, impl="triton")
        out.loss.backward()
        wide = x.double().requires_grad_()
        ref = F.cross_entropy(wide, t, w.double(), label_smoothing=0.1, reduction=reduction)
        lse = torch.logsumexp(wide, 1) * (t != -100)
        z_terms = 1e-4 * lse * lse
        kept_w = w.double()[t.clamp(min=0)] * (t != -100)
        z_ref = z_terms.sum() / kept_w.sum() if reduction == "mean" else z_terms.sum()
        (ref + z_ref).backward()
        loss_err = abs(float(out.loss.detach()) / float(ref.detach() + z_ref.detach()) - 1)
        z_err = abs(float(out.z_loss) / float(z_ref.detach()) - 1)
        grad_err = float((leaf.grad.double() - wide.grad).abs().max() / wide.grad.abs().max())
        run.check(f"public call with extras vs float64 ({reduction}): {n}x{v} float32 weights, "
                  f"smoothing, z-loss", loss_err < 1e-6 and z_err < 1e-6 and grad_err < 1e-6,
                  f"loss {loss_err:.1e} z {z_err:.1e} grad {grad_err:.1e}")


_DEVICE_ASSERT_CHILD = """
import os, sys, torch, crossent

def done(code, *words):
    print(*words, flush=True)
    os._exit(code)  # (no teardown: the CUDA context is lost after the assert)

t = torch.randint(0, 1000, (64,), device="cuda")
x = torch.randn(64, 1000, device="cuda", requires_grad=True)
loss_fn = lambda a: crossent.cross_entropy(a, t, impl="triton", target_check="device")
if GRAPH:
    loss_fn = torch.cuda.make_graphed_callables(loss_fn, (x,))
else:
    loss_fn(x).backward()  # (loads the kernels with a valid target first)
torch.cuda.synchronize()
t[5] = 1000  # out of range (a captured graph reads this target on replay)
torch.cuda.synchronize()
try:
    torch.cuda.set_sync_debug_mode("error")  # any synchronisation of ours raises here
    loss_fn(x).backward()
    torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
except RuntimeError as exc:
    text = str(exc)
    if "synchroniz" in text:
        done(1, "synchronised:", text.splitlines()[0])
    if "assert" in text.lower():
        done(0, "failed the stream:", text.splitlines()[0])
    done(1, "another error:", text.splitlines()[0])
done(1, "no error")
"""


def device_target_check(run: Run, device, small: bool):
    """``target_check='device'``: the public Triton call never synchronises with the host
    (``torch.cuda.set_sync_debug_mode('error')`` raises on any synchronising operation) for
    class indices with weights, smoothing, z-loss, K-dim columns, probability targets,
    ``nll_loss`` (torch's kernel) and ``linear_cross_entropy``; and an
    out-of-range target, in child processes (a device-side assert loses the CUDA context), fails
    the CUDA stream, from the call and from the replay of a captured CUDA graph, without any
    synchronisation of crossent's (the error surfaces at whichever later CUDA call comes first,
    possibly a launch inside the same call)."""
    import subprocess

    import torch

    import crossent

    n, v = (16, 100) if small else (1024, 32000)
    gen = torch.Generator(device=device).manual_seed(47)
    x = torch.randn(n, v, device=device, generator=gen)
    t = torch.randint(0, v, (n,), device=device, generator=gen)
    t[::5] = -100
    w = torch.rand(v, device=device, generator=gen) + 0.5
    xk = torch.randn(2, 5, 16, 16, device=device, generator=gen)
    tk = torch.randint(0, 5, (2, 16, 16), device=device, generator=gen)
    probabilities = torch.softmax(torch.randn(n, v, device=device, generator=gen), 1)
    hidden = torch.randn(n, 64, device=device, generator=gen)
    head = torch.randn(v, 64, device=device, generator=gen) / 8
    ce = functools.partial(crossent.cross_entropy, impl="triton", target_check="device")
    extras = functools.partial(crossent.cross_entropy_with_extras, impl="triton",
                               target_check="device")  # fmt: skip
    calls = [
        ("plain mean", x, lambda a: ce(a, t)),
        ("weights, smoothing, z-loss, sum", x,
         lambda a: extras(a, t, w, label_smoothing=0.1, z_loss=1e-4, reduction="sum").loss),
        ("K-dim columns", xk, lambda a: ce(a, tk)),
        ("probabilities", x, lambda a: ce(a, probabilities)),
        ("nll_loss (auto: torch's kernel)", torch.log_softmax(x, 1),
         lambda a: crossent.nll_loss(a, t, w, target_check="device")),
        ("linear_cross_entropy, weights, mean", hidden,
         lambda a: crossent.linear_cross_entropy(a, head, t, weight=w, impl="triton",
                                                 target_check="device")),
    ]  # fmt: skip
    for name, base, fn in calls:
        leaf = base.detach().clone().requires_grad_()
        fn(leaf).backward()  # (first call: compiles outside the debug mode)
        leaf = base.detach().clone().requires_grad_()
        synchronize()
        ok, detail = True, ""
        if device.type == "cuda":
            torch.cuda.set_sync_debug_mode("error")
        try:
            fn(leaf).backward()
        except RuntimeError as exc:
            ok, detail = False, str(exc).splitlines()[0][:160]
        finally:
            if device.type == "cuda":
                torch.cuda.set_sync_debug_mode("default")
        run.check(f"target_check='device' never synchronises: {name}", ok, detail)
    if device.type != "cuda":
        return
    for graph, what in ((False, "the call"), (True, "a captured CUDA graph's replay")):
        script = f"GRAPH = {graph}\n" + _DEVICE_ASSERT_CHILD
        child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                               env=dict(os.environ), timeout=120, check=False)  # fmt: skip
        said = child.stdout.strip() or child.stderr.strip()[-200:]
        ok = child.returncode == 0 and "failed the stream" in child.stdout
        run.check(f"target_check='device' with an out-of-range target: {what} fails the CUDA "
                  f"stream (a device-side assert) without synchronising", ok,
                  said.splitlines()[-1][:200] if said else "")  # fmt: skip


def launch_costs(run: Run, device, small: bool):
    """Host time per launch on this machine, the unit of the fused path's fixed cost: a torch
    operation on a small tensor, a launch of the target-statistics kernel through its crossent
    launcher, and (for scale) a whole plain ``cross_entropy(impl='triton')`` forward (with its
    target check's wait); each the median over batches of back-to-back calls, the device
    drained outside the timed region."""
    import torch

    import crossent
    from crossent.backends.triton.cross_entropy import target_stats

    target = torch.randint(0, 1000, (64,), device=device)
    x = torch.randn(64, 1000, device=device, requires_grad=True)
    batch = 1 if small else 200  # (small: the interpreter's dry run, where a launch takes ~1 s)
    probes = {
        "torch add_ on 64x1000 floats": lambda: x.detach().add_(0.0),
        "crossent target_stats launcher (one Triton launch)":
            lambda: target_stats(target, None, 1000, -100, torch.float32),
        "cross_entropy(impl='triton') forward": lambda: crossent.cross_entropy(x, target,
                                                                               impl="triton"),
    }  # fmt: skip
    for name, fn in probes.items():
        us = host_us_per_call(fn, batch, reps=1 if small else 7)
        run.log(f"launch cost: {name}: {us:.1f} us host time per call")
        run.results.setdefault("launch_costs_us", {})[name] = us


def host_us_per_call(fn, batch: int, reps: int) -> float:
    """Host microseconds per call of ``fn``: the median of ``reps`` batches of ``batch``
    back-to-back calls (:func:`host_ms`), after one call that compiles."""
    fn()

    def many():
        for _ in range(batch):
            fn()

    return 1e3 * host_ms(many, reps=reps) / batch


def small_linear_calls(run: Run, device, small: bool, reps: int):
    """Device and host time per fwd+bwd call of ``linear_cross_entropy`` (``impl="triton"``,
    ``"auto"``) against torch's ``F.cross_entropy(F.linear(...))`` at heads whose logits are
    below and above ``crossent.linear.CUDA_TORCH_MAX_LOGITS`` (where ``"auto"`` hands the call
    to torch's expression, and where it keeps the blocked Triton path)."""
    import torch
    import torch.nn.functional as F

    import crossent

    cases = [(16, 32, 100)] if small else [(64, 1024, 32000), (256, 1024, 32000),
                                           (1024, 2048, 32000), (4096, 2048, 32000)]  # fmt: skip
    for n, d, c in cases:
        gen = torch.Generator(device=device).manual_seed(31)
        x0 = torch.randn(n, d, device=device, generator=gen).to(torch.bfloat16)
        w0 = (torch.randn(c, d, device=device, generator=gen) / d**0.5).to(torch.bfloat16)
        t = torch.randint(0, c, (n,), device=device, generator=gen)
        state = {}

        def setup(state=state, x0=x0, w0=w0):
            state["x"] = x0.detach().clone().requires_grad_()
            state["w"] = w0.detach().clone().requires_grad_()

        def call(loss_fn, state=state, t=t):
            loss_fn(state["x"], state["w"], t).backward()

        providers = {
            "crossent.linear_cross_entropy(impl='triton')": functools.partial(
                call, functools.partial(crossent.linear_cross_entropy, impl="triton")),
            "crossent.linear_cross_entropy(impl='auto')": functools.partial(
                call, crossent.linear_cross_entropy),
            "torch F.cross_entropy(F.linear(...))": functools.partial(
                call, lambda a, weight, target: F.cross_entropy(F.linear(a, weight), target)),
        }  # fmt: skip
        group = f"small linear calls N={n} D={d} V={c} bfloat16"
        for name, fn in providers.items():
            time_call(run, group, name, fn, setup, reps, flops=6 * n * d * c)


def time_call(run: Run, group: str, name: str, fn, setup, reps: int, **measures):
    """Record the device time (CUDA events, median) and the host time per call of ``fn``;
    ``measures``: ``record_timing``'s ``flops``/``nbytes``."""

    def measure():
        ms = median_ms(fn, reps=reps, warmup=2, setup=setup)
        return ms, f"host {host_ms(fn, reps=reps, setup=setup):.3f} ms per call"

    record_measured(run, group, name, measure, **measures)


def record_measured(run: Run, group: str, name: str, measure, **measures):
    """Record ``measure()``'s ``(ms, note)`` as a timing row; a failure is recorded as the
    row's note, not raised."""
    try:
        ms, note = measure()
        record_timing(run, group, name, ms, None, note=note, **measures)
    except Exception as exc:
        record_timing(run, group, name, None, None,
                      note=f"failed: {type(exc).__name__}: {exc}"[:200])  # fmt: skip
    finally:
        free_memory()


def busy_device(run: Run, device, small: bool):
    """The cost of a loss call where the device is busy and the host runs ahead, as in a
    training step: each of ``steps`` iterations queues a GEMM that keeps the device busy for
    about a millisecond, then the loss forward+backward; the call's cost is the loop's device
    time less the GEMMs' alone (CUDA events around the whole loop, median of ``reps`` loops).
    Here the host's time per call is hidden unless the call waits for the device (the default
    target check reads a flag; ``target_check="device"`` does not), so this tests the reasoning
    behind ``impl="auto"``'s hand-over thresholds (torch's kernel costs more device time)."""
    import torch
    import torch.nn.functional as F

    import crossent

    gemm = 256 if small else 8192
    a = torch.randn(gemm, gemm, device=device).to(torch.bfloat16)
    steps, reps = (2, 1) if small else (20, 5)
    cases = [((64, 100), torch.float32)] if small else [
        ((1024, 1000), torch.float32), ((512, 32000), torch.bfloat16),
        ((2048, 32000), torch.bfloat16), ((8, 21, 512, 512), torch.float32)]  # fmt: skip

    def loop_ms(body) -> float:
        def many():
            for _ in range(steps):
                a @ a
                body()

        return median_ms(many, reps=reps, warmup=1)

    gemm_only = loop_ms(lambda: None)
    run.log(f"busy device: {steps} GEMMs {gemm}^3 bf16 alone: {gemm_only:.3f} ms")
    for shape, dtype in cases:
        gen = torch.Generator(device=device).manual_seed(41)
        x = (3 * torch.randn(*shape, device=device, generator=gen)).to(dtype)
        target = torch.randint(0, shape[1], (shape[0], *shape[2:]), device=device, generator=gen)
        providers = {
            "crossent impl='triton'": functools.partial(crossent.cross_entropy, impl="triton"),
            "crossent impl='triton', target_check='device'": functools.partial(
                crossent.cross_entropy, impl="triton", target_check="device"),
            "crossent impl='torch', target_check='device'": functools.partial(
                crossent.cross_entropy, impl="torch", target_check="device"),
            "crossent impl='auto'": crossent.cross_entropy,
            "torch eager F.cross_entropy": F.cross_entropy,
        }  # fmt: skip
        group = f"busy device {'x'.join(map(str, shape))} {str(dtype).split('.')[-1]}"
        for name, loss_fn in providers.items():
            def body(loss_fn=loss_fn, x=x, target=target):
                loss_fn(x.detach().requires_grad_(), target).backward()

            def measure(body=body):
                return (loop_ms(body) - gemm_only) / steps, "device time per call beside the GEMMs"

            record_measured(run, group, name, measure, nbytes=2 * x.numel() * x.element_size())


def profile_calls(run: Run, call, calls: int, file_name: str) -> str:
    """``cProfile`` of ``calls`` back-to-back calls of ``call`` (after one that compiles): the
    functions by own time, then by cumulative time, written to ``file_name`` in ``$OUT`` and
    returned."""
    import cProfile
    import io
    import pstats

    call()
    synchronize()
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(calls):
        call()
    profile.disable()
    synchronize()
    text = io.StringIO()
    stats = pstats.Stats(profile, stream=text)
    stats.sort_stats("tottime").print_stats(45)
    stats.sort_stats("cumulative").print_stats(70)
    path = Path(run.args.out) / file_name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.getvalue())
    return text.getvalue()


def host_profile(run: Run, device, small: bool):
    """Where the public call's host time goes: host time per call of each piece at 64x32000
    bfloat16 (a kernel of microseconds, so the host decides), from a bare Triton launch to the
    public fwd+bwd and the public call with every Triton kernel stubbed
    (``host_ops.stubbed_kernels``: the difference is what Triton's launches cost), then
    ``cProfile`` over back-to-back fwd+bwd calls (own time and cumulative time per function)
    into ``host_profile.txt``; then the same for the blocked
    ``linear_cross_entropy(impl="triton")`` at 256x1024x32000 (``host_profile_linear.txt``)."""
    import torch
    import triton
    import triton.language as tl

    import crossent
    import host_ops  # (benchmarks/host_ops.py: this script's folder is on sys.path)
    from crossent.backends.triton import cross_entropy as launchers
    from crossent.backends.triton import kernels
    from crossent.backends.triton.cross_entropy import RowOptions

    @triton.jit
    def one_store(out_ptr, value):
        tl.store(out_ptr, value)

    rows, cols = (8, 256) if small else (64, 32000)
    gen = torch.Generator(device=device).manual_seed(7)
    x = torch.randn(rows, cols, device=device, generator=gen).to(torch.bfloat16)
    target = torch.randint(0, cols, (rows,), device=device, generator=gen)
    flag = torch.zeros(1, device=device)
    options = RowOptions()
    grad = torch.empty_like(x)
    half = torch.tensor(0.5, device=device)

    def enter_device():
        with launchers._on_device(x.device):
            pass

    recorded = {}

    class Recorder:  # records the row kernel's launch as the launcher makes it
        def __getitem__(self, grid):
            def record(*args, **kwargs):
                recorded.update(grid=grid, args=args, kwargs=kwargs)

            return record

    real, check_device = kernels.cross_entropy_rows_kernel, launchers._check_device
    kernels.cross_entropy_rows_kernel, launchers._check_device = Recorder(), lambda *_: None
    try:
        launchers.cross_entropy_rows(x, target, None, options, grad)
    finally:
        kernels.cross_entropy_rows_kernel, launchers._check_device = real, check_device
    loss, lse = launchers.cross_entropy_rows(x, target, None, options)

    def public(**kw):
        def call():
            leaf = x.detach().requires_grad_()
            crossent.cross_entropy(leaf, target, impl="triton", **kw).backward()

        return call

    def forward(**kw):
        def call():
            with torch.no_grad():
                crossent.cross_entropy(x, target, impl="triton", **kw)

        return call

    probes = {
        "torch.empty(64) on the device": lambda: torch.empty(64, device=device),
        "tensor.item() of a ready 1-element tensor (a sync)": lambda: flag.item(),
        "enter/leave crossent's device context": enter_device,
        "bare Triton launch (2 arguments)": lambda: one_store[(1,)](flag, 1.0),
        "row kernel launch, arguments ready": lambda: real[recorded["grid"]](
            *recorded["args"], **recorded["kwargs"]
        ),
        "target_stats launcher": lambda: launchers.target_stats(
            target, None, cols, -100, torch.float32
        ),
        "reduce_rows launcher": lambda: launchers.reduce_rows(loss, lse, True, float(rows)),
        "cross_entropy_rows launcher, loss and lse": lambda: launchers.cross_entropy_rows(
            x, target, None, options
        ),
        "cross_entropy_rows launcher, into a gradient buffer": lambda: launchers.cross_entropy_rows(
            x, target, None, options, grad
        ),
        "scale_rows_ launcher (one factor on the device)": lambda: launchers.scale_rows_(
            grad, half
        ),
        "public forward (no grad), target_check='host'": forward(),
        "public forward (no grad), target_check='device'": forward(target_check="device"),
        "public fwd+bwd, target_check='host'": public(),
        "public fwd+bwd, target_check='device'": public(target_check="device"),
        "public fwd+bwd, impl='auto' (torch's kernel at this size)": lambda: (
            crossent.cross_entropy(x.detach().requires_grad_(), target).backward()
        ),
        "torch eager F.cross_entropy fwd+bwd": lambda: torch.nn.functional.cross_entropy(
            x.detach().requires_grad_(), target
        ).backward(),
    }
    stubbed = {  # what is left without Triton's launches: crossent's Python, torch's ops
        "public forward (no grad), every Triton kernel stubbed": forward(),
        "public fwd+bwd, every Triton kernel stubbed": public(),
    }
    batch = 1 if small else 100
    for name, fn in [*probes.items(), *stubbed.items()]:
        try:
            with host_ops.stubbed_kernels() if name in stubbed else contextlib.nullcontext():
                us = host_us_per_call(fn, batch, reps=1 if small else 5)
            run.log(f"host cost: {name}: {us:.1f} us per call")
            run.results.setdefault("host_costs_us", {})[name] = us
        except Exception as exc:
            run.log(f"host cost: {name}: failed: {type(exc).__name__}: {exc}"[:300])

    text = profile_calls(run, public(), 2 if small else 200, "host_profile.txt")
    run.log(f"host profile of {2 if small else 200} public fwd+bwd calls -> host_profile.txt")
    print("\n".join(text.splitlines()[:70]), flush=True)

    # the blocked linear path (impl="triton"), whose fixed cost per call is the larger
    n, d, c = (16, 32, 100) if small else (256, 1024, 32000)
    xl = torch.randn(n, d, device=device, generator=gen).to(torch.bfloat16)
    wl = (torch.randn(c, d, device=device, generator=gen) / d**0.5).to(torch.bfloat16)
    tl_target = torch.randint(0, c, (n,), device=device, generator=gen)

    def linear_call():
        leaves = xl.detach().requires_grad_(), wl.detach().requires_grad_()
        crossent.linear_cross_entropy(*leaves, tl_target, impl="triton").backward()

    us = host_us_per_call(linear_call, 1 if small else 50, reps=1 if small else 5)
    run.log(f"host cost: linear_cross_entropy(impl='triton') fwd+bwd {n}x{d}x{c}: {us:.1f} us")
    profile_calls(run, linear_call, 2 if small else 100, "host_profile_linear.txt")
    run.log("host profile of the linear calls -> host_profile_linear.txt")


def small_calls(run: Run, device, small: bool):
    """The public call's fixed cost where the kernel is short: device time (CUDA events, median)
    and host time per call of ``impl='triton'``, ``'auto'``, ``'torch'`` and torch eager,
    fwd+bwd, from small 2-D problems to the size where the kernel dominates, and K-dim inputs:
    the data for where ``impl='auto'`` on CUDA should hand small problems to torch's kernel
    (as it does on the CPU)."""
    import torch
    import torch.nn.functional as F

    import crossent

    launch_costs(run, device, small)
    cases = [((64, 1000), torch.float32), ((1024, 32000), torch.bfloat16)]
    if not small:
        cases = [((256, 1000), torch.float32), ((64, 32000), torch.bfloat16),
                 ((512, 32000), torch.bfloat16), ((2048, 32000), torch.bfloat16),
                 ((8192, 32000), torch.bfloat16), ((2048, 32000), torch.float32),
                 ((8, 21, 512, 512), torch.float32), ((16, 150, 128, 128), torch.bfloat16)]
    reps = 2 if small else 30
    small_linear_calls(run, device, small, reps)
    for shape, dtype in cases:
        if small and len(shape) == 2 and shape[0] > 64:
            continue
        gen = torch.Generator(device=device).manual_seed(43)
        base = (3 * torch.randn(*shape, device=device, generator=gen)).to(dtype)
        target_shape = (shape[0], *shape[2:])
        target = torch.randint(0, shape[1], target_shape, device=device, generator=gen)
        target.view(-1)[::11] = -100
        group = f"small calls {'x'.join(map(str, shape))} {str(dtype).split('.')[-1]}"
        state = {}

        def setup(base=base, state=state):
            state["x"] = base.detach().clone().requires_grad_()

        def call(loss_fn, state=state, target=target):
            loss_fn(state["x"], target).backward()

        providers = {
            "crossent.cross_entropy(impl='triton')":
                functools.partial(call, functools.partial(crossent.cross_entropy, impl="triton")),
            "crossent.cross_entropy(impl='triton', target_check='device')": functools.partial(
                call, functools.partial(crossent.cross_entropy, impl="triton",
                                        target_check="device")),
            "crossent.cross_entropy(impl='auto')": functools.partial(call, crossent.cross_entropy),
            "crossent.cross_entropy(impl='torch') (checks, then torch's kernel)":
                functools.partial(call, functools.partial(crossent.cross_entropy, impl="torch")),
            "torch eager F.cross_entropy": functools.partial(call, F.cross_entropy),
        }  # fmt: skip
        for name, fn in providers.items():
            time_call(run, group, name, fn, setup, reps,
                      nbytes=2 * base.numel() * base.element_size())  # fmt: skip


def invalid_target_check(run: Run, device, small: bool):
    """An out-of-range class index raises IndexError on the public Triton path, in place too,
    and in place leaves the logits untouched."""
    import torch

    import crossent

    x = torch.randn(64, 1000, device=device)
    target = torch.randint(0, 1000, (64,), device=device)
    target[5] = 1000
    weight = torch.rand(1000, device=device) + 0.5
    outcomes = []
    # (the out-of-place call queues the kernel before it reads the check's verdict: with class
    # weights too, nothing may index with the bad class meanwhile, or the device asserts)
    for inplace, class_weight in ((False, None), (True, None), (False, weight)):
        work = x.clone().requires_grad_(not inplace)
        try:
            if inplace:
                leaf = x.clone().requires_grad_()
                work = leaf * 1
                crossent.cross_entropy(work, target, impl="triton", inplace_backward=True)
            else:
                crossent.cross_entropy(work, target, class_weight, impl="triton")
            outcomes.append("no error")
        except IndexError as exc:
            outcomes.append("IndexError" + ("" if not inplace or torch.equal(work, x) else
                                            " but logits changed"))  # fmt: skip
            run.log(f"invalid target (inplace={inplace}): {exc}")
        except Exception as exc:
            outcomes.append(f"{type(exc).__name__}: {exc}")
    after = crossent.cross_entropy(x, target.clamp(max=999), weight, impl="triton")
    healthy = bool(torch.isfinite(after))  # the device is fine after the errors
    run.check("out-of-range target: IndexError (buffer, in place, weighted; logits untouched)",
              outcomes == ["IndexError"] * 3 and healthy, repr((outcomes, healthy)))  # fmt: skip


def eager_route_check(run: Run, device, small: bool):
    """The public call's eager route (no custom-op dispatch) equals the route through the
    custom ops bitwise on the device: losses, lse and gradients, in place too, under an upstream
    factor that is not 1 and with class weights, smoothing and ignored rows."""
    import torch

    import crossent
    from crossent import _fused_op

    n, v = (48, 1000) if small else (1024, 50000)
    gen = torch.Generator(device=device).manual_seed(17)
    base = (3 * torch.randn(n, v, device=device, generator=gen)).to(torch.bfloat16)
    target = torch.randint(0, v, (n,), device=device, generator=gen)
    target[::7] = -100
    weight = (torch.rand(v, device=device, generator=gen) + 0.5).to(torch.bfloat16)

    def results(inplace: bool):
        leaf = base.detach().clone().requires_grad_()
        logits = leaf * 1 if inplace else leaf
        out = crossent.cross_entropy_with_extras(
            logits, target, weight, label_smoothing=0.1, z_loss=1e-4, impl="triton",
            inplace_backward=inplace,
        )  # fmt: skip
        (2.5 * out.loss).backward()
        return out.loss.detach(), out.lse, out.z_loss, leaf.grad

    original = _fused_op._runs_eagerly
    for inplace in (False, True):
        eager = results(inplace)
        _fused_op._runs_eagerly = lambda *tensors: False
        try:
            through_ops = results(inplace)
        finally:
            _fused_op._runs_eagerly = original
        same = all(torch.equal(a, b) for a, b in zip(eager, through_ops, strict=True))
        run.check(f"eager route == custom-op route, bitwise (inplace={inplace})", same)


def torch_route(run: Run, device, small: bool):
    """``impl="auto"`` of cross_entropy (2-D, below ``CUDA_CROSS_ENTROPY_MAX_ELEMENTS``
    logits), nll_loss (2-D) and the binary losses runs torch's own kernel after
    crossent's checks: bitwise torch's result, deterministic (repeat bitwise, no error under
    ``use_deterministic_algorithms``), checks still first, then its time and memory against
    the reference and torch eager."""
    import torch
    import torch.nn.functional as F

    import crossent

    n, c = (64, 10) if small else (8192, 32000)
    m = 4096 if small else 1 << 24
    gen = torch.Generator(device=device).manual_seed(23)
    logp = torch.log_softmax(torch.randn(n, c, device=device, generator=gen), 1)
    index = torch.randint(0, c, (n,), device=device, generator=gen)
    index[::9] = -100
    z = 4 * torch.randn(m, device=device, generator=gen)
    soft = torch.rand(m, device=device, generator=gen)
    rows = 64 if small else 512  # 512x32000 bfloat16: below CUDA_CROSS_ENTROPY_MAX_ELEMENTS
    logits = (3 * torch.randn(rows, c, device=device, generator=gen)).to(torch.bfloat16)
    ce_target = index[:rows]
    ce_weight = (torch.rand(c, device=device, generator=gen) + 0.5).to(torch.bfloat16)
    cases = {
        "cross_entropy": (logits, ce_target, {"weight": ce_weight, "label_smoothing": 0.1}),
        "nll_loss": (logp, index, {}),
        "binary_cross_entropy": (torch.sigmoid(z), soft, {}),
        "binary_cross_entropy_with_logits": (z, soft, {"pos_weight": soft[:1] + 1}),
    }

    def outcome(fn, x, target, kwargs):
        leaf = x.detach().clone().requires_grad_()
        loss = fn(leaf, target, **kwargs)
        loss.backward()
        return loss.detach(), leaf.grad

    for op, (x, target, kwargs) in cases.items():
        ours = getattr(crossent, op)
        theirs = outcome(getattr(F, op), x, target, kwargs)
        first = outcome(ours, x, target, kwargs)
        torch.use_deterministic_algorithms(True)
        try:
            again = outcome(ours, x, target, kwargs)
        finally:
            torch.use_deterministic_algorithms(False)
        same = all(torch.equal(a, b) for a, b in zip(first, theirs, strict=True))
        repeat = all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
        run.check(f"torch route: {op} auto == torch bitwise, deterministic repeat",
                  same and repeat, f"same={same} repeat={repeat}")  # fmt: skip
        reps = 3 if small else 20
        for name, fn in ((f"crossent.{op} (auto)", ours),
                         (f"crossent.{op} (reference)",
                          functools.partial(ours, impl="reference")),
                         (f"F.{op}", getattr(F, op))):  # fmt: skip
            def build(fn=fn, x=x, target=target, kwargs=kwargs):
                state = {}

                def setup():
                    state["x"] = x.detach().clone().requires_grad_()

                return (lambda: fn(state["x"], target, **kwargs).backward()), setup

            time_provider(run, f"torch route {op} {tuple(x.shape)}", name, build, reps,
                          nbytes=2 * x.numel() * x.element_size(), needs=20)  # fmt: skip
    bad = index.clone()
    bad[3] = c
    errors = []
    linear_check(run, device, small)
    uint8_target_check(run, device)
    for call in (lambda: crossent.cross_entropy(logits, bad[:rows]),
                 lambda: crossent.nll_loss(logp, bad),
                 lambda: crossent.binary_cross_entropy(torch.sigmoid(z), soft + 1)):
        try:
            call()
            errors.append("no error")
        except (IndexError, RuntimeError) as exc:
            errors.append(type(exc).__name__)
    healthy = bool(torch.isfinite(crossent.nll_loss(logp, index)))
    run.check("torch route: bad targets raise before torch's kernel runs, device healthy",
              errors == ["IndexError", "IndexError", "RuntimeError"] and healthy,
              repr((errors, healthy)))  # fmt: skip


def uint8_target_check(run: Run, device):
    """A uint8 class-index target on auto's torch route (a small 2-D CUDA cross_entropy): the
    same outcome as torch's own call with it (its loss and gradient bitwise, or the same
    exception type)."""
    import torch
    import torch.nn.functional as F

    import crossent

    gen = torch.Generator(device=device).manual_seed(37)
    x = torch.randn(64, 200, device=device, generator=gen)
    target = torch.randint(0, 200, (64,), device=device, generator=gen).to(torch.uint8)

    def outcome(fn):
        leaf = x.detach().clone().requires_grad_()
        try:
            loss = fn(leaf, target)
            loss.backward()
            return loss.detach(), leaf.grad
        except Exception as exc:  # the outcome is what is compared
            return type(exc).__name__

    ours, theirs = outcome(crossent.cross_entropy), outcome(F.cross_entropy)
    same = (ours == theirs if isinstance(theirs, str) or isinstance(ours, str)
            else all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True)))  # fmt: skip
    described = theirs if isinstance(theirs, str) else "a loss"
    run.check("torch route: uint8 target, same outcome as torch's call", same,
              f"torch: {described}")  # fmt: skip


def linear_check(run: Run, device, small: bool):
    """``linear_cross_entropy(impl="auto")`` of a small 2-D problem on CUDA is torch's
    ``F.cross_entropy(F.linear(...))`` after crossent's checks: bitwise torch's loss and
    gradients (input, weight, bias), repeated bitwise under ``use_deterministic_algorithms``;
    an out-of-range target still raises crossent's IndexError."""
    import torch
    import torch.nn.functional as F

    import crossent

    n, d, c = (16, 32, 100) if small else (256, 1024, 32000)
    gen = torch.Generator(device=device).manual_seed(29)
    x = torch.randn(n, d, device=device, generator=gen).to(torch.bfloat16)
    w = (torch.randn(c, d, device=device, generator=gen) / d**0.5).to(torch.bfloat16)
    b = torch.randn(c, device=device, generator=gen).to(torch.bfloat16)
    t = torch.randint(0, c, (n,), device=device, generator=gen)
    t[::7] = -100

    def outcome(fn):
        leaves = [v.detach().clone().requires_grad_() for v in (x, w, b)]
        loss = fn(*leaves)
        loss.backward()
        return [loss.detach()] + [leaf.grad for leaf in leaves]

    def ours(a, weight, bias):
        return crossent.linear_cross_entropy(a, weight, t, linear_bias=bias, label_smoothing=0.1)

    def theirs(a, weight, bias):
        return F.cross_entropy(F.linear(a, weight, bias), t, label_smoothing=0.1)

    first, expected = outcome(ours), outcome(theirs)
    torch.use_deterministic_algorithms(True)
    try:
        again = outcome(ours)
    finally:
        torch.use_deterministic_algorithms(False)
    same = all(torch.equal(p, q) for p, q in zip(first, expected, strict=True))
    repeat = all(torch.equal(p, q) for p, q in zip(first, again, strict=True))
    bad = t.clone()
    bad[3] = c
    errors = []
    for impl in ("auto", "triton"):  # the torch route; the blocked path (Triton count first)
        try:
            crossent.linear_cross_entropy(x, w, bad, impl=impl)
            errors.append("no error")
        except IndexError:
            errors.append("IndexError")
    healthy = bool(torch.isfinite(crossent.linear_cross_entropy(x, w, t, impl="triton")))
    run.check(f"torch route: linear_cross_entropy {n}x{d}x{c} auto == F.cross_entropy(F.linear) "
              f"bitwise, deterministic repeat; a bad target raises on both routes",
              same and repeat and errors == ["IndexError"] * 2 and healthy,
              f"same={same} repeat={repeat} {errors} healthy={healthy}")  # fmt: skip


def upstream_layouts(run: Run, device, small: bool):
    """``reduction="none"`` with upstream gradients as autograd hands them over: ``.sum()``'s
    expanded ones (stride 0), a sliced factor vector (stride 2) and a plain one, through the
    rows and the column layouts, against torch in float64."""
    import torch
    import torch.nn.functional as F

    import crossent

    gen = torch.Generator(device=device).manual_seed(37)
    shapes = {"rows": (64, 1000), "columns": (2, 7, 8, 32)}
    for layout, shape in shapes.items():
        x = torch.randn(shape, device=device, generator=gen, dtype=torch.float64)
        t_shape = (shape[0], *shape[2:])
        target = torch.randint(0, shape[1], t_shape, device=device, generator=gen)
        target.view(-1)[::5] = -100
        positions = target.numel()
        sliced = torch.rand(2 * positions, device=device, generator=gen, dtype=torch.float64)
        three = torch.full((), 3.0, device=device, dtype=torch.float64)
        upstreams = {
            "sum()": None,  # loss.sum().backward(): autograd expands a 0-d one
            "expanded": three.expand(t_shape),
            "sliced": sliced[::2].reshape(t_shape),
        }
        for name, upstream in upstreams.items():
            grads = []
            for fn in (functools.partial(crossent.cross_entropy, impl="triton"), F.cross_entropy):
                leaf = x.clone().requires_grad_()
                loss = fn(leaf, target, reduction="none")
                if upstream is None:
                    loss.sum().backward()
                else:
                    loss.backward(upstream)
                grads.append(leaf.grad)
            err = rel_err(grads[0], grads[1])
            run.check(f"upstream {name} ({layout}): gradient == torch's", err < 1e-12,
                      f"rel err {err:.1e}")  # fmt: skip


def column_kernel(run: Run, device, small: bool):
    """K-dim (segmentation-style) cross-entropy through the column kernel (the input as
    ``(N, C, S)``, no copy): loss and gradient against float64 on the GPU, a bitwise repeat,
    an upstream factor of 2.5 through the column scaler; then fwd+bwd time and peak memory
    against the same call through rows (the copy into ``(N*S, C)``, forced by raising
    ``COLUMN_MIN_POSITIONS``) and torch eager."""
    import torch

    shapes = [((2, 5, 8, 16), "float32")] if small else [
        ((8, 21, 512, 512), "float32"), ((8, 21, 512, 512), "bfloat16"),
        ((16, 150, 128, 128), "bfloat16"),
    ]  # fmt: skip
    gen = torch.Generator(device=device).manual_seed(29)
    for shape, dtype_name in shapes:
        dtype = getattr(torch, dtype_name)
        x = (3 * torch.randn(shape, device=device, generator=gen)).to(dtype)
        target = torch.randint(0, shape[1], (shape[0], *shape[2:]), device=device,
                               generator=gen)  # fmt: skip
        target[:, ::7] = -100
        weight = (torch.rand(shape[1], device=device, generator=gen) + 0.5).to(dtype)
        _column_case(run, small, x, target, weight)


def _column_case(run: Run, small: bool, x, target, weight):
    import torch
    import torch.nn.functional as F

    import crossent
    from crossent.backends.triton import cross_entropy as launchers

    dtype = x.dtype
    label = f"{'x'.join(map(str, x.shape))} {str(dtype).removeprefix('torch.')}"

    def grads(fn, logits, upstream=1.0):
        leaf = logits.detach().clone().requires_grad_()
        loss = fn(leaf)
        (loss * upstream).backward()
        return loss.detach(), leaf.grad

    def ours(logits):
        return crossent.cross_entropy(logits, target, weight, impl="triton")

    def theirs(logits):
        return F.cross_entropy(logits, target, weight.to(logits.dtype))

    exact = grads(theirs, x.double())
    torch_result = grads(theirs, x)
    first = grads(ours, x)
    again = grads(ours, x)
    scaled = grads(ours, x, 2.5)
    errs = [rel_err(first[i], exact[i]) for i in (0, 1)]
    eps = torch.finfo(dtype).eps
    bounds = [4 * max(rel_err(torch_result[i], exact[i]), eps) for i in (0, 1)]
    repeat = all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    factor = rel_err(scaled[1], (first[1].double() * 2.5).to(dtype))
    ok = errs[0] <= bounds[0] and errs[1] <= bounds[1] and repeat and factor <= 2.0**-7
    detail = (f"loss {errs[0]:.1e} grad {errs[1]:.1e} (bounds {bounds[0]:.1e}, {bounds[1]:.1e}: "
              f"4x torch's), repeat={repeat}, x2.5 err {factor:.1e}")  # fmt: skip
    run.check(f"column kernel vs float64: {label}", ok, detail)

    def through_rows(logits):
        saved = launchers.COLUMN_MIN_POSITIONS
        launchers.COLUMN_MIN_POSITIONS = 1 << 62  # (read at each call)
        try:
            return ours(logits)
        finally:
            launchers.COLUMN_MIN_POSITIONS = saved

    def build(fn):
        state = {}

        def setup():
            state["x"] = x.detach().clone().requires_grad_()

        return (lambda: fn(state["x"]).backward()), setup

    reps = 2 if small else 10
    nbytes = 2 * x.numel() * x.element_size()  # one read of the logits, one gradient write
    for name, fn in (("crossent.cross_entropy(impl='triton'), columns", ours),
                     ("crossent.cross_entropy(impl='triton'), rows (copy)", through_rows),
                     ("torch eager F.cross_entropy", theirs)):  # fmt: skip
        time_provider(run, f"K-dim {label}", name, functools.partial(build, fn), reps,
                      nbytes=nbytes, needs=20, trace=name.startswith("crossent"))  # fmt: skip

    # the kernel alone (no checks, no autograd), at its default launch and a few others: what
    # the public call adds is host time
    from crossent.backends.rows import RowOptions
    from crossent.backends.triton import KernelConfig, cross_entropy_rows

    columns = x.reshape(x.shape[0], x.shape[1], -1)
    flat_target = target.reshape(-1)
    grad = torch.empty_like(columns)
    inv = 1.0 / (flat_target != -100).sum().to(torch.float32)

    def kernel_alone(config=None):
        cross_entropy_rows(columns, flat_target, weight, RowOptions(), grad, row_scale=inv,
                           config=config)  # fmt: skip

    time_provider(run, f"K-dim {label}", "crossent column kernel alone (default launch)",
                  lambda: (kernel_alone, None), reps, nbytes=nbytes, needs=20)  # fmt: skip
    for block, warps in ((1024, 8), (1024, 4), (512, 4), (256, 2), (2048, 8), (256, 8)):
        if small or run.remaining() < 30:
            break
        config = KernelConfig(block=block, num_warps=warps)
        ms = median_ms(functools.partial(kernel_alone, config), reps=reps)
        tb_s = nbytes / (ms * 1e-3) / 1e12
        copy = run.results["info"].get("copy_tb_s") or float("nan")
        run.results["sweep"].append({
            "shape": label, "config": f"column kernel, {block} positions, {warps} warps",
            "spec": repr(config), "ms": ms, "tb_s": tb_s, "pct_copy_bw": 100 * tb_s / copy,
        })  # fmt: skip
        run.log(f"column sweep {label} block {block} warps {warps}: {ms:.3f} ms")


def autocast_check(run: Run, device, small: bool):
    """Under torch.autocast the losses give torch's own result dtype (float32 from bfloat16
    logits) and weight gradient; binary_cross_entropy fails as torch's does.

    The loss values: nll_loss and the binary losses are torch's bit for bit. torch's CUDA
    ``cross_entropy`` is no autocast op: its composite calls ``log_softmax`` with the input's
    own dtype, so the log-probabilities are rounded to bfloat16 before the float32 ``nll_loss``
    (checked here against that composite written out). crossent does not round them: its loss
    is torch's float32 loss on the same bfloat16 logits (``F.cross_entropy(z.float(), ...)``),
    checked to be at least as close to float64 as torch's own autocast loss."""
    import torch
    import torch.nn.functional as F

    import crossent

    gen = torch.Generator(device=device).manual_seed(23)
    n, d, v = (16, 32, 1000) if small else (256, 512, 32000)
    hidden = torch.randn(n, d, device=device, generator=gen)
    layer = torch.nn.Linear(d, v, device=device)
    target = torch.randint(0, v, (n,), device=device, generator=gen)
    target[:3] = -100
    soft = torch.rand(n, v, device=device, generator=gen)
    smoothing = {"label_smoothing": 0.1}
    pairs = {
        "cross_entropy": (lambda z: crossent.cross_entropy(z, target, **smoothing),
                          lambda z: F.cross_entropy(z, target, **smoothing), smoothing),
        "nll_loss": (lambda z: crossent.nll_loss(torch.log_softmax(z.float(), 1), target),
                     lambda z: F.nll_loss(torch.log_softmax(z.float(), 1), target), None),
        "bce_with_logits": (lambda z: crossent.binary_cross_entropy_with_logits(z, soft),
                            lambda z: F.binary_cross_entropy_with_logits(z, soft), None),
        # the linear layer itself under the loss: hidden -> W x + b -> cross-entropy
        "linear_cross_entropy": (
            lambda z: crossent.linear_cross_entropy(
                hidden, layer.weight, target, linear_bias=layer.bias),
            lambda z: F.cross_entropy(F.linear(hidden, layer.weight, layer.bias), target), {}),
    }  # fmt: skip
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
        logits = layer(hidden)  # the bfloat16 logits every loss above sees
    for name, (ours, theirs, ce_options) in pairs.items():
        results = []
        for loss_fn in (ours, theirs):
            layer.zero_grad()
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = loss_fn(layer(hidden))
            loss.backward()
            results.append((loss.detach(), layer.weight.grad.clone()))
        (loss, grad), (ref, ref_grad) = results
        err = rel_err(grad.double(), ref_grad.double())
        # Two bfloat16 units: both round the weight gradient to bfloat16 once, torch in
        # cuBLAS and crossent from a float32 accumulator (the linear head).
        ok = loss.dtype == ref.dtype and err < 2**-7
        detail = f"loss {loss.item():.6f} vs {ref.item():.6f}, grad err {err:.1e}"
        if ce_options is None:
            ok = ok and rel_err(loss, ref) < 1e-5
        else:
            exact = F.cross_entropy(logits.double(), target, **ce_options)
            widened = F.cross_entropy(logits.float(), target, **ce_options)
            ours_err, torch_err = rel_err(loss, exact), rel_err(ref, exact)
            # 1e-6: the linear head's blocked GEMM may round a few logits differently
            ok = ok and ours_err <= max(torch_err, 1e-6) and rel_err(loss, widened) < 1e-5
            detail += (f"; vs float64 of the same bf16 logits: crossent {ours_err:.1e}, "
                       f"torch {torch_err:.1e}; crossent vs F.cross_entropy(z.float()) "
                       f"{rel_err(loss, widened):.1e}")  # fmt: skip
        run.check(f"autocast {name}: {loss.dtype} == {ref.dtype}, loss and weight grad", ok, detail)
    # torch's composite, written out: log_softmax in the input's dtype, nll_loss in float32
    with torch.no_grad():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            theirs = F.cross_entropy(logits, target)
        composite = F.nll_loss(F.log_softmax(logits, 1, dtype=logits.dtype).float(), target)
    same = torch.equal(theirs, composite) if device.type == "cuda" else True
    run.check("autocast: torch's CUDA cross_entropy == nll_loss(log_softmax in bf16).float()",
              same, f"{theirs.item():.7f} vs {composite.item():.7f}")  # fmt: skip
    outcomes = []
    for fn in (F.binary_cross_entropy, crossent.binary_cross_entropy):
        try:
            with torch.autocast(device.type, dtype=torch.bfloat16):
                fn(torch.sigmoid(layer(hidden)), soft)
            outcomes.append("ok")
        except Exception as exc:  # the outcome is what is compared
            outcomes.append(type(exc).__name__)
    run.check("autocast binary_cross_entropy: same outcome as torch", outcomes[0] == outcomes[1],
              repr(outcomes))  # fmt: skip


def gemm_out_dtype(run: Run, device, small: bool):
    """dW-style GEMMs (M=V, N=D, K=rows): bf16 output vs float32 output/accumulation."""
    import torch

    if small:
        run.log("gemm out_dtype: skipped (dry run: no CPU kernel for out_dtype)")
        return
    v, d = 128256, 4096
    w_acc = torch.empty(v, d, dtype=torch.float32, device=device)
    for k in (2048, 4096, 8192):
        dz = torch.randn(k, v, device=device).to(torch.bfloat16)
        xb = torch.randn(k, d, device=device).to(torch.bfloat16)
        flops = 2 * v * d * k
        variants = [
            ("mm bf16 out", functools.partial(torch.mm, dz.t(), xb)),
            (
                "mm out_dtype=fp32",
                functools.partial(torch.mm, dz.t(), xb, out_dtype=torch.float32, out=w_acc),
            ),
            (
                "addmm out_dtype=fp32 (accumulate)",
                functools.partial(
                    torch.addmm, w_acc, dz.t(), xb, out_dtype=torch.float32, out=w_acc
                ),
            ),
        ]
        for name, fn in variants:
            try:
                ms = median_ms(fn, reps=5)
                row = {"gemm": f"{name} K={k}", "ms": ms, "tflops": flops / (ms * 1e-3) / 1e12}
                run.results["gemm"].append(row)
                run.log(f"gemm {row['gemm']}: {ms:.3f} ms {row['tflops']:.1f} TFLOP/s")
            except Exception as exc:
                run.log(f"gemm {name} K={k}: failed {type(exc).__name__}: {exc}")
    # accuracy of the float32 accumulation against float64
    k = 1024
    a = torch.randn(k, 4096, device=device).to(torch.bfloat16)
    b = torch.randn(k, 512, device=device).to(torch.bfloat16)
    try:
        acc = torch.mm(a.t(), b, out_dtype=torch.float32)
        torch.addmm(acc, a.t(), b, out_dtype=torch.float32, out=acc)
        exact = 2 * (a.double().t() @ b.double())
        run.check("addmm(out_dtype=float32) accumulates in float32", rel_err(acc, exact) < 1e-6)
    except Exception as exc:
        run.check("addmm(out_dtype=float32) available", False, f"{type(exc).__name__}: {exc}")


LINEAR_SHAPES = {
    "Llama-3-8B head": (8192, 4096, 128256),
    "Gemma-2-2B head": (8192, 2304, 256000),
}


def linear_timings(run: Run, device, small: bool):
    shapes = {"tiny head": (64, 32, 1000)} if small else LINEAR_SHAPES
    for label, (n, d, v) in shapes.items():
        group = f"linear {label} N={n} D={d} V={v} bf16"
        flops = 6 * n * d * v
        reps = 2 if small else 5
        x, w, target = make_linear_inputs(n, d, v, device, seed=41)
        budget_note = (
            f"issue memory target: dX + dW + fp32 dW + one logits block = "
            f"{(n * d * 2 + v * d * 2 + v * d * 4) / 2**30:.2f} GiB + block"
        )
        run.log(group, "|", budget_note)

        def autograd_build(loss_fn, x=x, w=w, target=target):
            def setup():
                x.grad = None
                w.grad = None

            def fn():
                loss_fn(x, w, target).backward()

            return fn, setup

        providers = [
            (
                "crossent.linear_cross_entropy(impl='triton')",
                lambda: autograd_build(crossent_linear),
            ),
        ]
        for rows in (2048, 4096, 8192) if not small else (16, 64):
            providers.append(
                (
                    f"recipe, {rows}-row blocks",
                    lambda rows=rows: autograd_build(
                        functools.partial(linear_recipe, block_rows=rows)
                    ),
                )
            )
        providers.append(
            (
                "torch eager (fp32 logits)",
                lambda: autograd_build(eager_fp32_logits),
            )
        )
        if not small:
            providers += [
                ("Liger fused linear CE (Triton)", lambda: autograd_build(liger_flce)),
                ("Cut Cross-Entropy (default, filtered)", lambda: autograd_build(cce_default)),
                ("Cut Cross-Entropy (filter_eps=None)", lambda: autograd_build(cce_exact)),
            ]
        for name, build in providers:
            trace = name.startswith("crossent.")
            time_provider(run, group, name, build, reps, flops=flops, trace=trace)
        run.results.setdefault("deferred", []).append(
            (
                group,
                "torch.compile (fp32 logits)",
                lambda build=autograd_build: build(compiled_linear()),
                reps,
                None,
                flops,
            )
        )
        free_memory()


def eager_fp32_logits(x, w, t):
    import torch.nn.functional as F

    return F.cross_entropy((x @ w.t()).float(), t)


def liger_flce(x, w, t):
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    return liger_fused_linear_cross_entropy(x, w, t)


def cce_default(x, w, t):
    from cut_cross_entropy import linear_cross_entropy

    return linear_cross_entropy(x, w, t)


def cce_exact(x, w, t):
    from cut_cross_entropy import linear_cross_entropy

    return linear_cross_entropy(x, w, t, filter_eps=None)


def compiled_linear():
    import torch

    return torch.compile(eager_fp32_logits, dynamic=False)


def deferred_timings(run: Run, device, small: bool):
    """torch.compile providers last: their compile time is the least predictable."""
    if small:
        run.log("torch.compile: skipped (dry run)")
        return
    for item in run.results.pop("deferred", []):
        group, name, build, reps, nbytes, *rest = item
        flops = rest[0] if rest else None
        time_provider(run, group, name, build, reps, flops=flops, nbytes=nbytes, needs=75)


# ------------------------------------------------------------------------------------------------
# 5. report


def markdown(run: Run) -> str:
    info = run.results["info"]
    lines = [
        f"## crossent GPU run: {info.get('card', '?')}",
        "",
        f"torch {info.get('torch')}, Triton {info.get('triton')}, CUDA {info.get('cuda')}, "
        f"{info.get('sms')} SMs, L2 {info.get('l2_mb', 0):.0f} MB; measured copy bandwidth "
        f"{info.get('copy_tb_s', float('nan')):.2f} TB/s (read + write), bf16 GEMM "
        f"{info.get('gemm_bf16_tflops', float('nan')):.0f} TFLOP/s.",
        "",
        f"Checks: {sum(c['ok'] for c in run.results['checks'])}/{len(run.results['checks'])} "
        f"passed" + (f"; FAILED: {', '.join(run.failures)}" if run.failures else "") + ".",
        "",
        "| group | provider | fwd+bwd ms | TB/s | % copy BW | TFLOP/s (6NDV) | peak extra GiB |",
        "|---|---|---|---|---|---|---|",
    ]

    def cell(row, key, digits):
        value = row.get(key)
        return "" if value is None else f"{value:.{digits}f}"

    for row in run.results["timings"]:
        ms = "—" if row["ms"] is None else f"{row['ms']:.3f}"
        provider = row["provider"] + (f" ({row['note']})" if row["ms"] is None else "")
        lines.append(
            f"| {row['group']} | {provider} | {ms} | {cell(row, 'tb_s', 2)} | "
            f"{cell(row, 'pct_copy_bw', 1)} | {cell(row, 'tflops', 0)} | "
            f"{cell(row, 'peak_extra_gib', 2)} |"
        )
    if run.results["sweep"]:
        lines += [
            "",
            "| row kernel, in place, bf16 | config | ms | TB/s | % copy BW |",
            "|---|---|---|---|---|",
        ]
        for row in run.results["sweep"]:
            lines.append(
                f"| {row['shape']} | {row['config']} `{row['spec']}` | {row['ms']:.3f} | "
                f"{row['tb_s']:.2f} | {row['pct_copy_bw']:.1f} |"
            )
    if run.results["gemm"]:
        lines += ["", "| dW GEMM (M=V=128256, N=D=4096) | ms | TFLOP/s |", "|---|---|---|"]
        for row in run.results["gemm"]:
            lines.append(f"| {row['gemm']} | {row['ms']:.3f} | {row['tflops']:.0f} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------
# --compile-check: compile the variants for sm_90 without a GPU


def compile_check() -> int:
    """Compile the row kernel variants for sm_90 (no GPU needed) and print their resources."""
    import subprocess
    import tempfile

    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from crossent.backends.triton import kernels

    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    fn = kernels.cross_entropy_rows_kernel
    aligned = [["tt.divisibility", 16]]

    def compile_sm90(kernel, signature, constants, attrs, warps):
        """Compile ``kernel`` for sm_90; ``constants`` become constexprs (None pointers too)."""
        for name in constants:
            signature[name] = "constexpr"
        source = ASTSource(kernel, signature=signature, constexprs=constants, attrs=attrs)
        return triton.compile(source, target=GPUTarget("cuda", 90, 32),
                              options={"num_warps": warps})  # fmt: skip

    def resources(compiled) -> str:
        with tempfile.NamedTemporaryFile(suffix=".cubin") as handle:
            handle.write(compiled.asm["cubin"])
            handle.flush()
            out = subprocess.run(
                [str(cuobjdump), "--dump-resource-usage", handle.name],
                capture_output=True,
                text=True,
                check=False,
            ).stdout
        usage = [line.strip() for line in out.splitlines() if "REG:" in line]
        return " ".join(usage[0].split()[:5]) if usage else "?"

    def variant(dtype="bf16", prob=False, weight=False, smooth=False, z=False, cap=False,
                grad=True, scaled=False, from_lse=False, stages=3, block=2048, warps=8,
                cols=128256, hints=True):  # fmt: skip
        acc = tl.float64 if dtype == "fp64" else tl.float32
        acc_name = "fp64" if dtype == "fp64" else "fp32"
        signature = {
            "logits_ptr": f"*{dtype}",
            "logits_row_stride": "i64",
            "target_ptr": f"*{dtype}" if prob else "*i64",
            "target_row_stride": "i64",
            "weight_ptr": "*fp32" if weight else "constexpr",
            "grad_ptr": f"*{dtype}" if grad else "constexpr",
            "grad_row_stride": "i64",
            "row_scale_ptr": "*fp32" if scaled else "constexpr",
            "row_scale_stride": "i32",
            "loss_ptr": f"*{acc_name}",
            "lse_ptr": f"*{acc_name}",
            "n_rows": "i32",
            "ignore_index": "i32",
            "label_smoothing": "fp64",
            "z_loss": "fp64",
            "softcap": "fp64",
        }
        constants = dict(
            N_COLS=cols, BLOCK=block, PROB_TARGET=prob, HAS_WEIGHT=weight, SMOOTHING=smooth,
            Z_LOSS=z, SOFTCAP=cap, WRITE_GRAD=grad, HAS_ROW_SCALE=scaled,
            GRAD_FROM_LSE=from_lse, NUM_STAGES=stages,
            STATS_POLICY="evict_last" if hints else "",
            GRAD_LOAD_POLICY="evict_first" if hints else "",
            STORE_POLICY="evict_first" if hints else "", ACC=acc,
            LOWEST=-1.7976931348623157e308 if acc == tl.float64 else -3.4028234663852886e38,
        )  # fmt: skip
        for name in ("weight_ptr", "grad_ptr", "row_scale_ptr"):
            if signature[name] == "constexpr":
                constants[name] = None
        attrs = {
            (fn.arg_names.index(name),): aligned
            for name in ("logits_ptr", "logits_row_stride", "target_ptr", "grad_ptr",
                         "grad_row_stride", "loss_ptr", "lse_ptr", "weight_ptr")
            if signature[name] != "constexpr" and (cols % 16 == 0 or "ptr" in name)
        }  # fmt: skip
        begin = time.monotonic()
        compiled = compile_sm90(fn, signature, constants, attrs, warps)
        return f"{time.monotonic() - begin:4.1f}s smem={compiled.metadata.shared:6d} " + resources(
            compiled
        )

    variants = [
        {},
        {"grad": False},
        {"stages": 1},
        {"stages": 2},
        {"stages": 4},
        {"hints": False},
        {"smooth": True, "weight": True},
        {"prob": True, "weight": True, "smooth": True},
        {"z": True, "cap": True, "smooth": True, "weight": True},
        {"scaled": True, "from_lse": True},
        {"prob": True, "from_lse": True, "scaled": True, "weight": True, "smooth": True},
        {"dtype": "fp32"},
        {"dtype": "fp16", "cols": 4097},
        {"dtype": "fp64", "block": 2048, "prob": True, "smooth": True, "cap": True, "z": True},
        {"block": 8192, "warps": 32},
        {"block": 8192, "warps": 16},
        {"block": 2048, "warps": 8},
        {"cols": 256000, "z": True, "cap": True, "smooth": True, "weight": True},
    ]
    failures = 0
    for spec in variants:
        try:
            print(f"{json.dumps(spec):90s} {variant(**spec)}", flush=True)
        except Exception as exc:
            failures += 1
            print(f"{json.dumps(spec):90s} FAILED {type(exc).__name__}: {exc}", flush=True)

    from crossent.backends.triton import column_kernels

    def column_variant(dtype="bf16", weight=False, z=False, grad=True, scaled=False, block=1024,
                       warps=8):  # fmt: skip
        kernel = column_kernels.cross_entropy_columns_kernel
        acc = tl.float64 if dtype == "fp64" else tl.float32
        acc_name = "fp64" if dtype == "fp64" else "fp32"
        signature = {
            "logits_ptr": f"*{dtype}", "target_ptr": "*i64",
            "weight_ptr": "*fp32" if weight else "constexpr",
            "grad_ptr": f"*{dtype}" if grad else "constexpr",
            "row_scale_ptr": "*fp32" if scaled else "constexpr", "row_scale_stride": "i32",
            "loss_ptr": f"*{acc_name}", "lse_ptr": f"*{acc_name}", "n_classes": "i32",
            "n_positions": "i32", "ignore_index": "i32", "z_loss": "fp64",
        }  # fmt: skip
        constants = dict(
            BLOCK_S=block, HAS_WEIGHT=weight, Z_LOSS=z, WRITE_GRAD=grad, HAS_ROW_SCALE=scaled,
            ACC=acc,
            LOWEST=-1.7976931348623157e308 if acc == tl.float64 else -3.4028234663852886e38,
        )  # fmt: skip
        for name in ("weight_ptr", "grad_ptr", "row_scale_ptr"):
            if signature[name] == "constexpr":
                constants[name] = None
        compiled = compile_sm90(kernel, signature, constants, {}, warps)
        return f"smem={compiled.metadata.shared:6d} " + resources(compiled)

    def scale_variant(columns=True, dtype="bf16", kept=1, warps=8):
        """The column scaler (``columns``) or the row scaler; ``kept`` is its KEPT_MODE."""
        if columns:
            kernel, block = column_kernels.scale_columns_kernel, dict(BLOCK_S=1024)
            sizes = {"x_ptr": f"*{dtype}", "n_classes": "i32", "n_positions": "i32"}
        else:
            kernel, block = kernels.scale_rows_kernel, dict(BLOCK=2048)
            sizes = {"x_ptr": f"*{dtype}", "row_stride": "i64", "n_rows": "i32", "n_cols": "i32"}
        signature = {
            **sizes, "scale_ptr": "*fp32", "scale_stride": "i32",
            "kept_ptr": {0: "constexpr", 1: "*i1", 2: "*i64"}[kept], "ignore_index": "i32",
        }  # fmt: skip
        constants = dict(**block, KEPT_MODE=kept,
                         ACC=tl.float64 if dtype == "fp64" else tl.float32)  # fmt: skip
        if not kept:
            constants["kept_ptr"] = None
        compiled = compile_sm90(kernel, signature, constants, {}, warps)
        return f"smem={compiled.metadata.shared:6d} " + resources(compiled)

    from crossent.backends.triton import reduction_kernels

    def target_stats_variant(weight=True, final=False, acc="fp32"):
        signature = {
            "target_ptr": "*i64", "weight_ptr": f"*{acc}" if weight else "constexpr",
            "stats_ptr": f"*{acc}", "weight_partials_ptr": f"*{acc}",
            "count_partials_ptr": "*i64", "n_positions": "i64", "chunk": "i64",
            "n_classes": "i32", "ignore_index": "i32",
        }  # fmt: skip
        constants = dict(BLOCK=1024, HAS_WEIGHT=weight, FINAL=final,
                         ACC=tl.float64 if acc == "fp64" else tl.float32)  # fmt: skip
        if not weight:
            constants["weight_ptr"] = None
        compiled = compile_sm90(reduction_kernels.target_stats_kernel, signature, constants,
                                {}, 4)  # fmt: skip
        finish = {
            "stats_ptr": f"*{acc}", "weight_partials_ptr": f"*{acc}",
            "count_partials_ptr": "*i64", "n_partials": "i32",
        }  # fmt: skip
        compile_sm90(reduction_kernels.finish_target_stats_kernel, finish,
                     dict(BLOCK=1024, HAS_WEIGHT=weight, ACC=constants["ACC"]), {}, 4)
        return f"smem={compiled.metadata.shared:6d} " + resources(compiled)

    def reduce_rows_variant(z=True, final=False, mean=True, stats=True, acc="fp32"):
        ptr = f"*{acc}"
        signature = {
            "loss_ptr": ptr, "lse_ptr": ptr, "partials_ptr": ptr, "out_ptr": ptr,
            "z_out_ptr": ptr, "stats_ptr": ptr, "n_rows": "i64", "chunk": "i64",
            "denominator": "fp64", "z_coefficient": "fp64",
        }  # fmt: skip
        flags = dict(MEAN=mean, STATS_DENOMINATOR=stats, NAN_AT_ZERO=True,
                     ACC=tl.float64 if acc == "fp64" else tl.float32)  # fmt: skip
        compiled = compile_sm90(reduction_kernels.reduce_rows_kernel, signature,
                                dict(BLOCK=1024, Z_LOSS=z, FINAL=final, **flags), {}, 4)
        finish = {
            "partials_ptr": ptr, "out_ptr": ptr, "z_out_ptr": ptr, "stats_ptr": ptr,
            "n_partials": "i32", "denominator": "fp64",
        }  # fmt: skip
        compile_sm90(reduction_kernels.finish_reduce_rows_kernel, finish,
                     dict(BLOCK=1024, **flags), {}, 4)  # fmt: skip
        return f"smem={compiled.metadata.shared:6d} " + resources(compiled)

    column_variants = [
        (column_variant, {}),
        (column_variant, {"grad": False}),
        (column_variant, {"weight": True, "z": True, "scaled": True}),
        (column_variant, {"dtype": "fp32", "block": 128, "warps": 1}),
        (column_variant, {"dtype": "fp64", "weight": True}),
        (scale_variant, {}),
        (scale_variant, {"kept": 0, "dtype": "fp32"}),
        (scale_variant, {"kept": 2}),
        (scale_variant, {"columns": False, "kept": 2}),
        (scale_variant, {"columns": False, "kept": 0, "dtype": "fp64"}),
        (target_stats_variant, {}),
        (target_stats_variant, {"weight": False, "final": True}),
        (target_stats_variant, {"acc": "fp64"}),
        (reduce_rows_variant, {}),
        (reduce_rows_variant, {"z": False, "final": True, "mean": False, "stats": False}),
        (reduce_rows_variant, {"acc": "fp64"}),
    ]
    for build, spec in column_variants:
        label = f"{build.__name__} {json.dumps(spec)}"
        try:
            print(f"{label:90s} {build(**spec)}", flush=True)
        except Exception as exc:
            failures += 1
            print(f"{label:90s} FAILED {type(exc).__name__}: {exc}", flush=True)
    return 1 if failures else 0


# ------------------------------------------------------------------------------------------------


def write_results(run: Run, out: Path) -> None:
    results = {k: v for k, v in run.results.items() if k != "deferred"}
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "gpu_results.md").write_text(markdown(run))
        (out / "gpu_results.json").write_text(json.dumps(results, indent=1, default=str))
    except OSError as exc:
        run.log(f"could not write results to {out}: {exc}")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU + Triton interpreter, tiny")
    parser.add_argument("--compile-check", action="store_true", help="compile for sm_90, no GPU")
    parser.add_argument("--budget-s", type=float, default=280.0, help="soft time budget")
    parser.add_argument("--gemm", action="store_true", help="also time dW-style GEMMs")
    parser.add_argument(
        "--wide-sweep", action="store_true", help="config sweep: more grids and pipelines"
    )
    parser.add_argument("--only", default="", help="comma-separated section names to run")
    parser.add_argument("--out", default=os.environ.get("OUT", "results"), help="output folder")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.compile_check:
        return compile_check()
    if args.dry_run:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported
    import torch

    run = Run(args)
    if not args.dry_run and not torch.cuda.is_available():
        print("no CUDA device: use --dry-run on a machine without a GPU", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.dry_run else "cuda")
    small = args.dry_run
    torch.manual_seed(0)

    sections = [
        ("device info", device_info, (run, device)),
        ("copy bandwidth", copy_bandwidth, (run, device)),
        ("GEMM rate", gemm_rate, (run, device)),
        ("row correctness", row_correctness, (run, device, small)),
        ("graph capture", graph_capture, (run, device)),
        ("beyond int32", beyond_int32, (run, device, small)),
        ("scale_rows_", scale_rows_check, (run, device)),
        ("linear correctness", linear_correctness, (run, device, small)),
        ("invalid target", invalid_target_check, (run, device, small)),
        ("eager route", eager_route_check, (run, device, small)),
        ("autocast", autocast_check, (run, device, small)),
        ("torch route", torch_route, (run, device, small)),
        ("column kernel", column_kernel, (run, device, small)),
        ("upstream layouts", upstream_layouts, (run, device, small)),
        ("logits timings", logits_timings, (run, device, small)),
        ("config sweep", config_sweep, (run, device, small)),
        ("linear timings", linear_timings, (run, device, small)),
        ("api overhead", api_overhead, (run, device, small)),
        ("reductions", reductions_check, (run, device, small)),
        ("device target check", device_target_check, (run, device, small)),
        ("small calls", small_calls, (run, device, small)),
        ("host profile", host_profile, (run, device, small)),
        ("busy device", busy_device, (run, device, small)),
        *([("gemm out_dtype", gemm_out_dtype, (run, device, small))] if args.gemm else []),
        ("torch.compile timings", deferred_timings, (run, device, small)),
    ]
    if args.only:
        wanted = {name.strip() for name in args.only.split(",")}
        sections = [section for section in sections if section[0] in wanted]
    for name, section, section_args in sections:
        run.guarded(name, section, *section_args)
        write_results(run, Path(args.out))  # a timeout still leaves the tables so far
    run.results.pop("deferred", None)
    write_results(run, Path(args.out))
    print()
    print(markdown(run), flush=True)
    run.log(f"done in {run.elapsed():.0f}s; {len(run.failures)} failure(s)")
    return 1 if run.failures else 0


if __name__ == "__main__":
    sys.exit(main())

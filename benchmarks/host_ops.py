"""What the public Triton call does on the host, counted on a machine without a GPU.

First, for scale, the host time of small public calls on their default CPU paths (torch's
kernel after crossent's checks, the NumPy reference), where crossent's own Python is most of
the cost. Then the Triton path. On a small problem the fused path's cost is its host work:
every torch operation that launches device work costs a launch and its dispatch, and on CUDA
the device waits for the host. This probe runs
``crossent.cross_entropy(..., impl="triton").backward()`` on CPU tensors with the Triton
interpreter's kernels replaced by stubs that launch nothing (the target statistics
report "no out-of-range target"), so what remains is exactly the host path: it counts the
top-level torch operations (by the profiler), separates those that launch device work from
metadata-only ones, counts the stubbed Triton launches, and times the call (the fastest of 15
batches, because this machine is shared and noisy; a CPU tensor's operations cost far less
than a CUDA launch, so the counts are the portable result).

    PYTHONPATH=src:. .venv/bin/python -m benchmarks.host_ops

Must run in a fresh process: it sets ``TRITON_INTERPRET=1`` before Triton is imported.
"""

from __future__ import annotations

import math
import os
import time
from collections import Counter
from contextlib import contextmanager

#: Operations that only make tensor metadata (views, allocations, host reads of CPU values):
#: no device work on CUDA either.
METADATA_OPS = frozenset({
    "aten::empty", "aten::empty_strided", "aten::reshape", "aten::select", "aten::detach",
    "aten::view", "aten::item", "aten::is_nonzero", "aten::slice", "aten::unsqueeze",
    "aten::expand", "aten::new_empty", "aten::as_strided", "aten::alias", "aten::t",
    "aten::_local_scalar_dense", "aten::lift_fresh", "aten::detach_", "aten::promote_types",
    "aten::resolve_conj", "aten::resolve_neg",
})  # fmt: skip


class _StubLaunch:
    """Stands in for a ``@triton.jit`` kernel: ``kernel[grid](...)`` launches nothing, counts
    itself, and the target statistics write 'D = 1, 1/D = 1, no bad target' (on the CPU
    through NumPy, no torch operation; on CUDA by one device copy)."""

    def __init__(self, name: str, launches: Counter, verdicts: dict):
        self.name, self.launches, self.verdicts = name, launches, verdicts

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launches[self.name] += 1
            if self.name == "target_stats_kernel" and kwargs.get("FINAL"):
                stats = args[2]
                if not stats.is_cuda:
                    stats.numpy()[:3] = (1.0, 1.0, 0.0)
                    return
                import torch

                key = (stats.dtype, stats.device)
                if key not in self.verdicts:
                    self.verdicts[key] = torch.tensor([1.0, 1.0, 0.0], dtype=stats.dtype,
                                                      device=stats.device)  # fmt: skip
                stats[:3].copy_(self.verdicts[key])

        return launch


@contextmanager
def stubbed_kernels():
    """Replace every Triton kernel of crossent by a counting stub; yields the launch counter.
    (On the CPU, run with ``TRITON_INTERPRET=1`` set before Triton is imported.)"""
    from crossent.backends.triton import column_kernels, kernels, reduction_kernels
    from crossent.backends.triton import cross_entropy as launchers

    launches: Counter = Counter()
    verdicts: dict = {}
    interpreting = launchers._interpreting()  # (asked of the real kernels)
    saved = []
    for module in (kernels, column_kernels, reduction_kernels):
        for name in dir(module):
            if name.endswith("_kernel"):
                saved.append((module, name, getattr(module, name)))
                setattr(module, name, _StubLaunch(name, launches, verdicts))
    real_interpreting = launchers._interpreting
    launchers._interpreting = lambda: interpreting
    try:
        yield launches
    finally:
        launchers._interpreting = real_interpreting
        for module, name, kernel in saved:
            setattr(module, name, kernel)


def host_operations(call) -> tuple[Counter, Counter]:
    """``(device_ops, metadata_ops)``: top-level torch operations of one ``call()`` (run under
    :func:`stubbed_kernels`), split by whether they launch device work on CUDA (a ``to`` that
    changes nothing does not)."""
    import torch.profiler as profiler

    with profiler.profile(activities=[profiler.ProfilerActivity.CPU]) as prof:
        call()
    device, metadata = Counter(), Counter()
    for event in prof.events():
        parent = event.cpu_parent
        if not event.name.startswith("aten::"):
            continue
        if parent is not None and parent.name.startswith("aten::"):
            continue
        converts = any(child.name == "aten::_to_copy" for child in event.cpu_children)
        no_op = event.name == "aten::to" and not converts  # (already that dtype and device)
        (metadata if event.name in METADATA_OPS or no_op else device)[event.name] += 1
    return device, metadata


def _inputs(classes: int, side: int):
    """``(generator, x, y, w, xk, yk)``: 64 x ``classes`` logits (requiring grad), class
    indices and weights, and 2 x 5 x ``side`` x ``side`` K-dim logits with their indices."""
    import torch

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, classes, generator=gen, requires_grad=True)
    y = torch.randint(0, classes, (64,), generator=gen)
    w = torch.rand(classes, generator=gen)
    xk = torch.randn(2, 5, side, side, generator=gen, requires_grad=True)
    yk = torch.randint(0, 5, (2, side, side), generator=gen)
    return gen, x, y, w, xk, yk


def cases():
    """``(label, call)`` pairs: fwd+bwd of representative public calls on CPU tensors."""
    import torch

    import crossent

    gen, x, y, w, xk, yk = _inputs(1000, 16)
    p = torch.softmax(torch.randn(64, 1000, generator=gen), 1)

    def run(logits, target, **kwargs):
        def call():
            crossent.cross_entropy(logits, target, impl="triton", **kwargs).backward()
            logits.grad = None

        return call

    return [
        ("64x1000 float32, mean", run(x, y)),
        ("64x1000 float32, sum", run(x, y, reduction="sum")),
        ("64x1000 float32, weights + smoothing", run(x, y, weight=w, label_smoothing=0.1)),
        ("64x1000 float32, probabilities", run(x, p)),
        ("2x5x16x16 K-dim", run(xk, yk)),
    ]


def public_calls():
    """``(label, call)`` pairs: small public calls on their default path (CPU tensors: torch's
    own kernel after crossent's checks; NumPy: the reference), where crossent's Python is most
    of the cost, with torch eager for scale."""
    import torch

    import crossent

    gen, x, y, w, xk, yk = _inputs(10, 8)
    xb, yb = torch.randn(64, generator=gen, requires_grad=True), torch.rand(64, generator=gen)
    xn, yn = x.detach().double().numpy(), y.numpy()

    def no_grad():
        with torch.no_grad():
            crossent.cross_entropy(x, y)

    return [
        ("cross_entropy 64x10 fwd+bwd", lambda: crossent.cross_entropy(x, y).backward()),
        ("cross_entropy 64x10 forward (no_grad)", no_grad),
        ("cross_entropy 64x10 weights + smoothing fwd+bwd",
         lambda: crossent.cross_entropy(x, y, w, label_smoothing=0.1).backward()),
        ("cross_entropy 2x5x8x8 K-dim fwd+bwd", lambda: crossent.cross_entropy(xk, yk).backward()),
        ("nll_loss 64x10 fwd+bwd", lambda: crossent.nll_loss(x, y).backward()),
        ("binary_cross_entropy_with_logits 64 fwd+bwd",
         lambda: crossent.binary_cross_entropy_with_logits(xb, yb).backward()),
        ("NumPy cross_entropy 64x10", lambda: crossent.cross_entropy(xn, yn)),
        ("NumPy cross_entropy_and_grad 64x10", lambda: crossent.cross_entropy_and_grad(xn, yn)),
        ("torch eager F.cross_entropy 64x10 fwd+bwd",
         lambda: torch.nn.functional.cross_entropy(x, y).backward()),
    ]  # fmt: skip


def _fastest_us(call, batches: int = 9, per_batch: int = 200) -> float:
    """Microseconds per call: the fastest of ``batches`` batches (a shared, noisy machine)."""
    for _ in range(per_batch):
        call()
    best = math.inf
    for _ in range(batches):
        start = time.perf_counter()
        for _ in range(per_batch):
            call()
        best = min(best, (time.perf_counter() - start) / per_batch)
    return best * 1e6


def main() -> None:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # (before Triton is imported)
    print("| public call (CPU, default path) | host us per call |")
    print("|---|---|")
    for label, call in public_calls():
        print(f"| {label} | {_fastest_us(call):.1f} |")
    print()
    with stubbed_kernels() as launches:
        print("| call | torch ops launching device work | metadata ops | Triton launches | "
              "host ms (stubbed, CPU) |")  # fmt: skip
        print("|---|---|---|---|---|")
        for label, call in cases():
            for _ in range(20):
                call()
            launches.clear()
            device, metadata = host_operations(call)
            triton = sum(launches.values())
            batches = []
            for _ in range(15):
                start = time.perf_counter()
                for _ in range(100):
                    call()
                batches.append((time.perf_counter() - start) * 10)
            ops = ", ".join(f"{name[6:]} {count}" for name, count in device.most_common())
            print(f"| {label} | {sum(device.values())} ({ops}) | {sum(metadata.values())} | "
                  f"{triton} | {min(batches):.3f} |")  # fmt: skip


if __name__ == "__main__":
    main()

"""torch's own kernels (``impl="torch"``), called once crossent has validated the arguments.

For a small problem the fixed cost of a call decides its speed, and nothing beats torch's own
C++ kernels there: a 64 x 10 cross-entropy costs torch about 40 microseconds forward and
backward, crossent's fused path about ten times that (tens of torch ops in Python, each with
its dispatch cost). For ``nll_loss`` and the binary losses, whose work per element is a few
flops, torch's kernels are the fastest exact implementation at every size (the reference
under autograd keeps about 16 input-sized intermediates of a binary loss). So ``impl="auto"``
runs crossent's checks (same exception types, clearer messages: the value, its position, the
valid range) and then hands the call to ``torch.nn.functional``: the result and its gradient
are torch's, bit for bit.

What stays with crossent's own implementations (:func:`why_not` and :func:`auto_serves`):

* an unbatched ``(C,)`` input with a ``(1,)`` target (torch's backward fails there; the
  reference differentiates it);
* calls under a torch.func transform (the reference checks targets inside the transform;
  plain forward-mode AD with dual tensors is served by torch's kernels);
* for ``impl="auto"`` under torch.compile: ``cross_entropy`` (its fused custom op). Traced
  calls check values in custom ops, as every traced path does, so the other losses trace
  torch's ops, and an explicit ``impl="torch"`` compiles too;
* for ``impl="auto"`` on CUDA: ``cross_entropy`` from :data:`CUDA_CROSS_ENTROPY_MAX_ELEMENTS`
  logits on (the Triton kernel: less memory and device time, and it reads its range check
  after queueing its work, where torch's kernel waits for the check) and of K-dim inputs, and
  ``nll_loss`` of K-dim inputs (torch's CUDA kernels sum them with atomics: not deterministic);
  other devices. On CUDA the checks read tensor values, one synchronisation, as the
  reference's do (none with ``target_check="device"`` or while a CUDA graph is captured: torch's
  kernel then checks on the device).

Imported only for torch tensors.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

#: ``impl="auto"`` runs torch's own cross-entropy of a 2-D input below this many logits on the
#: CPU and the fused kernel from here on (benchmarks/cross_entropy_small.py: the fused kernel's
#: fixed cost outweighs its memory saving below about a million logits, 4 MiB in float32).
CROSS_ENTROPY_MAX_ELEMENTS = 1 << 20

#: The same threshold for float16/bfloat16 logits. The fused kernel works on float32 copies of
#: its blocks (two conversions per element), and below a few million logits one block holds
#: them all, so it saves no memory there: in benchmarks/cross_entropy_small.py (2-core EPYC,
#: records ...-cross_entropy_small-bf16-1022.md and -1025.md) bfloat16 512x8192 ran at
#: 0.92x/0.59x of torch eager's speed on the fused kernel with the same peak memory, 1024x8192
#: at 1.27x/1.01x with two thirds of torch's peak memory.
HALF_CROSS_ENTROPY_MAX_ELEMENTS = 1 << 23

HALF_DTYPES = (torch.float16, torch.bfloat16)

#: K-dim inputs ``(N, C, d1, ...)``: ``impl="auto"`` runs torch's own cross-entropy below this
#: many logits on the CPU, and from here on the fused kernel's column layout, which takes such
#: an input as it lies (no copy into rows), for contiguous float32/float64 logits with class
#: indices (anything else keeps torch's kernel at every size: the harness has not shown the
#: fused kernel faster for probability targets, and in bfloat16 it was slower).
#: benchmarks/cross_entropy_small.py (2026-11-27, 2-core EPYC, three runs of the column kernel,
#: records ...-cross_entropy_small-kdim-0.md, -kdim-1.md, -kdim.md): 0.40x-0.67x of torch
#: eager's speed at 0.17 M logits (21 classes), 0.64x-0.87x at 1.4 M, 1.13x-1.55x at 5.5 M,
#: 2.0x-2.6x at 25 M, 1.41x at 5.2 M with 10 classes and 32 positions per sample, at a third to
#: two thirds of torch's peak memory; with label smoothing 0.1 (...-kdim-smoothing.md) 1.14x at
#: 5.5 M and 2.53x at 25 M, at 0.6x of torch's peak memory.
KDIM_CROSS_ENTROPY_MAX_ELEMENTS = 1 << 22

#: 1-D/2-D inputs on CUDA: ``impl="auto"`` runs torch's own cross-entropy below this many
#: logits (any dtype; torch's 2-D CUDA kernels are deterministic) and the Triton kernel from here
#: on. Below it a call's fixed host cost decides: on an H200 (2026-11-27, benchmarks/gpu.py
#: section "small calls", record gpu-h200-2026-11-27-small-calls.md; forward+backward, back to
#: back) the Triton path took 1.2-1.6 ms per call from 256x1000 to 2048x32000 logits, its kernel
#: a small part of it, where the checks and torch's kernel took 0.57-0.75 ms; at 8192x32000
#: bfloat16 (2.6e8 logits) Triton was ahead (1.21 against 1.41 ms). The threshold sits well below
#: that crossing: where a busy device hides the host's time, torch's kernel at 2**24 logits
#: costs some 50 microseconds more device time than Triton's (torch eager's 1.19 ms at 2.6e8
#: logits, scaled), against some 0.7-0.9 ms of host time saved per call where it does not.
CUDA_CROSS_ENTROPY_MAX_ELEMENTS = 1 << 24

#: The binary losses: ``impl="auto"`` uses torch's kernels for them on CUDA too (elementwise,
#: then torch's deterministic reductions; ``nll_loss`` too, for 1-D/2-D inputs).
BINARY_OPS = ("binary_cross_entropy", "binary_cross_entropy_with_logits")


def why_not(input: torch.Tensor, target: Any, weight: Any, pos_weight: Any = None) -> str | None:
    """None when torch's own kernel can serve these arguments exactly as crossent promises;
    otherwise the reason, for the error of an explicit ``impl="torch"``."""
    if input.dim() == 1 and target.dim() == 1 and not target.is_floating_point():
        return "an unbatched (C,) input with a (1,) target (torch's backward fails there)"
    from crossent._fused_op import transformed

    if transformed(input, target, weight, pos_weight):
        return "a torch.func transform"
    return None


def auto_serves(op: str, input: torch.Tensor, *, columns: bool = False) -> bool:
    """Whether ``impl="auto"`` tries torch's own kernel for ``op`` on this input (before
    :func:`why_not`). CPU tensors; for ``cross_entropy`` below
    :data:`CROSS_ENTROPY_MAX_ELEMENTS` logits (:data:`HALF_CROSS_ENTROPY_MAX_ELEMENTS` for
    float16/bfloat16), and K-dim inputs ``(N, C, d1, ...)`` below
    :data:`KDIM_CROSS_ENTROPY_MAX_ELEMENTS` or at any size where the fused kernel would copy
    them into ``(N*d1*..., C)`` rows (1.5x-3x torch eager's time to save about 15% of peak
    memory, ``benchmarks cross_entropy_small``): ``columns`` says that the call is one auto
    gives the column layout (a contiguous input, class indices). CUDA tensors for the
    binary losses, for ``nll_loss`` of 1-D/2-D inputs, whose torch kernels are deterministic
    (its K-dim ``nll_loss`` sums with atomics, so those keep the reference), and for
    ``cross_entropy`` of 1-D/2-D inputs below :data:`CUDA_CROSS_ENTROPY_MAX_ELEMENTS` logits (from
    there on, and for K-dim inputs, the Triton kernel)."""
    device = input.device.type
    if torch.compiler.is_compiling() and op == "cross_entropy":
        return False  # traced, cross_entropy keeps its fused custom op
    if device == "cpu":
        if op != "cross_entropy":
            return True
        if input.dim() > 2:
            wide = input.dtype in (torch.float32, torch.float64)
            return not (columns and wide and input.numel() >= KDIM_CROSS_ENTROPY_MAX_ELEMENTS)
        half = input.dtype in HALF_DTYPES
        return input.numel() < (HALF_CROSS_ENTROPY_MAX_ELEMENTS if half
                                else CROSS_ENTROPY_MAX_ELEMENTS)  # fmt: skip
    if device == "cuda":
        if op == "cross_entropy":
            return input.dim() <= 2 and input.numel() < CUDA_CROSS_ENTROPY_MAX_ELEMENTS
        return op in BINARY_OPS or (op == "nll_loss" and input.dim() <= 2)
    return False


def _as_torch_backward_needs(input: torch.Tensor, target: torch.Tensor):
    """Two inputs torch's forward accepts but its backward does not (crossent's reference
    differentiates both): a K-dim input that is not contiguous (channels-last activations;
    "grad_input must be contiguous") and a uint8 class-index target of a K-dim input
    ("expected scalar type Long"). Copies that change no value."""
    if input.dim() > 2:
        input = input.contiguous()
        if target.dtype == torch.uint8:
            target = target.long()
    return input, target


def cross_entropy(input, target, weight, options: dict) -> torch.Tensor:
    input, target = _as_torch_backward_needs(input, target)
    return F.cross_entropy(
        input, target, weight, ignore_index=options["ignore_index"],
        reduction=options["reduction"], label_smoothing=options["label_smoothing"],
    )  # fmt: skip


def nll_loss(input, target, weight, options: dict) -> torch.Tensor:
    input, target = _as_torch_backward_needs(input, target)
    return F.nll_loss(
        input, target, weight, ignore_index=options["ignore_index"],
        reduction=options["reduction"],
    )  # fmt: skip


def binary_cross_entropy(input, target, weight, options: dict) -> torch.Tensor:
    return F.binary_cross_entropy(input, target, weight, reduction=options["reduction"])


def binary_cross_entropy_with_logits(input, target, weight, pos_weight, options: dict):
    return F.binary_cross_entropy_with_logits(
        input, target, weight, reduction=options["reduction"], pos_weight=pos_weight
    )

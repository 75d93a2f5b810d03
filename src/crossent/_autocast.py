"""torch's autocast, reproduced at crossent's boundary (torch tensors only).

Under ``torch.autocast`` torch runs its losses by the "autocast to float32" rule: float16 and
bfloat16 arguments are cast to float32, the op runs with autocast off, and the loss comes out in
float32 (on CPU and CUDA for ``nll_loss`` and the binary losses, on CPU for ``cross_entropy``;
CUDA refuses ``binary_cross_entropy`` outright).

One deliberate deviation: on CUDA torch's ``cross_entropy`` is not an autocast op. Its composite
runs ``log_softmax`` in the input's own dtype and only then the float32 ``nll_loss``, so its
log-probabilities are rounded to bfloat16/float16 first (``benchmarks/gpu.py`` checks that
composite, written out, against torch bit for bit). crossent widens the logits instead, on every
device and for every ``impl`` (``"torch"`` included): its loss is torch's float32 loss on the
same half-precision logits (``F.cross_entropy(z.float(), ...)`` up to one float32 rounding), in
the dtype torch returns. On an H200 and an H100 that loss was 2.7e-8 to 9.8e-8 (relative) from
float64 where torch's own autocast loss was 1.3e-4 to 1.8e-4 (records
``benchmarks/records/gpu-h{100,200}-2026-11-27*.md``).

crossent's losses are not ATen ops, so autocast would otherwise reach only the small ops inside
them, each by its own rule. Instead, each loss asks :func:`scope` at its entry: when autocast is
on for the input's device, the loss runs with autocast off, on arguments cast as torch's own op
would cast them, with its result dtype.

Which dtype torch's op computes in is not tabulated here: a one-row call of torch's own op under
the active autocast state answers it (cached per op, device type and autocast dtype), so the
rule follows whatever the installed torch does, error included.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F


def _class_zero(x: torch.Tensor) -> torch.Tensor:
    return torch.zeros(1, dtype=torch.long, device=x.device)


_PROBES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "cross_entropy": lambda x: F.cross_entropy(x, _class_zero(x)),
    "nll_loss": lambda x: F.nll_loss(x, _class_zero(x)),
    "binary_cross_entropy": lambda x: F.binary_cross_entropy(x, x),
    "binary_cross_entropy_with_logits": lambda x: F.binary_cross_entropy_with_logits(x, x),
}

#: The dtypes autocast widens (float64 and float32 are left alone).
HALF_DTYPES = (torch.float16, torch.bfloat16)

_widened_to: dict[tuple, torch.dtype | None] = {}


def widened_dtype(op: str, device_type: str, device: torch.device) -> torch.dtype | None:
    """The dtype torch's own ``op`` casts float16/bfloat16 arguments to under the active
    autocast state (float32 for its losses), or None where autocast leaves ``op`` alone."""
    autocast_dtype = torch.get_autocast_dtype(device_type)
    key = (op, device_type, autocast_dtype)
    if key not in _widened_to:
        with torch.no_grad():
            probe = _PROBES[op](torch.zeros(1, 1, dtype=autocast_dtype, device=device))
        _widened_to[key] = probe.dtype if probe.dtype != autocast_dtype else None
    return _widened_to[key]


@contextlib.contextmanager
def _outside(
    device_type: str, dtype: torch.dtype | None
) -> Iterator[tuple[Callable[[Any], Any], torch.dtype | None]]:
    def cast(tensor: Any) -> Any:
        if dtype is not None and isinstance(tensor, torch.Tensor) and tensor.dtype in HALF_DTYPES:
            return tensor.to(dtype)
        return tensor

    with torch.autocast(device_type, enabled=False):
        yield cast, dtype


def enabled(device_type: str) -> bool:
    """Whether autocast is on for ``device_type`` (never for a device autocast does not know,
    such as ``meta``, where torch's own query raises)."""
    try:
        return torch.is_autocast_enabled(device_type)
    except RuntimeError:
        return False


def scope(op: str, input: Any) -> contextlib.AbstractContextManager | None:
    """None when autocast is off for ``input``'s device (or ``input`` is not a torch tensor).

    Otherwise a context manager that turns autocast off and yields ``(cast, dtype)``: ``cast``
    turns float16/bfloat16 tensors into ``dtype``, the one torch's ``op`` would cast them to
    (``dtype`` None and ``cast`` the identity where autocast leaves ``op`` alone). Raises what
    torch's ``op`` raises under this autocast state (CUDA refuses ``binary_cross_entropy``).
    """
    if not isinstance(input, torch.Tensor):
        return None
    device_type = input.device.type
    if not enabled(device_type):
        return None
    return _outside(device_type, widened_dtype(op, device_type, input.device))

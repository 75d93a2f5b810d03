"""Array-namespace plumbing: which library an array comes from, and dtype questions.

Everything here is cheap metadata work; nothing touches array values. torch is never imported
here: ``array_api_compat`` recognises torch tensors only if torch is already loaded.
"""

from __future__ import annotations

import sys
from typing import Any

import array_api_compat
import numpy as np


def _torch_tensor_type() -> type | None:
    """torch.Tensor if torch is already imported (never imports it)."""
    torch = sys.modules.get("torch")
    return getattr(torch, "Tensor", None)


def namespace(*arrays: Any) -> Any:
    """The Array API namespace shared by ``arrays`` (None entries are skipped).

    Raises TypeError, as torch does for a non-tensor target, when an argument is not an array
    (a Python list or number; NumPy scalars count as 0-d arrays), is a NumPy masked array, or
    when arrays from different libraries are mixed.
    """
    present = [a for a in arrays if a is not None]
    tensor = _torch_tensor_type()
    if tensor is not None and present and all(isinstance(a, tensor) for a in present):
        # The common torch case, decided without array-api-compat's cached helpers (which
        # torch.compile would have to step around).
        import array_api_compat.torch as xp_torch

        return xp_torch
    for a in present:
        check_not_masked(a)
        if not array_api_compat.is_array_api_obj(a):
            raise TypeError(
                f"expected an array (NumPy, torch, or any Array API array), "
                f"got {type(a).__name__}; convert it first, e.g. numpy.asarray(...)"
            )
    try:
        return array_api_compat.array_namespace(*present)
    except TypeError as exc:
        kinds = sorted({type(a).__module__.split(".")[0] + "." + type(a).__name__ for a in present})
        raise TypeError(
            f"all arrays must come from one library, got a mix of {', '.join(kinds)}"
        ) from exc


def check_not_masked(a: Any) -> None:
    """NumPy masked arrays are refused (TypeError): array operations would honour the mask in
    some steps and not in others, a silently wrong loss."""
    if isinstance(a, np.ma.MaskedArray):
        raise TypeError(
            "masked arrays are not supported (the mask would not be honoured); pass "
            "a.filled(value), or select the unmasked entries first"
        )


def is_torch_namespace(xp: Any) -> bool:
    """torch or array-api-compat's torch namespace (array_api_compat's own test is an
    lru_cache, which torch.compile warns about on every compile)."""
    return getattr(xp, "__name__", None) in ("torch", "array_api_compat.torch")


def is_torch(x: Any) -> bool:
    """True for a torch.Tensor (without importing torch)."""
    tensor = _torch_tensor_type()
    return tensor is not None and isinstance(x, tensor)


#: What :func:`is_dtype` and :func:`dtype_name` found for each dtype, which never changes: every
#: call asks them several times, and array-api-compat's ``isdtype`` costs about a microsecond.
#: (A plain dict: torch.compile traces it, where ``functools.cache`` makes it warn.)
_dtype_facts: dict[tuple[type, Any, Any], Any] = {}


def is_dtype(xp: Any, dtype: Any, kind: str | tuple[str, ...]) -> bool:
    """``xp.isdtype(dtype, kind)``, False where the namespace cannot answer (TypeError or
    ValueError)."""
    key = (type(dtype), dtype, kind)  # (the type first: dtypes of two libraries are never
    # compared, which array-api-strict warns about)
    try:
        known = _dtype_facts.get(key)
    except TypeError:  # an unhashable dtype: asked every time
        key = known = None
    if known is None:
        try:
            known = bool(xp.isdtype(dtype, kind))
        except (TypeError, ValueError):
            known = False
        if key is not None:
            _dtype_facts[key] = known
    return known


def is_floating(xp: Any, dtype: Any) -> bool:
    """True for real floating dtypes, float16 and bfloat16 included."""
    return is_dtype(xp, dtype, "real floating")


def is_integral(xp: Any, dtype: Any) -> bool:
    """True for signed/unsigned integer and bool dtypes."""
    return is_dtype(xp, dtype, ("integral", "bool"))


def dtype_name(dtype: Any) -> str:
    """A short, library-neutral dtype name: 'float32', 'int64', 'bfloat16', ..."""
    key = (type(dtype), dtype, "name")
    try:
        name = _dtype_facts.get(key)
    except TypeError:
        key = name = None
    if name is None:
        name = str(getattr(dtype, "name", "") or dtype)
        name = name.split("'")[1] if name.startswith("<class '") else name
        name = name.rsplit(".", 1)[-1].rstrip("')>")
        if key is not None:
            _dtype_facts[key] = name
    return name


def is_low_precision(xp: Any, dtype: Any) -> bool:
    """float16 and bfloat16: computed in float32 and rounded once at the end."""
    return dtype_name(dtype) in ("float16", "bfloat16")


def compute_dtype(xp: Any, dtype: Any, device: Any = None) -> Any:
    """The dtype the reference computes in, one step wider than the data.

    float16/bfloat16 compute in float32 and float32 in float64, so the reference rounds once, at
    the end (its error is half an ulp of the result, never more than torch's own plus that).
    On a ``device`` without float64 (Apple's MPS; array-api-strict's ``no_float64``) float32
    computes in float32.
    """
    name = dtype_name(dtype)
    if name in ("float16", "bfloat16"):
        return xp.float32
    if name == "float32" and has_float64(xp, device):
        return xp.float64
    return dtype


def device_of(a: Any) -> Any:
    """The array's device (None for an array without one, such as NumPy's before 2.0)."""
    return getattr(a, "device", None)


def has_float64(xp: Any, device: Any = None) -> bool:
    """Whether arrays of ``xp`` on ``device`` can be float64 (with ``device`` None: whether the
    namespace has float64 at all)."""
    if not hasattr(xp, "float64"):
        return False
    if device is None:
        return True
    if is_torch_namespace(xp):
        return getattr(device, "type", None) != "mps"
    info = getattr(xp, "__array_namespace_info__", None)
    if info is None:
        return True
    try:
        return "float64" in info().dtypes(device=device, kind="real floating")
    except (TypeError, ValueError):  # a namespace without per-device dtype information
        return True


def default_float(xp: Any, device: Any = None) -> Any:
    """The library's default floating dtype (torch: float32 unless changed; NumPy: float64), on
    ``device`` where the library says (a device without float64 defaults to float32)."""
    if is_torch_namespace(xp):
        import torch

        return torch.get_default_dtype()
    info = getattr(xp, "__array_namespace_info__", None)
    if info is not None:
        return info().default_dtypes(device=device)["real floating"]
    return xp.float64


def result_type(xp: Any, *dtypes: Any) -> Any:
    """Type promotion over floating dtypes, bfloat16 included."""
    present = [d for d in dtypes if d is not None]
    if is_torch_namespace(xp):
        import torch

        out = present[0]
        for d in present[1:]:
            out = torch.promote_types(out, d)
        return out
    return xp.result_type(*present)


def requires_grad(x: Any) -> bool:
    """True for a torch tensor that autograd tracks (False for every other array)."""
    return bool(getattr(x, "requires_grad", False)) and is_torch(x)


def needs_grad(x: Any) -> bool:
    """:func:`requires_grad` while autograd records (under ``no_grad`` or ``inference_mode``
    nothing asks for the gradient, and torch accepts what it would otherwise refuse)."""
    return requires_grad(x) and sys.modules["torch"].is_grad_enabled()


def shape_str(shape: tuple[int, ...]) -> str:
    """``(2, 3)`` -> ``[2, 3]``, PyTorch's way of printing sizes in messages."""
    return "[" + ", ".join(str(int(s)) for s in shape) + "]"

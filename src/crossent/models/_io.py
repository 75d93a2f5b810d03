"""Portable model files: named arrays plus JSON metadata, written atomically, never pickled.

Two containers, chosen by the file name's suffix:

* ``.npz``: a NumPy archive of the arrays plus ``__metadata__``, the UTF-8 JSON metadata as a
  ``uint8`` array (read back with ``allow_pickle=False``; needs only NumPy);
* ``.safetensors``: the arrays as tensors and the JSON under the header key ``crossent``
  (needs the ``safetensors`` package).

Both store floating-point arrays bit for bit, so a loaded model predicts bitwise-identically.
:func:`atomic_write` writes into a temporary file in the target directory and renames it over the
target only once it is complete, so a failure never leaves a partial file behind.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

SUFFIXES = (".npz", ".safetensors")
_METADATA_KEY = "__metadata__"
_SAFETENSORS_KEY = "crossent"


def check_suffix(path: str | os.PathLike[str]) -> str:
    """The container for ``path`` (``".npz"`` or ``".safetensors"``); ValueError otherwise."""
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"a model file name must end in .npz or .safetensors, got {str(path)!r}")
    return suffix


def atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], None]) -> None:
    """Call ``write(handle)`` on a temporary file next to ``path``, then rename it to ``path``.

    The file appears complete or not at all; on any error the temporary file is removed and the
    error propagates (an existing ``path`` is left untouched). The new file gets the usual
    permissions (``0o666`` minus the umask).
    """
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    handle = tempfile.NamedTemporaryFile(
        dir=directory, prefix=f".{path.name}.", suffix=".tmp", delete=False
    )
    try:
        with handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(handle.name, 0o666 & ~umask)
        os.replace(handle.name, path)
    except BaseException:
        try:
            os.unlink(handle.name)
        except FileNotFoundError:
            pass
        raise


def save_arrays(
    path: str | os.PathLike[str], arrays: Mapping[str, np.ndarray], metadata: Mapping[str, Any]
) -> None:
    """Write ``arrays`` and JSON-serialisable ``metadata`` to ``path`` atomically."""
    suffix = check_suffix(path)
    text = json.dumps(metadata, sort_keys=True)
    plain = {key: np.ascontiguousarray(value) for key, value in arrays.items()}
    if suffix == ".npz":
        if _METADATA_KEY in plain:
            raise ValueError(f"array name {_METADATA_KEY!r} is reserved")
        plain[_METADATA_KEY] = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)

        def write(handle: BinaryIO) -> None:
            np.savez(handle, **plain)

    else:
        from crossent import require

        safetensors_numpy = require("safetensors.numpy", "all")
        blob = safetensors_numpy.save(plain, metadata={_SAFETENSORS_KEY: text})

        def write(handle: BinaryIO) -> None:
            handle.write(blob)

    atomic_write(path, write)


def load_arrays(path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read a file written by :func:`save_arrays`: ``(arrays, metadata)``.

    Raises FileNotFoundError for a missing file and ValueError for anything that is not such
    a file.
    """
    suffix = check_suffix(path)
    data = Path(path).read_bytes()
    if suffix == ".npz":
        if not data.startswith(b"PK"):  # (NumPy would suggest unpickling it)
            raise ValueError(f"{path}: not a crossent model file (not an NPZ/zip archive)")
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as archive:
                arrays = {key: archive[key] for key in archive.files}
        except Exception as exc:
            raise ValueError(f"{path}: not a crossent model file ({exc})") from None
        raw = arrays.pop(_METADATA_KEY, None)
        text = None if raw is None else raw.tobytes().decode("utf-8")
    else:
        from crossent import require

        safetensors_numpy = require("safetensors.numpy", "all")
        try:
            arrays = safetensors_numpy.load(data)
            # The header (8-byte little-endian length, then JSON) carries the metadata.
            size = int.from_bytes(data[:8], "little")
            header = json.loads(data[8 : 8 + size])
            text = (header.get("__metadata__") or {}).get(_SAFETENSORS_KEY)
        except Exception as exc:
            raise ValueError(f"{path}: not a crossent model file ({exc})") from None
    if text is None:
        raise ValueError(f"{path}: not a crossent model file (no crossent metadata)")
    try:
        metadata = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: corrupt model metadata ({exc})") from None
    return arrays, metadata

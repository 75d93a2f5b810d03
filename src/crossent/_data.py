"""Tables for the ``crossent`` command: read CSV, NPZ or Parquet files, validate, split columns.

A table is a set of named columns with one row per sample. :func:`load_table` reads one from a
file and returns a :class:`Table` of float64 features plus an optional target column; every
problem with the file (missing, unreadable, unknown column, non-numeric or NaN feature, ...)
raises :class:`DataError` with a one-line message meant for the user, never a traceback.

File layouts:

* CSV (``.csv``): a header row of column names, then one row per sample, comma separated.
* NPZ (``.npz``, read without pickle): either a 2-D array ``X`` of features (optional string
  array ``feature_names``) plus 1-D arrays such as the target, or only 1-D arrays of equal
  length, one per column.
* Parquet (``.parquet``, ``.pq``): one column per feature and the target; needs ``pyarrow``.

The target column is the one named by ``target``; when it is None, the first of
:data:`DEFAULT_TARGET_NAMES` present is used (if ``require_target``), else no target.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: Column names tried, in order, when no target column is named.
DEFAULT_TARGET_NAMES: tuple[str, ...] = ("target", "y", "label", "class")

#: Install hint for Parquet files (pyarrow is not a dependency of crossent itself).
PARQUET_HINT = "reading Parquet files needs pyarrow: pip install pyarrow (or 'crossent[all]')"

CSV_SUFFIXES = (".csv",)
NPZ_SUFFIXES = (".npz",)
PARQUET_SUFFIXES = (".parquet", ".pq")


class DataError(ValueError):
    """The input data cannot be used; the message is one line that says what to fix."""


@dataclass(frozen=True)
class Table:
    """Features (``(N, D)`` float64, finite) with their names, and an optional target column."""

    features: np.ndarray
    feature_names: tuple[str, ...]
    target: np.ndarray | None
    target_name: str | None
    source: str

    @property
    def num_rows(self) -> int:
        return int(self.features.shape[0])


# ------------------------------------------------------------------------------------------------
# raw columns from each format


@dataclass
class _Columns:
    """What a file holds before validation: named 1-D columns and/or one feature matrix."""

    names: list[str]
    columns: dict[str, np.ndarray]
    matrix: np.ndarray | None = None  # NPZ "X" layout
    matrix_names: list[str] | None = None
    row_offset: int = 0  # CSV: rows are reported as file line numbers


def _read_csv(path: Path) -> _Columns:
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:  # (-sig: drop a BOM)
            rows = list(csv.reader(handle))
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not a UTF-8 text CSV file ({exc.reason})") from None
    except csv.Error as exc:
        raise DataError(f"{path}: malformed CSV ({exc})") from None
    rows = [row for row in rows if row]  # blank lines
    if not rows:
        raise DataError(f"{path}: the file is empty (expected a header row of column names)")
    header = [name.strip() for name in rows[0]]
    for separator, name in ((";", "semicolons"), ("\t", "tabs")):
        if len(header) == 1 and separator in header[0]:
            raise DataError(
                f"{path}: the header is one column, {header[0]!r}: crossent reads "
                f"comma-separated files, and this one looks separated by {name}"
            )
    _check_names(path, header)
    body = rows[1:]
    if not body:
        raise DataError(f"{path}: the file has a header but no data rows")
    width = len(header)
    for number, row in enumerate(body, start=2):
        if len(row) != width:
            raise DataError(f"{path}: line {number} has {len(row)} fields, the header has {width}")
    columns = {name: np.array([row[j].strip() for row in body]) for j, name in enumerate(header)}
    return _Columns(names=header, columns=columns, row_offset=2)


def _read_npz(path: Path) -> _Columns:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except ValueError as exc:
        if "pickle" in str(exc):
            raise DataError(
                f"{path}: holds object arrays, which need pickle; crossent never unpickles "
                "data (save numeric or fixed-width string arrays instead)"
            ) from None
        raise DataError(f"{path}: not a readable NPZ file ({exc})") from None
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: not a readable NPZ file ({exc})") from None
    if not arrays:
        raise DataError(f"{path}: the NPZ file holds no arrays")
    matrix = arrays.pop("X", None)
    matrix_names = None
    if "feature_names" in arrays:
        matrix_names = [str(n) for n in np.asarray(arrays.pop("feature_names")).ravel()]
    for key, value in arrays.items():
        if value.ndim != 1:
            raise DataError(
                f"{path}: array {key!r} has shape {value.shape}; expected 1-D columns "
                "(and at most one 2-D feature array named 'X')"
            )
    if matrix is not None:
        if matrix.ndim != 2:
            raise DataError(
                f"{path}: array 'X' must be 2-D (samples x features), got {matrix.shape}"
            )
        if matrix_names is None:
            matrix_names = [f"x{j}" for j in range(matrix.shape[1])]
        elif len(matrix_names) != matrix.shape[1]:
            raise DataError(
                f"{path}: 'feature_names' has {len(matrix_names)} names but 'X' has "
                f"{matrix.shape[1]} columns"
            )
    names = list(arrays)
    _check_names(path, names + (matrix_names or []))
    return _Columns(names=names, columns=arrays, matrix=matrix, matrix_names=matrix_names)


def _read_parquet(path: Path) -> _Columns:
    try:
        import pyarrow.parquet as pq
    except ModuleNotFoundError:
        raise DataError(f"{path}: {PARQUET_HINT}") from None
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises its own ArrowInvalid / OSError family
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from None
    names = [str(n) for n in table.column_names]
    _check_names(path, names)
    columns = {}
    for name, column in zip(names, table.columns, strict=True):
        if column.null_count:
            index = next(i for i, v in enumerate(column.is_null().to_pylist()) if v)
            raise DataError(f"{path}: column {name!r} has a missing value at row {index + 1}")
        columns[name] = column.to_numpy(zero_copy_only=False)
    return _Columns(names=names, columns=columns)


def _check_names(path: Path, names: Sequence[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise DataError(f"{path}: the column name {name!r} appears more than once")
        seen.add(name)


def _read_columns(path: Path) -> _Columns:
    suffix = path.suffix.lower()
    if suffix not in CSV_SUFFIXES + NPZ_SUFFIXES + PARQUET_SUFFIXES:
        raise DataError(
            f"{path}: unknown data file type {suffix or '(no extension)'!r}; "
            "use .csv, .npz or .parquet"
        )
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, not a data file")
    if not os.access(path, os.R_OK):
        raise DataError(f"{path}: permission denied")
    if suffix in CSV_SUFFIXES:
        return _read_csv(path)
    if suffix in NPZ_SUFFIXES:
        return _read_npz(path)
    return _read_parquet(path)


# ------------------------------------------------------------------------------------------------
# validation


def _row_label(columns: _Columns, index: int) -> str:
    if columns.row_offset:
        return f"line {index + columns.row_offset}"
    return f"row {index + 1}"


def _numeric_column(path: Path, columns: _Columns, name: str, values: np.ndarray) -> np.ndarray:
    """``values`` as finite float64, or a DataError naming the first bad entry."""
    if values.dtype.kind == "b":
        return values.astype(np.float64)
    if values.dtype.kind in "iuf":
        out = values.astype(np.float64)
    elif values.dtype.kind in "US":
        for index, text in enumerate(values.tolist()):
            if text in ("", b""):
                raise DataError(
                    f"{path}: feature column {name!r} has a missing value at "
                    f"{_row_label(columns, index)}; fill or drop it (crossent does not impute)"
                )
            try:
                float(text)
            except ValueError:
                raise DataError(
                    f"{path}: feature column {name!r} is not numeric: "
                    f"{_row_label(columns, index)} holds {str(text)!r}"
                ) from None
        out = values.astype(np.float64)
    else:
        raise DataError(f"{path}: feature column {name!r} is not numeric (dtype {values.dtype})")
    bad = ~np.isfinite(out)
    if bad.any():
        index = int(np.argmax(bad))
        what = "NaN" if math.isnan(out[index]) else "an infinite value"
        raise DataError(
            f"{path}: feature column {name!r} has {what} at {_row_label(columns, index)}; "
            "fill or drop it (crossent does not impute)"
        )
    return out


def _label_column(
    path: Path, columns: _Columns, name: str, values: np.ndarray, allow_missing: bool = False
) -> np.ndarray:
    """Target labels, as categories: integers, integral floats or text.

    CSV text becomes int64 only when every label is an integer written canonically (``7``,
    ``-3``); otherwise it stays text, so that ``01`` and ``1`` or ``1.0`` and ``1`` remain
    different classes. Non-integer numbers (``0.5``) are refused: a continuous target is not
    a set of classes.
    """
    if values.dtype.kind in "US":
        texts = values.astype(str)
        if allow_missing and "" in texts.tolist():
            return texts  # partly labelled: the texts as they are, "" where missing
        for index, text in enumerate(texts.tolist()):
            if text == "":
                raise DataError(
                    f"{path}: target column {name!r} has a missing value at "
                    f"{_row_label(columns, index)}"
                )
        try:
            integers = texts.astype(np.int64)
        except (ValueError, OverflowError):
            integers = None
        if integers is not None and integers.astype(str).tolist() == texts.tolist():
            return integers
        try:
            numbers = texts.astype(np.float64)
        except ValueError:
            return texts
        _check_numeric_labels(path, columns, name, numbers, texts)
        return texts
    if values.dtype.kind == "f":
        _check_numeric_labels(path, columns, name, values, values)
        return values
    if values.dtype.kind in "iub":
        return values
    raise DataError(f"{path}: target column {name!r} has unsupported dtype {values.dtype}")


def _check_numeric_labels(
    path: Path, columns: _Columns, name: str, numbers: np.ndarray, shown: np.ndarray
) -> None:
    """Class labels that are numbers must be finite ("nan", "inf": a missing or broken label,
    not a class) and whole (a continuous target is not a set of classes); DataError otherwise.
    ``shown``: the labels as the file holds them (for the message)."""
    bad = ~np.isfinite(numbers)
    if bad.any():
        index = int(np.argmax(bad))
        raise DataError(
            f"{path}: target column {name!r} has {shown[index].item()!r} at "
            f"{_row_label(columns, index)}"
        )
    fractional = numbers != np.round(numbers)
    if fractional.any():
        index = int(np.argmax(fractional))
        raise DataError(
            f"{path}: target column {name!r} holds non-integer numbers ({shown[index]} at "
            f"{_row_label(columns, index)}): class labels must be integers or text (a "
            f"continuous target needs regression, not a classifier)"
        )


def _pick_target(
    path: Path, columns: _Columns, target: str | None, required: bool, optional: bool
) -> str | None:
    available = columns.names
    if target is not None:
        if target not in available and optional:
            return None
        if target not in available:
            listing = ", ".join(repr(n) for n in available) or "(none besides 'X')"
            raise DataError(f"{path}: unknown target column {target!r}; columns are: {listing}")
        return target
    for name in DEFAULT_TARGET_NAMES:
        if name in available:
            return name
    if required:
        listing = ", ".join(repr(n) for n in available) or "(none besides 'X')"
        raise DataError(f"{path}: no target column found; pass --target NAME (columns: {listing})")
    return None


def load_table(
    path: str | os.PathLike[str],
    target: str | None = None,
    *,
    require_target: bool = True,
    target_optional: bool = False,
    missing_labels: bool = False,
) -> Table:
    """Read ``path`` (CSV, NPZ or Parquet) into a validated :class:`Table`.

    ``target`` names the label column (an error if it is missing, unless ``target_optional``:
    then the table has no target); None picks the first of :data:`DEFAULT_TARGET_NAMES`
    present if ``require_target`` (an error if none is), else no target. Every other column
    is a feature and must be numeric and finite. ``missing_labels``: a CSV label column may
    have empty cells (the labels then stay text, ``""`` where missing). Raises
    :class:`DataError` (one line) on any problem.
    """
    path = Path(path)
    columns = _read_columns(path)
    target_name = _pick_target(path, columns, target, require_target, target_optional)
    feature_names: list[str] = []
    blocks: list[np.ndarray] = []
    if columns.matrix is not None:
        matrix = columns.matrix
        if matrix.dtype.kind not in "iufb":
            raise DataError(f"{path}: array 'X' is not numeric (dtype {matrix.dtype})")
        matrix = matrix.astype(np.float64)
        bad = ~np.isfinite(matrix)
        if bad.any():
            row, col = (int(i) for i in np.argwhere(bad)[0])
            raise DataError(
                f"{path}: 'X' has a NaN or infinite value at row {row + 1}, column {col + 1}; "
                "fill or drop it (crossent does not impute)"
            )
        blocks.append(matrix)
        feature_names.extend(columns.matrix_names or [])
    lengths = {len(values) for values in columns.columns.values()}
    if columns.matrix is not None:
        lengths.add(columns.matrix.shape[0])
    if len(lengths) > 1:
        raise DataError(f"{path}: columns have different lengths {sorted(lengths)}")
    for name in columns.names:
        if name == target_name:
            continue
        blocks.append(_numeric_column(path, columns, name, columns.columns[name])[:, None])
        feature_names.append(name)
    if not feature_names:
        raise DataError(f"{path}: no feature columns (only the target {target_name!r})")
    features = blocks[0] if len(blocks) == 1 else np.hstack(blocks)
    features = np.ascontiguousarray(features, dtype=np.float64)
    if features.shape[0] == 0:
        raise DataError(f"{path}: the data has no rows")
    labels = None
    if target_name is not None:
        labels = _label_column(
            path, columns, target_name, columns.columns[target_name], missing_labels
        )
    return Table(
        features=features,
        feature_names=tuple(feature_names),
        target=labels,
        target_name=target_name,
        source=str(path),
    )


def digits_table() -> Table:
    """scikit-learn's bundled handwritten-digits data (1797 8x8 images, 10 classes; no network)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return Table(
        features=np.ascontiguousarray(bunch.data, dtype=np.float64),
        feature_names=tuple(bunch.feature_names),
        target=np.asarray(bunch.target),
        target_name="target",
        source="scikit-learn digits",
    )


def select_features(table: Table, names: Sequence[str] | None, num_features: int) -> np.ndarray:
    """The features a model trained on ``names`` (``num_features`` columns) expects, in order.

    With ``names`` (a model trained on named columns), columns are matched by name, whatever
    their order in the file; a table without real names (an NPZ ``X`` without
    ``feature_names``) is taken positionally. Without ``names`` the table's feature columns are
    taken as they are. Raises :class:`DataError` when the count or the names differ from
    training.
    """
    have = table.features.shape[1]
    if names is not None and not is_positional(table.feature_names):
        known = set(names)
        missing = [n for n in names if n not in set(table.feature_names)]
        if missing:
            raise DataError(
                f"{table.source}: feature columns missing from the data: {_listing(missing)} "
                f"(the model expects {num_features} features, the data has {have})"
            )
        extra = [n for n in table.feature_names if n not in known]
        if extra:
            raise DataError(
                f"{table.source}: the model expects {num_features} features, the data has "
                f"{have} (columns not seen in training: {_listing(extra)})"
            )
        position = {n: j for j, n in enumerate(table.feature_names)}
        return np.ascontiguousarray(table.features[:, [position[n] for n in names]])
    if have != num_features:
        raise DataError(
            f"{table.source}: the model expects {num_features} features, the data has {have}"
        )
    return table.features


def is_positional(names: Sequence[str]) -> bool:
    """True for placeholder names ``x0, x1, ...`` (an NPZ ``X`` without ``feature_names``)."""
    return tuple(names) == tuple(f"x{j}" for j in range(len(names)))


def _listing(names: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")

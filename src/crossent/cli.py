"""The ``crossent`` command (argparse subcommands); the only module that parses arguments.

``crossent train``    fit a softmax regression (digits by default), print a table, save the model
``crossent predict``  predictions (and probabilities) of a saved model for a data file
``crossent bench``    a quick run of the benchmark harness (source checkout)
``crossent explain``  every step of a loss computation on your numbers
``crossent demo``     cross-entropy of three logits

Bad input (missing file, unknown target column, non-numeric or NaN features, a single class,
a feature count that differs from training, an unwritable output path) ends with one line on
stderr and exit code 2, and never leaves a partial output file.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

#: Exit status for bad input (argparse uses it for usage errors too).
EXIT_BAD_INPUT = 2
DEFAULT_OUT = "crossent-out"


class CommandError(Exception):
    """A problem with the user's input: printed as one line, exit code 2."""


# ------------------------------------------------------------------------------------------------
# demo


def _demo(args: argparse.Namespace) -> int:
    import numpy as np

    import crossent

    logits = np.array([2.0, 4.0, 0.5])
    print("logits [2, 4, 0.5]; softmax:", np.round(crossent.softmax(logits, 0), 6))
    for target in range(3):
        out = crossent.cross_entropy_and_grad(logits, np.array(target))
        print(f"target {target}: loss {float(out.loss):.7f}  grad {np.round(out.grad_input, 6)}")
    return 0


# ------------------------------------------------------------------------------------------------
# shared helpers


def _require_extra(module: str, extra: str) -> Any:
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        raise CommandError(
            f"this command needs {exc.name!r}, which is not installed; "
            f"install it with: pip install 'crossent[{extra}]'"
        ) from None


def _check_directory(path: Path) -> Path:
    """Check that ``path`` is, or can be created as, a writable directory (creates nothing)."""
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise CommandError(
            f"cannot use {str(path)!r} as output directory: {str(probe)!r} is a file"
        )
    if not os.access(probe, os.W_OK | os.X_OK):
        raise CommandError(f"cannot write to output directory {str(path)!r}: permission denied")
    return path


def _make_directory(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CommandError(
            f"cannot create output directory {str(path)!r}: {_reason(exc)}"
        ) from None


def _writable_file(path: Path) -> Path:
    """Check that ``path`` can be created or replaced (its directory can be written)."""
    if path.is_dir():
        raise CommandError(f"cannot write {str(path)!r}: it is a directory")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.exists():
        raise CommandError(f"cannot write {str(path)!r}: directory {str(parent)!r} does not exist")
    _check_directory(parent)
    return path


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


class ProgressBar:
    """A one-line progress bar on a terminal stream, redrawn at most ``rate`` times a second.

    On a stream that is not a terminal nothing is drawn (logs stay clean).
    """

    def __init__(
        self,
        total: int,
        label: str,
        stream: IO[str] | None = None,
        width: int = 24,
        rate: float = 20.0,
    ) -> None:
        self.total = max(1, int(total))
        self.label = label
        self.stream = sys.stderr if stream is None else stream
        self.width = width
        self.interval = 1.0 / rate
        self.enabled = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last = -math.inf
        self.drawn = False

    def render(self, step: int, objective: float) -> str:
        filled = min(self.width, round(self.width * step / self.total))
        bar = "#" * filled + "-" * (self.width - filled)
        count = f"{step:>{len(str(self.total))}}/{self.total}"
        return f"{self.label} [{bar}] {count}  objective {objective:.6f}"

    def update(self, step: int, objective: float) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last < self.interval and step < self.total:
            return
        self._last = now
        self.stream.write("\r" + self.render(step, objective))
        self.stream.flush()
        self.drawn = True

    def close(self) -> None:
        if self.enabled and self.drawn:
            self.stream.write("\n")
            self.stream.flush()


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain text table: the first column left-aligned, the others right-aligned."""
    widths = [max(len(str(r[j])) for r in [header, *rows]) for j in range(len(header))]
    lines = []
    for k, row in enumerate([header, *rows]):
        cells = [
            str(c).ljust(widths[j]) if j == 0 else str(c).rjust(widths[j])
            for j, c in enumerate(row)
        ]
        lines.append("  ".join(cells).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# train


def _train_arguments(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data")
    data.add_argument(
        "--data",
        metavar="FILE",
        help="CSV, NPZ or Parquet file (default: scikit-learn's bundled digits)",
    )
    data.add_argument(
        "--target",
        metavar="COLUMN",
        help="label column (default: the first of target, y, label, class)",
    )
    data.add_argument(
        "--test-size",
        type=float,
        default=0.2,
        metavar="FRACTION",
        help="held-out fraction for testing (default: 0.2)",
    )
    data.add_argument("--seed", type=int, default=0, help="seed of the train/test split")
    data.add_argument(
        "--no-standardize",
        dest="standardize",
        action="store_false",
        help="train on the raw features (default: standardise with the training "
        "split's mean and standard deviation)",
    )
    model = parser.add_argument_group("model")
    model.add_argument(
        "--C",
        type=float,
        default=1.0,
        dest="C",
        help="inverse L2 strength, scikit-learn's convention (default: 1.0)",
    )
    model.add_argument(
        "--solver",
        choices=("lbfgs", "sgd", "adam"),
        default="lbfgs",
        help="full-batch L-BFGS to the exact optimum, or mini-batch SGD/Adam (default: lbfgs)",
    )
    model.add_argument(
        "--max-iter",
        type=int,
        default=100,
        help="L-BFGS iterations or mini-batch epochs (default: 100)",
    )
    model.add_argument("--tol", type=float, default=1e-4, help="stopping tolerance (default: 1e-4)")
    model.add_argument(
        "--label-smoothing",
        type=float,
        default=0.0,
        metavar="EPS",
        help="train on (1 - EPS) * one-hot + EPS / classes, in [0, 1] (default: 0)",
    )
    model.add_argument(
        "--class-weight",
        choices=("balanced",),
        default=None,
        help="weight classes inversely to their frequency (default: all 1)",
    )
    model.add_argument(
        "--dtype",
        choices=("float64", "float32"),
        default="float64",
        help="precision of the parameters and the computation (default: float64)",
    )
    output = parser.add_argument_group("output")
    output.add_argument(
        "--out",
        default=DEFAULT_OUT,
        metavar="DIR",
        help=f"output directory (default: {DEFAULT_OUT}/)",
    )
    output.add_argument(
        "--model-name",
        default="model.npz",
        metavar="NAME",
        help="model file name in --out: .npz or .safetensors (default: model.npz)",
    )
    output.add_argument(
        "--no-plot", dest="plot", action="store_false", help="do not write loss_curve.png"
    )
    output.add_argument(
        "--compare-sklearn",
        action="store_true",
        help="also fit scikit-learn's LogisticRegression on the same split (with two "
        "classes at C=2*C, the same regularisation)",
    )


def _load_training_table(args: argparse.Namespace) -> Any:
    from crossent import _data

    if args.data is None:
        if args.target not in (None, "target"):
            raise CommandError(
                f"unknown target column {args.target!r}; the digits data has only 'target'"
            )
        return _data.digits_table()
    return _data.load_table(args.data, args.target, require_target=True)


def _split(table: Any, test_size: float, seed: int) -> tuple[Any, ...]:
    import numpy as np
    from sklearn.model_selection import train_test_split

    labels = table.target
    classes, counts = np.unique(labels, return_counts=True)
    if len(classes) < 2:
        raise CommandError(
            f"{table.source}: the target column {table.target_name!r} has a single class "
            f"({classes[0].item()!r}); a classifier needs at least two"
        )
    if not 0 < test_size < 1:
        raise CommandError(f"--test-size must be between 0 and 1, got {test_size}")
    n = len(labels)
    n_test = math.ceil(test_size * n)
    if n_test < 1 or n - n_test < 2:
        raise CommandError(f"{table.source}: {n} rows are too few to split off a test set")
    stratify = labels if counts.min() >= 2 and n_test >= len(classes) else None
    if stratify is not None and n - n_test < len(classes):
        stratify = None
    X_train, X_test, y_train, y_test = train_test_split(
        table.features, labels, test_size=test_size, random_state=seed, stratify=stratify
    )
    unseen = ~np.isin(y_test, y_train)
    if unseen.any():
        # A class too rare to stratify drew only test rows: the model could not know it (and
        # its test log-loss would be infinite), so those rows train instead.
        X_train = np.concatenate([X_train, X_test[unseen]])
        y_train = np.concatenate([y_train, y_test[unseen]])
        X_test, y_test = X_test[~unseen], y_test[~unseen]
        if len(y_test) == 0:
            raise CommandError(f"{table.source}: {n} rows are too few to split off a test set")
    if len(np.unique(y_train)) < 2:
        raise CommandError(
            f"{table.source}: the training split holds a single class; use more data"
        )
    return X_train, X_test, y_train, y_test


def _standardize(X_train: Any) -> tuple[Any, Any]:
    mean = X_train.mean(axis=0)
    scale = X_train.std(axis=0)
    scale[scale == 0] = 1.0
    return mean, scale


def _fold_standardization(model: Any, mean: Any, scale: Any) -> None:
    """Rewrite ``model`` so that it takes raw features: ``W' = W / scale``,
    ``b' = b - W' @ mean`` (then ``W' x + b' = W (x - mean) / scale + b``)."""
    coef = model.coef_ / scale
    model.intercept_ = (model.intercept_ - coef @ mean).astype(model.coef_.dtype)
    model.coef_ = coef.astype(model.coef_.dtype)


def _sklearn_objective(model: Any, X: Any, y_index: Any, C: float) -> float:
    """``LogisticRegression``'s objective for its own (multinomial) fit, through crossent."""
    import numpy as np

    import crossent

    logits = X @ model.coef_.T + model.intercept_
    mean_loss = float(crossent.cross_entropy(logits, y_index))
    return mean_loss + float(np.sum(model.coef_**2)) / (2 * C * X.shape[0])


def _write_loss_curve(
    path: Path, values: Sequence[float], title: str, xlabel: str = "iteration"
) -> str | None:
    """Write the PNG; return a note for stderr when it cannot be drawn."""
    try:
        import matplotlib  # noqa: F401
    except ModuleNotFoundError:
        return (
            "matplotlib is not installed: skipped the loss-curve PNG (pip install 'crossent[plot]')"
        )
    from matplotlib.figure import Figure  # no pyplot: no backend, no global state

    from crossent.models._io import atomic_write

    figure = Figure(figsize=(6, 4), dpi=100)
    axes = figure.subplots()
    axes.plot(range(len(values)), values, marker=".", linewidth=1)
    axes.set_xlabel(xlabel)
    axes.set_ylabel("objective (mean cross-entropy + L2)")
    axes.set_title(title)
    if len(values) > 1 and min(values) > 0 and max(values) / min(values) > 20:
        axes.set_yscale("log")
    axes.grid(True, alpha=0.3)
    figure.tight_layout()
    atomic_write(path, lambda handle: figure.savefig(handle, format="png"))
    return None


def _train(args: argparse.Namespace) -> int:
    import warnings

    _require_extra("sklearn", "sklearn")
    import numpy as np
    from sklearn.exceptions import ConvergenceWarning

    from crossent import _data
    from crossent.models import SoftmaxRegression
    from crossent.models._io import check_suffix

    out = Path(args.out)
    try:
        check_suffix(args.model_name)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    if Path(args.model_name).name != args.model_name:
        raise CommandError(f"--model-name must be a file name, got {args.model_name!r}")
    for name, value in (("--C", args.C), ("--tol", args.tol)):
        if not value > 0 or (name == "--tol" and not math.isfinite(value)):
            raise CommandError(f"{name} must be positive{' and finite' * (name == '--tol')}, "
                               f"got {value}")  # fmt: skip
    if args.max_iter < 1:
        raise CommandError(f"--max-iter must be at least 1, got {args.max_iter}")
    if not 0 <= args.seed < 2**32:  # (NumPy's and scikit-learn's seed range)
        raise CommandError(f"--seed must be in [0, 2**32 - 1], got {args.seed}")
    if not 0 <= args.label_smoothing <= 1:
        raise CommandError(f"--label-smoothing must be in [0, 1], got {args.label_smoothing}")
    _check_directory(out)
    model_path, plot_path = out / args.model_name, out / "loss_curve.png"
    for path in (model_path, plot_path):
        if path.is_dir():
            raise CommandError(f"cannot write {str(path)!r}: it is a directory")

    table = _load_training_table(args)
    X_train, X_test, y_train, y_test = _split(table, args.test_size, args.seed)
    if args.standardize:
        mean, scale = _standardize(X_train)
    else:
        mean, scale = np.zeros(X_train.shape[1]), np.ones(X_train.shape[1])
    Z_train = (X_train - mean) / scale
    Z_test = (X_test - mean) / scale

    bar = ProgressBar(args.max_iter, "training")
    model = SoftmaxRegression(
        C=args.C,
        solver=args.solver,
        max_iter=args.max_iter,
        tol=args.tol,
        label_smoothing=args.label_smoothing,
        class_weight=args.class_weight,
        dtype=args.dtype,
        random_state=args.seed,
        callback=bar.update,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        start = time.perf_counter()
        model.fit(Z_train, y_train)
        elapsed = time.perf_counter() - start
    bar.close()
    model.callback = None
    for warning in caught:
        if issubclass(warning.category, ConvergenceWarning):
            print(f"crossent train: warning: {warning.message}", file=sys.stderr)
        else:
            warnings.warn_explicit(
                warning.message, warning.category, warning.filename, warning.lineno
            )
    objective = model.objective_
    _fold_standardization(model, mean, scale)

    columns = ["", "crossent"]
    rows = [
        ["train accuracy", f"{model.score(X_train, y_train):.4f}"],
        ["test accuracy", f"{model.score(X_test, y_test):.4f}"],
        ["train log-loss", f"{model.log_loss(X_train, y_train):.6f}"],
        ["test log-loss", f"{model.log_loss(X_test, y_test):.6f}"],
        ["objective", f"{objective:.9f}"],
        ["iterations", str(model.n_iter_)],
        ["time (s)", f"{elapsed:.3f}"],
    ]
    if args.compare_sklearn:
        rows = _compare_sklearn(args, rows, Z_train, Z_test, y_train, y_test, model)
        columns.append("scikit-learn")

    positional = table.feature_names is None or _data.is_positional(table.feature_names)
    metadata = {
        "target": table.target_name,
        "feature_names": None if positional else list(table.feature_names),
        "source": table.source,
        "standardization": "folded into coef and intercept (the model takes raw features)"
        if args.standardize
        else "none",
        "train_rows": len(y_train),
        "test_rows": len(y_test),
        "split_seed": args.seed,
    }
    _make_directory(out)
    try:
        model.save(model_path, metadata=metadata)
        note = None
        if args.plot:
            title = f"SoftmaxRegression ({args.solver}) on {Path(table.source).name}"
            xlabel = "iteration" if args.solver == "lbfgs" else "epoch"
            note = _write_loss_curve(plot_path, model.loss_curve_, title, xlabel)
    except OSError as exc:
        raise CommandError(f"cannot write to {str(out)!r}: {_reason(exc)}") from None

    print(
        f"data: {table.source}: {len(y_train)} training and {len(y_test)} test rows, "
        f"{X_train.shape[1]} features, {len(model.classes_)} classes"
    )
    print(format_table(columns, rows))
    print(f"model: {model_path}")
    if args.plot and note is None:
        print(f"loss curve: {plot_path}")
    if note is not None:
        print(f"crossent train: note: {note}", file=sys.stderr)
    return 0


def _compare_sklearn(args, rows, Z_train, Z_test, y_train, y_test, model):
    import warnings

    import numpy as np
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, log_loss

    # Two classes: scikit-learn keeps one weight row, this model two (w and -w at the optimum,
    # half the penalty), so SoftmaxRegression(C) is LogisticRegression(C=2*C): compare the same
    # regularisation.
    binary = len(np.unique(y_train)) == 2
    reference = LogisticRegression(
        C=2 * args.C if binary else args.C, max_iter=args.max_iter, tol=args.tol,
        class_weight=args.class_weight,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        start = time.perf_counter()
        reference.fit(Z_train, y_train)
        elapsed = time.perf_counter() - start
    if len(reference.classes_) > 2 and args.class_weight is None and args.label_smoothing == 0:
        y_index = np.searchsorted(reference.classes_, y_train)
        objective = f"{_sklearn_objective(reference, Z_train, y_index, args.C):.9f}"
    else:
        objective = "n/a"  # binary: one weight row (different parameterisation); or weights
    values = [
        f"{accuracy_score(y_train, reference.predict(Z_train)):.4f}",
        f"{accuracy_score(y_test, reference.predict(Z_test)):.4f}",
        f"{log_loss(y_train, reference.predict_proba(Z_train), labels=reference.classes_):.6f}",
        f"{log_loss(y_test, reference.predict_proba(Z_test), labels=reference.classes_):.6f}",
        objective,
        str(int(np.max(reference.n_iter_))),
        f"{elapsed:.3f}",
    ]
    return [[*row, value] for row, value in zip(rows, values, strict=True)]


# ------------------------------------------------------------------------------------------------
# predict


def _predict_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        required=True,
        metavar="FILE",
        help="a model written by crossent train (.npz or .safetensors)",
    )
    parser.add_argument("--data", required=True, metavar="FILE", help="CSV, NPZ or Parquet file")
    parser.add_argument(
        "--target",
        metavar="COLUMN",
        help="label column to leave out of the features (default: the one the "
        "model was trained with, if present)",
    )
    parser.add_argument(
        "--proba", action="store_true", help="also write the probability of every class"
    )
    parser.add_argument("--output", metavar="FILE", help="write CSV here instead of stdout")


def _load_model(path: str) -> Any:
    from crossent.models import SoftmaxRegression

    model_path = Path(path)
    if not model_path.exists():
        raise CommandError(f"{path}: no such model file")
    try:
        return SoftmaxRegression.load(model_path)
    except (ValueError, OSError) as exc:
        message = str(exc) if str(path) in str(exc) else f"{path}: {exc}"
        raise CommandError(message) from None


def _label_hits(predicted: Any, truth: Any) -> Any:
    """Which file labels equal the predicted classes: text classes as whole strings (a cast to
    the classes' string width would cut "apple" to "a"); numeric classes by value, so labels
    written another way ("1.0" for 1) count."""
    import numpy as np

    if predicted.dtype.kind in "USO":
        return predicted.astype(str) == truth.astype(str)
    try:
        return predicted.astype(np.float64) == truth.astype(np.float64)
    except (TypeError, ValueError):  # a label that is not a number matches no numeric class
        return predicted.astype(str) == truth.astype(str)


def _predict(args: argparse.Namespace) -> int:
    _require_extra("sklearn", "sklearn")
    import csv
    import io

    import numpy as np

    from crossent import _data
    from crossent.models._io import atomic_write

    output = _writable_file(Path(args.output)) if args.output else None
    model = _load_model(args.model)
    stored = getattr(model, "file_metadata_", {})
    if args.target is not None:
        table = _data.load_table(args.data, args.target, require_target=True)
    else:
        table = _data.load_table(
            args.data, stored.get("target"), require_target=False, target_optional=True,
            missing_labels=True,
        )  # fmt: skip
    names = stored.get("feature_names")
    X = _data.select_features(table, names, model.n_features_in_)
    predictions = model.predict(X)
    probabilities = model.predict_proba(X) if args.proba else None

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header = ["prediction"]
    if probabilities is not None:
        header += [f"proba_{c}" for c in model.classes_.tolist()]
    writer.writerow(header)
    for i, label in enumerate(predictions.tolist()):
        row = [label]
        if probabilities is not None:
            row += [repr(float(p)) for p in probabilities[i]]
        writer.writerow(row)
    text = buffer.getvalue()
    if output is None:
        sys.stdout.write(text)
    else:
        try:
            atomic_write(output, lambda handle: handle.write(text.encode("utf-8")))
        except OSError as exc:
            raise CommandError(f"cannot write {str(output)!r}: {_reason(exc)}") from None
        print(f"wrote {len(predictions)} predictions to {output}", file=sys.stderr)
    if table.target is not None:
        truth = np.asarray(table.target)
        labelled = truth != "" if truth.dtype.kind == "U" else np.ones(len(truth), dtype=bool)
        hits = _label_hits(predictions[labelled], truth[labelled])
        truth = truth[labelled]
        if len(truth):
            unlabelled = len(labelled) - len(truth)
            rows = f" ({len(truth)} labelled rows; {unlabelled} without a label)" * (unlabelled > 0)
            print(f"accuracy against {table.target_name!r}: {float(np.mean(hits)):.4f}{rows}",
                  file=sys.stderr)  # fmt: skip
    return 0


# ------------------------------------------------------------------------------------------------
# bench


def _bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--suite", default="cross_entropy", help="harness suite to run (default: cross_entropy)"
    )
    parser.add_argument("--full", action="store_true", help="full shapes instead of --quick")
    parser.add_argument(
        "--out",
        default="results",
        metavar="DIR",
        help="where the harness writes its csv/json/md (default: results/)",
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the memory probes")


def source_root() -> Path | None:
    """The checkout holding ``benchmarks/harness.py`` next to this package's ``src/``, if any."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "benchmarks" / "harness.py").is_file() else None


def _bench(args: argparse.Namespace) -> int:
    root = source_root()
    if root is None:
        raise CommandError(
            "crossent bench runs the benchmark harness of a source checkout (benchmarks/ next "
            "to src/); this installation has none: clone the repository and install it with "
            "pip install -e '.[dev]'"
        )
    out = Path(args.out)
    if not out.is_absolute():
        out = Path.cwd() / out
    _check_directory(out)
    command = [sys.executable, "-m", "benchmarks", args.suite, "--out", str(out)]
    if not args.full:
        command.append("--quick")
    if args.no_memory:
        command.append("--no-memory")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(root / "src"), str(root), env.get("PYTHONPATH")])
    )
    print("running:", " ".join(command[1:]), file=sys.stderr, flush=True)
    return subprocess.run(command, cwd=root, env=env).returncode


# ------------------------------------------------------------------------------------------------
# parser and entry point


COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None] | None, Callable]] = {
    "train": (
        "fit a softmax regression and save it (default data: digits)",
        _train_arguments,
        _train,
    ),
    "predict": ("predict with a saved model", _predict_arguments, _predict),
    "bench": ("a quick run of the benchmark harness", _bench_arguments, _bench),
    "demo": ("cross-entropy of the logits [2, 4, 0.5]", None, _demo),
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser: one subcommand per entry of ``COMMANDS``, plus ``explain``, whose
    arguments and behaviour live in :mod:`crossent.explanation`."""
    from crossent import explanation

    parser = argparse.ArgumentParser(
        prog="crossent",
        description="PyTorch-exact cross-entropy losses, and the softmax regression built on them.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, add_arguments, run) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        if add_arguments is not None:
            add_arguments(command)
        command.set_defaults(func=run)
    explain_help = "explain a loss computation step by step"
    explain = sub.add_parser("explain", help=explain_help, description=explain_help)
    explanation.add_arguments(explain)
    explain.set_defaults(func=explanation.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    command = args.command
    from crossent._data import DataError

    try:
        return int(args.func(args))
    except (CommandError, DataError) as exc:
        print(f"crossent {command}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"crossent {command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

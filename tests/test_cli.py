"""The ``crossent`` command: train, predict, bench, explain wiring, and every bad-input case."""

from __future__ import annotations

import csv
import importlib.util
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sklearn")

from crossent import cli
from crossent.models import SoftmaxRegression

SRC = str(Path(__file__).resolve().parents[1] / "src")
HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
HAS_PYARROW = importlib.util.find_spec("pyarrow") is not None


def run_main(capsys, *argv):
    """Run the command in-process: (exit status, stdout, stderr)."""
    status = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def assert_bad_input(status, out, err, *fragments):
    assert status == 2
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err, err


def write_csv(path, header, rows):
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def digits_csv(path, n=None, drop_target=False, extra_column=False):
    from sklearn.datasets import load_digits

    bunch = load_digits()
    X, y = bunch.data[:n], bunch.target[:n]
    header = list(bunch.feature_names)
    rows = [list(map(float, x)) for x in X]
    if not drop_target:
        header.append("target")
        rows = [[*r, int(t)] for r, t in zip(rows, y, strict=True)]
    if extra_column:
        header.append("id")
        rows = [[*r, i] for i, r in enumerate(rows)]
    return write_csv(path, header, rows), X, y


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One default training run on the bundled digits, with the scikit-learn comparison."""
    out = tmp_path_factory.mktemp("train") / "out"
    capture = io.StringIO()
    errors = io.StringIO()
    old = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = capture, errors
    try:
        status = cli.main(["train", "--out", str(out), "--compare-sklearn"])
    finally:
        sys.stdout, sys.stderr = old
    return status, capture.getvalue(), errors.getvalue(), out


# ------------------------------------------------------------------------------------------------
# train


def test_train_on_digits_prints_the_table_and_saves_the_model(trained):
    status, out, err, directory = trained
    assert status == 0, err
    for row in (
        "train accuracy",
        "test accuracy",
        "train log-loss",
        "test log-loss",
        "iterations",
        "time (s)",
    ):
        assert row in out
    assert "scikit-learn" in out
    assert (directory / "model.npz").is_file()
    if HAS_MATPLOTLIB:
        assert (directory / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in directory.iterdir()) == sorted(
        ["model.npz", *(["loss_curve.png"] if HAS_MATPLOTLIB else [])]
    )


def table_row(out, name):
    line = next(line for line in out.splitlines() if line.startswith(name))
    return line[len(name) :].split()


def test_digits_test_accuracy_within_half_a_point_of_sklearn(trained):
    _, out, _, _ = trained
    ours, theirs = (float(v) for v in table_row(out, "test accuracy"))
    assert abs(ours - theirs) <= 0.005
    ours_objective, theirs_objective = (float(v) for v in table_row(out, "objective"))
    assert ours_objective <= theirs_objective * (1 + 1e-6)


def test_saved_model_takes_raw_features(trained):
    from sklearn.datasets import load_digits

    *_, directory = trained
    model = SoftmaxRegression.load(directory / "model.npz")
    X, y = load_digits(return_X_y=True)
    assert model.score(X, y) > 0.97  # standardisation is folded into the weights
    assert model.file_metadata_["target"] == "target"
    assert model.file_metadata_["feature_names"][0] == "pixel_0_0"


def test_train_on_csv_npz_with_target_option(tmp_path, capsys):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 3))
    y = np.where(X[:, 0] + 0.3 * rng.normal(size=120) > 0, "yes", "no")
    rows = [[*map(float, x), label] for x, label in zip(X, y, strict=True)]
    data = write_csv(tmp_path / "d.csv", ["a", "b", "c", "label"], rows)
    status, out, err = run_main(
        capsys, "train", "--data", data, "--target", "label", "--out", tmp_path / "o1", "--no-plot"
    )
    assert status == 0, err
    assert "3 features, 2 classes" in out
    np.savez(tmp_path / "d.npz", X=X, species=y)
    status, out, err = run_main(
        capsys,
        "train",
        "--data",
        tmp_path / "d.npz",
        "--target",
        "species",
        "--out",
        tmp_path / "o2",
        "--no-plot",
        "--model-name",
        "m.safetensors",
    )
    assert status == 0, err
    assert (tmp_path / "o2" / "m.safetensors").is_file()


def test_train_with_a_minibatch_solver(tmp_path, capsys):
    status, out, err = run_main(
        capsys, "train", "--solver", "adam", "--max-iter", "5", "--out", tmp_path, "--no-plot"
    )
    assert status == 0, err
    assert float(table_row(out, "test accuracy")[0]) > 0.9


# ------------------------------------------------------------------------------------------------
# predict


def test_predict_to_stdout_and_file(trained, tmp_path, capsys):
    *_, directory = trained
    model_path = directory / "model.npz"
    data, X, _y = digits_csv(tmp_path / "digits.csv", n=50)
    status, out, err = run_main(capsys, "predict", "--model", model_path, "--data", data)
    assert status == 0, err
    lines = out.splitlines()
    assert lines[0] == "prediction" and len(lines) == 51
    model = SoftmaxRegression.load(model_path)
    assert [int(v) for v in lines[1:]] == model.predict(X).tolist()
    assert "accuracy against 'target'" in err

    target = tmp_path / "pred.csv"
    status, out, err = run_main(
        capsys, "predict", "--model", model_path, "--data", data, "--proba", "--output", target
    )
    assert status == 0 and out == ""
    with open(target) as handle:
        table = list(csv.reader(handle))
    assert table[0] == ["prediction", *[f"proba_{k}" for k in range(10)]]
    probabilities = np.array([[float(v) for v in row[1:]] for row in table[1:]])
    np.testing.assert_array_equal(probabilities, model.predict_proba(X))  # repr round-trips


def test_predict_without_target_column_and_reordered_columns(trained, tmp_path, capsys):
    *_, directory = trained
    data, X, _ = digits_csv(tmp_path / "d.csv", n=10, drop_target=True)
    with open(data) as handle:
        rows = list(csv.reader(handle))
    reordered = write_csv(tmp_path / "r.csv", rows[0][::-1], [r[::-1] for r in rows[1:]])
    status, out, err = run_main(
        capsys, "predict", "--model", directory / "model.npz", "--data", reordered
    )
    assert status == 0, err
    model = SoftmaxRegression.load(directory / "model.npz")
    assert [int(v) for v in out.splitlines()[1:]] == model.predict(X).tolist()
    assert err == ""


# ------------------------------------------------------------------------------------------------
# bad input: one line on stderr, exit code 2, no traceback, no partial output file


def test_missing_data_file(tmp_path, capsys):
    out_dir = tmp_path / "out"
    result = run_main(capsys, "train", "--data", tmp_path / "nope.csv", "--out", out_dir)
    assert_bad_input(*result, "nope.csv", "no such file")
    assert not out_dir.exists()


def test_unknown_target_column(tmp_path, capsys):
    data = write_csv(tmp_path / "d.csv", ["a", "b", "y"], [[1, 2, 0], [3, 4, 1]])
    result = run_main(capsys, "train", "--data", data, "--target", "label", "--out", tmp_path)
    assert_bad_input(*result, "unknown target column 'label'", "'a', 'b', 'y'")
    result = run_main(capsys, "train", "--target", "label", "--out", tmp_path)  # digits
    assert_bad_input(*result, "unknown target column 'label'")
    assert list(tmp_path.iterdir()) == [data]


def test_non_numeric_feature(tmp_path, capsys):
    data = write_csv(tmp_path / "d.csv", ["a", "b", "y"], [[1, 2, 0], [3, "abc", 1]])
    result = run_main(capsys, "train", "--data", data, "--out", tmp_path / "o")
    assert_bad_input(*result, "feature column 'b' is not numeric", "line 3", "'abc'")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("value", ["nan", "", "inf"])
def test_nan_or_missing_feature(tmp_path, capsys, value):
    data = write_csv(tmp_path / "d.csv", ["a", "b", "y"], [[1, 2, 0], [3, value, 1]])
    result = run_main(capsys, "train", "--data", data, "--out", tmp_path / "o")
    assert_bad_input(*result, "feature column 'b'", "line 3")
    assert not (tmp_path / "o").exists()


def test_nan_in_npz_matrix(tmp_path, capsys):
    X = np.ones((6, 2))
    X[4, 1] = np.nan
    np.savez(tmp_path / "d.npz", X=X, y=np.arange(6) % 2)
    result = run_main(capsys, "train", "--data", tmp_path / "d.npz", "--out", tmp_path / "o")
    assert_bad_input(*result, "NaN or infinite value at row 5, column 2")


def test_single_class(tmp_path, capsys):
    data = write_csv(tmp_path / "d.csv", ["a", "y"], [[i, 7] for i in range(10)])
    result = run_main(capsys, "train", "--data", data, "--out", tmp_path / "o")
    assert_bad_input(*result, "single class", "at least two")
    assert not (tmp_path / "o").exists()


def _three_groups(labels):
    """Rows in three separable groups (features 0, 10, 20 plus noise), labelled ``labels``."""
    rng = np.random.default_rng(0)
    return [[10.0 * g + rng.normal(), rng.normal(), label] for g, label in enumerate(labels)
            for _ in range(8)]  # fmt: skip


def test_labels_are_categories_not_numbers(tmp_path, capsys):
    # "01" and "1" (and "1.0") are different classes: only canonical integers become numbers
    data = write_csv(tmp_path / "d.csv", ["a", "b", "code"], _three_groups(["01", "1", "1.0"]))
    status, out, err = run_main(capsys, "train", "--data", data, "--target", "code", "--out",
                                tmp_path / "o", "--no-plot")  # fmt: skip
    assert status == 0, err
    assert "3 classes" in out
    model = SoftmaxRegression.load(tmp_path / "o" / "model.npz")
    assert model.classes_.tolist() == ["01", "1", "1.0"]
    data = write_csv(tmp_path / "n.csv", ["a", "b", "y"], _three_groups(["7", "-3", "12"]))
    assert run_main(capsys, "train", "--data", data, "--out", tmp_path / "p", "--no-plot")[0] == 0
    model = SoftmaxRegression.load(tmp_path / "p" / "model.npz")
    assert model.classes_.tolist() == [-3, 7, 12]


def test_non_integer_numeric_labels_are_refused(tmp_path, capsys):
    data = write_csv(tmp_path / "d.csv", ["a", "b", "dose"], _three_groups(["0.5", "2.5", "4"]))
    result = run_main(capsys, "train", "--data", data, "--target", "dose", "--out", tmp_path / "o")
    assert_bad_input(*result, "non-integer numbers", "0.5", "regression")
    assert not (tmp_path / "o").exists()


def test_byte_order_mark_is_not_part_of_a_column_name(tmp_path, capsys):
    data = write_csv(tmp_path / "d.csv", ["label", "a", "b"],
                     [[r[2], r[0], r[1]] for r in _three_groups(["x", "y", "z"])])  # fmt: skip
    data.write_bytes(b"\xef\xbb\xbf" + data.read_bytes())  # what Excel's "CSV UTF-8" writes
    status, _, err = run_main(capsys, "train", "--data", data, "--out", tmp_path / "o",
                              "--no-plot")  # fmt: skip
    assert status == 0, err
    model = SoftmaxRegression.load(tmp_path / "o" / "model.npz")
    assert model.file_metadata_["target"] == "label"


@pytest.mark.parametrize("seed", range(6))
def test_a_class_too_rare_to_stratify_stays_in_training(tmp_path, capsys, seed):
    rows = _three_groups(["a", "b", "c"])[:17]  # class "c" has a single row
    data = write_csv(tmp_path / "d.csv", ["a", "b", "label"], rows)
    status, out, err = run_main(capsys, "train", "--data", data, "--out", tmp_path / "o",
                                "--no-plot", "--seed", seed)  # fmt: skip
    assert status == 0, err
    assert "3 classes" in out


def test_infinite_tolerance_is_bad_input(tmp_path, capsys):
    result = run_main(capsys, "train", "--tol", "inf", "--out", tmp_path / "o")
    assert_bad_input(*result, "--tol must be positive and finite")


@pytest.mark.parametrize("seed", ["-1", str(2**32)])
def test_a_seed_outside_numpys_range_is_bad_input(tmp_path, capsys, seed):
    result = run_main(capsys, "train", "--seed", seed, "--out", tmp_path / "o")
    assert_bad_input(*result, "--seed must be in [0, 2**32 - 1]")


def test_predict_scores_the_labelled_rows_of_a_partly_labelled_file(trained, tmp_path, capsys):
    *_, directory = trained
    data, *_ = digits_csv(tmp_path / "d.csv", n=40)
    lines = data.read_text().splitlines()
    lines[1:11] = [line.rsplit(",", 1)[0] + "," for line in lines[1:11]]  # 10 rows unlabelled
    data.write_text("\n".join(lines) + "\n")
    status, out, err = run_main(capsys, "predict", "--model", directory / "model.npz",
                                "--data", data)  # fmt: skip
    assert status == 0, err
    assert len(out.splitlines()) == 41
    assert "30 labelled rows; 10 without a label" in err


def test_compare_sklearn_with_two_classes_uses_the_same_regularisation(tmp_path, capsys):
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    rows = [[*x, int(y)] for x, y in zip(bunch.data, bunch.target, strict=True)]
    data = write_csv(tmp_path / "d.csv", [f"f{i}" for i in range(30)] + ["y"], rows)
    status, out, err = run_main(capsys, "train", "--data", data, "--out", tmp_path / "o",
                                "--no-plot", "--C", "0.01", "--compare-sklearn")  # fmt: skip
    assert status == 0, err
    table = {line[:16].strip(): line[16:].split() for line in out.splitlines()}
    crossent_loss, sklearn_loss = (float(v) for v in table["test log-loss"])
    # both stop at tol=1e-4 (a few 1e-4 apart); at LogisticRegression(C) the gap was 25%
    assert abs(crossent_loss - sklearn_loss) < 1e-3 * crossent_loss


def test_feature_count_differs_at_predict(trained, tmp_path, capsys):
    *_, directory = trained
    output = tmp_path / "pred.csv"
    data = write_csv(tmp_path / "d.csv", ["a", "b"], [[1, 2], [3, 4]])
    result = run_main(
        capsys, "predict", "--model", directory / "model.npz", "--data", data, "--output", output
    )
    assert_bad_input(*result, "the model expects 64 features, the data has 2")
    np.savez(tmp_path / "x.npz", X=np.ones((3, 63)))
    result = run_main(
        capsys,
        "predict",
        "--model",
        directory / "model.npz",
        "--data",
        tmp_path / "x.npz",
        "--output",
        output,
    )
    assert_bad_input(*result, "the model expects 64 features, the data has 63")
    extra, _, _ = digits_csv(tmp_path / "e.csv", n=5, extra_column=True)
    result = run_main(
        capsys, "predict", "--model", directory / "model.npz", "--data", extra, "--output", output
    )
    assert_bad_input(*result, "the data has 65", "columns not seen in training: 'id'")
    assert not output.exists()


def test_unwritable_output_paths(trained, tmp_path, capsys):
    *_, directory = trained
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    result = run_main(capsys, "train", "--out", blocker / "sub", "--no-plot")
    assert_bad_input(*result, "is a file")
    data, _, _ = digits_csv(tmp_path / "d.csv", n=5)
    missing = tmp_path / "no-such-dir" / "p.csv"
    result = run_main(
        capsys, "predict", "--model", directory / "model.npz", "--data", data, "--output", missing
    )
    assert_bad_input(*result, "does not exist")
    result = run_main(
        capsys, "predict", "--model", directory / "model.npz", "--data", data, "--output", tmp_path
    )
    assert_bad_input(*result, "it is a directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "d.csv"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_output_directory(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        result = run_main(capsys, "train", "--out", locked, "--no-plot")
        assert_bad_input(*result, "permission denied")
    finally:
        locked.chmod(0o700)


def test_missing_or_corrupt_model(tmp_path, capsys):
    data = write_csv(tmp_path / "d.csv", ["a"], [[1]])
    result = run_main(capsys, "predict", "--model", tmp_path / "m.npz", "--data", data)
    assert_bad_input(*result, "no such model file")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    result = run_main(capsys, "predict", "--model", tmp_path / "bad.npz", "--data", data)
    assert_bad_input(*result, "not a crossent model file")
    assert "pickle" not in result[2]  # (NumPy's advice for a non-archive; models never pickle)


def test_other_bad_files(tmp_path, capsys):
    (tmp_path / "d.txt").write_text("a,b\n1,2\n")
    result = run_main(capsys, "train", "--data", tmp_path / "d.txt", "--out", tmp_path / "o")
    assert_bad_input(*result, "unknown data file type '.txt'")
    write_csv(tmp_path / "short.csv", ["a", "b", "y"], [[1, 2, 0], [3, 1]])
    result = run_main(capsys, "train", "--data", tmp_path / "short.csv", "--out", tmp_path / "o")
    assert_bad_input(*result, "line 3 has 2 fields, the header has 3")
    (tmp_path / "semi.csv").write_text("a;b;y\n1;2;0\n3;4;1\n")
    result = run_main(capsys, "train", "--data", tmp_path / "semi.csv", "--out", tmp_path / "o")
    assert_bad_input(*result, "looks separated by semicolons")
    (tmp_path / "empty.csv").write_text("")
    result = run_main(capsys, "train", "--data", tmp_path / "empty.csv", "--out", tmp_path / "o")
    assert_bad_input(*result, "the file is empty")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.savez(tmp_path / "obj.npz", X=np.array([[1.0]]), y=np.array([{"a": 1}], dtype=object))
    result = run_main(capsys, "train", "--data", tmp_path / "obj.npz", "--out", tmp_path / "o")
    assert_bad_input(*result, "never unpickles")
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(HAS_PYARROW, reason="pyarrow is installed")
def test_parquet_without_pyarrow_names_the_package(tmp_path, capsys):
    (tmp_path / "d.parquet").write_bytes(b"PAR1")
    result = run_main(capsys, "train", "--data", tmp_path / "d.parquet", "--out", tmp_path / "o")
    assert_bad_input(*result, "needs pyarrow", "pip install")


def test_missing_scikit_learn_names_the_extra(tmp_path):
    block = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'sklearn':\n"
        "            raise ModuleNotFoundError(name, name=name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from crossent.cli import main\n"
        "sys.exit(main(['train', '--out', sys.argv[1]]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", block, str(tmp_path / "o")],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": SRC},
    )
    assert out.returncode == 2
    assert out.stderr.strip() == (
        "crossent train: error: this command needs 'sklearn', which is not installed; "
        "install it with: pip install 'crossent[sklearn]'"
    )
    assert not (tmp_path / "o").exists()


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--solver", "newton"])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        cli.main(["predict", "--data", "x.csv"])  # --model missing
    assert info.value.code == 2
    capsys.readouterr()


# ------------------------------------------------------------------------------------------------
# bench, explain, demo, progress bar, python -m


def test_bench_runs_the_harness_quick(monkeypatch, tmp_path, capsys):
    seen = {}

    def fake_run(command, cwd, env):
        seen.update(command=command, cwd=cwd, env=env)
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(cli.subprocess, "run", fake_run)
    status, _, err = run_main(capsys, "bench", "--out", tmp_path)
    assert status == 0, err
    assert seen["command"][1:4] == ["-m", "benchmarks", "cross_entropy"]
    assert "--quick" in seen["command"]
    assert Path(seen["cwd"]) == cli.source_root()


def test_bench_without_a_checkout(monkeypatch, capsys):
    monkeypatch.setattr(cli, "source_root", lambda: None)
    assert_bad_input(*run_main(capsys, "bench"), "source checkout")


def test_explain_is_wired(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["explain", "--help"])
    assert info.value.code == 0
    assert "usage: crossent explain" in capsys.readouterr().out
    status, out, _ = run_main(capsys, "explain")
    assert status == 0 and "0.15317821" in out  # the default example: logits [2, 4, 0.5]


@pytest.mark.skipif(not HAS_MATPLOTLIB, reason="needs matplotlib")
def test_explain_plot_path_that_is_a_file_fails_before_any_output(tmp_path, capsys):
    (tmp_path / "f").write_text("")
    status, out, err = run_main(capsys, "explain", "--plot", tmp_path / "f")
    assert_bad_input(status, out, err, "not a directory")
    assert out == ""


def test_demo(capsys):
    status, out, _ = run_main(capsys, "demo")
    assert status == 0 and "target 1: loss 0.1531782" in out


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_draws_on_terminals_only():
    stream = FakeTerminal()
    bar = cli.ProgressBar(10, "training", stream=stream, rate=1e9)
    bar.update(5, 0.5)
    bar.update(10, 0.25)
    bar.close()
    text = stream.getvalue()
    assert "\rtraining [############------------]  5/10  objective 0.500000" in text
    assert text.endswith("10/10  objective 0.250000\n")
    plain = io.StringIO()
    quiet = cli.ProgressBar(10, "training", stream=plain)
    quiet.update(3, 1.0)
    quiet.close()
    assert plain.getvalue() == ""


def test_python_dash_m_crossent(tmp_path):
    env = {**os.environ, "PYTHONPATH": SRC}
    out = subprocess.run(
        [sys.executable, "-m", "crossent", "train", "--out", str(tmp_path), "--no-plot"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert "test accuracy" in out.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "crossent", "predict", "--model", "m.npz", "--data", "d.csv"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip() == "crossent predict: error: m.npz: no such model file"


@pytest.mark.parametrize("bad", ["nan", "inf"])
def test_non_finite_numeric_labels_are_refused(tmp_path, capsys, bad):
    rows = _three_groups(["0", "1", "2"])
    rows[5][2] = bad
    data = write_csv(tmp_path / "d.csv", ["a", "b", "label"], rows)
    result = run_main(capsys, "train", "--data", data, "--out", tmp_path / "o")
    assert_bad_input(*result, f"has '{bad}' at line 7")


def test_predict_compares_numeric_labels_by_value(trained, tmp_path, capsys):
    # a model trained on labels 0..9 scored on a file that writes them 0.0..9.0
    *_, directory = trained
    data, _, y = digits_csv(tmp_path / "d.csv", n=60)
    lines = data.read_text().splitlines()
    body = zip(lines[1:], y, strict=True)
    lines[1:] = [line.rsplit(",", 1)[0] + f",{float(t)}" for line, t in body]
    data.write_text("\n".join(lines) + "\n")
    status, _, err = run_main(capsys, "predict", "--model", directory / "model.npz", "--data", data)
    assert status == 0, err
    accuracy = float(err.split("accuracy against 'target': ")[1].split()[0])
    assert accuracy > 0.9


def test_predict_compares_text_labels_whole(tmp_path, capsys):
    # classes "a", "b", "c" scored on a file labelled "apple", "bob", "cat": no label is a
    # class (the labels were cut to the classes' one-character width and all counted)
    rows = _three_groups(["a", "b", "c"])
    data = write_csv(tmp_path / "d.csv", ["f", "g", "label"], rows)
    status, _, err = run_main(capsys, "train", "--data", data, "--out", tmp_path / "o", "--no-plot")
    assert status == 0, err
    renamed = [[*row[:2], {"a": "apple", "b": "bob", "c": "cat"}[row[2]]] for row in rows]
    scored = write_csv(tmp_path / "s.csv", ["f", "g", "label"], renamed)
    status, _, err = run_main(capsys, "predict", "--model", tmp_path / "o" / "model.npz",
                              "--data", scored)  # fmt: skip
    assert status == 0, err
    assert "accuracy against 'label': 0.0000" in err
    status, _, err = run_main(capsys, "predict", "--model", tmp_path / "o" / "model.npz",
                              "--data", data)  # fmt: skip
    assert status == 0, err
    assert "accuracy against 'label': 1.0000" in err

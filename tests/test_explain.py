"""crossent.explanation: the printed steps are crossent's own numbers (bitwise in float64), the
formulas in between reproduce them, and the `crossent explain` command behaves."""

from __future__ import annotations

import argparse
import math
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import crossent
from crossent import explanation as ex
from crossent.reference.cross_entropy import to_rows

X = np.array([[0.1, 0.2, 0.7], [0.8, 0.1, 0.1]])
W = np.array([0.2, 0.5, 0.3])
Q = np.array([[0.0, 0.25, 0.75], [1.0, 0.0, 0.0]])
Y = np.array([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
Z = np.array([[0.5, -1.0, 3.0], [2.0, 0.0, -4.0]])
XK = np.moveaxis(np.stack([X, X[::-1] * 2]), 1, 2)  # (2, 3, 2): classes in dim 1


@dataclass(frozen=True)
class Case:
    id: str
    loss: str
    input: np.ndarray
    target: np.ndarray
    kwargs: dict[str, Any] = field(default_factory=dict)


CASES = [
    Case("ce-default", "cross_entropy", np.array([2.0, 4.0, 0.5]), np.array(1)),
    Case("ce-index", "cross_entropy", X * 3, np.array([2, 0])),
    Case("ce-weight", "cross_entropy", X * 3, np.array([2, 0]), {"weight": W}),
    Case(
        "ce-ignore-smooth-weight",
        "cross_entropy",
        X,
        np.array([2, -100]),
        {"weight": W, "label_smoothing": 0.2},
    ),  # spec V13 / G3
    Case(
        "ce-smooth-sum",
        "cross_entropy",
        X * 3,
        np.array([2, 0]),
        {"label_smoothing": 0.1, "reduction": "sum"},
    ),
    Case("ce-none", "cross_entropy", X * 3, np.array([1, 0]), {"reduction": "none"}),
    Case("ce-all-ignored", "cross_entropy", X * 3, np.array([-100, -100])),
    Case("ce-soft", "cross_entropy", X * 3, Q),
    Case("ce-soft-weight-smooth", "cross_entropy", X * 3, Q, {"weight": W, "label_smoothing": 0.1}),
    Case("ce-kdim", "cross_entropy", XK, np.array([[2, 0], [1, -100]]), {"weight": W}),
    Case(
        "ce-many-classes", "cross_entropy", np.linspace(-3, 3, 40).reshape(2, 20), np.array([17, 3])
    ),
    Case("nll", "nll_loss", np.log(X), np.array([2, 0]), {"weight": W}),
    Case("nll-ignore", "nll_loss", np.log(X), np.array([1, 0]), {"ignore_index": 0}),
    Case("bce", "binary_cross_entropy", X, Y),
    Case(
        "bce-clamp-weight",
        "binary_cross_entropy",
        np.array([0.0, 1.0, 0.0, 0.5]),
        np.array([1.0, 0.0, 0.25, 0.3]),
        {"weight": np.array([1.0, 2.0, 1.0, 0.5])},
    ),
    Case("bce-logits", "binary_cross_entropy_with_logits", Z, Y),
    Case(
        "bce-logits-pos-weight",
        "binary_cross_entropy_with_logits",
        Z,
        Y,
        {
            "pos_weight": np.array([1.0, 2.0, 3.0]),
            "weight": np.array([[1.0], [2.0]]),
            "reduction": "sum",
        },
    ),
]

AND_GRAD = {
    "cross_entropy": crossent.cross_entropy_and_grad,
    "nll_loss": crossent.nll_loss_and_grad,
    "binary_cross_entropy": crossent.binary_cross_entropy_and_grad,
    "binary_cross_entropy_with_logits": crossent.binary_cross_entropy_with_logits_and_grad,
}


def _explain(case: Case, **extra: Any) -> ex.Explanation:
    return ex.explain(case.input, case.target, loss=case.loss, **case.kwargs, **extra)


def _crossent(case: Case, **override: Any):
    kwargs = dict(case.kwargs) | override
    return AND_GRAD[case.loss](case.input, case.target, **kwargs)


def _torch(case: Case, reduction: str | None = None) -> torch.Tensor:
    kwargs = {
        k: torch.from_numpy(np.asarray(v)) if isinstance(v, np.ndarray) else v
        for k, v in case.kwargs.items()
    }
    if reduction is not None:
        kwargs["reduction"] = reduction
    fn = getattr(torch.nn.functional, case.loss)
    return fn(torch.from_numpy(case.input), torch.from_numpy(case.target), **kwargs)


def _same(a: Any, b: Any) -> bool:
    """Bitwise equality of float64 arrays; NaN equals NaN (whatever its sign bit)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or not np.array_equal(np.isnan(a), np.isnan(b)):
        return False
    keep = ~np.isnan(a)
    return a[keep].tobytes() == b[keep].tobytes()


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_loss_and_gradient_are_crossents_bitwise(case: Case) -> None:
    e = _explain(case)
    out = _crossent(case)
    assert _same(e.loss, out.loss)
    assert _same(e.grad_input, out.grad_input)
    assert _same(e.losses, _crossent(case, reduction="none").loss)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_loss_agrees_with_torch(case: Case) -> None:
    e = _explain(case)
    np.testing.assert_allclose(e.loss, _torch(case).numpy(), rtol=1e-12, atol=0)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_printed_tables_show_crossents_numbers(case: Case) -> None:
    """Every row marked 'crossent' holds crossent's values bitwise; the result line prints
    every digit of crossent's loss."""
    e = _explain(case)
    out = _crossent(case)
    losses = np.asarray(e.losses).reshape(-1)
    text = str(e)
    match = re.search(rf"Result: {case.loss} = (.+)", text)
    assert match is not None
    printed = [float(v) for v in match.group(1).strip("[]").split(", ")]
    assert _same(np.array(printed), np.asarray(out.loss).reshape(-1))
    for table in e.tables:
        if table.key.startswith("sample"):
            position = 0 if table.key == "sample" else int(table.key.split()[1])
            loss_row = next(r for r in table.rows if r.label.startswith("loss L"))
            assert loss_row.note == "crossent"
            assert _same(loss_row.values[0], losses[position])
        if table.key.startswith("gradient") and case.loss in ("cross_entropy", "nll_loss"):
            position = 0 if table.key == "gradient" else int(table.key.split()[1])
            grad_rows = to_rows(np, out.grad_input)
            cols = [int(c.split()[1]) for c in table.columns]
            assert _same(table.row("gradient").values, grad_rows[position][cols])
        if table.key == "elements":
            loss_row = next(r for r in table.rows if r.label.startswith("loss L"))
            assert _same(loss_row.values, losses[: len(loss_row.values)])
        if table.key == "gradient" and case.loss.startswith("binary"):
            values = table.row("gradient").values
            assert _same(values, np.asarray(out.grad_input).reshape(-1)[: len(values)])
        if table.key == "reduction" and case.kwargs.get("reduction", "mean") != "none":
            assert _same(table.rows[-1].values[0], out.loss)


def test_default_example_steps_are_crossents_functions() -> None:
    """logits [2, 4, 0.5], target 1: softmax and log-probs bitwise equal to crossent's own."""
    e = ex.explain()
    x = np.array([2.0, 4.0, 0.5])
    table = e.table("sample")
    assert table.row("logits").values == (2.0, 4.0, 0.5)
    assert table.row("max m").values == (4.0,)
    assert table.row("x - m").values == (-2.0, 0.0, -3.5)
    assert _same(table.row("softmax").values, crossent.softmax(x, 0))
    assert _same(table.row("log-prob").values, crossent.log_softmax(x, 0))
    assert _same(table.row("sum S").values[0], np.sum(np.exp(x - 4.0)))
    np.testing.assert_allclose(table.row("loss L").values, [0.15317821], rtol=1e-7)  # spec V2
    gradient = e.table("gradient")
    # the gradient is softmax - target; crossent's backward recomputes p as exp(log p), which
    # may differ from exp(x - m) / S in the last bit
    np.testing.assert_allclose(
        gradient.row("softmax - target").values, gradient.row("gradient").values, rtol=4e-16
    )
    assert e.denominator == 1.0
    assert e.chance_loss == pytest.approx(math.log(3), rel=1e-15)
    text = str(e)
    for shown in (
        "0.15317821",
        "0.85797681",
        "-0.14202319",
        "log 3 = 1.0986123",
        "numerical stability",
        "Why subtract the max",
        "float32",
        "0.1531782",
    ):
        assert shown in text, shown
    assert e.findings == ()


def test_shift_note_names_the_overflow() -> None:
    e = ex.explain(np.array([1000.0, 0.0, -5.0]), np.array(2))
    assert float(e.loss) == 1005.0
    assert e.table("sample").row("exp(x - m)").values == (1.0, 0.0, 0.0)
    (note,) = e.table("sample").notes
    assert "exp(1000) itself would overflow to inf in float16, float32, float64" in note


def test_label_smoothing_is_hard_and_uniform_mix() -> None:
    """(1 - eps) * hard loss + eps * loss against uniform, with weights (spec V13)."""
    e = ex.explain(X, np.array([2, -100]), W, label_smoothing=0.2)
    table = e.table("sample 0")
    hard = table.row("hard loss").values[0]
    uniform = table.row("uniform loss").values[0]
    loss = table.row("loss L").values[0]
    assert loss == pytest.approx(0.8 * hard + 0.2 * uniform, rel=1e-15)
    assert float(e.loss) == pytest.approx(0.86723732, rel=1e-8)
    assert e.denominator == pytest.approx(0.3, rel=1e-15)  # w[2]; the ignored row adds nothing
    grad = e.table("gradient 0")
    scale = 1 / e.denominator
    inner = np.array(grad.rows[3].values)
    np.testing.assert_allclose(scale * inner, grad.row("gradient").values, rtol=1e-14)
    np.testing.assert_allclose(
        grad.row("gradient").values, [0.2158425, 0.17655045, -0.39239294], rtol=1e-7
    )  # spec G3
    assert e.table("gradient 1").row("gradient").values == (0.0, 0.0, 0.0)
    assert "ignore_index" in e.table("sample 1").title
    assert "w[2] = 0.3" in str(e)


@pytest.mark.parametrize(
    ("target", "weight", "denominator"),
    [
        (np.array([2, 0]), None, 2.0),
        (np.array([2, 0]), W, 0.5),
        (np.array([2, -100]), W, 0.3),
        (Q, W, 2.0),  # probability targets divide by the number of positions
    ],
)
def test_mean_denominator_is_exact(target: np.ndarray, weight: Any, denominator: float) -> None:
    e = ex.explain(X * 3, target, weight)
    assert e.denominator == denominator
    total = e.table("reduction").row("sum of losses").values[0]
    assert float(e.loss) == pytest.approx(total / denominator, rel=1e-15)


def test_soft_target_gradient_formula() -> None:
    e = ex.explain(X * 3, Q, W, label_smoothing=0.1)
    for i in range(2):
        grad = e.table(f"gradient {i}")
        scaled = np.array(grad.rows[3].values) / e.denominator  # s = 1/M for 'mean'
        np.testing.assert_allclose(scaled, grad.row("gradient").values, rtol=1e-14)
        q = np.array(grad.row("target").values)
        np.testing.assert_allclose(q, 0.9 * Q[i] + 0.1 / 3, rtol=1e-15)


def test_bce_shows_the_clamp() -> None:
    e = ex.explain(loss="binary_cross_entropy")  # p = [0.9, 0.2, 0], y = [1, 0, 1]
    table = e.table("elements")
    assert table.row("log p").values[2] == -math.inf
    assert table.row("max(log p, -100)").values[2] == -100.0
    assert table.row("loss L").values[2] == 100.0
    assert "clamp is active here at [2]" in str(e)
    assert e.chance_loss == pytest.approx(math.log(2), rel=1e-15)
    gradient = e.table("gradient")
    assert gradient.row("max(p (1 - p), 1e-12)").values[2] == pytest.approx(1e-12, rel=1e-7)
    torch_p = torch.tensor([0.9, 0.2, 0.0], dtype=torch.float64, requires_grad=True)
    torch.nn.functional.binary_cross_entropy(
        torch_p, torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64)
    ).backward()
    np.testing.assert_allclose(gradient.row("gradient").values, torch_p.grad.numpy(), rtol=1e-12)


def test_bce_with_logits_gradient_is_sigmoid_minus_target() -> None:
    e = ex.explain(Z, Y, loss="binary_cross_entropy_with_logits")
    gradient = e.table("gradient")
    np.testing.assert_allclose(
        np.array(gradient.row("sigmoid(x) - y").values) / 6,
        gradient.row("gradient").values,
        rtol=1e-15,
    )


def test_nll_explains_what_it_picks() -> None:
    e = ex.explain(loss="nll_loss")  # log_softmax([2, 4, 0.5]), target 1
    assert float(e.loss) == pytest.approx(0.15317821, rel=1e-7)
    assert e.table("gradient").row("gradient").values == (0.0, -1.0, 0.0)
    assert e.table("sample").row("sum_c exp").values[0] == pytest.approx(1.0, rel=1e-15)


def test_precision_table_puts_float32_next_to_float64() -> None:
    e = ex.explain()
    table = e.table("precision")
    assert table.columns == ("float64", "float32", "rel. diff")
    loss32 = crossent.cross_entropy(np.array([2.0, 4.0, 0.5], dtype=np.float32), np.array(1))
    row = table.row("loss")
    assert row.values[0] == repr(float(e.loss))
    assert np.float32(row.values[1]) == loss32  # crossent's own float32 result
    assert row.values[0] != row.values[1]
    assert all(r.values[0] != r.values[1] for r in table.rows)  # only where they differ
    assert "precision" not in [t.key for t in ex.explain(compare=None).tables]
    half = ex.explain(compare="float16").table("precision")
    assert half.columns[1] == "float16"
    assert np.float16(half.row("loss").values[1]) == crossent.cross_entropy(
        np.array([2.0, 4.0, 0.5], dtype=np.float16), np.array(1)
    )
    auto = ex.explain(np.array([2.0, 4.0, 0.5], dtype=np.float16), np.array(1))
    assert auto.table("precision").columns[1] == "float16"  # the input's own precision
    with pytest.raises(ValueError, match="compare"):
        ex.explain(compare="float8")


def test_torch_and_list_inputs() -> None:
    base = ex.explain(X * 3, np.array([2, 0]), W)
    from_torch = ex.explain(torch.tensor(X * 3), torch.tensor([2, 0]), torch.tensor(W))
    from_lists = ex.explain((X * 3).tolist(), [2, 0], W.tolist())
    assert _same(base.loss, from_torch.loss) and _same(base.loss, from_lists.loss)
    assert _same(base.grad_input, from_torch.grad_input)
    soft = ex.explain((X * 3).tolist(), Q.tolist())  # a list with the input's shape: probabilities
    assert soft.table("sample 0").title.endswith("probability target")
    f32 = ex.explain(torch.tensor(X * 3, dtype=torch.float32), torch.tensor([2, 0]))
    assert f32.input.dtype == np.float64 and "given as float32" in f32.call


def test_explanation_carries_diagnose_findings() -> None:
    e = ex.explain(torch.tensor(X.tolist()), torch.tensor([2, 0]))
    assert [f.code for f in e.findings] == ["probabilities-as-logits"]
    assert "[probabilities-as-logits]" in str(e)


def test_many_rows_and_classes_are_abbreviated() -> None:
    x = np.random.default_rng(0).normal(size=(20, 30))
    t = np.arange(20) % 30 + 9
    e = ex.explain(x, t)
    samples = [tb for tb in e.tables if tb.key.startswith("sample")]
    assert len(samples) == 8
    assert "the first 8 are shown" in str(e)
    assert len(samples[0].columns) == ex.MAX_COLUMNS
    assert f"class {t[0]}" in samples[0].columns  # the target class is always shown
    assert _same(e.loss, crossent.cross_entropy(x, t))


def test_explanation_is_frozen() -> None:
    e = ex.explain()
    with pytest.raises(AttributeError):
        e.loss = np.array(0.0)  # type: ignore[misc]
    with pytest.raises(KeyError, match="no table"):
        e.table("nope")


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"input": np.array([2.0, 4.0]), "target": np.array(5)}, IndexError),
        ({"input": np.array([2.0, 4.0])}, ValueError),
        ({"target": np.array(1)}, ValueError),
        ({"loss": "hinge"}, ValueError),
        ({"input": X, "target": np.array([[0, 1, 0], [1, 0, 0]])}, RuntimeError),  # int one-hot
        ({"input": X, "target": Y * 2, "loss": "binary_cross_entropy"}, RuntimeError),
    ],
)
def test_bad_input_raises_crossents_errors(kwargs: dict[str, Any], error: type) -> None:
    with pytest.raises(error):
        ex.explain(**kwargs)


# ------------------------------------------------------------------------------------------
# the command: add_arguments + run


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="crossent explain")
    ex.add_arguments(parser)
    code = ex.run(parser.parse_args(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_command_default_example(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run([], capsys)
    assert code == 0 and err == ""
    assert out == str(ex.explain())
    assert f"Result: cross_entropy = {float(ex.explain().loss)!r}" in out


@pytest.mark.parametrize(
    "argv",
    [
        ["--logits", "0.1,0.2,0.7;0.8,0.1,0.1", "--target", "2,0", "--weight", "0.2,0.5,0.3"],
        [
            "--logits",
            "[[0.1, 0.2, 0.7], [0.8, 0.1, 0.1]]",
            "--target",
            "[2, 0]",
            "--weight=[0.2, 0.5, 0.3]",
        ],
    ],
)
def test_command_reads_values(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(argv, capsys)
    assert code == 0
    expected = crossent.cross_entropy(X, np.array([2, 0]), W)
    assert f"Result: cross_entropy = {float(expected)!r}" in out
    assert "[probabilities-as-logits]" in out


def test_command_options(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(
        [
            "--logits=-1,2,0.5",
            "--target",
            "0.2,0.3,0.5",
            "--label-smoothing",
            "0.1",
            "--reduction",
            "sum",
            "--compare",
            "float16",
        ],
        capsys,
    )
    assert code == 0
    expected = crossent.cross_entropy(
        np.array([-1, 2, 0.5]), np.array([0.2, 0.3, 0.5]), label_smoothing=0.1, reduction="sum"
    )
    assert f"= {float(expected)!r}" in out and "float64 vs float16" in out
    code, out, _ = _run(
        [
            "--loss",
            "binary_cross_entropy_with_logits",
            "--logits",
            "2,-1",
            "--target",
            "1,0",
            "--pos-weight",
            "3",
            "--compare",
            "none",
        ],
        capsys,
    )
    assert code == 0 and "pos_weight" in out and "float64 vs" not in out
    code, out, _ = _run(
        ["--loss", "nll_loss", "--logits=-0.5,-1.2", "--target", "1", "--ignore-index", "0"], capsys
    )
    assert code == 0 and "ignore_index=0" in out


@pytest.mark.parametrize(
    "argv",
    [
        ["--logits", "2,4,0.5", "--target", "3"],  # out of range
        ["--logits", "2,4,x", "--target", "1"],  # not a number
        ["--logits", "1,2;3", "--target", "1,0"],  # ragged rows
        ["--logits", "2,4,0.5"],  # no target
        ["--target", "1"],  # no logits
        ["--loss", "binary_cross_entropy", "--logits", "2,4", "--target", "1,0"],  # not in [0, 1]
        ["--logits", "2,4,0.5", "--target", "1", "--label-smoothing", "-0.1"],
    ],
)
def test_command_bad_input_is_one_line_and_exit_2(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _run(argv, capsys)
    assert code == 2 and out == ""
    assert err.startswith("crossent explain: error: ")
    assert err.count("\n") == 1 and "Traceback" not in err


def test_command_writes_plots(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(["--loss", "binary_cross_entropy", "--plot", str(tmp_path)], capsys)
    assert code == 0
    for name in ("bce_loss.png", "probabilities.png"):
        path = tmp_path / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert path.stat().st_size > 20_000  # a real figure, not an empty canvas
        assert f"wrote {path}" in out


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(input=np.array([[np.inf, 0.0, 1.0]]), target=np.array([1])),  # a NaN softmax row
        dict(input=np.array([np.nan, 0.5]), target=np.array([1.0, 0.0]),
             loss="binary_cross_entropy_with_logits"),
    ],
)
def test_plots_of_non_finite_examples_are_written(tmp_path: Any, kwargs: dict) -> None:
    # explain() shows these; the probability plot's axis limits were NaN (matplotlib raised)
    pytest.importorskip("matplotlib")
    from crossent.explanation import write_plots

    paths = write_plots(ex.explain(**kwargs), tmp_path)
    assert paths and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)


def test_command_plot_without_matplotlib_names_the_extra(
    tmp_path: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now fails
    code, out, err = _run(["--plot", str(tmp_path)], capsys)
    assert code == 1 and out == ""
    assert "pip install 'crossent[plot]'" in err and err.count("\n") == 1
    assert not any(tmp_path.iterdir())


def test_explain_and_diagnose_need_neither_torch_nor_matplotlib() -> None:
    """Optional stays optional: both work on NumPy alone; --plot then names the extra."""
    code = textwrap.dedent(
        """
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split('.')[0] in ('torch', 'triton', 'matplotlib'):
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        sys.meta_path.insert(0, Block())
        import argparse
        from crossent import explanation, diagnostics
        print(float(explanation.explain().loss))
        print(diagnostics.diagnose([[0.1, 0.2, 0.7]], [2])[0].code)
        parser = argparse.ArgumentParser()
        explanation.add_arguments(parser)
        print(explanation.run(parser.parse_args(["--plot", "unused"])))
        assert "torch" not in sys.modules and "matplotlib" not in sys.modules
        """
    )
    src = str(Path(__file__).resolve().parents[1] / "src")
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": src, "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0.15317820712228827", "probabilities-as-logits", "1"]
    assert "pip install 'crossent[plot]'" in out.stderr

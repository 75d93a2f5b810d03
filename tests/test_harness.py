"""The benchmark harness's validation step: a provider that is slightly wrong is not timed."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the benchmarks package

from benchmarks import harness  # noqa: E402
from benchmarks.cross_entropy import _case, _torch_eager  # noqa: E402


def _scaled_gradient(factor):
    """torch eager whose gradient is multiplied by ``factor`` (a wrong provider)."""

    class Scale(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            return grad * factor

    def build(case):
        return lambda state: torch.nn.functional.cross_entropy(
            Scale.apply(state["logits"]), state["target"]
        )

    return build


@pytest.mark.parametrize(
    ("dtype", "factor"), [("float32", 1.00005), ("bfloat16", 1.03)]
)  # (both passed the fixed 1e-4 / 5e-2 tolerances)
def test_a_gradient_a_little_off_fails_validation(dtype, factor):
    case = _case(64, 1000, dtype)
    providers = [harness.Provider("torch eager", _torch_eager),
                 harness.Provider("wrong", _scaled_gradient(factor))]  # fmt: skip
    built = {p.name: p.build(case) for p in providers}
    with pytest.raises(harness.ValidationError, match="'wrong' is wrong"):
        harness.validate(case, providers, built, baseline="torch eager")
    errors = harness.validate(case, providers[:1], built, baseline="torch eager")
    assert set(errors) == {"torch eager"}


def test_bounds_follow_the_baseline_within_floor_and_ceiling():
    assert harness.tolerance_bounds("float32", 3e-8, 2e-8) == (1e-6, 1e-6)  # the floor
    assert harness.tolerance_bounds("float32", 1e-6, 1e-3) == (8e-6, 1e-4)  # 8x, the ceiling
    assert harness.tolerance_bounds("bfloat16", 4e-3, 4e-4) == (3.2e-2, 1e-2)


@pytest.mark.parametrize("suite", ["cross_entropy_small", "losses_small", "linear_small"])
def test_quick_suites_validate_every_provider(suite):
    # the validation step of `python -m benchmarks <suite> --quick`, without the timing
    module = harness.load_suite(suite)
    # (the compiled providers are left to the benchmark run: inductor needs seconds per case)
    providers = [p for p in module.providers() if "compile" not in p.name]
    for case in module.cases(quick=True)[:2]:
        built = {p.name: p.build(case) for p in providers}
        errors = harness.validate(case, providers, built, baseline=module.BASELINE)
        assert set(errors) == {p.name for p in providers}


def test_registered_suites_are_every_suite_of_the_directory():
    # the unknown-suite message and --help list SUITES: every suite module, each importable
    import importlib

    directory = Path(harness.__file__).parent
    defined = {p.stem for p in directory.glob("*.py")
               if re.search(r"^def providers\(", p.read_text(), re.M)}  # fmt: skip
    assert defined == set(harness.SUITES)
    for module in harness.SUITES.values():
        suite = importlib.import_module(module)
        assert callable(suite.cases) and callable(suite.providers) and suite.BASELINE

"""crossent: PyTorch-exact cross-entropy losses for any array, with analytic gradients.

``import crossent`` needs only NumPy and array-api-compat. torch-only pieces (``crossent.nn``,
the fused kernels, ``linear_cross_entropy``) load on first use; a missing extra raises an
ImportError that names it.
"""

from __future__ import annotations

import importlib
from typing import Any

from crossent.functional import CrossEntropyOutput as CrossEntropyOutput
from crossent.functional import LossAndGrad as LossAndGrad
from crossent.functional import binary_cross_entropy as binary_cross_entropy
from crossent.functional import binary_cross_entropy_and_grad as binary_cross_entropy_and_grad
from crossent.functional import (
    binary_cross_entropy_with_logits as binary_cross_entropy_with_logits,
)
from crossent.functional import (
    binary_cross_entropy_with_logits_and_grad as binary_cross_entropy_with_logits_and_grad,
)
from crossent.functional import cross_entropy as cross_entropy
from crossent.functional import cross_entropy_and_grad as cross_entropy_and_grad
from crossent.functional import cross_entropy_with_extras as cross_entropy_with_extras
from crossent.functional import log_softmax as log_softmax
from crossent.functional import logsumexp as logsumexp
from crossent.functional import nll_loss as nll_loss
from crossent.functional import nll_loss_and_grad as nll_loss_and_grad
from crossent.functional import softmax as softmax

__version__ = "0.1.0"

# Lazily loaded public names: attribute -> (module, extra that provides its dependencies).
_LAZY: dict[str, tuple[str, str]] = {
    "nn": ("crossent.nn", "torch"),
    "explain": ("crossent.explanation", ""),
    "Explanation": ("crossent.explanation", ""),
    "diagnose": ("crossent.diagnostics", ""),
    "Finding": ("crossent.diagnostics", ""),
    "DiagnosticWarning": ("crossent.diagnostics", ""),
    "linear_cross_entropy": ("crossent.linear", "torch"),
    "linear_cross_entropy_with_extras": ("crossent.linear", "torch"),
    "plan_blocks": ("crossent.linear", "torch"),
    "models": ("crossent.models", "sklearn"),
    "SoftmaxRegression": ("crossent.models", "sklearn"),
}

__all__ = [
    "CrossEntropyOutput",
    "DiagnosticWarning",
    "Explanation",
    "Finding",
    "LossAndGrad",
    "SoftmaxRegression",
    "binary_cross_entropy",
    "binary_cross_entropy_and_grad",
    "binary_cross_entropy_with_logits",
    "binary_cross_entropy_with_logits_and_grad",
    "cross_entropy",
    "cross_entropy_and_grad",
    "cross_entropy_with_extras",
    "diagnose",
    "explain",
    "linear_cross_entropy",
    "linear_cross_entropy_with_extras",
    "log_softmax",
    "logsumexp",
    "models",
    "nll_loss",
    "nll_loss_and_grad",
    "nn",
    "plan_blocks",
    "softmax",
]


def require(module: str, extra: str) -> Any:
    """Import ``module`` or raise an ImportError that names the crossent extra providing it."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if not extra:
            raise
        raise ImportError(
            f"this feature needs {exc.name!r}, which is not installed; "
            f"install it with: pip install 'crossent[{extra}]'"
        ) from exc


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, extra = _LAZY[name]
        target = require(module, extra)
        value = target if module.endswith("." + name) else getattr(target, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'crossent' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)

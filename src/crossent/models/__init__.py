"""Models trained with crossent's losses: :class:`SoftmaxRegression` (needs scikit-learn).

``SoftmaxRegression`` is multinomial logistic regression, the pipeline
``x -> W x + b -> softmax -> cross-entropy -> update W, b``, as a scikit-learn classifier whose
loss and gradient come from :func:`crossent.cross_entropy_and_grad` (NumPy) or crossent's fused
cross-entropy kernel (torch).
"""

from __future__ import annotations

try:
    import sklearn  # noqa: F401
except ModuleNotFoundError as exc:  # pragma: no cover - exercised by the packaging test
    raise ImportError(
        f"crossent.models needs {exc.name!r}, which is not installed; "
        "install it with: pip install 'crossent[sklearn]'"
    ) from exc

from crossent.models.softmax_regression import SoftmaxRegression

__all__ = ["SoftmaxRegression"]

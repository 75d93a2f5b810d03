"""The executable specification: readable Array API implementations with analytic gradients.

Every function here takes the array namespace ``xp`` first and already-validated arrays; it
works unchanged for NumPy, torch (through array-api-compat), CuPy, JAX, array-api-strict, ...
Each loss has one function that returns the loss and, on request, its gradients, with the
backward formula written right beside the forward one. Fast paths are checked against these,
never the reverse. Public, validated entry points live in :mod:`crossent.functional`.
"""

from crossent.reference.binary import (
    binary_cross_entropy as binary_cross_entropy,
)
from crossent.reference.binary import (
    binary_cross_entropy_with_logits as binary_cross_entropy_with_logits,
)
from crossent.reference.cross_entropy import cross_entropy as cross_entropy
from crossent.reference.cross_entropy import nll_loss as nll_loss
from crossent.reference.softmax import log_softmax as log_softmax
from crossent.reference.softmax import logsumexp as logsumexp
from crossent.reference.softmax import softmax as softmax

__all__ = [
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "cross_entropy",
    "log_softmax",
    "logsumexp",
    "nll_loss",
    "softmax",
]

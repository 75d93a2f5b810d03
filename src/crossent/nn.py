"""Drop-in ``torch.nn`` loss modules: torch's constructor arguments, one-line forwards.

Class weights (and ``pos_weight``) are registered as buffers exactly as torch registers them, so
``state_dict`` is interchangeable with ``torch.nn.CrossEntropyLoss`` & co. and the buffers move
with ``.to(device)``. Every forward calls the functional API, which is the single source of
truth.
"""

from __future__ import annotations

import torch
from torch import Tensor

from crossent import functional as F
from crossent._reduction import Reduction
from crossent._validation import legacy_reduction

__all__ = [  # noqa: F822 - LinearCrossEntropyLoss is loaded lazily by __getattr__
    "BCELoss",
    "BCEWithLogitsLoss",
    "CrossEntropyLoss",
    "LinearCrossEntropyLoss",
    "NLLLoss",
]


class _Loss(torch.nn.modules.loss._Loss):
    """torch's loss base class, so that ``isinstance`` checks of trainers and frameworks pass;
    its ``__init__`` is crossent's (the same mapping of the deprecated arguments)."""

    #: The default for modules pickled before a loss had ``impl`` (set per instance otherwise).
    impl: str = "auto"

    def __init__(
        self, size_average=None, reduce=None, reduction: Reduction = "mean", *, _stacklevel=4
    ) -> None:
        torch.nn.Module.__init__(self)
        self.reduction: str = legacy_reduction(
            size_average, reduce, reduction, stacklevel=_stacklevel
        )


class _WeightedLoss(_Loss, torch.nn.modules.loss._WeightedLoss):
    """torch's weighted-loss base class; ``weight`` is a buffer, as torch registers it."""

    def __init__(
        self, weight: Tensor | None, size_average=None, reduce=None,
        reduction: Reduction = "mean",
    ) -> None:  # fmt: skip
        _Loss.__init__(self, size_average, reduce, reduction, _stacklevel=5)
        self.register_buffer("weight", weight)


class CrossEntropyLoss(_WeightedLoss):
    """Module form of :func:`crossent.cross_entropy` (same arguments as
    ``torch.nn.CrossEntropyLoss``, plus keyword-only ``impl``, ``inplace_backward`` and
    ``target_check``)."""

    __constants__ = ("ignore_index", "reduction", "label_smoothing")
    inplace_backward: bool = False  # (modules pickled before they existed)
    target_check: str = "host"

    def __init__(
        self,
        weight: Tensor | None = None,
        size_average=None,
        ignore_index: int = -100,
        reduce=None,
        reduction: Reduction = "mean",
        label_smoothing: float = 0.0,
        *,
        impl: str = "auto",
        inplace_backward: bool = False,
        target_check: str = "host",
    ) -> None:
        super().__init__(weight, size_average, reduce, reduction)
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing
        self.impl = impl
        self.inplace_backward = inplace_backward
        self.target_check = target_check

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(
            input, target, self.weight, ignore_index=self.ignore_index, reduction=self.reduction,
            label_smoothing=self.label_smoothing, impl=self.impl,
            inplace_backward=self.inplace_backward, target_check=self.target_check,
        )


class NLLLoss(_WeightedLoss):
    """Module form of :func:`crossent.nll_loss` (same arguments as ``torch.nn.NLLLoss``, plus
    keyword-only ``impl`` and ``target_check``)."""

    __constants__ = ("ignore_index", "reduction")
    target_check: str = "host"  # (modules pickled before it existed)

    def __init__(
        self,
        weight: Tensor | None = None,
        size_average=None,
        ignore_index: int = -100,
        reduce=None,
        reduction: Reduction = "mean",
        *,
        impl: str = "auto",
        target_check: str = "host",
    ) -> None:
        super().__init__(weight, size_average, reduce, reduction)
        self.ignore_index = ignore_index
        self.impl = impl
        self.target_check = target_check

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.nll_loss(
            input, target, self.weight, ignore_index=self.ignore_index, reduction=self.reduction,
            impl=self.impl, target_check=self.target_check,
        )  # fmt: skip


class BCELoss(_WeightedLoss):
    """Module form of :func:`crossent.binary_cross_entropy` (as ``torch.nn.BCELoss``, plus
    keyword-only ``impl``)."""

    __constants__ = ("reduction",)

    def __init__(
        self,
        weight: Tensor | None = None,
        size_average=None,
        reduce=None,
        reduction: Reduction = "mean",
        *,
        impl: str = "auto",
    ) -> None:
        super().__init__(weight, size_average, reduce, reduction)
        self.impl = impl

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.binary_cross_entropy(
            input, target, self.weight, reduction=self.reduction, impl=self.impl
        )


class BCEWithLogitsLoss(_Loss):
    """Module form of :func:`crossent.binary_cross_entropy_with_logits` (as
    ``torch.nn.BCEWithLogitsLoss``, plus keyword-only ``impl``)."""

    def __init__(
        self,
        weight: Tensor | None = None,
        size_average=None,
        reduce=None,
        reduction: Reduction = "mean",
        pos_weight: Tensor | None = None,
        *,
        impl: str = "auto",
    ) -> None:
        super().__init__(size_average, reduce, reduction)
        self.register_buffer("weight", weight)
        self.register_buffer("pos_weight", pos_weight)
        self.impl = impl

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.binary_cross_entropy_with_logits(
            input, target, self.weight, reduction=self.reduction, pos_weight=self.pos_weight,
            impl=self.impl,
        )  # fmt: skip


def __getattr__(name: str):
    if name == "LinearCrossEntropyLoss":
        from crossent.linear import LinearCrossEntropyLoss

        return LinearCrossEntropyLoss
    raise AttributeError(f"module 'crossent.nn' has no attribute {name!r}")

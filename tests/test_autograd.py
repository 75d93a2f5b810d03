"""torch autograd through crossent: gradcheck and gradgradcheck (double backward) in float64."""

from __future__ import annotations

import functools

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

import crossent


def _x(*shape):
    return torch.randn(*shape, dtype=torch.float64, requires_grad=True)


CASES = {
    "ce-index-w-ls-ignore": lambda: (
        lambda x: crossent.cross_entropy(x, torch.tensor([2, -100, 0]), impl="reference",
                                         weight=torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64),
                                         label_smoothing=0.2), (_x(3, 3),)),
    "ce-kdim-none": lambda: (
        lambda x: crossent.cross_entropy(x, torch.tensor([[0, 1], [2, 1]]), reduction="none",
                                         impl="reference"), (_x(2, 3, 2),)),
    "ce-soft-target-and-weight": lambda: (
        lambda x, q, w: crossent.cross_entropy(x, q, weight=w, label_smoothing=0.1,
                                               impl="reference"),
        (_x(3, 4), torch.rand(3, 4, dtype=torch.float64, requires_grad=True),
         torch.rand(4, dtype=torch.float64, requires_grad=True))),
    "nll": lambda: (lambda x: crossent.nll_loss(x, torch.tensor([1, 0]), impl="reference"),
                    (_x(2, 3),)),
    "bce": lambda: (
        lambda p, y: crossent.binary_cross_entropy(p, y, reduction="sum", impl="reference"),
        (torch.rand(2, 3, dtype=torch.float64).mul(0.8).add(0.1).requires_grad_(),
         torch.rand(2, 3, dtype=torch.float64, requires_grad=True))),
    "bce-logits-pw": lambda: (
        lambda x, y: crossent.binary_cross_entropy_with_logits(
            x, y, pos_weight=torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64),
            impl="reference"),
        (_x(2, 3), torch.rand(2, 3, dtype=torch.float64, requires_grad=True))),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_gradcheck_and_gradgradcheck(name):
    torch.manual_seed(0)
    fn, inputs = CASES[name]()
    assert gradcheck(fn, inputs)
    assert gradgradcheck(fn, inputs)


def test_ignored_row_gradients_are_zero_and_all_ignored_mean_is_nan():
    x = _x(2, 3)
    loss = crossent.cross_entropy(x, torch.tensor([-100, -100]))
    loss.backward()
    assert torch.isnan(loss) and torch.equal(x.grad, torch.zeros(2, 3, dtype=torch.float64))


def test_nll_loss_gradient_penalty_is_zero_as_in_torch():
    # nll_loss's gradient does not depend on the input; torch still records it as a function
    # of the input, so a gradient penalty differentiates to zeros instead of raising
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0, 1, 3])
    reference = functools.partial(crossent.nll_loss, impl="reference")
    for loss in (reference, crossent.nll_loss, torch.nn.functional.nll_loss):
        (g,) = torch.autograd.grad(loss(x, t), x, create_graph=True)
        (gg,) = torch.autograd.grad((g * g).sum(), x)
        assert torch.equal(gg, torch.zeros_like(x))

"""Bad input: the same exception type as torch, with a message that says expected vs got."""

from __future__ import annotations

import math
import re
import warnings

import numpy as np
import pytest
import torch

import crossent
from cases import ERROR_CASES, ErrorCase


@pytest.mark.parametrize("case", ERROR_CASES, ids=lambda c: c.id)
def test_torch_raises_the_same_type(case: ErrorCase) -> None:
    """The table is right about torch: torch raises this exception type for this input."""
    args = case.build()
    with pytest.raises(case.error):
        getattr(torch.nn.functional, case.op)(**args, **case.kwargs)


@pytest.mark.parametrize("case", ERROR_CASES, ids=lambda c: c.id)
@pytest.mark.parametrize("backend", ["torch", "numpy"])
def test_crossent_raises_torch_type_with_clear_message(case: ErrorCase, backend: str) -> None:
    args = case.build()
    if backend == "numpy":
        args = {k: v.numpy() for k, v in args.items()}
    with pytest.raises(case.error, match=case.match):
        getattr(crossent, case.op)(**args, **case.kwargs)


@pytest.mark.parametrize("value", [-0.1, math.nan])
def test_negative_or_nan_label_smoothing_is_rejected(value: float) -> None:
    """Deviation from torch (which silently treats these as 0): a ValueError."""
    x, t = torch.randn(2, 3), torch.tensor([0, 1])
    torch.nn.functional.cross_entropy(x, t, label_smoothing=value)  # torch accepts it
    with pytest.raises(ValueError, match=r"between 0\.0 and 1\.0"):
        crossent.cross_entropy(x, t, label_smoothing=value)


def test_target_list_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="expected an array"):
        crossent.cross_entropy(torch.randn(2, 3), [1, 0])


def test_mixed_array_libraries_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="one library"):
        crossent.cross_entropy(torch.randn(2, 3), np.array([1, 0]))


def test_out_of_range_message_names_value_position_and_range() -> None:
    x = np.zeros((2, 4, 3))
    t = np.array([[0, 1, 2], [3, 7, 1]])
    with pytest.raises(IndexError) as info:
        crossent.cross_entropy(x, t)
    message = str(info.value)
    assert "Target 7" in message and "[0, 4)" in message and "(1, 1)" in message


def test_ignored_targets_are_not_range_checked() -> None:
    loss = crossent.cross_entropy(np.zeros((2, 3)), np.array([-5, 1]), ignore_index=-5)
    assert np.isfinite(loss)


@pytest.mark.parametrize("impl", ["reference", "fused", "triton"])
@pytest.mark.parametrize(
    ("targets", "ignore_index", "bad"),
    [
        ([0, 2, -100], -100, None),
        ([0, 3, -100], -100, "Target 3"),
        ([-1, 2, 1], -100, "Target -1"),
        ([1, 1, 0], 1, None),  # an ignore_index inside [0, C) is an ordinary class value
        ([1, -2, 0], 1, "Target -2"),
        ([5, 3, 0], 5, "Target 3"),  # ignored 5 is fine, 3 is not
    ],
)
def test_target_range_on_every_torch_path(targets, ignore_index, bad, impl) -> None:
    # (the Triton kernel's check is finished after the kernel is queued: it runs on the bad
    # index first, safely, and the IndexError still comes from the call)
    if impl == "triton":
        pytest.importorskip("triton")
    x, t = torch.randn(3, 3, requires_grad=True), torch.tensor(targets)
    for weight in (None, torch.rand(3) + 0.5):
        if bad is None:
            ours = crossent.cross_entropy(x, t, weight, ignore_index=ignore_index, impl=impl)
            ref = torch.nn.functional.cross_entropy(x, t, weight, ignore_index=ignore_index)
            torch.testing.assert_close(ours, ref)
        else:
            with pytest.raises(IndexError, match=bad):
                crossent.cross_entropy(x, t, weight, ignore_index=ignore_index, impl=impl)


@pytest.mark.parametrize("impl", ["reference", "fused"])
def test_no_classes_makes_every_kept_target_out_of_range(impl) -> None:
    target = torch.tensor([0, -100, 0])
    with pytest.raises(IndexError, match="Target 0"):
        torch.nn.functional.cross_entropy(torch.randn(3, 0), target)
    with pytest.raises(IndexError, match="Target 0"):
        crossent.cross_entropy(torch.randn(3, 0), target, impl=impl)


NO_CLASS_OPTIONS = [
    {},
    {"label_smoothing": 0.1},  # torch: 0 * eps / 0 = NaN in every reduction
    {"weight": torch.ones(0, dtype=torch.float64)},
    {"weight": torch.ones(0, dtype=torch.float64), "label_smoothing": 0.1},
]
# (options, probability targets?): an empty class weight adds nothing new for probabilities
NO_CLASS_CASES = [(o, False) for o in NO_CLASS_OPTIONS] + [(o, True) for o in NO_CLASS_OPTIONS[:2]]


@pytest.mark.parametrize("impl", ["reference", "fused", "triton"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize(("options", "probabilities"), NO_CLASS_CASES)
def test_no_classes_with_every_target_ignored_gives_torchs_result(
    impl, reduction, options, probabilities
) -> None:
    # torch: sum 0, mean 0/0 = NaN, none zeros; NaN when smoothed class indices divide by C = 0;
    # probability targets mean over numel / C = 0/0 (NaN)
    if impl == "triton":
        pytest.importorskip("triton")  # (through the interpreter on CPU, see conftest)
    target = torch.zeros(3, 0, dtype=torch.float64) if probabilities else torch.full((3,), -100)
    x = torch.zeros(3, 0, dtype=torch.float64, requires_grad=True)
    expected = torch.nn.functional.cross_entropy(x, target, reduction=reduction, **options)
    ours = crossent.cross_entropy(x, target, reduction=reduction, impl=impl, **options)
    torch.testing.assert_close(ours, expected, equal_nan=True)
    (grad,) = torch.autograd.grad(ours.sum(), x)
    assert grad.shape == (3, 0)
    arrays = {k: v.numpy() if hasattr(v, "numpy") else v for k, v in options.items()}
    out = crossent.cross_entropy_and_grad(np.zeros((3, 0)), target.numpy(), reduction=reduction,
                                          **arrays)  # fmt: skip
    torch.testing.assert_close(torch.as_tensor(out.loss), expected.detach(), equal_nan=True)
    assert out.grad_input.shape == (3, 0)


@pytest.mark.parametrize("impl", ["reference", "fused"])
def test_no_classes_k_dim_probability_target(impl) -> None:
    # (N, 0, d) with a (N, 0, d) probability target: torch's mean is numel / C = 0/0 (NaN)
    x, target = torch.zeros(2, 0, 3, dtype=torch.float64), torch.zeros(2, 0, 3, dtype=torch.float64)
    expected = torch.nn.functional.cross_entropy(x, target)
    torch.testing.assert_close(crossent.cross_entropy(x, target, impl=impl), expected,
                               equal_nan=True)  # fmt: skip
    ours = crossent.cross_entropy(x.numpy(), target.numpy(), label_smoothing=0.1)
    torch.testing.assert_close(torch.as_tensor(ours), expected, equal_nan=True)


@pytest.mark.parametrize("impl", ["reference", "fused", "triton"])
def test_no_classes_probability_rows_are_torchs_negative_zero(impl) -> None:
    # torch's per-row loss of probabilities over no classes is -sum() = -0.0 (the fused
    # kernels' no-class rows were +0.0)
    x, target = torch.zeros(3, 0), torch.zeros(3, 0)
    expected = torch.nn.functional.cross_entropy(x, target, reduction="none")
    ours = crossent.cross_entropy(x, target, reduction="none", impl=impl)
    assert torch.equal(ours, expected) and torch.equal(ours.signbit(), expected.signbit())


def test_linear_cross_entropy_with_no_classes() -> None:
    # torch's result on every route that can serve it; the blocked path says it cannot
    x, w = torch.randn(4, 3, requires_grad=True), torch.zeros(0, 3, requires_grad=True)
    for target in (torch.rand(4, 0), torch.full((4,), -100)):
        expected = torch.nn.functional.linear_cross_entropy(x, w, target, reduction="none")
        for impl in ("auto", "reference"):
            ours = crossent.linear_cross_entropy(x, w, target, reduction="none", impl=impl)
            assert torch.equal(ours, expected) and torch.equal(ours.signbit(), expected.signbit())
        with pytest.raises(NotImplementedError, match="a vocabulary of no classes"):
            crossent.linear_cross_entropy(x, w, target, impl="fused")


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_nll_loss_with_no_classes_and_every_target_ignored(reduction) -> None:
    x, target = torch.zeros(3, 0, requires_grad=True), torch.full((3,), -100)
    expected = torch.nn.functional.nll_loss(x, target, reduction=reduction)
    torch.testing.assert_close(crossent.nll_loss(x, target, reduction=reduction), expected,
                               equal_nan=True)  # fmt: skip
    ours = crossent.nll_loss(np.zeros((3, 0), np.float32), target.numpy(), reduction=reduction)
    torch.testing.assert_close(torch.as_tensor(ours), expected.detach(), equal_nan=True)


def test_elementwise_mean_warns_and_means() -> None:
    x, t = np.zeros((2, 3)), np.array([0, 1])
    with pytest.warns(UserWarning, match="deprecated"):
        a = crossent.cross_entropy(x, t, reduction="elementwise_mean")
    assert a == crossent.cross_entropy(x, t)


def test_weight_requiring_grad_on_index_path_is_refused() -> None:
    w = torch.ones(3, requires_grad=True)
    with pytest.raises(RuntimeError, match="not differentiable"):
        crossent.cross_entropy(torch.randn(2, 3), torch.tensor([0, 1]), weight=w)


def test_grad_output_shape_is_checked() -> None:
    # torch's backward raises RuntimeError ("Mismatch in shape") for a gradient of another shape
    with pytest.raises(RuntimeError, match="grad_output"):
        crossent.cross_entropy_and_grad(
            np.zeros((2, 3)), np.array([0, 1]), reduction="none", grad_output=np.ones(3)
        )


def test_no_warnings_for_nan_mean() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isnan(crossent.cross_entropy(np.zeros((2, 3)), np.array([-100, -100])))


def test_softmax_errors_follow_torch() -> None:
    x = torch.randn(2, 3)
    with pytest.raises(IndexError, match=r"range of \[-2, 1\], but got 2"):
        crossent.softmax(x, 2)
    with pytest.raises(NotImplementedError):
        crossent.softmax(torch.zeros(3, dtype=torch.long), 0)
    with pytest.raises(RuntimeError, match="multiple times"):
        crossent.logsumexp(x, (0, 0))
    with pytest.raises(RuntimeError):
        crossent.logsumexp(x, ())
    with pytest.raises(TypeError):
        crossent.softmax(x)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    "call",
    [
        lambda g: crossent.cross_entropy_and_grad(np.zeros((2, 3)), np.array([0, 1]),
                                                  grad_output=g),
        lambda g: crossent.nll_loss_and_grad(np.zeros((2, 3)), np.array([0, 1]), grad_output=g),
        lambda g: crossent.binary_cross_entropy_and_grad(np.full(2, 0.5), np.ones(2),
                                                         grad_output=g),
        lambda g: crossent.binary_cross_entropy_with_logits_and_grad(np.zeros(2), np.ones(2),
                                                                     grad_output=g),
    ],
)  # fmt: skip
def test_grad_output_must_be_a_real_array(call) -> None:
    # torch: backward(2.0) is a TypeError, a complex gradient of a real loss a RuntimeError
    for not_array in (2.0, [1.0]):
        with pytest.raises(TypeError, match="grad_output must be an array"):
            call(not_array)
    with pytest.raises(RuntimeError, match="grad_output must be real"):
        call(np.array(1 + 2j))
    assert np.isfinite(call(np.array(2.0)).loss)


def test_masked_arrays_are_refused() -> None:
    # np.where/take_along_axis honour a mask unevenly: the loss would be silently wrong
    x = np.ma.masked_array([[1.0, 2.0, 3.0]], mask=[[True, False, False]])
    for call in (
        lambda: crossent.cross_entropy(x, np.array([0])),
        lambda: crossent.cross_entropy(x.data, np.ma.masked_array([0], mask=[True])),
        lambda: crossent.binary_cross_entropy(np.ma.masked_array([0.5], mask=[True]),
                                              np.ones(1)),
        lambda: crossent.explain(x, np.array([0])),
        lambda: crossent.diagnose(x, np.array([0])),
    ):  # fmt: skip
        with pytest.raises(TypeError, match="masked arrays are not supported"):
            call()


@pytest.mark.parametrize("ignore_index", [2**63, -(2**63) - 1])
def test_ignore_index_must_fit_int64(ignore_index) -> None:
    x, t = torch.zeros(2, 3), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="Overflow"):
        torch.nn.functional.cross_entropy(x, t, ignore_index=ignore_index)
    for args in ((x, t), (x.numpy(), t.numpy())):
        with pytest.raises(ValueError, match="Overflow"):
            crossent.cross_entropy(*args, ignore_index=ignore_index)
    with pytest.raises(ValueError, match="Overflow"):
        crossent.nll_loss(x.numpy(), t.numpy(), ignore_index=ignore_index)


def test_complex_weights_are_refused() -> None:
    # torch: RuntimeError (complex result can't be cast to the real output); NumPy would drop
    # the imaginary part with only a ComplexWarning
    x, t = np.zeros((2, 3)), np.full((2, 3), 0.5)
    w = np.array([1 + 1j, 2, 3])
    with pytest.raises(RuntimeError, match="ComplexDouble can't be cast"):
        torch.nn.functional.binary_cross_entropy_with_logits(
            torch.as_tensor(x), torch.as_tensor(t), pos_weight=torch.as_tensor(w)
        )
    for call in (
        lambda: crossent.binary_cross_entropy_with_logits(x, t, pos_weight=w),
        lambda: crossent.binary_cross_entropy_with_logits(x, t, weight=w),
        lambda: crossent.binary_cross_entropy(t, t, weight=w),
        lambda: crossent.cross_entropy(x, t / 1.5, weight=w),
    ):
        with pytest.raises(RuntimeError, match="must be real"):
            call()


@pytest.mark.parametrize("loss", [crossent.cross_entropy, crossent.nll_loss])
def test_a_missing_input_or_target_is_a_type_error(loss) -> None:
    with pytest.raises(TypeError, match="must be Tensor, not NoneType"):
        getattr(torch.nn.functional, loss.__name__)(torch.randn(2, 3), None)
    with pytest.raises(TypeError, match="'target' \\(position 2\\) must be an array"):
        loss(torch.randn(2, 3), None)
    with pytest.raises(TypeError, match="'input' \\(position 1\\) must be an array"):
        loss(None, np.array([0, 1]))


BINARY_LOSSES = [
    crossent.binary_cross_entropy, crossent.binary_cross_entropy_with_logits,
    crossent.binary_cross_entropy_and_grad, crossent.binary_cross_entropy_with_logits_and_grad,
]  # fmt: skip


@pytest.mark.parametrize("loss", BINARY_LOSSES, ids=lambda f: f.__name__)
@pytest.mark.parametrize("impl", ["auto", "torch"])
def test_a_missing_input_or_target_of_a_binary_loss_is_torchs_attribute_error(loss, impl):
    # torch's binary losses fail reading the missing tensor's size: AttributeError; crossent's
    # error is that type (and a TypeError) and names the argument, before choosing an impl
    with pytest.raises(AttributeError, match="'NoneType' object has no attribute 'size'"):
        torch.nn.functional.binary_cross_entropy(None, torch.tensor(0.5))
    kwargs = {} if loss.__name__.endswith("_grad") else {"impl": impl}
    for args, name in (((None, torch.tensor(0.5)), "input"), ((torch.tensor(0.5), None),
                                                              "target")):  # fmt: skip
        with pytest.raises(AttributeError, match=f"'{name}' \\(position .\\) must be an arr"):
            loss(*args, **kwargs)
        with pytest.raises(TypeError):
            loss(*args, **kwargs)


@pytest.mark.parametrize("impl", ["auto", "reference"])
def test_meta_tensors_give_meta_results_as_in_torch(impl) -> None:
    # shapes without values (model-size planning): no value checks, no autocast query
    x = torch.empty(4, 3, device="meta", requires_grad=True)
    t = torch.empty(4, dtype=torch.long, device="meta")
    p = torch.empty(4, 3, device="meta")
    calls = [
        (crossent.cross_entropy(x, t, impl=impl), torch.nn.functional.cross_entropy(x, t)),
        (crossent.nll_loss(x, t, reduction="none"),
         torch.nn.functional.nll_loss(x, t, reduction="none")),
        (crossent.binary_cross_entropy(p, p), torch.nn.functional.binary_cross_entropy(p, p)),
        (crossent.binary_cross_entropy_with_logits(x, p),
         torch.nn.functional.binary_cross_entropy_with_logits(x, p)),
        (crossent.linear_cross_entropy(x, torch.empty(5, 3, device="meta"), t, impl=impl),
         torch.nn.functional.cross_entropy(x @ torch.empty(3, 5, device="meta"), t)),
    ]  # fmt: skip
    for ours, theirs in calls:
        assert ours.device.type == "meta" and ours.shape == theirs.shape
        assert ours.dtype == theirs.dtype and ours.requires_grad == theirs.requires_grad


@pytest.mark.parametrize("impl", ["fused", "triton"])
def test_an_out_of_range_target_leaves_in_place_logits_untouched(impl) -> None:
    if impl == "triton":
        pytest.importorskip("triton")
    leaf = torch.randn(3, 4, requires_grad=True)
    logits = leaf * 1
    before = logits.detach().clone()
    with pytest.raises(IndexError, match="Target 7"):
        crossent.cross_entropy(logits, torch.tensor([0, 7, 1]), impl=impl, inplace_backward=True)
    assert torch.equal(logits.detach(), before)  # checked before the kernel overwrites them


@pytest.mark.parametrize(
    ("shape", "keepdim"),
    [((), False), ((3,), False), ((3,), True), ((2, 3), False), ((2, 3, 4), True), ((0, 3), False)],
)
def test_logsumexp_over_an_empty_dim_tuple_is_torchs(shape, keepdim) -> None:
    # torch reads dim=() as every dim, and fails without keepdim unless the input is 0-d/empty
    x = torch.randn(shape, dtype=torch.float64)
    try:
        expected = torch.logsumexp(x, (), keepdim)
    except RuntimeError:
        for array in (x, x.numpy()):
            with pytest.raises(RuntimeError, match="doesn't match the broadcast shape"):
                crossent.logsumexp(array, (), keepdim)
        return
    for array in (x, x.numpy()):
        ours = torch.as_tensor(crossent.logsumexp(array, (), keepdim))
        assert ours.shape == expected.shape
        torch.testing.assert_close(ours, expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("name", ["softmax", "log_softmax", "logsumexp"])
def test_a_one_element_tensor_as_dim_is_taken_where_torch_takes_it(name) -> None:
    # torch's softmax pair wants an int (a 0-d tensor converts, a (1,) tensor is a TypeError);
    # logsumexp's dim is an int list, which a (1,) tensor converts to
    x = torch.randn(2, 3)
    ours, theirs = getattr(crossent, name), getattr(torch, name)
    torch.testing.assert_close(ours(x, torch.tensor(1)), theirs(x, torch.tensor(1)))
    if name == "logsumexp":
        torch.testing.assert_close(ours(x, torch.tensor([1])), theirs(x, torch.tensor([1])))
    else:
        with pytest.raises(TypeError):
            theirs(x, torch.tensor([1]))
        with pytest.raises(TypeError, match="dim must be an int, not a 1-d Tensor"):
            ours(x, torch.tensor([1]))


@pytest.mark.parametrize("impl", ["auto", "reference", "fused", "torch", "numpy", "linear"])
def test_torchs_label_smoothing_failures_are_refused_by_every_impl(impl) -> None:
    # torch's cross_entropy fails on a uint8 target with class weights and label smoothing
    # under reduction='mean' (its gather wants int64), and on an (N, 0, d) input (with or without
    # smoothing, nll_loss too); crossent raised there on the 'auto' route only (torch's kernel)
    # and returned a number elsewhere
    x, t = torch.randn(4, 3), torch.tensor([1, 0, 2, 1], dtype=torch.uint8)
    kw = dict(weight=torch.ones(3), label_smoothing=0.2)
    empty_x, empty_t = torch.ones(2, 0, 2), torch.full((2, 2), -100)
    with pytest.raises(RuntimeError, match="Expected dtype int32/int64 for index"):
        torch.nn.functional.cross_entropy(x, t, **kw)
    with pytest.raises(RuntimeError, match="size mismatch"):
        torch.nn.functional.cross_entropy(empty_x, empty_t, label_smoothing=0.5)
    for reduction in ("sum", "none"):  # (torch computes these)
        torch.testing.assert_close(
            crossent.cross_entropy(x, t, **kw, reduction=reduction),
            torch.nn.functional.cross_entropy(x, t, **kw, reduction=reduction),
        )
    if impl == "numpy":
        calls = [lambda: crossent.cross_entropy(x.numpy(), t.numpy(), weight=np.ones(3, "f4"),
                                                label_smoothing=0.2),
                 lambda: crossent.cross_entropy(empty_x.numpy(), empty_t.numpy(),
                                                label_smoothing=0.5)]  # fmt: skip
    elif impl == "linear":
        w = torch.eye(3)
        calls = [lambda: crossent.linear_cross_entropy(x, w, t, **kw)]
    else:
        calls = [lambda: crossent.cross_entropy(x, t, **kw, impl=impl),
                 lambda: crossent.cross_entropy(empty_x, empty_t, label_smoothing=0.5,
                                                impl=impl)]  # fmt: skip
    for call, match in zip(calls, ("needs int64 class indices, got uint8", "has no classes"),
                           strict=False):  # fmt: skip
        with pytest.raises(RuntimeError, match=match):
            call()


@pytest.mark.parametrize(("loss", "impl"), [
    *(("cross_entropy", impl) for impl in ("auto", "reference", "fused", "numpy")),
    *(("nll_loss", impl) for impl in ("auto", "reference", "numpy")),  # (no fused nll_loss)
])  # fmt: skip
def test_an_n_0_d_input_with_target_positions_is_torchs_runtime_error(loss, impl) -> None:
    # torch fails on (N, 0, d) class-index inputs with N * d > 0 (a size mismatch), smoothing
    # or not, and computes NaN for (0, 0, d), (N, 0, 0) and 4-D ones
    ours = getattr(crossent, loss)
    kwargs = {} if impl == "numpy" else {"impl": impl}
    convert = (lambda a: a.numpy()) if impl == "numpy" else (lambda a: a)
    for shape, message in (((2, 0, 3), r"shape \[2, 0, 3\] has no classes for its 6 target"),
                           ((2, 0, 3, 2, 2), r"target: \[2, 1, 12\]")):  # fmt: skip
        x, t = torch.randn(*shape), torch.full((2, *shape[2:]), -100)
        with pytest.raises(RuntimeError, match="size mismatch"):
            getattr(torch.nn.functional, loss)(x, t)
        with pytest.raises(RuntimeError, match=message):
            ours(convert(x), convert(t), **kwargs)
    for shape in ((0, 0, 3), (2, 0, 0), (2, 0, 3, 2)):
        x, t = torch.randn(*shape), torch.full((shape[0], *shape[2:]), -100)
        expected = getattr(torch.nn.functional, loss)(x, t)
        got = torch.as_tensor(ours(convert(x), convert(t), **kwargs))
        torch.testing.assert_close(got, expected, equal_nan=True)


@pytest.mark.parametrize("impl", ["auto", "reference", "fused", "torch"])
@pytest.mark.parametrize("moved", ["target", "weight"])
def test_a_tensor_on_another_device_is_torchs_runtime_error(impl, moved) -> None:
    # torch refuses arguments on two devices; the fused CPU kernel read a meta target or
    # weight as its own memory and returned garbage that changed from run to run
    x, index, probs, w = torch.randn(3, 4), torch.tensor([0, 1, 2]), torch.rand(3, 4), torch.rand(4)
    meta = {"target": (index.to("meta"), w), "weight": (index, w.to("meta"))}[moved]
    with pytest.raises(RuntimeError):
        torch.nn.functional.cross_entropy(x, *meta)
    calls = [lambda: crossent.cross_entropy(x, *meta, impl=impl),
             lambda: crossent.cross_entropy_with_extras(x, *meta, impl=impl),
             lambda: crossent.nll_loss(x, *meta, impl="auto" if impl == "fused" else impl),
             lambda: crossent.linear_cross_entropy(x, torch.eye(4), meta[0], weight=meta[1],
                                                   impl="auto" if impl == "torch" else impl)]
    if moved == "target":
        calls.append(lambda: crossent.cross_entropy(x, probs.to("meta"), impl=impl))
    for call in calls:
        with pytest.raises(RuntimeError, match=r"on the same device.*on meta"):
            call()
    # shapes only (a meta input) read nothing: torch takes a 0-d CPU target there, and so do
    # torch's kernel and the fused path (the reference's gather needs one device)
    meta_input = torch.randn(4, device="meta")
    assert torch.nn.functional.cross_entropy(meta_input, torch.tensor(1)).is_meta
    if impl != "reference":
        assert crossent.cross_entropy(meta_input, torch.tensor(1), impl=impl).is_meta


@pytest.mark.parametrize("impl", ["reference", "fused", "torch"])
def test_an_out_of_range_target_names_its_position_in_its_own_shape(impl) -> None:
    # a 0-d target is at (), a K-dim one at its K-dim index; the fused kernel's flattened
    # position is not shown, not even as the context of the error
    cases = [(torch.randn(4), torch.tensor(5), "at position ()"),
             (torch.randn(2, 4, 3), torch.tensor([[0, 0, 0], [0, 0, 9]]), "at position (1, 2)")]
    for x, t, where in cases:
        extras = "auto" if impl == "torch" else impl  # (torch has no extras kernel)
        for call in (lambda x=x, t=t: crossent.cross_entropy(x, t, impl=impl),
                     lambda x=x, t=t, e=extras: crossent.cross_entropy_with_extras(x, t, impl=e)):
            with pytest.raises(IndexError, match=re.escape(where)) as info:
                call()
            assert info.value.__suppress_context__ or info.value.__context__ is None


def test_label_smoothing_takes_what_torchs_parser_takes() -> None:
    # floats, ints, bools, NumPy numbers and 0-d tensors; not exact fractions, and not a tensor
    # that requires grad (no gradient reaches it)
    import fractions

    x, t = torch.randn(3, 4), torch.tensor([0, 1, 2])
    for good in (0.1, 0, True, np.float32(0.1), np.int64(0), torch.tensor(0.1)):
        torch.testing.assert_close(crossent.cross_entropy(x, t, label_smoothing=good),
                                   torch.nn.functional.cross_entropy(x, t, label_smoothing=good))
    for bad in (fractions.Fraction(1, 10), torch.tensor(0.1, requires_grad=True)):
        with pytest.raises(TypeError):
            torch.nn.functional.cross_entropy(x, t, label_smoothing=bad)
        with pytest.raises(TypeError, match="label_smoothing must be a float"):
            crossent.cross_entropy(x, t, label_smoothing=bad)


@pytest.mark.parametrize("impl", ["reference", "fused", "triton", "numpy"])
def test_smoothed_sum_over_no_classes_is_nan_without_rows_too(impl) -> None:
    # torch multiplies the smoothing sum by eps / C = inf after reducing: NaN even when there
    # are no rows to sum (crossent's rows were NaN, and an empty sum 0)
    for shape in ((0, 0), (0, 0, 3), (2, 0, 0), (2, 0)):
        x, t = torch.randn(*shape), torch.full((shape[0], *shape[2:]), -100)
        expected = torch.nn.functional.cross_entropy(x, t, label_smoothing=0.5, reduction="sum")
        if impl == "numpy":
            got = torch.as_tensor(crossent.cross_entropy(x.numpy(), t.numpy(), label_smoothing=0.5,
                                                         reduction="sum"))  # fmt: skip
        else:
            got = crossent.cross_entropy(x, t, label_smoothing=0.5, reduction="sum", impl=impl)
        assert expected.isnan() and got.isnan(), (shape, got)

"""The Triton kernels of ``linear_cross_entropy`` (``crossent._backends._torch._triton._linear``
and ``_linear_backward``): equal to the generic path for every option, dtype and reduction, in
the loss and the three gradients, through autograd and through ``crossent.value_and_grad``;
NaN and inf as the generic path has them; the weight's gradient summed in float32; custom ops
that ``torch.compile(fullgraph=True)`` keeps. Where the kernels serve no tensor of the session
the file skips (see ``test_triton.py``).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from triton_support import (  # noqa: E402
    count_calls,
    served,  # noqa: F401 (autouse)
)

import crossent  # noqa: E402
from crossent._dispatch import generic_only  # noqa: E402


@pytest.fixture
def calls(monkeypatch):
    """The number of times the kernels' forward op ran."""
    from crossent._backends._torch import _triton

    return count_calls(monkeypatch, _triton.LINEAR, "linear_cross_entropy_rows")


def _inputs(device, positions, dim, classes, dtype, *, bias=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    dt = getattr(torch, dtype)
    hidden = torch.randn(*positions, dim, generator=g, dtype=torch.float64) * 2.0
    weight = torch.randn(classes, dim, generator=g, dtype=torch.float64) / math.sqrt(dim)
    target = torch.randint(0, classes, positions, generator=g)
    if target.numel() > 2:
        target.view(-1)[1::5] = -100
    out = [hidden.to(dt).to(device), weight.to(dt).to(device), target.to(device)]
    b = torch.randn(classes, generator=g, dtype=torch.float64) if bias else None
    return (*out, None if b is None else b.to(dt).to(device))


def _run(hidden, weight, target, bias, **options):
    """The loss and the gradients of hidden, weight and bias under an upstream gradient."""
    leaves = [x.detach().clone().requires_grad_() for x in (hidden, weight)]
    b = None if bias is None else bias.detach().clone().requires_grad_()
    loss = crossent.linear_cross_entropy(*leaves, target, bias=b, **options)
    upstream = torch.linspace(-1.0, 2.0, loss.numel(), device=loss.device).reshape(loss.shape)
    inputs = [*leaves, *([] if b is None else [b])]
    grads = torch.autograd.grad(loss, inputs, upstream.to(loss.dtype))
    return loss.detach(), grads


def _close(actual, desired, dtype, what):
    """float32 to 1e-5 of the largest entry, half precision to two units of it (each logit is
    rounded once to the input dtype, and a float32 sum in another order can round it the other
    way)."""
    a, d = actual.double().cpu(), desired.double().cpu()
    assert actual.dtype == desired.dtype, what
    assert actual.shape == desired.shape, what
    assert torch.equal(torch.isnan(a), torch.isnan(d)), what
    finite = ~torch.isnan(d)
    if not bool(finite.any()):
        return
    scale = float(d[finite].abs().max()) + 1e-30
    rtol = 1e-5 if dtype == "float32" else 2.0 * float(torch.finfo(getattr(torch, dtype)).eps)
    error = float((a[finite] - d[finite]).abs().max())
    assert error <= rtol * scale, (what, error / scale)


OPTIONS = [
    {},
    {"label_smoothing": 0.1},
    {"class_weight": True},
    {"class_weight": True, "label_smoothing": 0.2},
    {"softcap": 4.0},
    {"z_loss": 1e-2},
    {"sample_weight": True},
    {"ignore_index": 3},
    {"class_weight": True, "sample_weight": True, "label_smoothing": 0.1, "softcap": 3.0,
     "z_loss": 0.05},
]  # fmt: skip


def _options(options, device, positions, classes, target):
    g = torch.Generator().manual_seed(2)
    out = dict(options)
    if out.get("class_weight") is True:
        out["class_weight"] = (torch.rand(classes, generator=g) + 0.5).to(device)
    if out.get("sample_weight") is True:
        out["sample_weight"] = torch.rand(positions, generator=g).to(device)
    if "ignore_index" in out:
        target = torch.where(target == -100, out["ignore_index"], target)
    return out, target


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(o) or "plain")
@pytest.mark.parametrize(
    ("positions", "dim", "classes", "bias"),
    [((37,), 40, 101, True), ((2, 3), 16, 16, False), ((20,), 33, 70, False)],
    ids=["37x40x101-bias", "2x3x16x16", "20x33x70"],
)
def test_equals_the_generic_path(
    device, dtype, reduction, options, positions, dim, classes, bias, calls
):
    hidden, weight, target, b = _inputs(device, positions, dim, classes, dtype, bias=bias)
    kwargs, target = _options(options, device, positions, classes, target)
    kwargs["reduction"] = reduction
    loss, grads = _run(hidden, weight, target, b, **kwargs)
    assert calls[0] == 1
    with generic_only():
        expected, expected_grads = _run(hidden, weight, target, b, **kwargs)
    assert calls[0] == 1  # the generic path runs none
    _close(loss, expected, dtype, "loss")
    for name, g, e in zip(("hidden", "weight", "bias"), grads, expected_grads, strict=False):
        _close(g, e, dtype, name)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_value_and_grad_takes_the_kernels(device, dtype, calls):
    hidden, weight, target, bias = _inputs(device, (21,), 24, 50, dtype, bias=True)
    value, grads = crossent.value_and_grad(crossent.linear_cross_entropy, argnums=(0, 1, 3))(
        hidden, weight, target, bias, label_smoothing=0.1
    )
    assert calls[0] == 1
    with generic_only():
        expected, expected_grads = crossent.value_and_grad(
            crossent.linear_cross_entropy, argnums=(0, 1, 3)
        )(hidden, weight, target, bias, label_smoothing=0.1)
    _close(value, expected, dtype, "loss")
    for g, e in zip(grads, expected_grads, strict=True):
        _close(g, e, dtype, "gradient")


def test_nan_in_hidden_and_masked_classes(device, calls):
    # a NaN feature makes its row's loss NaN, and no other row's; a class whose bias is -inf
    # (masked) has probability 0, not NaN
    hidden, weight, target, bias = _inputs(device, (9,), 16, 20, "float32", bias=True)
    hidden[4, 3] = math.nan
    bias[[0, 7]] = -math.inf
    target = torch.where(torch.isin(target, torch.tensor([0, 7], device=device)), 1, target)
    loss, grads = _run(hidden, weight, target, bias, reduction="none")
    with generic_only():
        expected, expected_grads = _run(hidden, weight, target, bias, reduction="none")
    assert calls[0] == 1
    assert bool(torch.isnan(loss[4]))
    assert not bool(torch.isnan(loss[[0, 1, 2, 3, 5]]).any())
    _close(loss, expected, "float32", "loss")
    _close(grads[0], expected_grads[0], "float32", "hidden")


SPECIALS = [math.nan, math.inf, -math.inf]


@settings(max_examples=25, deadline=None)
@given(
    hidden_specials=st.lists(
        st.tuples(st.integers(0, 5), st.integers(0, 15), st.sampled_from(SPECIALS)), max_size=3
    ),
    bias_specials=st.lists(st.tuples(st.integers(0, 19), st.sampled_from(SPECIALS)), max_size=2),
    smoothing=st.sampled_from([0.0, 0.1]),
)
def test_nan_and_inf_propagate_as_the_generic_path(
    device, hidden_specials, bias_specials, smoothing, calls
):
    # a NaN or an infinity in hidden or the bias reaches each loss and gradient as it reaches
    # the generic path's (the dense logits' arithmetic): NaN where it is NaN, the same elsewhere
    hidden, weight, target, bias = _inputs(device, (6,), 16, 20, "float32", bias=True)
    for row, col, value in hidden_specials:
        hidden[row, col] = value
    for col, value in bias_specials:
        bias[col] = value
    loss, grads = _run(hidden, weight, target, bias, reduction="none", label_smoothing=smoothing)
    assert calls[0] >= 1  # Hypothesis calls the test function many times
    with generic_only():
        expected, expected_grads = _run(
            hidden, weight, target, bias, reduction="none", label_smoothing=smoothing
        )
    for name, a, d in zip(("loss", "hidden", "weight", "bias"), (loss, *grads),
                          (expected, *expected_grads), strict=True):  # fmt: skip
        a, d = a.detach().cpu().double().numpy(), d.detach().cpu().double().numpy()
        np.testing.assert_array_equal(np.isnan(a), np.isnan(d), err_msg=name)
        kept = ~np.isnan(d)
        np.testing.assert_allclose(a[kept], d[kept], rtol=1e-5, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_half_precision_is_float32_rounded_once(device, dtype, reduction):
    # the loss of the dense logits (h W^T + b rounded once to the dtype, as F.linear makes them)
    # within half a unit of its float64 value, but for float32's own rounding
    hidden, weight, target, bias = _inputs(device, (33,), 48, 70, dtype, bias=True, seed=3)
    loss = crossent.linear_cross_entropy(
        hidden, weight, target, bias=bias, reduction=reduction, label_smoothing=0.1
    )
    logits = (hidden.double() @ weight.double().T + bias.double()).to(hidden.dtype).double()
    exact = torch.nn.functional.cross_entropy(
        logits, target, reduction=reduction, label_smoothing=0.1
    )
    assert loss.dtype == hidden.dtype
    unit = float(torch.finfo(hidden.dtype).eps) * abs(float(exact))
    assert abs(float(loss) - float(exact)) <= 0.5 * unit * (1 + 1e-2) + 1e-6 * abs(float(exact))


def test_every_position_ignored(device, calls):
    hidden, weight, _, _ = _inputs(device, (5,), 16, 17, "float32")
    target = torch.full((5,), -100, device=device)
    loss, grads = _run(hidden, weight, target, None)
    assert math.isnan(float(loss))
    assert not bool(grads[0].any())
    assert not bool(grads[1].any())


def test_the_weight_gradient_is_summed_in_float32(device):
    # many positions adding small contributions to one class's row: a bfloat16 running sum
    # would stall once the sum outgrows them (Liger-Kernel PR #830); the float32 sum, rounded
    # once, is within a unit of the float64 gradient
    g = torch.Generator().manual_seed(5)
    n, d, v = 200, 16, 16
    hidden = (torch.rand(n, d, generator=g) + 1.0).to(torch.bfloat16).to(device)
    weight = (torch.randn(v, d, generator=g) * 0.01).to(torch.bfloat16).to(device)
    target = torch.zeros(n, dtype=torch.int64, device=device)
    w = weight.clone().requires_grad_()
    crossent.linear_cross_entropy(hidden, w, target, reduction="sum").backward()
    h64, w64 = hidden.double(), weight.double().requires_grad_()
    torch.nn.functional.cross_entropy(
        (h64 @ w64.T).to(torch.bfloat16).double(), target, reduction="sum"
    ).backward()
    exact = w64.grad
    error = (w.grad.double() - exact).abs()
    assert bool((error <= 2 * 2**-8 * exact.abs() + 1e-3).all()), float(error.max())


def test_compile_fullgraph_keeps_the_custom_ops(device, calls):
    hidden, weight, target, bias = _inputs(device, (12,), 16, 33, "float32", bias=True)

    def loss_of(h, w, b):
        return crossent.linear_cross_entropy(h, w, target, bias=b, label_smoothing=0.1)

    results = []
    for fn in (torch.compile(loss_of, fullgraph=True, backend="aot_eager"), loss_of):
        leaves = [x.clone().requires_grad_() for x in (hidden, weight, bias)]
        loss = fn(*leaves)
        loss.backward()
        results.append((loss.detach(), *(x.grad for x in leaves)))
    assert calls[0] >= 2
    torch.testing.assert_close(results[0], results[1])


def test_what_the_kernels_leave_to_torch(device, calls):
    hidden, weight, target, _ = _inputs(device, (6,), 16, 10, "float32")
    probabilities = torch.softmax(torch.randn(6, 10, device=device), dim=1)
    crossent.linear_cross_entropy(hidden, weight, probabilities)
    crossent.linear_cross_entropy(hidden.double(), weight.double(), target)
    grad = torch.func.grad(lambda h: crossent.linear_cross_entropy(h, weight, target))(hidden)
    assert calls[0] == 0
    h = hidden.clone().requires_grad_()
    (expected,) = torch.autograd.grad(crossent.linear_cross_entropy(h, weight, target), h)
    torch.testing.assert_close(grad, expected)


def test_a_differentiated_target_weight_is_refused(device):
    hidden, weight, target, _ = _inputs(device, (4,), 16, 10, "float32")
    sample = torch.rand(4, device=device, requires_grad=True)
    with pytest.raises(TypeError, match="sample_weight"):
        crossent.linear_cross_entropy(
            hidden.requires_grad_(), weight, target, sample_weight=sample
        )

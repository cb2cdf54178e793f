"""The Triton kernel of ``binary_cross_entropy_with_logits``
(``crossent._backends._torch._triton._binary``): equal to the generic path for every dtype,
reduction and weighting; NaN and inf as torch tensors have them; half precision rounded once;
the caller's arrays read as given, never written; custom ops that ``torch.compile`` and
``torch.export`` keep. Where the kernels serve no tensor of the session the file skips (see
``test_triton.py``).
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
    both,
    check,
    count_calls,
    served,  # noqa: F401 (autouse)
    ulp,
)

import crossent  # noqa: E402

F = torch.nn.functional
bce = crossent.binary_cross_entropy_with_logits


@pytest.fixture
def calls(monkeypatch):
    """The number of times the kernel's route ran."""
    from crossent._backends._torch import _triton

    return count_calls(monkeypatch, _triton.BINARY, "binary_cross_entropy_with_logits")


def _inputs(device, shape, dtype, seed=0, scale=6.0, target="float"):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=g, dtype=torch.float64) * scale
    if target == "float":
        t = torch.rand(shape, generator=g, dtype=torch.float64).to(getattr(torch, dtype))
    else:
        t = torch.randint(0, 2, shape, generator=g).to(getattr(torch, target))
    return logits.to(getattr(torch, dtype)).to(device), t.to(device)


def _weights(device, shape, which, dtype):
    """``weight`` and ``pos_weight`` by name: along the last axis, per element, or per row."""
    g = torch.Generator().manual_seed(1)
    last = shape[-1:] if shape else ()
    shapes = {"weight": last, "pos_weight": last, "row_weight": (*shape[:-1], 1) if shape else ()}
    out = {}
    for name in which:
        w = torch.rand(shapes[name], generator=g, dtype=torch.float64) * 2.0 + 0.25
        out["weight" if name == "row_weight" else name] = w.to(getattr(torch, dtype)).to(device)
    return out


WEIGHTS = [(), ("weight",), ("pos_weight",), ("weight", "pos_weight"), ("row_weight",)]


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weights", WEIGHTS, ids=lambda w: "-".join(w) or "plain")
@pytest.mark.parametrize("shape", [(), (6,), (3, 5), (2, 3, 1100)], ids=str)
def test_equals_the_generic_path(device, dtype, reduction, weights, shape, calls):
    logits, target = _inputs(device, shape, dtype)
    kwargs = _weights(device, shape, weights, dtype)
    (loss, grad), (expected, expected_grad) = both(
        bce, logits, target, reduction=reduction, **kwargs
    )
    assert calls[0] == 1  # the kernel's route, once; the generic path runs none
    check(loss, expected, dtype)
    check(grad, expected_grad, dtype)


@pytest.mark.parametrize("labels", ["int64", "bool", "float64"])
def test_targets_of_other_dtypes(device, labels, calls):
    # labels are read in their own dtype, and a float64 target as float32 (the compute dtype)
    logits, target = _inputs(
        device, (4, 7), "bfloat16", target="float" if labels == "float64" else labels
    )
    target = target.to(getattr(torch, labels))
    (loss, grad), (expected, expected_grad) = both(bce, logits, target, reduction="sum")
    assert calls[0] == 1
    check(loss, expected, "bfloat16")
    check(grad, expected_grad, "bfloat16")


def test_strided_logits_and_weights(device, calls):
    # a transposed view and a weight broadcast along the first axis are read with their strides
    logits, target = _inputs(device, (9, 4), "float32")
    weight = torch.rand(9, 1, device=device).expand(9, 4)
    (loss, grad), (expected, expected_grad) = both(
        bce, logits.T, target.T.contiguous(), weight=weight.T, reduction="none"
    )
    assert calls[0] == 1
    check(loss, expected, "float32")
    check(grad, expected_grad, "float32")


EDGES = [
    0.0,
    -0.0,
    1.0,
    -1.0,
    30.0,
    -30.0,
    100.0,
    -100.0,
    1e4,
    -1e4,
    math.inf,
    -math.inf,
    math.nan,
]


@settings(max_examples=40, deadline=None)
@given(
    values=st.lists(st.sampled_from(EDGES) | st.floats(-50, 50), min_size=1, max_size=12),
    data=st.data(),
)
def test_nan_and_inf_propagate_as_torch_has_them(device, values, data, calls):
    # NaN wherever torch's loss or gradient is NaN (a logit of -inf: torch's inf - inf), and
    # the same numbers elsewhere, up to torch's cancellation of losses below 1e-16 of |x|
    logits = torch.tensor(values, dtype=torch.float32, device=device)
    n = len(values)
    target = torch.tensor(
        data.draw(st.lists(st.sampled_from([0.0, 1.0, 0.5, 0.25]), min_size=n, max_size=n)),
        device=device,
    )
    pos_weight = data.draw(st.sampled_from([None, 0.5, 3.0]))
    q = None if pos_weight is None else torch.full((n,), pos_weight, device=device)
    results = []
    for fn in (bce, F.binary_cross_entropy_with_logits):
        x = logits.clone().requires_grad_()
        loss = fn(x, target, pos_weight=q, reduction="none")
        (grad,) = torch.autograd.grad(loss.sum(), x)
        results.append((loss.detach(), grad))
    assert calls[0] >= 1
    for a, d in zip(*results, strict=True):
        a, d = a.cpu().double().numpy(), d.cpu().double().numpy()
        np.testing.assert_array_equal(np.isnan(a), np.isnan(d))
        kept = ~np.isnan(d)
        np.testing.assert_allclose(a[kept], d[kept], rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_half_precision_is_float32_rounded_once(device, dtype, reduction):
    logits, target = _inputs(device, (33, 65), dtype, seed=3)
    pos_weight = torch.rand(65, device=device) + 0.5
    loss = bce(logits, target, pos_weight=pos_weight, reduction=reduction)
    exact = F.binary_cross_entropy_with_logits(
        logits.double(), target.double(), pos_weight=pos_weight.double(), reduction=reduction
    )
    assert loss.dtype == logits.dtype
    # within half a unit of the float64 value, but for float32's own rounding
    unit = ulp(dtype) * exact.abs()
    error = (loss.double() - exact).abs()
    assert bool((error <= 0.5 * unit * (1 + 1e-3) + 1e-6 * exact.abs() + 1e-30).all())


def test_tiny_losses_are_kept(device):
    # where torch's float32 sum cancels to 0, the kernel keeps exp(-x): exact to a few units
    logits = torch.tensor([-40.0, 20.0, -90.0], device=device)
    target = torch.tensor([0.0, 1.0, 0.0], device=device)
    loss = bce(logits, target, reduction="none")
    exact = torch.exp(-logits.double().abs())
    np.testing.assert_allclose(loss.cpu().double().numpy(), exact.cpu().numpy(), rtol=1e-6)


def test_compile_fullgraph_keeps_the_custom_op(device, calls):
    logits, target = _inputs(device, (6, 3), "bfloat16")
    pos_weight = torch.rand(3, device=device) + 0.5

    def loss_of(x):
        return bce(x, target, pos_weight=pos_weight)

    results = []
    for fn in (torch.compile(loss_of, fullgraph=True, backend="aot_eager"), loss_of):
        x = logits.clone().requires_grad_()
        loss = fn(x)
        loss.backward()
        results.append((loss.detach(), x.grad))
    assert calls[0] >= 2
    torch.testing.assert_close(results[0], results[1])


def test_export_keeps_the_custom_op(device):
    class Loss(torch.nn.Module):
        def forward(self, logits, target):
            return bce(logits, target, reduction="sum")

    logits, target = _inputs(device, (4, 6), "float32")
    exported = torch.export.export(Loss(), (logits, target))
    assert "crossent.binary_cross_entropy_with_logits" in str(exported.graph)
    torch.testing.assert_close(exported.module()(logits, target), Loss()(logits, target))


def test_what_the_kernel_leaves_to_torch(device, calls):
    # float64, a differentiated target and torch.func transforms take the full path
    logits, target = _inputs(device, (4, 3), "float32")
    bce(logits.double(), target.double())
    bce(logits, target.clone().requires_grad_())
    grad = torch.func.grad(lambda x: bce(x, target))(logits)
    assert calls[0] == 0
    x = logits.clone().requires_grad_()
    (expected,) = torch.autograd.grad(bce(x, target), x)
    torch.testing.assert_close(grad, expected)


def test_a_caller_array_is_never_written(device):
    logits, target = _inputs(device, (5, 4), "bfloat16")
    before = logits.clone()
    x = logits.requires_grad_()
    bce(x, target).backward()
    assert torch.equal(logits.detach(), before)
    assert x.grad is not None
    assert x.grad.data_ptr() != x.data_ptr()

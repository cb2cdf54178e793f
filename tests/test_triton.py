"""The Triton kernels (``crossent._backends._torch._triton``): equal to the generic path, every
option, values and gradients; NaN and inf as torch has them; half precision rounded once;
custom ops that ``torch.compile(fullgraph=True)`` and ``torch.export`` keep.

They run where the kernels serve the session's tensors: CUDA tensors with Triton installed, or
CPU tensors under Triton's interpreter (``CROSSENT_TRITON_INTERPRET=1``, the ``torch-triton``
backend file). Elsewhere the file skips.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from triton_support import both as _both  # noqa: E402
from triton_support import check as _check  # noqa: E402
from triton_support import (  # noqa: E402
    count_calls,
    served,  # noqa: F401 (autouse)
)
from triton_support import ulp as _ulp  # noqa: E402

import crossent  # noqa: E402


@pytest.fixture
def calls(monkeypatch):
    """The number of times the kernels' forward op ran."""
    from crossent._backends._torch import _triton

    return count_calls(monkeypatch, _triton.CROSS_ENTROPY, "cross_entropy_rows")


DTYPES = {"float32": 1e-6, "float16": None, "bfloat16": None}


def _inputs(device, shape, classes, dtype, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(*shape, classes, generator=g, dtype=torch.float64) * scale).to(
        getattr(torch, dtype)
    )
    target = torch.randint(0, classes, shape, generator=g)
    if target.numel() > 2:
        target.view(-1)[1::4] = -100
    return logits.to(device), target.to(device)


OPTIONS = [
    {},
    {"label_smoothing": 0.1},
    {"weight": True},
    {"weight": True, "label_smoothing": 0.25},
    {"softcap": 5.0},
    {"z_loss": 1e-3},
    {"sample_weight": True},
    {"weight": True, "sample_weight": True, "label_smoothing": 0.1, "softcap": 3.0, "z_loss": 0.1},
    {"ignore_index": 2},
]


def _materialised(options, device, shape, classes):
    g = torch.Generator().manual_seed(1)
    out = dict(options)
    if out.get("weight") is True:
        out["weight"] = (torch.rand(classes, generator=g, dtype=torch.float64) + 0.5).to(device)
    if out.get("sample_weight") is True:
        out["sample_weight"] = torch.rand(shape, generator=g, dtype=torch.float64).to(device)
    return out


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(o) or "plain")
@pytest.mark.parametrize(("shape", "classes"), [((6,), 7), ((2, 3), 130), ((3,), 4099)])
def test_cross_entropy_equals_the_generic_path(
    device, dtype, reduction, options, shape, classes, calls
):
    logits, target = _inputs(device, shape, classes, dtype)
    kwargs = _materialised(options, device, shape, classes)
    if "ignore_index" in kwargs:
        target = torch.where(target == -100, kwargs["ignore_index"], target)
    for name in ("weight", "sample_weight"):
        if name in kwargs:
            kwargs[name] = kwargs[name].to(logits.dtype)
    (loss, grad), (expected, expected_grad) = _both(
        crossent.cross_entropy, logits, target, reduction=reduction, **kwargs
    )
    assert calls[0] == 1  # the kernels' route, once; the generic path runs none
    _check(loss, expected, dtype)
    _check(grad, expected_grad, dtype)


def test_the_class_axis_of_torch_layout(device, calls):
    # (N, C) with axis=1: the classes are last and contiguous
    logits, target = _inputs(device, (5,), 9, "float32")
    (loss, grad), (expected, expected_grad) = _both(
        crossent.cross_entropy, logits, target, axis=1, label_smoothing=0.2
    )
    assert calls[0] == 1
    _check(loss, expected, "float32")
    _check(grad, expected_grad, "float32")


def test_every_position_ignored_gives_nan_and_zero_gradient(device):
    logits, _ = _inputs(device, (4,), 5, "float32")
    target = torch.full((4,), -100, device=device)
    (loss, grad), (expected, expected_grad) = _both(crossent.cross_entropy, logits, target)
    assert math.isnan(float(loss))
    assert math.isnan(float(expected))
    assert torch.equal(grad, expected_grad)
    assert not bool(grad.any())


EDGES = [0.0, -0.0, 1.0, -1.0, 80.0, -80.0, 1e4, -1e4, math.inf, -math.inf, math.nan]


@settings(max_examples=40, deadline=None)
@given(
    rows=st.lists(
        st.lists(st.sampled_from(EDGES) | st.floats(-50, 50), min_size=5, max_size=5),
        min_size=1,
        max_size=4,
    ),
    data=st.data(),
)
def test_nan_and_inf_propagate_as_torch_has_them(device, rows, data, calls):
    logits = torch.tensor(rows, dtype=torch.float32, device=device)
    target = torch.tensor(
        data.draw(st.lists(st.integers(0, 4), min_size=len(rows), max_size=len(rows))),
        device=device,
    )
    smoothing = data.draw(st.sampled_from([0.0, 0.1]))
    x = logits.clone().requires_grad_()
    loss = crossent.cross_entropy(x, target, reduction="none", label_smoothing=smoothing)
    (grad,) = torch.autograd.grad(loss.sum(), x)
    y = logits.clone().requires_grad_()
    expected = torch.nn.functional.cross_entropy(
        y, target, reduction="none", label_smoothing=smoothing
    )
    (expected_grad,) = torch.autograd.grad(expected.sum(), y)
    assert calls[0] >= 1
    for a, d in ((loss, expected), (grad, expected_grad)):
        a, d = a.detach().cpu().double().numpy(), d.detach().cpu().double().numpy()
        np.testing.assert_array_equal(np.isnan(a), np.isnan(d))
        np.testing.assert_allclose(a[~np.isnan(d)], d[~np.isnan(d)], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_half_precision_is_float32_rounded_once(device, dtype, reduction):
    logits, target = _inputs(device, (33,), 257, dtype, seed=3)
    loss = crossent.cross_entropy(logits, target, reduction=reduction, label_smoothing=0.1)
    exact = torch.nn.functional.cross_entropy(
        logits.double(), target, reduction=reduction, label_smoothing=0.1
    )
    assert loss.dtype == logits.dtype
    # within half a unit of the float64 value, but for float32's own rounding
    unit = _ulp(dtype) * abs(float(exact))
    assert abs(float(loss) - float(exact)) <= 0.5 * unit * (1 + 1e-3) + 1e-6 * abs(float(exact))


def test_compile_fullgraph_keeps_the_custom_op(device, calls):
    logits, target = _inputs(device, (6,), 11, "float32")
    weight = torch.rand(11, device=device) + 0.5

    def loss_of(x):
        return crossent.cross_entropy(x, target, weight=weight, label_smoothing=0.1, z_loss=1e-3)

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
            return crossent.cross_entropy(logits, target, label_smoothing=0.1)

    logits, target = _inputs(device, (4,), 6, "float32")
    exported = torch.export.export(Loss(), (logits, target))
    assert "crossent.cross_entropy_rows" in str(exported.graph)
    torch.testing.assert_close(exported.module()(logits, target), Loss()(logits, target))


def test_torch_func_transforms_take_another_route(device, calls):
    logits, target = _inputs(device, (3,), 5, "float32")
    grad = torch.func.grad(lambda x: crossent.cross_entropy(x, target))(logits)
    assert calls[0] == 0
    x = logits.clone().requires_grad_()
    (expected,) = torch.autograd.grad(crossent.cross_entropy(x, target), x)
    torch.testing.assert_close(grad, expected)


def test_a_caller_array_is_never_written(device):
    logits, target = _inputs(device, (4,), 9, "bfloat16")
    before = logits.clone()
    x = logits.requires_grad_()
    loss = crossent.cross_entropy(x, target)
    loss.backward()
    assert torch.equal(logits.detach(), before)
    assert x.grad is not None
    assert x.grad.data_ptr() != x.data_ptr()


@pytest.mark.parametrize(("rows", "classes"), list(itertools.product([1, 2], [1, 2])))
def test_the_smallest_shapes(device, rows, classes):
    logits, target = _inputs(device, (rows,), classes, "float32")
    (loss, grad), (expected, expected_grad) = _both(
        crossent.cross_entropy, logits, target, reduction="none"
    )
    _check(loss, expected, "float32")
    _check(grad, expected_grad, "float32")


def test_what_the_kernels_leave_to_torch(device, calls):
    # float64, class probabilities and classes that are not contiguous take torch's route,
    # with the same numbers
    logits, target = _inputs(device, (4,), 6, "float32")
    crossent.cross_entropy(logits.double(), target)
    probabilities = torch.softmax(torch.randn(4, 6, device=device), dim=1)
    crossent.cross_entropy(logits, probabilities)
    strided = torch.randn(4, 6, 3, device=device)  # classes at axis 1 of (N, C, d)
    loss = crossent.cross_entropy(
        strided, torch.zeros((4, 3), dtype=torch.int64, device=device), axis=1
    )
    assert calls[0] == 0
    expected = torch.nn.functional.cross_entropy(
        strided, torch.zeros((4, 3), dtype=torch.int64, device=device)
    )
    torch.testing.assert_close(loss, expected)


def test_every_kernel_compiles_for_a_gpu():
    # the lowering the interpreter skips: each kernel's specializations compiled for an H100
    # (tests/triton_lowering.py), in a process without the interpreter's switches
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if "TRITON_INTERPRET" not in k}
    script = Path(__file__).with_name("triton_lowering.py")
    done = subprocess.run(
        [sys.executable, str(script), "90"], env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]

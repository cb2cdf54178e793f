"""What the Triton kernels' test files share: the fixture that skips where the kernels serve no
tensor of the session, and the comparison of a kernel's route with the generic path."""

from __future__ import annotations

import contextlib

import pytest
import torch

from crossent._dispatch import generic_only


@pytest.fixture(autouse=True)
def served(xp, device):
    from array_api_compat import is_torch_namespace

    if not is_torch_namespace(xp):
        pytest.skip("the Triton kernels take torch tensors")
    from crossent._backends._torch import _triton

    if not (device.type == "cuda" or (_triton.INTERPRET and device.type == "cpu")):
        pytest.skip("the Triton kernels serve CUDA tensors, or CPU ones under the interpreter")


def count_calls(monkeypatch, owner, name):
    """A list whose one element counts the calls of ``owner.name`` from now on (the kernels'
    entry point, which their callers look up as an attribute at each call)."""
    count = [0]
    original = getattr(owner, name)

    def counted(*args, **kwargs):
        count[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)
    return count


def both(fn, *args, **kwargs):
    """The loss and gradient on the kernels' route, and on the generic, standard-only path."""
    out = []
    for route in ("kernel", "generic"):
        x = args[0].detach().clone().requires_grad_()
        with generic_only() if route == "generic" else contextlib.nullcontext():
            loss = fn(x, *args[1:], **kwargs)
            upstream = torch.linspace(-1.0, 2.0, loss.numel(), device=x.device).reshape(loss.shape)
            (grad,) = torch.autograd.grad(loss, x, upstream.to(loss.dtype))
        out.append((loss.detach(), grad))
    return out


def ulp(dtype):
    return float(torch.finfo(getattr(torch, dtype)).eps)


def check(actual, desired, dtype):
    """float32: the generic path's value to 1e-6; half precision: to one unit (both are
    float32 rounded once, after sums taken in their own orders). An entry that cancels
    (softmax near 1, minus 1) is rounded relative to its terms: the tolerance is also
    relative to the largest entry, as in ``test_backends``."""
    a, d = actual.double().cpu(), desired.double().cpu()
    assert actual.dtype == desired.dtype
    assert torch.equal(torch.isnan(a), torch.isnan(d))
    finite = ~torch.isnan(d)
    rtol = 1e-6 if dtype == "float32" else ulp(dtype)
    scale = float(d[finite].abs().max()) if bool(finite.any()) else 0.0
    error = (a[finite] - d[finite]).abs()
    allowed = rtol * (d[finite].abs() + scale)
    assert bool(error.le(allowed).all()), float((error - allowed).max())

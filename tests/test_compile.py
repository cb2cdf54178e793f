"""torch.compile and torch.export: every public function traced whole (``fullgraph=True``),
forward and backward, with the eager numbers, and compiled again no more often than torch's own
functions are when shapes change.

Two routes are traced: the *direct* one (CPU tensors go straight to ``torch.nn.functional``)
and the *prepared* one (crossent's checks, then the torch kernels or the generic path), which
CUDA tensors, half precision and the losses torch lacks take. The session runs a sample of the
option grid of ``tests/cases.py``; ``-m slow`` runs all of it, and Inductor itself.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from array_api_compat import is_torch_namespace
from cases import LOSSES, Case, all_cases
from conftest import XP, to_numpy

import crossent

if not is_torch_namespace(XP):
    pytest.skip("torch.compile compiles torch tensors", allow_module_level=True)

import oracle
import torch
import torch.nn.functional as F
from torch._dynamo.eval_frame import _debug_get_cache_entry_list

from crossent._backends import _torch

CASES = all_cases()
# Every thirteenth case: each loss, layout, reduction and option, a few of their combinations.
SAMPLE = CASES[::13]
SOFTMAX_FAMILY = ["log_softmax", "softmax", "logsumexp", "log_sigmoid"]
ROUTES = ["direct", "prepared"]


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Each test traces anew: the cache would otherwise fill with one entry per option set."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _route(route: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if route == "prepared":
        monkeypatch.setattr(_torch, "DIRECT_CALLS", {})


def _leaf(x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    out = x.detach().to(dtype or x.dtype).clone()
    return out.requires_grad_(True) if out.is_floating_point() else out


def _run(func, pred, args, options):
    """The loss and the gradient of its sum with respect to ``pred``."""
    pred = _leaf(pred)
    out = func(pred, *args, **options)
    (grad,) = torch.autograd.grad(out.sum(), pred) if out.requires_grad else (None,)
    return out, grad


def _check_case(case: Case, to_xp, assert_close, dtype: str | None = None, backend="aot_eager"):
    (pred, target), options = case.crossent_args(to_xp)
    if dtype is not None:
        pred = to_xp(case.pred, dtype)
        options = {
            k: to_xp(v, dtype) if isinstance(v, np.ndarray) else v
            for k, v in case.crossent_args(lambda a: a)[1].items()
        }
        if target.is_floating_point():
            target = to_xp(case.target, dtype)
    func = getattr(crossent, case.name)
    compiled = torch.compile(func, fullgraph=True, backend=backend)
    out, grad = _run(compiled, pred, (target,), options)
    expected, expected_grad = _run(func, pred, (target,), options)
    name = dtype or "float64"
    rtol = 1e-12 if name == "float64" else 1e-6 if name == "float32" else 0.0
    if backend != "aot_eager" and name != "float64":
        rtol = 1e-5 if name == "float32" else 1e-2  # Inductor fuses and reorders the sums
    assert_close(out, expected, rtol=rtol, atol=1e-300, dtype=name)
    if expected_grad is not None:
        magnitudes = np.abs(to_numpy(expected_grad))
        scale = float(np.max(magnitudes[np.isfinite(magnitudes)], initial=0.0))
        assert_close(grad, expected_grad, rtol=rtol, atol=rtol * scale + 1e-300, dtype=name)


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("case", SAMPLE, ids=lambda c: c.id)
def test_compiled_fullgraph_equals_eager(case, route, to_xp, assert_close, monkeypatch):
    _route(route, monkeypatch)
    _check_case(case, to_xp, assert_close)


@pytest.mark.slow
@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_every_option_compiles_fullgraph(case, route, to_xp, assert_close, monkeypatch):
    _route(route, monkeypatch)
    _check_case(case, to_xp, assert_close)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("case", CASES[3::61], ids=lambda c: c.id)
def test_compiled_fullgraph_in_every_dtype(case, dtype, to_xp, assert_close):
    _check_case(case, to_xp, assert_close, dtype)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("case", SAMPLE, ids=lambda c: c.id)
def test_every_dtype_compiles_fullgraph(case, dtype, to_xp, assert_close):
    _check_case(case, to_xp, assert_close, dtype)


def _one_case_per_loss() -> list[Case]:
    seen: dict[str, Case] = {}
    for case in CASES:
        if case.name not in seen and case.options.get("reduction") == "mean":
            seen[case.name] = case
    return list(seen.values())


# torch's own Inductor warns about torch's own deprecated API, as it compiles
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float64", "bfloat16"])
@pytest.mark.parametrize("case", _one_case_per_loss(), ids=lambda c: c.id)
def test_inductor_compiles_every_loss(case, dtype, to_xp, assert_close):
    _check_case(case, to_xp, assert_close, dtype, backend="inductor")


@pytest.mark.parametrize("axis", [-1, 0])
@pytest.mark.parametrize("name", SOFTMAX_FAMILY)
def test_softmax_family_compiles_fullgraph(name, axis, to_xp, assert_close):
    x = to_xp(np.random.default_rng(0).standard_normal((4, 5)) * 3)
    func = getattr(crossent, name)
    options = {} if name == "log_sigmoid" else {"axis": axis}
    out, grad = _run(torch.compile(func, fullgraph=True, backend="aot_eager"), x, (), options)
    expected, expected_grad = _run(func, x, (), options)
    assert_close(out, expected, rtol=1e-12)
    assert_close(grad, expected_grad, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("case", _one_case_per_loss(), ids=lambda c: c.id)
def test_value_and_grad_compiles_fullgraph(case, to_xp, assert_close):
    (pred, target), options = case.crossent_args(to_xp)
    step = crossent.value_and_grad(getattr(crossent, case.name))
    loss, grad = torch.compile(step, fullgraph=True, backend="aot_eager")(pred, target, **options)
    expected_loss, expected_grad = step(pred, target, **options)
    assert_close(loss, expected_loss, rtol=1e-12)
    assert_close(grad, expected_grad, rtol=1e-12, atol=1e-300)


# --- Recompiles ---------------------------------------------------------------------------

SHAPES = [(8, 5), (16, 5), (16, 7), (3, 9), (2, 4, 6)]


def _inputs(name: str, shape: tuple[int, ...], rng: np.random.Generator):
    x = torch.as_tensor(rng.standard_normal(shape))
    if name in ("cross_entropy", "nll_loss", "cross_entropy_from_probs"):
        target = torch.as_tensor(rng.integers(0, shape[-1], shape[:-1]))
        x = {"nll_loss": x.log_softmax(-1), "cross_entropy_from_probs": x.softmax(-1)}.get(name, x)
    elif name == "kl_div":
        x = x.log_softmax(-1)
        target = torch.as_tensor(rng.standard_normal(shape)).softmax(-1)
    elif name == "binary_cross_entropy":
        x = x.sigmoid()
        target = torch.as_tensor(rng.random(shape))
    else:
        target = torch.as_tensor(rng.random(shape))
    return _leaf(x), target


def _torch_function(name: str):
    """torch's own function of the same call (class axis last), or the oracle's composition
    of torch functions where torch has none."""
    if name in ("cross_entropy", "nll_loss"):
        func = getattr(F, name)
        return lambda x, t: func(x.movedim(-1, 1) if x.ndim > 2 else x, t)
    # a function of this file: Dynamo does not compile a frame of torch's own files
    func = (
        oracle.cross_entropy_from_probs if name == "cross_entropy_from_probs" else getattr(F, name)
    )
    return lambda x, t: func(x, t)


def _compiles(func, name: str, dynamic: bool | None) -> int:
    """How many compiled versions of ``func`` the shapes of SHAPES leave in Dynamo's cache
    (a restarted analysis within one compile is not another version)."""
    torch._dynamo.reset()
    compiled = torch.compile(func, backend="aot_eager", fullgraph=True, dynamic=dynamic)
    rng = np.random.default_rng(0)
    for shape in SHAPES:
        x, target = _inputs(name, shape, rng)
        compiled(x, target).backward()
    return len(_debug_get_cache_entry_list(func.__code__))


@pytest.mark.parametrize(("name", "dynamic"), list(itertools.product(LOSSES, [None, True])))
def test_compiles_again_no_more_often_than_torch(name, dynamic, device):
    if device.type != "cpu":
        pytest.skip("the count is the same on every device; the CPU's is enough")
    ours = _compiles(getattr(crossent, name), name, dynamic)
    torchs = _compiles(_torch_function(name), name, dynamic)
    assert ours <= torchs, f"{name} compiled {ours} times where torch's compiles {torchs}"


@pytest.mark.parametrize("name", ["cross_entropy", "nll_loss", "cross_entropy_from_probs"])
@pytest.mark.parametrize("route", ROUTES)
def test_weighted_losses_compile_over_dynamic_shapes(name, route, device, monkeypatch):
    """Class and sample weights checked on symbolic shapes: the checks' messages are made on
    an error alone (formatting a shape of SymInts breaks the graph)."""
    _route(route, monkeypatch)
    func = getattr(crossent, name)
    compiled = torch.compile(func, backend="aot_eager", fullgraph=True, dynamic=True)
    rng = np.random.default_rng(2)
    for shape in SHAPES:
        x, target = (a.to(device) for a in _inputs(name, shape, rng))
        options = {
            "weight": torch.as_tensor(rng.random(shape[-1]), device=device),
            "sample_weight": torch.as_tensor(rng.random(shape[:-1]), device=device),
            "axis": -1,
        }
        x = _leaf(x)
        loss = compiled(x, target, **options)
        (grad,) = torch.autograd.grad(loss, x)
        expected = func(x, target, **options)
        (expected_grad,) = torch.autograd.grad(expected, x)
        torch.testing.assert_close(loss, expected, rtol=1e-12, atol=0)
        torch.testing.assert_close(grad, expected_grad, rtol=1e-12, atol=1e-300)


# --- torch.export and the fast-path switch ---------------------------------------------------


class _Loss(torch.nn.Module):
    def __init__(self, name: str) -> None:
        super().__init__()
        self.func = getattr(crossent, name)

    def forward(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.func(x, target, reduction="none")


@pytest.mark.parametrize("name", LOSSES)
def test_export_with_a_dynamic_batch(name, device, assert_close):
    rng = np.random.default_rng(1)
    x, target = (a.detach().to(device) for a in _inputs(name, (8, 5), rng))
    batch = torch.export.Dim("batch")
    program = torch.export.export(
        _Loss(name), (x, target), dynamic_shapes=({0: batch}, {0: batch})
    )
    x, target = (a.detach().to(device) for a in _inputs(name, (13, 5), rng))
    assert_close(program.module()(x, target), _Loss(name)(x, target), rtol=1e-12)


def test_generic_only_applies_to_eager_calls_after_compiling(to_xp, monkeypatch):
    """Compiled code does not read the switch (torch.compile cannot trace a ContextVar); eager
    calls still do, before and after a compile."""
    from crossent._dispatch import generic_only
    from crossent._generic import _softmax

    x = to_xp(np.ones((2, 3)))
    torch.compile(crossent.log_softmax, fullgraph=True, backend="aot_eager")(x)
    called = []
    monkeypatch.setitem(
        _torch.KERNELS, _softmax.log_softmax, lambda *args: called.append(args) or x
    )
    with generic_only():
        crossent.log_softmax(x)
    assert not called
    crossent.log_softmax(x)
    assert called

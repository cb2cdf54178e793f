"""The backend kernels: each is registered for a generic function that a public function
computes, takes that function's arguments, and equals the generic, standard-only path, beyond
which it may change nothing but the rounding of reassociated sums: 1e-12 relative in float64,
1e-6 in float32."""

from __future__ import annotations

import importlib
import inspect
import itertools

import numpy as np
import pytest
from array_api_compat import (
    array_namespace,
    is_dask_namespace,
    is_jax_namespace,
    is_numpy_namespace,
    is_torch_namespace,
)
from cases import all_cases
from conftest import to_numpy

import crossent
from crossent import _dispatch
from crossent._dispatch import LOSSES, PUBLIC_FUNCTIONS, generic_only, kernels
from crossent._generic import _binary, _categorical, _linear, _softmax

#: float16 is computed in float32 on both paths: they may round apart by one unit
TOLERANCE = {"float64": 1e-12, "float32": 1e-6, "float16": 1e-3}
CASES = all_cases()


def _both_paths(func, *args, **kwargs):
    fast = func(*args, **kwargs)
    with generic_only():
        generic = func(*args, **kwargs)
    return fast, generic


def _atol(case, dtype):
    # torch's binary_cross_entropy_with_logits sums (1 - t) x - log_sigmoid(x), which cancels to
    # 0 where the loss is below 1e-16 of |x|: equal to the rounding of x, not relatively.
    if case.name == "binary_cross_entropy_with_logits":
        return float(np.finfo(dtype).eps * np.abs(case.pred).max(initial=1.0)) * 4
    return 1e-300


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", CASES[::3], ids=[c.id for c in CASES[::3]])
def test_fast_path_equals_generic_path(case, dtype, to_xp, assert_close):
    args, options = case.crossent_args(lambda a: to_xp(a, dtype if a.dtype.kind == "f" else None))
    func = getattr(crossent, case.name)
    fast, generic = _both_paths(func, *args, **options)
    # a small loss is a difference of terms (log-sum-exp minus target logit) whose rounding
    # follows the order of the sum: relative to the largest loss
    atol = max(_atol(case, dtype), _scale(generic, dtype))
    assert_close(fast, generic, dtype=dtype, rtol=TOLERANCE[dtype], atol=atol)
    (fast_loss, fast_grad), (loss, grad) = _both_paths(
        crossent.value_and_grad(func), *args, **options
    )
    assert_close(fast_loss, loss, dtype=dtype, rtol=TOLERANCE[dtype], atol=atol)
    assert_close(fast_grad, grad, dtype=dtype, rtol=TOLERANCE[dtype], atol=_scale(grad, dtype))


def _scale(grad, dtype):
    """Where a gradient entry cancels (softmax near 1 minus 1), its rounding is relative to the
    terms, not to the difference: compare at the tolerance times the largest entry."""
    return TOLERANCE[dtype] * float(np.nanmax(np.abs(to_numpy(grad)), initial=0.0)) + 1e-300


def _check_cross_entropy_both_paths(args, options, dtype, assert_close):
    """``cross_entropy`` and its ``value_and_grad``: the kernel's equal the generic path's."""
    fast, generic = _both_paths(crossent.cross_entropy, *args, **options)
    rtol = TOLERANCE[dtype]
    assert_close(fast, generic, dtype=dtype, rtol=rtol)
    (fast_loss, fast_grad), (loss, grad) = _both_paths(
        crossent.value_and_grad(crossent.cross_entropy), *args, **options
    )
    assert_close(fast_loss, loss, dtype=dtype, rtol=rtol)
    assert_close(fast_grad, grad, dtype=dtype, rtol=rtol, atol=_scale(grad, dtype))


# The NumPy kernel threads blocks of rows: inputs large enough to cross several blocks and run
# on the pool, with every option.
OPTIONS = list(
    itertools.product(
        [False, True],  # weighted
        [False, True],  # some positions ignored
        [0.0, 0.2],  # label smoothing
        ["mean", "sum", "none"],
    )
)


@pytest.mark.parametrize("dtype", ["float64", "float32", "float16"])
@pytest.mark.parametrize(("weighted", "ignored", "smoothing", "reduction"), OPTIONS)
def test_blocked_kernel_equals_generic_path_on_large_inputs(
    weighted, ignored, smoothing, reduction, dtype, to_xp, assert_close, xp
):
    if not is_numpy_namespace(xp):
        pytest.skip("the blocked kernel is NumPy's")
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((1500, 700)) * 5
    logits[7] = -np.inf  # a row of all -inf
    logits[9, :3] = 1e4
    target = rng.integers(0, 700, 1500)
    if ignored:
        target[::5] = -100
    options = {"reduction": reduction, "label_smoothing": smoothing}
    if weighted:
        options["weight"] = to_xp(
            rng.uniform(0.1, 3, 700), "float32" if dtype == "float16" else dtype
        )
    args = (to_xp(logits, dtype), to_xp(target))
    _check_cross_entropy_both_paths(args, options, dtype, assert_close)


#: The kernels each backend must have: losing one (a renamed generic function, a table entry
#: dropped) fails here instead of silently taking the generic path.
EXPECTED_KERNELS = {
    "numpy": {
        _categorical.cross_entropy,
        _categorical.cross_entropy_value_and_grad,
        _linear.linear_cross_entropy,
        _linear.linear_cross_entropy_value_and_grad,
    },
    "torch": {
        _softmax.logsumexp,
        _softmax.softmax,
        _softmax.log_softmax,
        _softmax.log_sigmoid,
        _categorical.cross_entropy,
        _categorical.nll_loss,
        _binary.binary_cross_entropy,
        _binary.binary_cross_entropy_with_logits,
        _linear.linear_cross_entropy,
        _linear.linear_cross_entropy_value_and_grad,
    },
    # every loss, differentiated by its analytic gradient, and linear's own gradient
    "jax": {d.generic for d in LOSSES.values()} | {_linear.linear_cross_entropy_value_and_grad},
    "dask": {
        _softmax.logsumexp,
        _softmax.softmax,
        _softmax.log_softmax,
        _categorical.cross_entropy,
        _categorical.cross_entropy_value_and_grad,
    },
}


def _backend_name(xp):
    for name, test in (
        ("numpy", is_numpy_namespace),
        ("torch", is_torch_namespace),
        ("jax", is_jax_namespace),
        ("dask", is_dask_namespace),
    ):
        if test(xp):
            return name
    return None


def test_the_backend_has_its_kernels(xp):
    expected = EXPECTED_KERNELS.get(_backend_name(xp), set())
    table = kernels(xp)
    missing = {f.__name__ for f in expected - set(table)}
    assert not missing, f"no kernel for {sorted(missing)}"
    assert set(table) == expected, "a kernel the test does not know: add it to EXPECTED_KERNELS"


def test_generic_only_runs_no_kernel(xp, monkeypatch):
    called = []
    generic = _categorical.cross_entropy
    monkeypatch.setitem(
        _dispatch._TABLES, xp.__name__, {generic: lambda *args: called.append(args)}
    )
    with generic_only():
        crossent.cross_entropy(xp.asarray([[0.0, 1.0]]), xp.asarray([1]))
    assert called == []
    crossent.cross_entropy(xp.asarray([[0.0, 1.0]]), xp.asarray([1]))
    assert len(called) == 1 or is_torch_namespace(xp)  # CPU tensors take the direct call


def _backend_modules():
    """The kernel modules whose framework this session has (torch is everywhere: the oracle)."""
    modules = []
    for name in ("_numpy", "_torch", "_jax", "_dask"):
        try:
            modules.append(importlib.import_module(f"crossent._backends.{name}"))
        except ImportError:
            continue
    return modules


def _parameters(func):
    return [(p.name, p.kind, p.default) for p in inspect.signature(func).parameters.values()]


def _dispatched():
    """Every generic function that the dispatcher is asked for."""
    return set(PUBLIC_FUNCTIONS) | {d.value_and_grad for d in LOSSES.values()}


@pytest.mark.parametrize("module", _backend_modules(), ids=lambda m: m.__name__)
def test_every_kernel_replaces_a_dispatched_generic_function(module):
    dispatched = _dispatched()
    for generic, kernel in module.KERNELS.items():
        assert generic in dispatched, f"{kernel.__name__} replaces {generic}, never dispatched"
        # the module, or a module of its package
        assert kernel.__module__ == module.__name__ or kernel.__module__.startswith(
            module.__name__ + "."
        )
        assert _parameters(kernel) == _parameters(generic), kernel.__name__


def test_every_public_function_declares_what_it_dispatches():
    public = {
        name for name in crossent.__all__ if name not in ("__version__", "grad", "value_and_grad")
    }
    assert {f.__name__ for f in PUBLIC_FUNCTIONS.values()} == public
    for generic, func in PUBLIC_FUNCTIONS.items():
        assert getattr(crossent, func.__name__) is func
        assert generic.__module__.startswith("crossent._generic."), func.__name__


@pytest.mark.parametrize("generic", list(PUBLIC_FUNCTIONS), ids=lambda g: g.__name__)
def test_each_public_function_dispatches_its_generic_function(generic, monkeypatch):
    # NumPy arrays, whatever the session: the wiring is the same on every backend.
    asked = []

    class Recorder(dict):
        def get(self, key, default=None):
            asked.append(key)
            return default

    monkeypatch.setattr(_dispatch, "kernels", lambda xp: Recorder())
    func = PUBLIC_FUNCTIONS[generic]
    arguments = _tiny_arguments(func)
    func(*arguments)
    assert asked == [generic]
    asked.clear()
    declared = LOSSES.get(func.__name__)
    if declared is not None:
        crossent.value_and_grad(func)(*arguments)
        assert asked == [declared.value_and_grad]


_PROBS = np.array([[0.25, 0.75], [0.5, 0.5]])
#: A small argument of each name a public function takes positionally.
_TINY = {
    "x": _PROBS,
    "logits": _PROBS,
    "probs": _PROBS,
    "log_probs": np.log(_PROBS),
    "input": _PROBS,
    "hidden": _PROBS,
    "weight": _PROBS,
    "bias": None,
}


def _tiny_arguments(func):
    """Positional arguments for ``func``, from their names: a target holds class indices for a
    categorical loss (and a linear layer's), probabilities for the others."""
    declared = LOSSES.get(func.__name__)
    indices = declared is not None and declared.family in ("categorical", "linear")
    arguments = []
    for p in inspect.signature(func).parameters.values():
        if p.kind is not p.POSITIONAL_OR_KEYWORD or p.default is not p.empty:
            break
        if p.name == "target":
            arguments.append(np.array([0, 1]) if indices else _PROBS)
        else:
            arguments.append(_TINY[p.name])
    return tuple(arguments)


def test_direct_calls_take_the_public_signatures():
    # torch tensors enter a direct call with the caller's arguments as given
    from crossent._backends import _torch

    assert _torch.DIRECT_CALLS
    assert _torch.DEVICE_CALLS
    for generic, direct in (*_torch.DIRECT_CALLS.items(), *_torch.DEVICE_CALLS.items()):
        public = PUBLIC_FUNCTIONS[generic]
        assert _parameters(direct) == _parameters(public), direct.__name__


def test_dispatch_finds_the_namespace_table_once(xp):
    assert kernels(xp) is kernels(array_namespace(xp.asarray([0.0])))


def test_the_kernel_leaves_a_strided_array_to_the_generic_path(xp, to_xp, assert_close):
    rng = np.random.default_rng(4)
    logits = rng.standard_normal((40, 9, 30))[:, :, ::2]  # no layout the kernel reads
    target = rng.integers(0, 9, (40, 15))
    fast, generic = _both_paths(crossent.cross_entropy, to_xp(logits), to_xp(target), axis=1)
    assert_close(fast, generic, rtol=1e-12)


# The NumPy kernel's other layouts: classes on axis 1 of (N, C, d), and class probabilities.
LAYOUTS = list(itertools.product(["rows", "NCd"], ["indices", "probabilities"]))[1:]


@pytest.mark.parametrize("dtype", ["float64", "float32", "float16"])
@pytest.mark.parametrize(("layout", "target_kind"), LAYOUTS)
@pytest.mark.parametrize(
    ("weighted", "smoothing", "reduction"),
    list(itertools.product([False, True], [0.0, 0.2], ["mean", "sum", "none"])),
)
def test_blocked_kernel_reads_every_layout(
    layout, target_kind, weighted, smoothing, reduction, dtype, to_xp, assert_close, xp
):
    if not is_numpy_namespace(xp):
        pytest.skip("the blocked kernel is NumPy's")
    rng = np.random.default_rng(5)
    shape, axis = ((900, 400), -1) if layout == "rows" else ((9, 400, 110), 1)
    logits = rng.standard_normal(shape) * 5
    logits[(0,) * (len(shape) - 1)] = -np.inf  # some -inf logits, a row of them on "rows"
    positions = tuple(s for i, s in enumerate(shape) if i != axis % len(shape))
    if target_kind == "indices":
        target = rng.integers(0, 400, positions)
        target.reshape(-1)[::7] = -100
    else:
        target = np.moveaxis(rng.dirichlet(np.ones(400), size=positions), -1, axis)
    options = {"axis": axis, "reduction": reduction, "label_smoothing": smoothing}
    if weighted:
        options["weight"] = to_xp(
            rng.uniform(0.1, 3, 400), "float32" if dtype == "float16" else dtype
        )
    soft = target_kind == "probabilities"
    args = (to_xp(logits, dtype), to_xp(target, dtype if soft else None))
    if soft and dtype == "float16":
        args = (args[0], to_xp(target, "float32").astype(np.float16))
    _check_cross_entropy_both_paths(args, options, dtype, assert_close)

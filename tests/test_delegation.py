"""Every fast path equals the generic, standard-only path, beyond which it may change nothing
but the rounding of reassociated sums: 1e-12 relative in float64, 1e-6 in float32."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from array_api_compat import is_numpy_namespace, is_torch_namespace
from cases import all_cases
from conftest import to_numpy

import crossent
from crossent._delegation import fast_path, generic_only

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
    atol = _atol(case, dtype)
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
    fast, generic = _both_paths(crossent.cross_entropy, *args, **options)
    rtol = TOLERANCE[dtype]
    assert_close(fast, generic, dtype=dtype, rtol=rtol)
    (fast_loss, fast_grad), (loss, grad) = _both_paths(
        crossent.value_and_grad(crossent.cross_entropy), *args, **options
    )
    assert_close(fast_loss, loss, dtype=dtype, rtol=rtol)
    assert_close(fast_grad, grad, dtype=dtype, rtol=rtol, atol=_scale(grad, dtype))


def test_the_fast_paths_are_there(xp):
    expected = (
        {"cross_entropy", "cross_entropy_value_and_grad"} if is_numpy_namespace(xp) else set()
    )
    if is_torch_namespace(xp):
        expected = {"cross_entropy", "nll_loss", "binary_cross_entropy", "log_softmax"}
    for name in expected:
        assert fast_path(name, xp) is not None, name
    with generic_only():
        assert all(fast_path(name, xp) is None for name in expected)


def test_the_kernel_leaves_a_strided_class_axis_to_the_generic_path(xp, to_xp, assert_close):
    rng = np.random.default_rng(4)
    logits = rng.standard_normal((40, 9, 30))  # classes on axis 1, not contiguous
    target = rng.integers(0, 9, (40, 30))
    fast, generic = _both_paths(crossent.cross_entropy, to_xp(logits), to_xp(target), axis=1)
    assert_close(fast, generic, rtol=1e-12)


def test_direct_calls_take_the_public_signatures():
    # CPU torch tensors enter _torch.direct_<name> with the caller's arguments as given
    import inspect

    from crossent._delegation import _torch

    direct = [name for name in dir(_torch) if name.startswith("direct_")]
    assert direct
    for name in direct:
        theirs = inspect.signature(getattr(crossent, name.removeprefix("direct_")))
        ours = inspect.signature(getattr(_torch, name))
        assert [(p.name, p.kind, p.default) for p in ours.parameters.values()] == [
            (p.name, p.kind, p.default) for p in theirs.parameters.values()
        ], name

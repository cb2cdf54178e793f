"""Half precision on inputs large enough to cross several blocks of the blocked kernels (torch's
float16/bfloat16 paths, NumPy's float16 one): the loss and its gradient are the float32
computation on the same (rounded) inputs, rounded once to the input dtype."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from array_api_compat import is_dask_namespace, is_jax_namespace, is_torch_namespace
from cases import Case, all_cases, variant_cases
from conftest import to_numpy

import crossent
from crossent._dispatch import generic_only

N, C = 1200, 500  # 600k logits: three of torch's blocks, many of NumPy's

OPTIONS = [
    *(
        ("cross_entropy", {"reduction": r, "weight": w, "ignore": i, "label_smoothing": s})
        for r, w, i, s in itertools.product(
            ["mean", "sum", "none"], [False, True], [False, True], [0.0, 0.1]
        )
    ),
    *(
        ("nll_loss", {"reduction": r, "weight": w, "ignore": i})
        for r, w, i in itertools.product(["mean", "sum", "none"], [False, True], [False, True])
    ),
    *(("binary_cross_entropy_with_logits", {"reduction": r}) for r in ["mean", "sum", "none"]),
    # crossent's options beyond torch's
    *(
        (
            "cross_entropy",
            {"reduction": r, "weight": True, "ignore": True, "label_smoothing": 0.1}
            | {"softcap": 5.0, "z_loss": 1e-3, "sample": True},
        )
        for r in ["mean", "sum", "none"]
    ),
    *(
        ("nll_loss", {"reduction": r, "weight": False, "ignore": True, "sample": True})
        for r in ["mean", "none"]
    ),
]


def _loss_and_grad(xp, func, pred, target, options):
    if is_torch_namespace(xp):
        leaf = pred.detach().clone().requires_grad_(True)
        loss = func(leaf, target, **options)
        loss.float().sum().backward()  # an upstream gradient of 1, or of ones
        return loss.detach(), leaf.grad
    step = crossent.value_and_grad(func)
    if is_jax_namespace(xp):
        import jax

        return jax.jit(lambda p, t: step(p, t, **options))(pred, target)
    return step(pred, target, **options)


# the expected sums, rounded here, overflow float16 as crossent's do
@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize(("name", "options"), OPTIONS, ids=lambda o: str(o))
def test_half_precision_is_float32_rounded_once(name, options, dtype, xp, to_xp):
    if is_dask_namespace(xp) and name != "cross_entropy":
        pytest.skip("one loss is enough to cover Dask's chunks")
    rng = np.random.default_rng(11)
    options = dict(options)
    logits = rng.standard_normal((N, C)) * 4
    half = to_xp(logits, dtype)
    single = to_xp(to_numpy(half).astype(np.float32), "float32")  # the same rounded values
    if name == "binary_cross_entropy_with_logits":
        labels = (rng.random((N, C)) < 0.3) * 1.0
        target_half, target_single = to_xp(labels, dtype), to_xp(labels, "float32")
    else:
        target = rng.integers(0, C, N)
        if options.pop("ignore"):
            target[::3] = -100
        target_half = target_single = to_xp(target)
        if options.pop("weight"):
            options["weight"] = to_xp(rng.uniform(0.2, 2.0, C), "float32")
        if options.pop("sample", False):
            options["sample_weight"] = to_xp(rng.uniform(0.0, 3.0, N), "float32")
    if name == "nll_loss":
        half = to_xp(to_numpy(half).astype(np.float32) - 8.0, dtype)  # log-probability-like
        single = to_xp(to_numpy(half).astype(np.float32), "float32")
    func = getattr(crossent, name)
    loss, grad = _loss_and_grad(xp, func, half, target_half, options)
    loss32, grad32 = _loss_and_grad(xp, func, single, target_single, options)
    eps = float(np.finfo(np.float16).eps) if dtype == "float16" else 2.0**-7
    assert loss.dtype == half.dtype
    assert grad.dtype == half.dtype
    # one rounding of the float32 value (inf beyond float16's range; a sum of many terms may
    # round the other way)
    expected = to_numpy(to_xp(to_numpy(loss32), dtype)).astype(np.float64)
    np.testing.assert_allclose(to_numpy(loss).astype(np.float64), expected, rtol=eps)
    # the float32 gradient rounded to the dtype: within one unit of it, of the dtype's smallest
    # subnormal (2**-24 for float16), or of float32's rounding where terms cancel (smoothing)
    g = to_numpy(grad).astype(np.float64)
    g32 = to_numpy(grad32)
    rounded = to_numpy(to_xp(g32, dtype)).astype(np.float64)
    tiny = 2.0**-24 if dtype == "float16" else 2.0**-133
    np.testing.assert_allclose(g, rounded, rtol=eps, atol=max(tiny, 2.0**-21 * np.abs(g32).max()))


# --- Every loss, on every autograd route ------------------------------------------------------

#: Every loss of a prediction, with each of its options (small inputs: the routes, not blocks).
ROUTE_CASES = [*all_cases()[::5], *variant_cases()]
#: Each dtype's bits of mantissa, and the exponent of its smallest normal number.
ULP_BITS = {"float16": 10, "bfloat16": 7}
MIN_EXPONENT = {"float16": -14, "bfloat16": -126}


def _float32_exact(case: Case) -> Case:
    """The case with every floating array float32-exact, so that float32 inside reads the same
    numbers as the float64 reference."""

    def exact(x):
        if isinstance(x, np.ndarray) and x.dtype.kind == "f":
            return x.astype(np.float32).astype(np.float64)
        return x

    options = {k: exact(v) for k, v in case.options.items()}
    return Case(case.name, case.pred, exact(case.target), options)


def _routes(xp):
    routes = ["value_and_grad"]
    if is_torch_namespace(xp):
        routes += ["torch autograd", "torch autograd, generic path"]
    if is_jax_namespace(xp):
        routes += ["jax.grad"]
    return routes


def _gradient(xp, route, func, pred, args, options):
    if route == "value_and_grad":
        return crossent.grad(func)(pred, *args, **options)
    if route == "jax.grad":
        import jax

        return jax.grad(lambda x: func(x, *args, **options).astype("float32").sum())(pred)
    leaf = pred.detach().clone().requires_grad_(True)
    if route == "torch autograd, generic path":
        with generic_only():
            func(leaf, *args, **options).float().sum().backward()
    else:
        func(leaf, *args, **options).float().sum().backward()
    return leaf.grad


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("case", ROUTE_CASES, ids=[c.id for c in ROUTE_CASES])
def test_every_autograd_route_rounds_once(case, dtype, xp, to_xp):
    """float32 inside, rounded once: the gradient of the rounded input lies within half a unit
    of the dtype's last place of the exact (float64) one, plus float32's own rounding."""
    if is_dask_namespace(xp):
        pytest.skip("Dask has value_and_grad alone, which the NumPy session checks")
    case = _float32_exact(case)
    half = to_xp(case.pred, dtype)
    rounded = to_numpy(half).astype(np.float64)
    args, options = case.crossent_args(to_xp)
    if case.name == "cross_entropy_from_probs" and options.get("eps") is None:
        options["eps"] = float(np.finfo(np.float16).eps) if dtype == "float16" else 2.0**-7
    func = getattr(crossent, case.name)
    exact = to_numpy(crossent.grad(func)(to_xp(rounded), *args[1:], **options))
    scale = np.abs(exact[np.isfinite(exact)]).max(initial=0.0)
    # half a unit in the last place of each exact entry (a subnormal's is the smallest's)
    magnitude = np.maximum(np.abs(np.nan_to_num(exact)), 2.0**-200)
    exponent = np.maximum(np.floor(np.log2(magnitude)), MIN_EXPONENT[dtype])
    half_ulp = 2.0 ** (exponent - ULP_BITS[dtype] - 1)
    allowed = half_ulp * (1 + 1e-6) + 2.0**-21 * scale
    for route in _routes(xp):
        grad = _gradient(xp, route, func, half, args[1:], options)
        assert grad.dtype == half.dtype, route
        error = np.abs(to_numpy(grad).astype(np.float64) - exact)
        worst = float(np.max(error / allowed, initial=0.0))
        assert worst <= 1.0, f"{route}: {worst:.3g} times the rounding allowed"


# --- nll_loss's ignored positions, in half precision ------------------------------------------


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # Dask: 0 / 0
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize(
    ("ignore_index", "ignored"),
    [(-100, "none"), (0, "none"), (0, "some"), (-100, "all"), (3, "all"), (-100, "empty")],
)
def test_half_nll_loss_ignored_positions(ignore_index, ignored, reduction, dtype, xp, to_xp):
    """Whatever the positions ignored (none, some, all, or no position at all) and whatever
    ``ignore_index`` is (torch's direct route tells a negative one apart by the smallest index),
    the half-precision nll_loss is the float32 one rounded once: NaN for a mean of nothing."""
    rng = np.random.default_rng(5)
    rows = 0 if ignored == "empty" else 64
    log_probs = rng.standard_normal((rows, 7)) - 3.0
    target = rng.integers(1, 7, rows)
    if ignored == "some":
        target[::4] = ignore_index
    elif ignored == "all":
        target[:] = ignore_index
    half = to_xp(log_probs, dtype)
    single = to_xp(to_numpy(half).astype(np.float32), "float32")
    options = {"ignore_index": ignore_index, "reduction": reduction}
    loss = crossent.nll_loss(half, to_xp(target), **options)
    expected = to_numpy(crossent.nll_loss(single, to_xp(target), **options))
    assert loss.dtype == half.dtype
    got = to_numpy(loss).astype(np.float64)
    np.testing.assert_array_equal(got, to_numpy(to_xp(expected, dtype)).astype(np.float64))
    if reduction == "mean" and ignored in ("all", "empty"):
        assert np.isnan(got)

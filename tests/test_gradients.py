"""Analytic gradients equal torch autograd of torch's own functions; autodiff through crossent
equals them too, with no NaN at the edges."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from array_api_compat import is_jax_namespace, is_torch_namespace
from cases import LOSSES, Case, all_cases
from conftest import to_numpy
from oracle import T

import crossent
from crossent._dispatch import generic_only

CASES = all_cases()


def torch_gradient(case: Case) -> tuple[torch.Tensor, torch.Tensor]:
    """torch's loss and the gradient of its sum, by autograd, in float64."""
    pred = T(case.pred).requires_grad_(True)
    loss = case.torch_loss(pred)
    loss.sum().backward()
    return loss.detach(), pred.grad


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_analytic_gradient_equals_torch_autograd(case, to_xp, assert_close, lazy):
    expected_loss, expected_grad = torch_gradient(case)
    args, options = case.crossent_args(to_xp)
    loss, grad = lazy(crossent.value_and_grad(getattr(crossent, case.name)))(*args, **options)
    assert_close(loss, expected_loss)
    assert_close(grad, expected_grad, atol=1e-15)


@pytest.mark.parametrize("case", CASES[::9], ids=[c.id for c in CASES[::9]])
def test_analytic_gradient_equals_central_differences(case, to_xp, assert_close):
    args, options = case.crossent_args(to_xp)
    func = getattr(crossent, case.name)
    grad = crossent.grad(func)(*args, **options)

    def total(pred: np.ndarray) -> float:
        loss = func(to_xp(pred), args[1], **options)
        return float(to_numpy(loss).sum())

    probabilities = case.name in ("binary_cross_entropy", "cross_entropy_from_probs")
    numeric = np.zeros_like(case.pred)
    for index in np.ndindex(case.pred.shape):
        value = case.pred[index]
        # a step well inside (0, 1), small against the distance to either end
        step = min(1e-6, value * 1e-3, (1 - value) * 1e-3) if probabilities else 1e-6
        up, down = case.pred.copy(), case.pred.copy()
        up[index] += step
        down[index] -= step
        numeric[index] = (total(up) - total(down)) / (2 * step)
    assert_close(grad, numeric, rtol=1e-5, atol=1e-6)


def test_value_is_the_loss_itself(to_xp, assert_close):
    rng = np.random.default_rng(0)
    logits, target = rng.standard_normal((6, 4)), rng.integers(0, 4, 6)
    loss, _ = crossent.value_and_grad(crossent.cross_entropy)(
        to_xp(logits), to_xp(target), label_smoothing=0.2
    )
    assert_close(loss, crossent.cross_entropy(to_xp(logits), to_xp(target), label_smoothing=0.2))


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_gradient_keeps_the_input_dtype_and_shape(name, dtype, to_xp, assert_close):
    case = next(c for c in CASES if c.name == name and c.pred.ndim == 2)
    args, options = case.crossent_args(to_xp)
    pred = to_xp(case.pred, dtype)
    grad = crossent.grad(getattr(crossent, name))(pred, *args[1:], **options)
    rounded = to_numpy(pred).astype(np.float64)
    oracle_options = dict(case.options)
    if name == "cross_entropy_from_probs" and oracle_options.get("eps") is None:
        # the default clips at the input dtype's epsilon
        oracle_options["eps"] = float(torch.finfo(getattr(torch, dtype)).eps)
    expected = torch_gradient(Case(name, rounded, case.target, oracle_options))[1]
    tolerance = {"float32": 1e-5, "float16": 2e-3, "bfloat16": 2e-2}[dtype]
    assert_close(grad, expected, dtype=dtype, rtol=tolerance, atol=tolerance)


def test_only_crossent_losses_are_differentiated():
    with pytest.raises(TypeError, match=r"value_and_grad differentiates crossent's losses"):
        crossent.value_and_grad(crossent.log_softmax)
    with pytest.raises(TypeError, match=r"differentiates crossent's losses .*got sum"):
        crossent.grad(sum)


def test_bad_arguments_raise_as_the_loss_does(to_xp):
    step = crossent.value_and_grad(crossent.cross_entropy)
    with pytest.raises(ValueError, match="reduction must be one of"):
        step(to_xp(np.zeros((2, 3))), to_xp(np.array([0, 1])), reduction="avg")
    with pytest.raises(TypeError, match="unexpected keyword argument 'smoothing'"):
        step(to_xp(np.zeros((2, 3))), to_xp(np.array([0, 1])), smoothing=0.1)


# --- Edges: finite gradients wherever torch's are ---------------------------------------------

EDGES = [
    Case(
        "binary_cross_entropy",
        np.array([0.0, 0.0, 1.0, 1.0, 1e-50, 0.5]),
        np.array([0.0, 1.0, 0.0, 1.0, 1.0, 0.3]),
        {"reduction": "sum"},
    ),
    Case(
        "cross_entropy",
        np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4], [0.0, 1e4, 1e4]]),
        np.array([1, -100, 2]),
        {"label_smoothing": 0.1},
    ),
    Case(
        "cross_entropy_from_probs",
        np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]),
        np.array([0, 0]),
        {"reduction": "sum"},
    ),
    Case(
        "binary_cross_entropy_with_logits",
        np.array([-1e4, -40.0, 0.0, 40.0, 1e4]),
        np.array([0.0, 1.0, 0.5, 0.0, 1.0]),
        {"pos_weight": np.array([2.0])},
    ),
    Case(
        "kl_div",
        np.array([[np.log(0.5), np.log(0.5), -30.0]]),
        np.array([[0.5, 0.5, 0.0]]),
        {"reduction": "batchmean"},
    ),
]


@pytest.mark.parametrize("case", EDGES, ids=[c.name for c in EDGES])
def test_analytic_gradient_at_the_edges_equals_torch(case, to_xp, assert_close):
    expected_loss, expected_grad = torch_gradient(case)
    args, options = case.crossent_args(to_xp)
    loss, grad = crossent.value_and_grad(getattr(crossent, case.name))(*args, **options)
    assert_close(loss, expected_loss, atol=1e-15)
    assert_close(grad, expected_grad, atol=1e-15)
    assert np.isfinite(to_numpy(grad)).all()


def test_ignored_rows_have_zero_gradient_even_with_infinite_logits(to_xp, assert_close):
    logits = np.array([[-np.inf, 0.0, 1.0], [0.5, 0.0, -1.0]])
    target = np.array([-100, 0])
    grad = crossent.grad(crossent.cross_entropy)(to_xp(logits), to_xp(target))
    assert_close(grad[0, ...], np.zeros(3))


def test_zero_kl_target_has_zero_gradient_against_minus_inf(to_xp, assert_close):
    log_probs = np.array([[-np.inf, np.log(0.5), np.log(0.5)]])
    target = np.array([[0.0, 0.5, 0.5]])
    loss, grad = crossent.value_and_grad(crossent.kl_div)(to_xp(log_probs), to_xp(target))
    assert_close(loss, 0.0)
    assert_close(grad, [[0.0, -0.5 / 3, -0.5 / 3]])


# --- Autodiff through crossent: torch autograd and jax.grad ------------------------------------


def _autodiff(xp, func, args, options):
    """The gradient of the summed loss with respect to the first argument, by autodiff."""
    if is_torch_namespace(xp):
        pred = args[0].detach().clone().requires_grad_(True)
        func(pred, *args[1:], **options).sum().backward()
        return pred.grad
    import jax

    def summed(pred):
        return func(pred, *args[1:], **options).sum()

    return jax.grad(summed)(args[0])


def _needs_autodiff(xp):
    if not (is_torch_namespace(xp) or is_jax_namespace(xp)):
        pytest.skip("this backend has no autodiff")


@pytest.mark.parametrize("path", ["fast", "generic"])
@pytest.mark.parametrize("case", CASES[::4], ids=[c.id for c in CASES[::4]])
def test_autodiff_through_crossent_equals_the_analytic_gradient(
    case, path, xp, to_xp, assert_close
):
    _needs_autodiff(xp)
    args, options = case.crossent_args(to_xp)
    func = getattr(crossent, case.name)
    expected = crossent.grad(func)(*args, **options)
    if path == "generic":
        with generic_only():
            actual = _autodiff(xp, func, args, options)
    else:
        actual = _autodiff(xp, func, args, options)
    assert_close(actual, expected, rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("case", EDGES, ids=[c.name for c in EDGES])
def test_autodiff_at_the_edges_equals_the_analytic_gradient(case, xp, to_xp, assert_close):
    _needs_autodiff(xp)
    args, options = case.crossent_args(to_xp)
    func = getattr(crossent, case.name)
    expected = crossent.grad(func)(*args, **options)
    assert_close(_autodiff(xp, func, args, options), expected, rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("case", EDGES, ids=[c.name for c in EDGES])
def test_generic_autodiff_has_no_nan_at_the_edges(case, xp, to_xp):
    # The standard-only path, differentiated by the framework: the double-where pattern keeps
    # every masked-out branch's infinities out of the gradient.
    _needs_autodiff(xp)
    args, options = case.crossent_args(to_xp)
    with generic_only():
        grad = _autodiff(xp, getattr(crossent, case.name), args, options)
    assert np.isfinite(to_numpy(grad)).all()


@pytest.mark.parametrize("name", LOSSES)
def test_jax_transformations_over_every_loss(name, xp, to_xp, assert_close):
    if not is_jax_namespace(xp):
        pytest.skip("JAX alone has jit, grad and vmap")
    import functools

    import jax

    case = next(
        c
        for c in CASES
        if c.name == name and c.pred.ndim == 2 and ("weight" in c.options or name == "kl_div")
    )
    args, options = case.crossent_args(to_xp)
    arrays = {k: v for k, v in options.items() if isinstance(v, jax.Array)}
    static = {k: v for k, v in options.items() if k not in arrays}
    func = functools.partial(getattr(crossent, name), **static)
    expected_loss, expected_grad = crossent.value_and_grad(getattr(crossent, name))(
        *args, **options
    )

    def summed(pred, target, extra):
        return func(pred, target, **extra).sum()

    assert_close(jax.jit(jax.grad(summed))(*args, arrays), expected_grad, atol=1e-15)
    analytic = jax.jit(
        functools.partial(crossent.value_and_grad(getattr(crossent, name)), **static)
    )
    loss, grad = analytic(*args, **arrays)
    assert_close(loss, expected_loss)
    assert_close(grad, expected_grad, atol=1e-15)

    # vmap over a batch of 3 problems: each the loss of its own slice
    batch_pred = xp.stack([args[0]] * 3)
    batch_target = xp.stack([args[1]] * 3)
    per_problem = jax.vmap(lambda p, t: func(p, t, **arrays))(batch_pred, batch_target)
    single = func(*args, **arrays)
    assert_close(per_problem, xp.stack([single] * 3))
    grads = jax.vmap(jax.grad(summed), in_axes=(0, 0, None))(batch_pred, batch_target, arrays)
    assert_close(grads, xp.stack([expected_grad] * 3), atol=1e-15)


# --- Where the mean has no weight: torch's gradient ------------------------------------------


@pytest.mark.filterwarnings("ignore:(invalid value|divide by zero) encountered:RuntimeWarning")
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("weights", ["every position ignored", "zero weight where kept"])
@pytest.mark.parametrize("name", ["cross_entropy", "nll_loss"])
def test_gradient_where_the_mean_has_no_weight(name, weights, smoothing, xp, to_xp, assert_close):
    # torch: 0 at ignored positions even where all are (0 / 0 once gave NaN), NaN at kept ones
    if name == "nll_loss" and smoothing:
        pytest.skip("nll_loss has no smoothing")
    rng = np.random.default_rng(5)
    scores = rng.standard_normal((4, 3))
    target = np.array([-100, -100, -100, -100])
    weight = np.array([0.0, 1.0, 2.0])
    if weights == "zero weight where kept":
        target = np.array([0, -100, 0, -100])
    options = {"label_smoothing": smoothing} if smoothing else {}
    case = Case(name, scores, target, {"weight": weight, **options})
    _, expected_grad = torch_gradient(case)
    args, crossent_options = case.crossent_args(to_xp)
    func = getattr(crossent, name)
    loss, grad = crossent.value_and_grad(func)(*args, **crossent_options)
    assert_close(loss, np.nan)
    # NaN where torch's is: across the row for cross_entropy, at the target for nll_loss
    assert_close(grad, expected_grad)
    if is_torch_namespace(xp) or is_jax_namespace(xp):
        with generic_only():
            assert_close(_autodiff(xp, func, args, crossent_options), expected_grad)


# Dask computes after crossent returns, outside its silencing of NumPy's warnings
@pytest.mark.filterwarnings("ignore:divide by zero encountered:RuntimeWarning")
@pytest.mark.parametrize("kind", ["indices", "probabilities"])
def test_a_probability_of_zero_at_the_target_with_eps_zero(kind, xp, to_xp, assert_close):
    # -log(p) at p = 0: an infinite loss, and the derivative's limit -1/p = -inf on every path
    probs = np.array([[0.0, 1.0], [0.5, 0.5]])
    target = np.array([0, 1]) if kind == "indices" else np.array([[1.0, 0.0], [0.0, 1.0]])
    args = (to_xp(probs), to_xp(target))
    func = crossent.cross_entropy_from_probs
    loss, grad = crossent.value_and_grad(func)(*args, eps=0.0, reduction="sum")
    assert_close(loss, np.inf)
    assert_close(grad, [[-np.inf, 0.0], [0.0, -2.0]])
    if is_torch_namespace(xp) or is_jax_namespace(xp):
        assert_close(_autodiff(xp, func, args, {"eps": 0.0, "reduction": "sum"}), grad)


@pytest.mark.parametrize(("shape", "axis"), [((3, 2, 4, 5), -1), ((3, 4, 5), 0), ((4, 5), 0)])
@pytest.mark.parametrize("name", ["cross_entropy", "nll_loss", "cross_entropy_from_probs"])
def test_autodiff_with_the_class_axis_anywhere(name, shape, axis, xp, to_xp, assert_close):
    # torch's nll_loss backward over (N, C, d...) input fails on a strided view ("grad_input
    # must be contiguous"): the torch paths read class-last input as rows instead
    _needs_autodiff(xp)
    rng = np.random.default_rng(8)
    logits = rng.standard_normal(shape)
    positions = list(shape)
    classes = positions.pop(axis)
    target = rng.integers(0, classes, positions)
    if name == "nll_loss":
        logits = torch.log_softmax(T(logits), dim=axis).numpy()
    elif name == "cross_entropy_from_probs":
        logits = torch.softmax(T(logits), dim=axis).numpy()
    case = Case(name, logits, target, {"axis": axis})
    args, options = case.crossent_args(to_xp)
    func = getattr(crossent, name)
    expected = crossent.grad(func)(*args, **options)
    assert_close(_autodiff(xp, func, args, options), expected, rtol=1e-10, atol=1e-15)
    assert_close(expected, torch_gradient(case)[1], rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("name", ["cross_entropy", "nll_loss", "cross_entropy_from_probs"])
def test_autodiff_of_a_bad_index_under_jit_is_nan_as_the_analytic_gradient(name, xp, to_xp):
    # a bad index gives a NaN loss on lazy arrays; its gradient must not be a plausible 0
    if not is_jax_namespace(xp):
        pytest.skip("jax.jit alone has both lazy values and autodiff")
    import jax

    scores = np.full((3, 4), 0.25)
    target = to_xp(np.array([0, 7, -100]))
    func = getattr(crossent, name)
    analytic = jax.jit(crossent.grad(func), static_argnames="reduction")
    autodiff = jax.jit(jax.grad(lambda x: func(x, target, reduction="sum")))
    expected = to_numpy(analytic(to_xp(scores), target, reduction="sum"))
    actual = to_numpy(autodiff(to_xp(scores)))
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected))
    assert np.isnan(actual[1]).any()
    assert not np.isnan(actual[[0, 2]]).any()


def test_torch_autograd_through_a_strided_nll_loss_input():
    # torch's nll_loss backward over (N, C, d...) input refuses a strided view
    x = torch.randn(2, 4, 5, 3, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 3, (2, 4, 5))
    crossent.nll_loss(x.permute(0, 3, 1, 2), target, axis=1).backward()
    expected = torch.zeros_like(x)
    expected.scatter_(-1, target[..., None], -1.0 / target.numel())
    torch.testing.assert_close(x.grad, expected)

"""softmax_focal_loss and poly1_cross_entropy: their formulas, written in torch float64, for every
option; their analytic gradients, torch's autograd of those formulas; finite at the edges."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from array_api_compat import is_dask_namespace, is_jax_namespace, is_torch_namespace
from conftest import XP, to_numpy
from hypothesis import given, settings
from hypothesis import strategies as st
from oracle import T, focal_torch, poly1_torch

import crossent
from crossent._dispatch import generic_only

N, C = 6, 5

#: (shape of the logits, class axis): torch's (N, C), an unbatched (C,), torch's (N, C, d) with
#: axis=1.
LAYOUTS = {"NC": ((N, C), -1), "C": ((C,), -1), "NCd": ((N, C, 3), 1)}
#: Class indices, some of them ignored (-100), or class probabilities.
TARGETS = ["indices", "some-ignored", "probabilities"]
REDUCTIONS = ["mean", "sum", "none"]
GAMMAS = [0.0, 0.5, 2.0]
#: (epsilon, label_smoothing)
POLY_OPTIONS = [(1.0, 0.0), (-1.0, 0.3), (2.0, 0.3)]


def _positions(shape, axis):
    axis %= len(shape)
    return shape[:axis] + shape[axis + 1 :]


def _case(layout, target_kind, seed=0):
    """Logits, target, axis, class weights and sample weights, as NumPy arrays."""
    shape, axis = LAYOUTS[layout]
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal(shape) * 3
    positions = _positions(shape, axis)
    if target_kind == "probabilities":
        target = np.moveaxis(rng.dirichlet(np.ones(C), size=positions), -1, axis)
    else:
        target = rng.integers(0, C, size=positions)
        if target_kind == "some-ignored" and target.ndim:
            target = np.where(rng.random(positions) < 0.4, -100, target)
            target.flat[0] = -100
    weight = rng.uniform(0.2, 2.0, size=C)
    sample_weight = rng.uniform(0.0, 3.0, size=positions)
    return logits, target, axis, weight, sample_weight


# --- The formulas, in torch float64 --------------------------------------------------------


ORACLES = {"softmax_focal_loss": focal_torch, "poly1_cross_entropy": poly1_torch}


def _torch_value_and_grad(name, logits, target, **options):
    leaf = T(logits).requires_grad_(True)
    out = ORACLES[name](leaf, T(target), **options)
    (grad,) = torch.autograd.grad(out.sum(), leaf)
    return out.detach(), grad


def _options_xp(to_xp, options):
    return {k: to_xp(v) if isinstance(v, np.ndarray) else v for k, v in options.items()}


def _options_torch(options):
    return {k: T(v) if isinstance(v, np.ndarray) else v for k, v in options.items()}


def _scale(x):
    magnitudes = np.abs(to_numpy(x))
    return float(np.max(magnitudes[np.isfinite(magnitudes)], initial=0.0))


def _check_against_torch(name, logits, target, options, to_xp, assert_close):
    """The loss, and ``value_and_grad``'s loss and gradient, against the formula in torch."""
    func = getattr(crossent, name)
    expected, expected_grad = _torch_value_and_grad(
        name, logits, target, **_options_torch(options)
    )
    args = (to_xp(logits), to_xp(target))
    xp_options = _options_xp(to_xp, options)
    atol = 1e-14 * _scale(expected) + 1e-300
    assert_close(func(*args, **xp_options), expected, atol=atol)
    if options["reduction"] == "sum":
        return  # its gradient is "none"'s
    loss, grad = crossent.value_and_grad(func)(*args, **xp_options)
    assert_close(loss, expected, atol=atol)
    assert_close(grad, expected_grad, atol=1e-13 * _scale(expected_grad) + 1e-300)


def _grid_options(weighted, sample_weighted, weight, sample_weight, reduction):
    options = {"reduction": reduction}
    if weighted:
        options["weight"] = weight
    if sample_weighted:
        options["sample_weight"] = sample_weight
    return options


#: Every layout, target, class weights or none, sample weights or none, and each option. Dask
#: and JAX (slower per call) run every fifth: 5 is prime to the grid's periods, so that each
#: value of each parameter still comes; the math is the same code on every backend.
STRIDE = 5 if is_dask_namespace(XP) or is_jax_namespace(XP) else 1


def _grid(options):
    cases = itertools.product(LAYOUTS, TARGETS, [False, True], [False, True], options)
    return list(cases)[::STRIDE]


def _grid_id(case):
    layout, target, weighted, sample_weighted, option = case
    weights = ("w" if weighted else "nw") + ("s" if sample_weighted else "ns")
    return f"{layout}-{target}-{weights}-{option}"


# --- softmax_focal_loss --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("layout", "target_kind", "weighted", "sample_weighted", "gamma"),
    _grid(GAMMAS),
    ids=[_grid_id(case) for case in _grid(GAMMAS)],
)
def test_softmax_focal_loss_equals_its_formula(
    layout, target_kind, weighted, sample_weighted, gamma, to_xp, assert_close
):
    logits, target, axis, weight, sample_weight = _case(layout, target_kind, seed=1)
    for reduction in REDUCTIONS:
        options = _grid_options(weighted, sample_weighted, weight, sample_weight, reduction)
        options.update(gamma=gamma, axis=axis)
        _check_against_torch("softmax_focal_loss", logits, target, options, to_xp, assert_close)


@pytest.mark.parametrize("target_kind", TARGETS)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gamma_0_is_cross_entropy(target_kind, weighted, reduction, to_xp, assert_close):
    logits, target, axis, weight, _ = _case("NCd", target_kind, seed=2)
    args = (to_xp(logits), to_xp(target))
    options = {"axis": axis, "reduction": reduction, "weight": to_xp(weight) if weighted else None}
    with generic_only():  # the same code: the same bits
        focal = crossent.value_and_grad(crossent.softmax_focal_loss)(*args, gamma=0.0, **options)
        ce = crossent.value_and_grad(crossent.cross_entropy)(*args, **options)
        for a, b in zip(focal, ce, strict=True):
            np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
    assert_close(
        crossent.softmax_focal_loss(*args, gamma=0.0, **options),
        crossent.cross_entropy(*args, **options),
        rtol=1e-12,
    )


def test_keras_categorical_focal_crossentropy(to_xp, assert_close):
    # keras.losses.CategoricalFocalCrossentropy(from_logits=True, alpha, gamma), reduction="none":
    # softmax, clipped to [1e-7, 1 - 1e-7] (a no-op here), then -sum alpha (1 - p)**gamma t log p
    logits, target, _, _, _ = _case("NC", "probabilities", seed=3)
    alpha = np.array([0.25, 0.5, 1.0, 0.75, 0.1])
    probs = torch.softmax(T(logits), -1).clamp(1e-7, 1 - 1e-7)
    keras = -(T(alpha) * (1 - probs) ** 1.5 * T(target) * probs.log()).sum(-1)
    actual = crossent.softmax_focal_loss(
        to_xp(logits), to_xp(target), gamma=1.5, weight=to_xp(alpha), reduction="none"
    )
    assert_close(actual, keras)


# --- poly1_cross_entropy -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("layout", "target_kind", "weighted", "sample_weighted", "poly_options"),
    _grid(POLY_OPTIONS),
    ids=[_grid_id(case) for case in _grid(POLY_OPTIONS)],
)
def test_poly1_cross_entropy_equals_its_formula(
    layout, target_kind, weighted, sample_weighted, poly_options, to_xp, assert_close
):
    epsilon, label_smoothing = poly_options
    logits, target, axis, weight, sample_weight = _case(layout, target_kind, seed=4)
    for reduction in REDUCTIONS:
        options = _grid_options(weighted, sample_weighted, weight, sample_weight, reduction)
        options.update(epsilon=epsilon, label_smoothing=label_smoothing, axis=axis)
        _check_against_torch("poly1_cross_entropy", logits, target, options, to_xp, assert_close)


@pytest.mark.parametrize("target_kind", TARGETS)
@pytest.mark.parametrize("label_smoothing", [0.0, 0.3])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_epsilon_0_is_cross_entropy(target_kind, label_smoothing, reduction, to_xp, assert_close):
    logits, target, axis, weight, _ = _case("NCd", target_kind, seed=5)
    args = (to_xp(logits), to_xp(target))
    options = {
        "axis": axis,
        "reduction": reduction,
        "weight": to_xp(weight),
        "label_smoothing": label_smoothing,
    }
    with generic_only():
        poly = crossent.value_and_grad(crossent.poly1_cross_entropy)(*args, epsilon=0.0, **options)
        ce = crossent.value_and_grad(crossent.cross_entropy)(*args, **options)
        for a, b in zip(poly, ce, strict=True):
            np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
    assert_close(
        crossent.poly1_cross_entropy(*args, epsilon=0.0, **options),
        crossent.cross_entropy(*args, **options),
        rtol=1e-12,
    )


@pytest.mark.parametrize("epsilon", [2.0, -1.0])
@pytest.mark.parametrize("labels", ["one-hot", "probabilities"])
def test_poly1_cross_entropy_is_optax_poly_loss(epsilon, labels, to_xp, assert_close):
    # optax.poly_loss_cross_entropy (optax/losses/_classification.py), in torch:
    #   p = softmax(logits); one_minus_pt = sum(labels * (1 - p))
    #   return softmax_cross_entropy(logits, labels) + epsilon * one_minus_pt
    logits, target, _, _, _ = _case("NC", "probabilities" if labels != "one-hot" else "indices")
    if labels == "one-hot":
        indices, target = target, np.eye(C)[target]
    x, t = T(logits), T(target)
    optax = -(t * x.log_softmax(-1)).sum(-1) + epsilon * (t * (1 - x.softmax(-1))).sum(-1)
    actual = crossent.poly1_cross_entropy(
        to_xp(logits), to_xp(target), epsilon=epsilon, reduction="none"
    )
    assert_close(actual, optax)
    if labels == "one-hot":
        by_index = crossent.poly1_cross_entropy(
            to_xp(logits), to_xp(indices), epsilon=epsilon, reduction="none"
        )
        assert_close(by_index, optax)


# --- Edges ---------------------------------------------------------------------------------

#: Logits whose softmax is exactly 1 at class 0 and exactly 0 elsewhere (exp(-2e4) = 0).
EDGE = np.array([[1e4, -1e4, -1e4], [1e4, -1e4, -1e4], [-1e4, 1e4, 0.0], [0.0, -15.0, -15.0]])
EDGE_TARGET = np.array([0, 1, 0, 0])  # p = 1, p = 0, p = 0, p = 1 - 6e-7


@pytest.mark.filterwarnings("ignore:(invalid value|divide by zero|overflow) encountered")
@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_focal_gradient_is_finite_where_p_is_0_or_1(gamma, to_xp, assert_close):
    x, y = to_xp(EDGE), to_xp(EDGE_TARGET)
    loss, grad = crossent.value_and_grad(crossent.softmax_focal_loss)(
        x, y, gamma=gamma, reduction="sum"
    )
    assert np.isfinite(to_numpy(grad)).all()
    expected_loss = focal_torch(T(EDGE), T(EDGE_TARGET), gamma=gamma, reduction="none")
    assert_close(loss, expected_loss.sum())
    # p = 1: the loss is flat (0); p = 0: log p is linear and (1 - p)**gamma = 1, cross-entropy's
    ce_grad = torch.softmax(T(EDGE), -1) - F.one_hot(T(EDGE_TARGET), 3)
    expected = torch.stack([ce_grad[0] * 0, ce_grad[1], ce_grad[2]])
    assert_close(grad[:3, ...], expected, atol=1e-300)
    # 1 - p = 6e-7, where (1 - p)**(gamma - 1) is large: torch's autograd of the formula agrees
    _, row = _torch_value_and_grad("softmax_focal_loss", EDGE[3:], EDGE_TARGET[3:], gamma=gamma)
    # (torch's backward makes p - 1 by a subtraction from 1: exact to 1e-16 c, not relatively)
    assert_close(grad[3:, ...], row, atol=1e-18)


@pytest.mark.filterwarnings("ignore:(invalid value|divide by zero|overflow) encountered")
def test_focal_gradient_is_finite_at_the_edges_with_probabilities(to_xp, assert_close):
    target = np.array([[1.0, 0.0, 0.0], [0.2, 0.8, 0.0], [0.5, 0.0, 0.5], [0.9, 0.05, 0.05]])
    loss, grad = crossent.value_and_grad(crossent.softmax_focal_loss)(
        to_xp(EDGE), to_xp(target), gamma=0.5, reduction="none"
    )
    assert np.isfinite(to_numpy(loss)).all()
    assert np.isfinite(to_numpy(grad)).all()
    assert_close(loss, focal_torch(T(EDGE), T(target), gamma=0.5, reduction="none"))


@pytest.mark.filterwarnings("ignore:(invalid value|divide by zero|overflow) encountered")
@pytest.mark.parametrize("target_kind", ["indices", "probabilities"])
def test_poly1_gradient_is_finite_at_the_edges(target_kind, to_xp, assert_close):
    target = EDGE_TARGET if target_kind == "indices" else np.eye(3)[EDGE_TARGET] * 0.9 + 0.1 / 3
    options = {"epsilon": -1.0, "label_smoothing": 0.1, "reduction": "sum"}
    loss, grad = crossent.value_and_grad(crossent.poly1_cross_entropy)(
        to_xp(EDGE), to_xp(target), **options
    )
    expected_loss, expected_grad = _torch_value_and_grad(
        "poly1_cross_entropy", EDGE, target, **options
    )
    assert np.isfinite(to_numpy(grad)).all()
    assert_close(loss, expected_loss)
    assert_close(grad, expected_grad, atol=1e-13 * _scale(expected_grad))


# --- NaN and infinity ----------------------------------------------------------------------


@st.composite
def _special_cases(draw):
    name = draw(st.sampled_from(sorted(ORACLES)))
    target_kind = draw(st.sampled_from(TARGETS))
    logits, target, _, weight, _ = _case("NC", target_kind, seed=draw(st.integers(0, 3)))
    slots = ["logits"] + (["target"] if target_kind == "probabilities" else [])
    values = {"logits": logits, "target": target}
    for _ in range(draw(st.integers(1, 3))):
        slot = draw(st.sampled_from(slots))
        where = draw(st.integers(0, values[slot].size - 1))
        values[slot].reshape(-1)[where] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    options = {"reduction": "none"}
    if draw(st.booleans()):
        options["weight"] = weight
    if name == "softmax_focal_loss":
        options["gamma"] = draw(st.sampled_from([0.5, 2.0]))
    else:
        options["epsilon"] = draw(st.sampled_from([1.0, -1.0]))
        options["label_smoothing"] = draw(st.sampled_from([0.0, 0.2]))
    return name, values["logits"], values["target"], options


@pytest.mark.filterwarnings("ignore:(invalid value|divide by zero|overflow) encountered")
@settings(max_examples=30)
@given(case=_special_cases())
def test_nan_and_inf_propagate_as_the_formula(case, xp, to_xp, assert_close, lazy):
    name, logits, target, options = case
    expected = ORACLES[name](T(logits), T(target), **_options_torch(options)).numpy()
    func = getattr(crossent, name)
    run = lazy(func) if is_dask_namespace(xp) or is_jax_namespace(xp) else func
    losses = run(to_xp(logits), to_xp(target), **_options_xp(to_xp, options))
    found = to_numpy(losses)
    if np.isinf(target).any():
        # an infinite target is garbage in: no finite number comes out where the formula's
        # is not finite, in whichever way (inf - inf = NaN, or an infinity)
        assert (np.isfinite(found) == np.isfinite(expected)).all(), (found, expected)
        expected = np.where(np.isfinite(expected), expected, found)
    assert_close(losses, expected)


# --- Half precision ------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("name", sorted(ORACLES))
@pytest.mark.parametrize("target_kind", ["some-ignored", "probabilities"])
def test_half_precision_keeps_its_dtype(dtype, name, target_kind, xp, to_xp, assert_close):
    logits, target, axis, weight, sample_weight = _case("NCd", target_kind, seed=6)
    probabilities = target_kind == "probabilities"

    def rounded(values, to):
        # the same values in float32 as in the half dtype
        return to_xp(to_numpy(to_xp(values, dtype)).astype(np.float32), to)

    half = (rounded(logits, dtype), to_xp(target, dtype) if probabilities else to_xp(target))
    single = (rounded(logits, "float32"), rounded(target, "float32") if probabilities else half[1])
    options = {
        "axis": axis,
        "weight": to_xp(weight, "float32"),
        "sample_weight": to_xp(sample_weight, "float32"),
        "reduction": "none",
    }
    func = getattr(crossent, name)
    loss, grad = crossent.value_and_grad(func)(*half, **options)
    expected, expected_grad = crossent.value_and_grad(func)(*single, **options)
    rtol = 2e-3 if dtype == "float16" else 1.6e-2
    for actual, desired in (
        (loss, expected),
        (grad, expected_grad),
        (func(*half, **options), expected),
    ):
        assert_close(actual, desired, dtype=dtype, rtol=rtol, atol=rtol * _scale(desired))


# --- Arguments -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"gamma": -1.0}, ValueError, r"gamma must be a finite float >= 0, got -1.0"),
        ({"gamma": float("inf")}, ValueError, r"gamma must be a finite float >= 0, got inf"),
        ({"gamma": "2"}, TypeError, r"gamma must be a Python float >= 0, got str"),
        ({"gamma": True}, TypeError, r"gamma must be a Python float >= 0, got bool"),
        ({"gamma": None}, TypeError, r"gamma must be a Python float >= 0, got NoneType"),
        ({"reduction": "batchmean"}, ValueError, r"reduction must be one of"),
        (
            {"sample_weight": np.ones(3)},
            ValueError,
            r"sample_weight has shape \(3,\), expected \(4,\)",
        ),
        ({"weight": np.ones(4)}, ValueError, r"weight has shape \(4,\), expected \(5,\)"),
    ],
)
def test_focal_errors_name_the_argument(options, error, message, to_xp):
    logits, target = np.zeros((4, 5)), np.array([0, 1, 2, -100])
    with pytest.raises(error, match=message):
        crossent.softmax_focal_loss(to_xp(logits), to_xp(target), **_options_xp(to_xp, options))


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"epsilon": float("nan")}, ValueError, r"epsilon must be a finite float, got nan"),
        ({"epsilon": "1"}, TypeError, r"epsilon must be a Python float, got str"),
        ({"epsilon": None}, TypeError, r"epsilon must be a Python float, got NoneType"),
        ({"label_smoothing": 1.5}, ValueError, r"label_smoothing must be in \[0, 1\], got 1.5"),
        (
            {"sample_weight": np.ones((4, 5))},
            ValueError,
            r"sample_weight has shape \(4, 5\), expected \(4,\)",
        ),
    ],
)
def test_poly1_errors_name_the_argument(options, error, message, to_xp):
    logits, target = np.zeros((4, 5)), np.array([0, 1, 2, -100])
    with pytest.raises(error, match=message):
        crossent.poly1_cross_entropy(to_xp(logits), to_xp(target), **_options_xp(to_xp, options))


@pytest.mark.parametrize("name", sorted(ORACLES))
def test_an_array_option_is_refused(name, to_xp):
    option = "gamma" if name == "softmax_focal_loss" else "epsilon"
    with pytest.raises(TypeError, match=f"{option} must be a Python float.*static argument"):
        getattr(crossent, name)(
            to_xp(np.zeros((2, 3))), to_xp(np.array([0, 1])), **{option: to_xp(np.asarray(1.0))}
        )


@pytest.mark.parametrize("name", sorted(ORACLES))
def test_a_bad_index_raises_or_gives_nan(name, xp, to_xp, lazy):
    logits, target = np.zeros((4, 9)), np.array([0, 9, -1, -100])
    func = getattr(crossent, name)
    if is_dask_namespace(xp) or is_jax_namespace(xp):
        out = to_numpy(lazy(func)(to_xp(logits), to_xp(target), reduction="none"))
        np.testing.assert_array_equal(np.isnan(out), [False, True, True, False])
        _, grad = lazy(crossent.value_and_grad(func))(to_xp(logits), to_xp(target))
        np.testing.assert_array_equal(np.isnan(to_numpy(grad)).all(-1), [False, True, True, False])
    else:
        with pytest.raises(ValueError, match="target holds class index 9, outside"):
            func(to_xp(logits), to_xp(target))


# --- Frameworks ----------------------------------------------------------------------------

FRAMEWORK_CASES = [
    ("softmax_focal_loss", "some-ignored", {"gamma": 0.5}),
    ("softmax_focal_loss", "probabilities", {"gamma": 2.0}),
    ("poly1_cross_entropy", "some-ignored", {"epsilon": -1.0, "label_smoothing": 0.2}),
    ("poly1_cross_entropy", "probabilities", {"epsilon": 2.0, "label_smoothing": 0.2}),
]


def _framework_case(name, target_kind, options, to_xp):
    logits, target, axis, weight, sample_weight = _case("NCd", target_kind, seed=7)
    logits[0, :, 0] = [1e4, -1e4, -1e4, -1e4, -1e4]  # p exactly 1 (or 0) at one position
    options = {
        **options,
        "axis": axis,
        "weight": to_xp(weight),
        "sample_weight": to_xp(sample_weight),
    }
    return to_xp(logits), to_xp(target), options


@pytest.mark.parametrize(("name", "target_kind", "options"), FRAMEWORK_CASES)
def test_autodiff_of_the_generic_path_equals_the_analytic_gradient(
    name, target_kind, options, xp, to_xp, assert_close
):
    if not (is_torch_namespace(xp) or is_jax_namespace(xp)):
        pytest.skip("autodiff: torch and JAX")
    logits, target, options = _framework_case(name, target_kind, options, to_xp)
    func = getattr(crossent, name)
    _, expected = crossent.value_and_grad(func)(logits, target, **options)
    if is_jax_namespace(xp):
        import jax

        with generic_only():  # JAX's autodiff of the generic code, not crossent's rule
            autodiff = jax.grad(lambda x: func(x, target, **options))(logits)
        kernel = jax.jit(jax.grad(lambda x: func(x, target, **options)))(logits)
        assert_close(kernel, expected, atol=1e-300)
    else:
        leaf = logits.clone().requires_grad_(True)
        (autodiff,) = torch.autograd.grad(func(leaf, target, **options), leaf)
    assert np.isfinite(to_numpy(autodiff)).all()
    assert_close(autodiff, expected, atol=1e-13 * _scale(expected))


def test_jax_vmap_and_jit(xp, to_xp, assert_close):
    if not is_jax_namespace(xp):
        pytest.skip("JAX's transformations")
    import jax

    rng = np.random.default_rng(8)
    logits = to_xp(rng.standard_normal((3, 5, 4)))
    target = to_xp(rng.integers(0, 4, (3, 5)))
    for func, option in (
        (crossent.softmax_focal_loss, {"gamma": 0.5}),
        (crossent.poly1_cross_entropy, {"epsilon": -1.0}),
    ):

        def loss(x, t, func=func, option=option):
            return func(x, t, **option)

        grads = jax.vmap(jax.grad(loss))(logits, target)
        for i in range(3):
            one = jax.jit(jax.grad(loss))(logits[i], target[i])
            assert_close(grads[i], one, rtol=1e-12)
            assert_close(jax.jit(loss)(logits[i], target[i]), loss(logits[i], target[i]))


@pytest.mark.parametrize(("name", "target_kind", "options"), FRAMEWORK_CASES)
def test_torch_compile_fullgraph(name, target_kind, options, xp, to_xp, assert_close):
    if not is_torch_namespace(xp):
        pytest.skip("torch.compile compiles torch tensors")
    torch._dynamo.reset()
    logits, target, options = _framework_case(name, target_kind, options, to_xp)
    func = getattr(crossent, name)
    compiled = torch.compile(func, fullgraph=True, backend="aot_eager")
    results = []
    for f in (compiled, func):
        leaf = logits.clone().requires_grad_(True)
        out = f(leaf, target, **options)
        results.append((out.detach(), torch.autograd.grad(out, leaf)[0]))
    (out, grad), (expected, expected_grad) = results
    assert_close(out, expected, rtol=1e-12)
    assert_close(grad, expected_grad, rtol=1e-12, atol=1e-15)
    step = torch.compile(crossent.value_and_grad(func), fullgraph=True, backend="aot_eager")
    loss, grad = step(logits, target, **options)
    assert_close(loss, expected, rtol=1e-12)
    assert_close(grad, expected_grad, rtol=1e-12, atol=1e-13 * _scale(expected_grad))
    torch._dynamo.reset()

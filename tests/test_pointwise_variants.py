"""sigmoid_focal_loss and multilabel_soft_margin_loss: torchvision's formula and torch's function,
their analytic gradients, and their edges.

torchvision is not installed: its ``sigmoid_focal_loss`` is written out below, line for line, in
torch float64. That literal formula computes ``1 - p_t`` as a difference with 1, which loses
digits once ``sigmoid(x)`` nears 1 (and gives ``inf * 0 = NaN`` in autograd where it reaches 1):
the grid keeps to logits where it holds 1e-10, and the extreme logits are checked against
mpmath at 50 digits.
"""

from __future__ import annotations

import itertools

import mpmath
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from array_api_compat import is_jax_namespace, is_torch_namespace
from conftest import to_numpy
from hypothesis import given
from hypothesis import strategies as st
from oracle import T, torch_multilabel, torchvision_focal_loss

import crossent
from crossent._dispatch import generic_only

REDUCTIONS = ["mean", "sum", "none"]
FOCAL_SHAPES = {"N": (7,), "NC": (6, 4), "NCd": (2, 3, 4)}
ALPHAS = [0.25, None, -1, 0.9]
GAMMAS = [0, 0.5, 2.0]


def _data(shape, seed, hard):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal(shape) * 2.5
    target = (rng.random(shape) < 0.5) * 1.0 if hard else rng.random(shape)
    return logits, target


def _sample_weight(shape, seed, kind):
    rng = np.random.default_rng(seed)
    if kind == "none":
        return None
    if kind == "full":
        return rng.uniform(0.1, 2.0, shape)
    return rng.uniform(0.1, 2.0, shape[-1:])  # broadcast along the leading axes


def _torch_value_and_grad(func, x, *args, **options):
    leaf = T(x).requires_grad_(True)
    out = func(leaf, *args, **options)
    (grad,) = torch.autograd.grad(out.sum(), leaf)
    return out.detach(), grad


def _xp_or_none(to_xp, x):
    return None if x is None else to_xp(x)


def _t_or_none(x):
    return None if x is None else T(x)


# --- sigmoid_focal_loss: values and gradients -------------------------------------------------


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("sample_weight", ["none", "full", "last-axis"])
@pytest.mark.parametrize("hard", [False, True], ids=["soft", "hard"])
@pytest.mark.parametrize(("alpha", "gamma"), list(itertools.product(ALPHAS, GAMMAS)))
@pytest.mark.parametrize("shape", FOCAL_SHAPES)
def test_sigmoid_focal_loss_equals_torchvision(
    shape, alpha, gamma, hard, sample_weight, reduction, to_xp, assert_close, lazy
):
    logits, target = _data(FOCAL_SHAPES[shape], 1, hard)
    weights = _sample_weight(FOCAL_SHAPES[shape], 2, sample_weight)
    options = {"alpha": alpha, "gamma": gamma, "reduction": reduction}
    expected, expected_grad = _torch_value_and_grad(
        torchvision_focal_loss, logits, T(target), sample_weight=_t_or_none(weights), **options
    )
    args = (to_xp(logits), to_xp(target))
    actual = lazy(crossent.sigmoid_focal_loss)(
        *args, sample_weight=_xp_or_none(to_xp, weights), **options
    )
    assert_close(actual, expected)
    loss, grad = crossent.value_and_grad(crossent.sigmoid_focal_loss)(
        *args, sample_weight=_xp_or_none(to_xp, weights), **options
    )
    assert_close(loss, expected)
    assert_close(grad, expected_grad, atol=1e-300)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("hard", [False, True], ids=["soft", "hard"])
def test_without_focusing_or_balance_it_is_binary_cross_entropy(
    hard, reduction, to_xp, assert_close
):
    logits, target = _data((5, 3), 3, hard)
    args = (to_xp(logits), to_xp(target))
    plain = crossent.binary_cross_entropy_with_logits(*args, reduction=reduction)
    focal = crossent.sigmoid_focal_loss(*args, alpha=None, gamma=0.0, reduction=reduction)
    assert_close(focal, to_numpy(plain), rtol=1e-13)
    _, plain_grad = crossent.value_and_grad(crossent.binary_cross_entropy_with_logits)(
        *args, reduction=reduction
    )
    _, focal_grad = crossent.value_and_grad(crossent.sigmoid_focal_loss)(
        *args, alpha=None, gamma=0.0, reduction=reduction
    )
    assert_close(focal_grad, to_numpy(plain_grad), rtol=1e-13, atol=1e-300)


@pytest.mark.parametrize("target_dtype", ["bool", "int64", "float32"])
def test_focal_labels_of_any_dtype(target_dtype, to_xp, assert_close):
    logits = np.array([[1.0, -2.0], [0.5, 3.0]])
    labels = np.array([[1, 0], [0, 1]])
    expected = torchvision_focal_loss(T(logits), T(labels * 1.0), reduction="mean")
    actual = crossent.sigmoid_focal_loss(to_xp(logits), to_xp(labels, target_dtype))
    assert_close(actual, expected)


def test_unit_sample_weights_change_nothing(to_xp, assert_close):
    logits, target = _data((4, 5), 4, False)
    args = (to_xp(logits), to_xp(target))
    expected = to_numpy(crossent.sigmoid_focal_loss(*args))
    ones = to_xp(np.ones(5))
    assert_close(crossent.sigmoid_focal_loss(*args, sample_weight=ones), expected, rtol=1e-14)


# --- sigmoid_focal_loss: the edges ----------------------------------------------------------

EXTREME = [-1e4, -800.0, -40.0, -5.0, 0.0, 5.0, 40.0, 800.0, 1e4]


def _exact_focal(x, t, alpha, gamma):
    """The loss and its derivative at 50 digits: the formula with exact sigmoids, differentiated
    numerically by mpmath (not by the closed form crossent uses)."""
    with mpmath.workdps(50):
        x, t = mpmath.mpf(x), mpmath.mpf(t)
        balance = 1 if alpha is None else alpha * t + (1 - alpha) * (1 - t)

        def loss(z):
            s, r = 1 / (1 + mpmath.exp(-z)), 1 / (1 + mpmath.exp(z))
            ce = -t * mpmath.log(s) - (1 - t) * mpmath.log(r)
            return balance * ce * (t * r + (1 - t) * s) ** gamma

        return float(loss(x)), float(mpmath.diff(loss, x))


@pytest.mark.parametrize("gamma", [0.5, 2.0, 0.01])
@pytest.mark.parametrize("t", [0.0, 1.0, 0.3])
def test_extreme_logits_are_exact(t, gamma, to_xp, assert_close):
    logits = np.array(EXTREME)
    target = np.full_like(logits, t)
    exact = np.array([_exact_focal(x, t, 0.25, gamma) for x in EXTREME])
    args = (to_xp(logits), to_xp(target))
    options = {"gamma": gamma, "reduction": "none"}
    loss, grad = crossent.value_and_grad(crossent.sigmoid_focal_loss)(*args, **options)
    assert_close(loss, exact[:, 0], atol=1e-300)
    assert_close(grad, exact[:, 1], atol=1e-300)
    assert_close(crossent.sigmoid_focal_loss(*args, **options), exact[:, 0], atol=1e-300)


def _autodiff_grad(xp, func, x, *args, **options):
    """The gradient of the summed loss by the framework's autodiff, of the generic path."""
    if is_torch_namespace(xp):
        leaf = x.detach().clone().requires_grad_(True)
        with generic_only():
            (grad,) = torch.autograd.grad(func(leaf, *args, **options).sum(), leaf)
        return grad
    import jax

    with generic_only():
        return jax.grad(lambda z: func(z, *args, **options).sum())(x)


@pytest.mark.parametrize("gamma", [0.5, 2.0])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_gradient_is_finite_where_the_prediction_is_exactly_right_or_wrong(
    sign, gamma, xp, to_xp, assert_close
):
    # right: x = +1e4 for t = 1; wrong: x = -1e4 for t = 1; and mirrored
    logits = np.array([1e4, -1e4, 1e4, -1e4]) * sign
    target = np.array([1.0, 1.0, 0.0, 0.0])
    exact = np.array(
        [_exact_focal(x, t, 0.25, gamma) for x, t in zip(logits, target, strict=True)]
    )
    args = (to_xp(logits), to_xp(target))
    loss, grad = crossent.value_and_grad(crossent.sigmoid_focal_loss)(
        *args, gamma=gamma, reduction="none"
    )
    assert np.isfinite(to_numpy(grad)).all()
    assert_close(loss, exact[:, 0])
    assert_close(grad, exact[:, 1])
    if is_torch_namespace(xp) or is_jax_namespace(xp):
        auto = _autodiff_grad(
            xp, crossent.sigmoid_focal_loss, args[0], args[1], gamma=gamma, reduction="none"
        )
        assert_close(auto, exact[:, 1])


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("name", ["sigmoid_focal_loss", "multilabel_soft_margin_loss"])
def test_result_keeps_the_input_dtype(name, dtype, to_xp, assert_close):
    rng = np.random.default_rng(6)
    logits = rng.standard_normal((5, 8)) * 3
    target = (rng.random((5, 8)) < 0.4) * 1.0
    half = to_xp(logits, dtype)
    single = to_xp(to_numpy(half).astype(np.float32), "float32")  # the same rounded values
    func = getattr(crossent, name)
    step = crossent.value_and_grad(func)
    loss, grad = step(half, to_xp(target, dtype), reduction="sum")
    loss32, grad32 = step(single, to_xp(target, "float32"), reduction="sum")
    eps = {"float32": 1e-6, "float16": float(np.finfo(np.float16).eps), "bfloat16": 2.0**-7}
    # one rounding of the float32 results
    assert_close(loss, to_numpy(loss32), dtype=dtype, rtol=eps[dtype])
    scale = float(np.abs(to_numpy(grad32)).max())
    assert_close(grad, to_numpy(grad32), dtype=dtype, rtol=eps[dtype], atol=eps[dtype] * scale)
    assert_close(
        func(half, to_xp(target, dtype)),
        to_numpy(step(single, to_xp(target))[0]),
        dtype=dtype,
        rtol=eps[dtype],
    )


# --- multilabel_soft_margin_loss ----------------------------------------------------------

MULTILABEL_SHAPES = {"C": (6,), "NC": (5, 4), "N1": (3, 1)}


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("sample_weight", [False, True], ids=["", "sample_weight"])
@pytest.mark.parametrize("weight", [False, True], ids=["", "weight"])
@pytest.mark.parametrize("hard", [False, True], ids=["soft", "hard"])
@pytest.mark.parametrize("shape", MULTILABEL_SHAPES)
def test_multilabel_soft_margin_loss_equals_torch(
    shape, hard, weight, sample_weight, reduction, to_xp, assert_close, lazy
):
    dims = MULTILABEL_SHAPES[shape]
    logits, target = _data(dims, 7, hard)
    rng = np.random.default_rng(8)
    w = rng.uniform(0.1, 2.0, dims[-1:]) if weight else None
    s = rng.uniform(0.1, 2.0, dims[:-1]) if sample_weight else None
    options = {"reduction": reduction}
    expected, expected_grad = _torch_value_and_grad(
        torch_multilabel,
        logits,
        T(target),
        weight=_t_or_none(w),
        sample_weight=_t_or_none(s),
        **options,
    )
    args = (to_xp(logits), to_xp(target))
    arrays = {"weight": _xp_or_none(to_xp, w), "sample_weight": _xp_or_none(to_xp, s)}
    actual = lazy(crossent.multilabel_soft_margin_loss)(*args, **arrays, **options)
    assert_close(actual, expected)
    loss, grad = crossent.value_and_grad(crossent.multilabel_soft_margin_loss)(
        *args, **arrays, **options
    )
    assert_close(loss, expected)
    assert_close(grad, expected_grad, atol=1e-300)


def test_multilabel_weight_of_the_whole_shape(to_xp, assert_close):
    logits, target = _data((4, 3), 9, False)
    w = np.random.default_rng(10).uniform(0.1, 2.0, (4, 3))
    expected = F.multilabel_soft_margin_loss(T(logits), T(target), weight=T(w))
    actual = crossent.multilabel_soft_margin_loss(to_xp(logits), to_xp(target), weight=to_xp(w))
    assert_close(actual, expected)


def test_multilabel_extreme_logits(to_xp, assert_close):
    logits = np.array([EXTREME, EXTREME[::-1]])
    target = np.array([[0.0, 1.0] * 4 + [0.3], [1.0, 0.3] * 4 + [0.0]])
    expected, expected_grad = _torch_value_and_grad(
        F.multilabel_soft_margin_loss, logits, T(target), reduction="none"
    )
    loss, grad = crossent.value_and_grad(crossent.multilabel_soft_margin_loss)(
        to_xp(logits), to_xp(target), reduction="none"
    )
    # torch's logsigmoid makes tiny losses to 1e-16 of |x| (as in test_binary)
    assert_close(loss, expected, atol=1e-12)
    assert_close(grad, expected_grad, atol=1e-300)
    assert np.isfinite(to_numpy(grad)).all()


# --- NaN and infinity -------------------------------------------------------------------------

SPECIALS = [np.nan, np.inf, -np.inf]


@st.composite
def _special_inputs(draw):
    shape = draw(st.sampled_from([(5,), (3, 4)]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    values = {
        "logits": rng.standard_normal(shape) * 3,
        "target": draw(st.sampled_from([rng.random(shape), (rng.random(shape) < 0.5) * 1.0])),
        "weight": rng.uniform(0.1, 2.0, shape[-1:]),
    }
    slot = draw(st.sampled_from(["logits", "logits", "target", "weight"]))
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.integers(0, values[slot].size - 1))
        values[slot].reshape(-1)[where] = draw(st.sampled_from(SPECIALS))
    return values


def _no_nan_where_torch_has_none(found, expected, inputs):
    """crossent's result where torch's is not NaN; NaN where an input is; elsewhere (torch's
    formula makes ``inf - inf`` or ``0 * inf`` of an infinite logit) NaN or a limit."""
    torch_nan = np.isnan(expected)
    np.testing.assert_allclose(found[~torch_nan], expected[~torch_nan], rtol=1e-10)
    assert np.isnan(found[inputs]).all(), "a NaN input gave a number"


@pytest.mark.filterwarnings("ignore:(invalid value|divide by zero|overflow) encountered")
@given(
    values=_special_inputs(),
    alpha=st.sampled_from([0.25, None]),
    gamma=st.sampled_from(GAMMAS),
    weighted=st.booleans(),
)
def test_focal_nan_and_inf_propagate(values, alpha, gamma, weighted, xp, to_xp, lazy):
    x, t, w = values["logits"], values["target"], values["weight"] if weighted else None
    expected = torchvision_focal_loss(
        T(x), T(t), alpha=alpha, gamma=gamma, sample_weight=_t_or_none(w)
    ).numpy()
    run = lazy(crossent.sigmoid_focal_loss)
    found = to_numpy(
        run(
            to_xp(x),
            to_xp(t),
            alpha=alpha,
            gamma=gamma,
            reduction="none",
            sample_weight=_xp_or_none(to_xp, w),
        )
    )
    nan_in = np.isnan(x) | np.isnan(t) | (np.isnan(w) if w is not None else False)
    if np.isinf(t).any() or (w is not None and np.isinf(w).any()):
        # an infinite target or weight is garbage in: no finite number may come out of it
        assert (~np.isfinite(found) == ~np.isfinite(expected)).all(), (found, expected)
        return
    _no_nan_where_torch_has_none(found, expected, np.broadcast_to(nan_in, found.shape))


@pytest.mark.filterwarnings("ignore:(invalid value|divide by zero|overflow) encountered")
@given(values=_special_inputs(), weighted=st.booleans())
def test_multilabel_nan_and_inf_propagate(values, weighted, xp, to_xp, lazy):
    x, t, w = values["logits"], values["target"], values["weight"] if weighted else None
    expected = F.multilabel_soft_margin_loss(
        T(x), T(t), weight=_t_or_none(w), reduction="none"
    ).numpy()
    run = lazy(crossent.multilabel_soft_margin_loss)
    found = to_numpy(run(to_xp(x), to_xp(t), weight=_xp_or_none(to_xp, w), reduction="none"))
    if np.isinf(t).any() or (w is not None and np.isinf(w).any()):
        assert (~np.isfinite(found) == ~np.isfinite(expected)).all(), (found, expected)
        return
    nan_in = np.isnan(x) | np.isnan(t) | (np.isnan(w) if w is not None else False)
    _no_nan_where_torch_has_none(found, expected, np.any(nan_in, axis=-1))


# --- Bad arguments ------------------------------------------------------------------------


def test_focal_refuses_bad_arguments(to_xp):
    logits, target = to_xp(np.zeros((3, 2))), to_xp(np.zeros((3, 2)))
    loss = crossent.sigmoid_focal_loss
    with pytest.raises(ValueError, match=r"target has shape \(2, 3\), expected \(3, 2\)"):
        loss(logits, to_xp(np.zeros((2, 3))))
    with pytest.raises(ValueError, match=r"sample_weight has shape \(3,\)"):
        loss(logits, target, sample_weight=to_xp(np.ones(3)))
    with pytest.raises(ValueError, match="gamma must be a finite float >= 0, got -1"):
        loss(logits, target, gamma=-1)
    with pytest.raises(ValueError, match="gamma must be a finite float >= 0, got inf"):
        loss(logits, target, gamma=float("inf"))
    with pytest.raises(TypeError, match="gamma must be a Python float >= 0, got"):
        loss(logits, target, gamma=to_xp(np.array(2.0)))
    with pytest.raises(TypeError, match="alpha must be a Python float or None, got str"):
        loss(logits, target, alpha="0.25")
    with pytest.raises(TypeError, match="alpha must be a Python float or None, got"):
        loss(logits, target, alpha=to_xp(np.array(0.25)))
    with pytest.raises(ValueError, match="alpha must be a finite float or None, got nan"):
        loss(logits, target, alpha=float("nan"))
    with pytest.raises(ValueError, match="reduction"):
        loss(logits, target, reduction="batchmean")
    with pytest.raises(TypeError, match="target must have"):
        loss(logits, to_xp(np.zeros((3, 2)), "complex128"))


def test_multilabel_refuses_bad_arguments(to_xp):
    logits, target = to_xp(np.zeros((3, 2))), to_xp(np.zeros((3, 2)))
    loss = crossent.multilabel_soft_margin_loss
    with pytest.raises(ValueError, match=r"logits must have at least one dimension"):
        loss(to_xp(np.zeros(())), to_xp(np.zeros(())))
    with pytest.raises(ValueError, match=r"target has shape \(3,\), expected \(3, 2\)"):
        loss(logits, to_xp(np.zeros(3)))
    with pytest.raises(ValueError, match=r"weight has shape \(3,\)"):
        loss(logits, target, weight=to_xp(np.ones(3)))
    with pytest.raises(ValueError, match=r"sample_weight has shape \(2,\), expected one weight"):
        loss(logits, target, sample_weight=to_xp(np.ones(2)))
    with pytest.raises(TypeError, match="sample_weight"):
        loss(logits, target, sample_weight=to_xp(np.ones(3), "int64"))


# --- Frameworks: JAX's transformations, torch.compile ---------------------------------------

FOCAL = {"alpha": 0.25, "gamma": 0.5}


def _jax_only(xp):
    if not is_jax_namespace(xp):
        pytest.skip("JAX's transformations")


def test_jax_grad_jit_and_vmap(xp, to_xp, assert_close):
    _jax_only(xp)
    import jax

    logits, target = _data((3, 5, 4), 11, False)
    x, t = to_xp(logits), to_xp(target)
    for func, options in (
        (crossent.sigmoid_focal_loss, FOCAL),
        (crossent.multilabel_soft_margin_loss, {}),
    ):
        _, analytic = crossent.value_and_grad(func)(x, t, **options)
        assert_close(jax.jit(jax.grad(lambda z, f=func, o=options: f(z, t, **o)))(x), analytic)
        batched = jax.vmap(jax.grad(lambda z, u, f=func, o=options: f(z, u, **o)))(x, t)
        for i in range(3):
            _, one = crossent.value_and_grad(func)(x[i], t[i], **options)
            assert_close(batched[i], one, rtol=1e-12)


@pytest.mark.parametrize("name", ["sigmoid_focal_loss", "multilabel_soft_margin_loss"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_jax_grad_in_every_argument_equals_generic_autodiff(name, reduction, xp, to_xp):
    _jax_only(xp)
    import jax

    logits, target = _data((4, 3), 12, False)
    rng = np.random.default_rng(13)
    arrays = {
        "x": to_xp(logits),
        "t": to_xp(target),
        "sample_weight": to_xp(rng.uniform(0.1, 2.0, (4, 3) if name[0] == "s" else (4,))),
    }
    func = getattr(crossent, name)
    options = {"reduction": reduction, **(FOCAL if name == "sigmoid_focal_loss" else {})}
    if name == "multilabel_soft_margin_loss":
        arrays["weight"] = to_xp(rng.uniform(0.1, 2.0, (3,)))

    def summed(a):
        rest = {k: v for k, v in a.items() if k not in ("x", "t")}
        return func(a["x"], a["t"], **rest, **options).sum()

    fast = jax.jit(jax.grad(summed))(arrays)
    with generic_only():
        generic = jax.jit(jax.grad(summed))(arrays)
    for key in arrays:
        np.testing.assert_allclose(
            np.asarray(fast[key]), np.asarray(generic[key]), rtol=1e-10, atol=1e-15, err_msg=key
        )


@pytest.fixture
def _fresh_dynamo(xp):
    """torch tensors only, each test traced anew."""
    if not is_torch_namespace(xp):
        pytest.skip("torch.compile compiles torch tensors")
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.usefixtures("_fresh_dynamo")
@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("sigmoid_focal_loss", {"alpha": 0.25, "gamma": 2.0}),
        ("sigmoid_focal_loss", {"alpha": None, "gamma": 0.5, "reduction": "none"}),
        ("sigmoid_focal_loss", {"sample_weight": True}),
        ("multilabel_soft_margin_loss", {"weight": True, "sample_weight": True}),
        ("multilabel_soft_margin_loss", {"reduction": "none"}),
    ],
)
def test_torch_compile_fullgraph(name, options, to_xp, assert_close):
    logits, target = _data((4, 3), 14, True)
    rng = np.random.default_rng(15)
    options = dict(options)
    if options.pop("weight", False):
        options["weight"] = to_xp(rng.uniform(0.1, 2.0, (3,)))
    if options.pop("sample_weight", False):
        shape = (4, 3) if name == "sigmoid_focal_loss" else (4,)
        options["sample_weight"] = to_xp(rng.uniform(0.1, 2.0, shape))
    func = getattr(crossent, name)
    target_xp = to_xp(target)

    def run(f):
        leaf = to_xp(logits).requires_grad_(True)
        out = f(leaf, target_xp, **options)
        (grad,) = torch.autograd.grad(out.sum(), leaf)
        return out, grad

    out, grad = run(torch.compile(func, fullgraph=True, backend="aot_eager"))
    expected, expected_grad = run(func)
    assert_close(out, expected.detach(), rtol=1e-12)
    assert_close(grad, expected_grad, rtol=1e-12, atol=1e-300)
    step = crossent.value_and_grad(func)
    loss, d = torch.compile(step, fullgraph=True, backend="aot_eager")(
        to_xp(logits), target_xp, **options
    )
    assert_close(loss, expected.detach(), rtol=1e-12)
    assert_close(d, expected_grad, rtol=1e-12, atol=1e-300)

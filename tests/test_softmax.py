"""logsumexp, softmax, log_softmax, log_sigmoid: torch's numbers, stable at the edges."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import to_numpy
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from oracle import T

import crossent

rng = np.random.default_rng(20261123)

PRIMITIVES = {
    "logsumexp": (crossent.logsumexp, lambda x, axis: torch.logsumexp(x, dim=axis)),
    "softmax": (crossent.softmax, lambda x, axis: torch.softmax(x, dim=axis)),
    "log_softmax": (crossent.log_softmax, lambda x, axis: torch.log_softmax(x, dim=axis)),
}


@pytest.mark.parametrize("name", PRIMITIVES)
@pytest.mark.parametrize("scale", [1.0, 30.0, 1e4])
@pytest.mark.parametrize(
    ("shape", "axis"), [((7,), -1), ((5, 7), -1), ((5, 7), 0), ((2, 3, 4), 1)]
)
def test_equals_torch(name, scale, shape, axis, to_xp, assert_close, lazy):
    ours, theirs = PRIMITIVES[name]
    x = rng.standard_normal(shape) * scale
    assert_close(lazy(ours)(to_xp(x), axis=axis), theirs(T(x), axis))


@pytest.mark.parametrize("scale", [1.0, 1e4])
def test_log_sigmoid_equals_torch(scale, to_xp, assert_close, lazy):
    x = rng.standard_normal((4, 6)) * scale
    assert_close(lazy(crossent.log_sigmoid)(to_xp(x)), F.logsigmoid(T(x)))


def test_log_sigmoid_extremes(to_xp, assert_close):
    x = np.array([-1e4, -800.0, -40.0, 0.0, 40.0, 800.0, 1e4])
    assert_close(crossent.log_sigmoid(to_xp(x)), F.logsigmoid(T(x)))


def test_logsumexp_of_all_minus_inf_is_minus_inf(to_xp, assert_close):
    x = np.array([[-np.inf, -np.inf, -np.inf], [0.0, -np.inf, 1.0]])
    assert_close(crossent.logsumexp(to_xp(x)), torch.logsumexp(T(x), dim=-1))
    assert_close(crossent.logsumexp(to_xp(x)), np.array([-np.inf, np.log1p(np.e)]))


def test_logsumexp_of_an_empty_axis_is_minus_inf(to_xp, assert_close):
    assert_close(crossent.logsumexp(to_xp(np.zeros((3, 0)))), np.full(3, -np.inf))


# Dask computes after crossent returns, outside its silencing of NumPy's warnings
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_softmax_of_all_minus_inf_is_nan_as_torch(to_xp, assert_close):
    x = np.array([[-np.inf, -np.inf], [0.0, -np.inf]])
    assert_close(crossent.softmax(to_xp(x)), torch.softmax(T(x), dim=-1))


@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("axis", [None, (0, 2), (-1,), 1])
def test_logsumexp_axes(axis, keepdims, to_xp, assert_close):
    x = rng.standard_normal((3, 4, 5)) * 50
    dim = tuple(range(3)) if axis is None else axis
    expected = torch.logsumexp(T(x), dim=dim, keepdim=keepdims)
    assert_close(crossent.logsumexp(to_xp(x), axis=axis, keepdims=keepdims), expected)


@pytest.mark.parametrize("name", [*PRIMITIVES, "log_sigmoid"])
def test_float32_stays_float32(name, to_xp, assert_close):
    x = rng.standard_normal((4, 5)) * 10
    func = getattr(crossent, name)
    expected = func(x.astype(np.float32))  # NumPy is checked against torch in its own session
    assert_close(func(to_xp(x, "float32")), expected, dtype="float32", rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", [*PRIMITIVES, "log_sigmoid"])
@pytest.mark.parametrize("half", ["float16", "bfloat16"])
def test_half_precision_is_computed_in_float32(name, half, to_xp, assert_close):
    x = to_xp(rng.standard_normal((4, 50)) * 8, half)
    exact_inputs = torch.as_tensor(to_numpy(x).astype(np.float32))
    oracle = {
        "logsumexp": lambda v: torch.logsumexp(v, dim=-1),
        "softmax": lambda v: torch.softmax(v, dim=-1),
        "log_softmax": lambda v: torch.log_softmax(v, dim=-1),
        "log_sigmoid": F.logsigmoid,
    }[name]
    # computed in float32 from the same half-precision inputs, then rounded once: at most one
    # unit in the last place apart (float32 exp differs between libraries in its last bits).
    # Near 0 a unit of the half dtype is smaller than float32's own error: log_softmax of the
    # row's maximum is -log(1 + s), whose float32 log is off by up to 2 eps absolute in XLA,
    # which is 64 float16 units at -2.7e-5 (a subnormal); hence the absolute floor of 4 eps.
    expected = oracle(exact_inputs).to(getattr(torch, half)).to(torch.float64)
    ulp = torch.finfo(getattr(torch, half)).eps
    atol = 4 * torch.finfo(torch.float32).eps
    assert_close(getattr(crossent, name)(x), expected, dtype=half, rtol=ulp, atol=atol)


def test_integer_input_is_rejected(to_xp):
    with pytest.raises(TypeError, match="x must have a real floating dtype, got"):
        crossent.log_softmax(to_xp(np.arange(3)))


def test_axis_out_of_range(to_xp):
    with pytest.raises(ValueError, match=r"axis 2 is out of range for x of shape \(2, 3\)"):
        crossent.softmax(to_xp(np.zeros((2, 3))), axis=2)


def test_non_array_is_rejected():
    with pytest.raises(TypeError, match="x must be an array of an Array API library"):
        crossent.logsumexp([1.0, 2.0])


@given(
    x=arrays(np.float64, (3, 6), elements=st.floats(-1e4, 1e4)),
    shift=st.floats(-1e3, 1e3),
)
def test_log_softmax_is_shift_invariant(x, shift, to_xp, assert_close):
    expected = crossent.log_softmax(to_xp(x))
    assert_close(crossent.log_softmax(to_xp(x + shift)), expected, rtol=1e-9, atol=1e-9)


@given(x=arrays(np.float64, (3, 6), elements=st.floats(-1e4, 1e4)))
def test_softmax_sums_to_one_and_matches_exp_log_softmax(x, to_xp, assert_close, xp):
    probs = crossent.softmax(to_xp(x))
    assert_close(xp.sum(probs, axis=-1), np.ones(3), rtol=1e-12)
    assert_close(xp.exp(crossent.log_softmax(to_xp(x))), probs, rtol=1e-12, atol=1e-300)


# --- NaN and inf: as torch propagates them ------------------------------------------------


# Dask computes after crossent returns, outside its silencing of NumPy's warnings
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("name", [*PRIMITIVES, "log_sigmoid"])
def test_nan_and_inf_rows_as_torch(name, to_xp, assert_close, lazy):
    x = np.array(
        [[0.0, np.nan, 1.0], [0.0, np.inf, 1.0], [0.0, -np.inf, 1.0], [np.inf, np.inf, 0.0]]
    )
    func, theirs = PRIMITIVES.get(name, (crossent.log_sigmoid, lambda v, axis: F.logsigmoid(v)))
    assert_close(lazy(func)(to_xp(x)), theirs(T(x), -1))


def test_logsumexp_of_nan_is_nan_and_of_inf_is_inf(to_xp, assert_close):
    # SciPy's and torch's: a NaN maximum is no -inf row (it gave -inf before)
    x = np.array([[0.0, np.nan], [0.0, np.inf], [-np.inf, np.inf]])
    assert_close(crossent.logsumexp(to_xp(x)), np.array([np.nan, np.inf, np.inf]))


@pytest.mark.parametrize("keepdims", [False, True])
def test_logsumexp_over_no_axis_is_the_input(keepdims, to_xp, assert_close):
    # the standard's reading of axis=(); torch's own logsumexp reads dim=() as every axis
    x = rng.standard_normal((2, 3))
    assert_close(crossent.logsumexp(to_xp(x), axis=(), keepdims=keepdims), x)


def test_keepdims_must_be_a_bool(to_xp):
    with pytest.raises(TypeError, match="keepdims must be a Python bool, got str"):
        crossent.logsumexp(to_xp(np.zeros(3)), keepdims="no")

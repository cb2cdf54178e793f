"""binary_cross_entropy and binary_cross_entropy_with_logits: torch's numbers, exact edges."""

from __future__ import annotations

import numpy as np
import oracle
import pytest
import torch
import torch.nn.functional as F
from array_api_compat import is_dask_namespace, is_jax_namespace
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from oracle import T

import crossent
from crossent._dispatch import generic_only

SHAPES = {"N": (7,), "NC": (6, 4), "NCd": (3, 4, 2), "scalar": ()}


def _data(shape, seed):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal(shape) * 4
    probs = 1 / (1 + np.exp(-logits))
    target = rng.random(shape)
    labels = (rng.random(shape) < 0.5).astype(np.float64)
    return logits, probs, target, labels


def _weights(shape, seed, kind):
    rng = np.random.default_rng(seed)
    if kind == "none" or not shape:
        return None
    if kind == "full":
        return rng.uniform(0.1, 2, shape)
    return rng.uniform(0.1, 2, shape[-1:])  # broadcast along the last axis


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("eps", [None, 1e-7, 0.01])
@pytest.mark.parametrize("weight", ["none", "full", "last-axis"])
@pytest.mark.parametrize("labels", [False, True], ids=["soft", "hard"])
@pytest.mark.parametrize("shape", SHAPES)
def test_binary_cross_entropy_equals_torch(
    shape, labels, weight, eps, reduction, to_xp, assert_close, lazy
):
    _, probs, soft, hard = _data(SHAPES[shape], 1)
    target = hard if labels else soft
    w = _weights(SHAPES[shape], 2, weight)
    expected = oracle.binary_cross_entropy(
        T(probs), T(target), weight=None if w is None else T(w), reduction=reduction, eps=eps
    )
    actual = lazy(crossent.binary_cross_entropy)(
        to_xp(probs),
        to_xp(target),
        weight=None if w is None else to_xp(w),
        reduction=reduction,
        eps=eps,
    )
    assert_close(actual, expected)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("pos_weight", [False, True], ids=["", "pos_weight"])
@pytest.mark.parametrize("weight", ["none", "full", "last-axis"])
@pytest.mark.parametrize("labels", [False, True], ids=["soft", "hard"])
@pytest.mark.parametrize("shape", SHAPES)
def test_binary_cross_entropy_with_logits_equals_torch(
    shape, labels, weight, pos_weight, reduction, to_xp, assert_close, lazy
):
    logits, _, soft, hard = _data(SHAPES[shape], 3)
    target = hard if labels else soft
    w = _weights(SHAPES[shape], 4, weight)
    pw = _weights(SHAPES[shape], 5, "last-axis") if pos_weight else None
    expected = F.binary_cross_entropy_with_logits(
        T(logits),
        T(target),
        weight=None if w is None else T(w),
        pos_weight=None if pw is None else T(pw),
        reduction=reduction,
    )
    actual = lazy(crossent.binary_cross_entropy_with_logits)(
        to_xp(logits),
        to_xp(target),
        weight=None if w is None else to_xp(w),
        pos_weight=None if pw is None else to_xp(pw),
        reduction=reduction,
    )
    assert_close(actual, expected)


def test_probabilities_of_exactly_zero_and_one_give_the_clamped_loss(to_xp, assert_close):
    probs = np.array([0.0, 0.0, 1.0, 1.0, 1e-50, 1 - 1e-16, 1e-17])
    target = np.array([0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    expected = F.binary_cross_entropy(T(probs), T(target), reduction="none")
    actual = crossent.binary_cross_entropy(to_xp(probs), to_xp(target), reduction="none")
    assert_close(actual, expected)
    assert_close(actual, [0, 100, 100, 0, 100, -np.log1p(-(1 - 1e-16)), 1e-17], rtol=1e-12)


def test_extreme_logits(to_xp, assert_close):
    logits = np.array([-1e4, -800.0, -40.0, 0.0, 40.0, 800.0, 1e4])
    for t in (0.0, 1.0, 0.3):
        target = np.full_like(logits, t)
        expected = F.binary_cross_entropy_with_logits(T(logits), T(target), reduction="none")
        actual = crossent.binary_cross_entropy_with_logits(
            to_xp(logits), to_xp(target), reduction="none"
        )
        # torch's (1 - t) x - log_sigmoid(x) cancels to 0 where the loss is below 1e-16 of x;
        # crossent keeps those tiny losses (4.2e-18 at x = -40, t = 0), hence the atol
        assert_close(actual, expected, atol=1e-15)


def test_small_losses_are_exact(to_xp, assert_close):
    # On torch tensors crossent runs torch's own kernel, which gives 0 here (see above); the
    # standard-only path every other backend runs keeps them.
    logits = np.array([-40.0, 40.0, -700.0])
    target = np.array([0.0, 1.0, 0.0])
    with generic_only():
        actual = crossent.binary_cross_entropy_with_logits(
            to_xp(logits), to_xp(target), reduction="none"
        )
    assert_close(actual, np.log1p(np.exp(-np.abs(logits))), rtol=1e-15)


@pytest.mark.parametrize("target_dtype", ["bool", "int64", "float32"])
def test_labels_of_any_dtype(target_dtype, to_xp, assert_close):
    logits = np.array([[1.0, -2.0], [0.5, 3.0]])
    labels = np.array([[1, 0], [0, 1]])
    expected = F.binary_cross_entropy_with_logits(T(logits), T(labels.astype(float)))
    actual = crossent.binary_cross_entropy_with_logits(to_xp(logits), to_xp(labels, target_dtype))
    assert_close(actual, expected)


@pytest.mark.parametrize("name", ["binary_cross_entropy", "binary_cross_entropy_with_logits"])
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_result_keeps_the_input_dtype(name, dtype, to_xp, assert_close):
    from conftest import to_numpy

    logits, probs, target, _ = _data((5, 8), 6)
    inputs = to_xp(probs if name == "binary_cross_entropy" else logits, dtype)
    rounded = torch.as_tensor(to_numpy(inputs).astype(np.float32))
    reference = getattr(F, name)(rounded, T(target, torch.float32))
    ulp = torch.finfo(getattr(torch, dtype)).eps
    actual = getattr(crossent, name)(inputs, to_xp(target, dtype))
    expected = reference.to(getattr(torch, dtype))
    assert_close(actual, expected, dtype=dtype, rtol=ulp if dtype != "float32" else 1e-6)


@pytest.mark.parametrize("bad", [-0.5, 1.25])
def test_probabilities_outside_the_unit_interval(bad, xp, to_xp, assert_close, lazy):
    probs, target = np.array([0.5, bad]), np.array([1.0, 1.0])
    if not is_dask_namespace(xp):
        with pytest.raises(
            ValueError, match=rf"probs must hold probabilities in \[0, 1\], found {bad}"
        ):
            crossent.binary_cross_entropy(to_xp(probs), to_xp(target))
    if is_dask_namespace(xp) or is_jax_namespace(xp):
        losses = lazy(crossent.binary_cross_entropy)(to_xp(probs), to_xp(target), reduction="none")
        assert_close(losses, [np.log(2), np.nan])


@given(
    logits=arrays(np.float64, (8,), elements=st.floats(-15, 15)),
    target=arrays(np.float64, (8,), elements=st.floats(0, 1)),
)
def test_with_logits_equals_bce_of_the_sigmoid_in_the_safe_range(
    logits, target, to_xp, assert_close
):
    probs = 1 / (1 + np.exp(-logits))
    expected = crossent.binary_cross_entropy(to_xp(probs), to_xp(target), reduction="none")
    actual = crossent.binary_cross_entropy_with_logits(
        to_xp(logits), to_xp(target), reduction="none"
    )
    assert_close(actual, expected, rtol=1e-8, atol=1e-12)


@given(
    logits=arrays(np.float64, (8,), elements=st.floats(-1e4, 1e4)),
    target=arrays(np.float64, (8,), elements=st.floats(0, 1)),
    pos_weight=st.floats(0, 10),
)
def test_with_logits_is_non_negative(logits, target, pos_weight, to_xp, xp):
    from conftest import to_numpy

    loss = crossent.binary_cross_entropy_with_logits(
        to_xp(logits),
        to_xp(target),
        pos_weight=to_xp(np.array([pos_weight])),
        reduction="none",
    )
    assert (to_numpy(loss) >= 0).all()


# --- NaN in, NaN out; every target checked ----------------------------------------------


# Dask computes after crossent returns, outside its silencing of NumPy's warnings
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("eps", [None, 1e-7])
def test_a_nan_probability_or_target_gives_nan_not_the_floor(eps, to_xp, assert_close, lazy):
    # both comparisons with 0 and 1 are false for NaN: it once took both floors, a loss of 100
    probs, target = np.array([np.nan, 0.3, 0.3, 0.0]), np.array([1.0, np.nan, 1.0, 1.0])
    losses = lazy(crossent.binary_cross_entropy)(
        to_xp(probs), to_xp(target), reduction="none", eps=eps
    )
    floor = 100.0 if eps is None else -np.log(eps)
    assert_close(losses, [np.nan, np.nan, -np.log(0.3), floor])
    mean = lazy(crossent.binary_cross_entropy)(to_xp(probs), to_xp(target), eps=eps)
    assert_close(mean, np.nan)


@pytest.mark.parametrize("eps", [None, 1e-7])
@pytest.mark.parametrize("bad", [-0.5, 1.5, 2.0])
def test_targets_outside_the_unit_interval(bad, eps, xp, to_xp, assert_close, lazy):
    probs, target = np.array([0.5, 0.2]), np.array([1.0, bad])
    if not is_dask_namespace(xp):
        message = rf"target must hold probabilities in \[0, 1\], found {bad}"
        with pytest.raises(ValueError, match=message):
            crossent.binary_cross_entropy(to_xp(probs), to_xp(target), eps=eps)
    if is_dask_namespace(xp) or is_jax_namespace(xp):
        losses = lazy(crossent.binary_cross_entropy)(
            to_xp(probs), to_xp(target), reduction="none", eps=eps
        )
        assert_close(losses, [np.log(2), np.nan])


@pytest.mark.parametrize("bad", [-0.5, 1.5])
def test_probabilities_are_checked_before_eps_clips_them(bad, xp, to_xp):
    if is_dask_namespace(xp):
        pytest.skip("lazy: checked by test_probabilities_outside_the_unit_interval")
    with pytest.raises(
        ValueError, match=rf"probs must hold probabilities in \[0, 1\], found {bad}"
    ):
        crossent.binary_cross_entropy(to_xp(np.array([bad])), to_xp(np.array([1.0])), eps=1e-7)

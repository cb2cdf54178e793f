"""kl_div: torch's numbers for every reduction, and a zero target contributing exactly 0."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from oracle import T

import crossent


def _data(shape, seed):
    rng = np.random.default_rng(seed)
    log_probs = torch.log_softmax(T(rng.standard_normal(shape) * 2), dim=-1).numpy()
    target = rng.dirichlet(np.full(shape[-1], 0.5), size=shape[:-1])
    target[..., 0] = 0.0  # zero targets contribute exactly 0
    target /= target.sum(-1, keepdims=True)
    return log_probs, target


@pytest.mark.parametrize("reduction", ["mean", "batchmean", "sum", "none"])
@pytest.mark.parametrize("log_target", [False, True])
@pytest.mark.parametrize("shape", [(5,), (4, 5), (2, 3, 5)])
def test_kl_div_equals_torch(shape, log_target, reduction, to_xp, assert_close, lazy):
    log_probs, target = _data(shape, 1)
    if log_target:
        with np.errstate(divide="ignore"):
            target = np.log(target)  # a zero becomes -inf
    options = {"reduction": reduction, "log_target": log_target}
    if log_target:
        # torch gives exp(-inf) * (-inf - x) = 0 * -inf = NaN for an absent class; 0 is right
        expected = _absent_as_zero(log_probs, target, reduction)
    else:
        expected = F.kl_div(T(log_probs), T(target), **options)
    assert_close(lazy(crossent.kl_div)(to_xp(log_probs), to_xp(target), **options), expected)


def _absent_as_zero(log_probs, log_target, reduction):
    """torch's kl_div with log_target, where exp(-inf) * (-inf - x) counts as 0."""
    pointwise = F.kl_div(T(log_probs), T(log_target), reduction="none", log_target=True)
    pointwise = torch.where(T(np.isinf(log_target)).bool(), 0.0, pointwise)
    if reduction == "none":
        return pointwise
    if reduction == "sum":
        return pointwise.sum()
    if reduction == "mean":
        return pointwise.mean()
    return pointwise.sum() / (log_probs.shape[0] if log_probs.ndim else 1)


def test_zero_target_contributes_zero_even_against_minus_inf(to_xp, assert_close):
    log_probs = np.array([[-np.inf, np.log(0.5), np.log(0.5)]])
    target = np.array([[0.0, 0.5, 0.5]])
    losses = crossent.kl_div(to_xp(log_probs), to_xp(target), reduction="none")
    assert_close(losses, [[0.0, 0.0, 0.0]])


def test_batchmean_is_the_divergence_per_example(to_xp, assert_close):
    log_probs = np.log(np.array([[0.25, 0.5, 0.25], [0.5, 0.25, 0.25]]))
    target = np.array([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])
    divergences = [0.5 * np.log(2) + 0.5 * np.log(1), np.log(2)]
    actual = crossent.kl_div(to_xp(log_probs), to_xp(target), reduction="batchmean")
    assert_close(actual, np.mean(divergences), rtol=1e-15)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_result_keeps_the_input_dtype(dtype, to_xp, assert_close):
    from conftest import to_numpy

    log_probs, target = _data((4, 6), 2)
    inputs = to_xp(log_probs, dtype)
    rounded = torch.as_tensor(to_numpy(inputs).astype(np.float32))
    targets = to_xp(target, dtype)
    rounded_target = torch.as_tensor(to_numpy(targets).astype(np.float32))
    expected = F.kl_div(rounded, rounded_target, reduction="batchmean").to(getattr(torch, dtype))
    ulp = torch.finfo(getattr(torch, dtype)).eps
    actual = crossent.kl_div(inputs, targets, reduction="batchmean")
    assert_close(actual, expected, dtype=dtype, rtol=ulp if dtype != "float32" else 1e-6)


def test_unknown_reduction(to_xp):
    with pytest.raises(
        ValueError,
        match=r"reduction must be one of 'none', 'mean', 'sum', "
        r"'batchmean', got 'average'",
    ):
        crossent.kl_div(to_xp(np.zeros(3)), to_xp(np.zeros(3)), reduction="average")


@given(
    logits=arrays(np.float64, (3, 4), elements=st.floats(-50, 50)),
    other=arrays(np.float64, (3, 4), elements=st.floats(-50, 50)),
)
def test_divergence_is_non_negative_and_zero_on_itself(logits, other, to_xp, assert_close):
    from conftest import to_numpy

    log_p = crossent.log_softmax(to_xp(logits))
    log_q = crossent.log_softmax(to_xp(other))
    kl = crossent.kl_div(log_q, log_p, reduction="batchmean", log_target=True)
    assert to_numpy(kl) >= -1e-12
    itself = crossent.kl_div(log_p, log_p, reduction="none", log_target=True)
    assert_close(itself, np.zeros((3, 4)), atol=0)

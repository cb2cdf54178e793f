"""cross_entropy, nll_loss, cross_entropy_from_probs: torch's numbers for every option."""

from __future__ import annotations

import contextlib

import numpy as np
import oracle
import pytest
import torch
import torch.nn.functional as F
from array_api_compat import is_dask_namespace, is_jax_namespace
from conftest import to_numpy
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from oracle import T, class_first

import crossent
from crossent._dispatch import generic_only

N, C = 6, 5

#: (shape of the logits, class axis): torch's (N, C), an unbatched (C,), torch's
#: (N, C, d1, d2) with axis=1, and the class axis last after spatial dimensions.
LAYOUTS = {
    "NC": ((N, C), -1),
    "C": ((C,), -1),
    "NCd1d2": ((N, C, 3, 2), 1),
    "Nd1C": ((N, 3, C), -1),
}

#: (ignore_index, fraction of positions set to it)
IGNORES = {"none-ignored": (-100, 0.0), "some-ignored": (-100, 0.4), "class-2-ignored": (2, 0.0)}


def _case(layout, ignore, seed, probability_target=False):
    shape, axis = LAYOUTS[layout]
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal(shape) * 3
    positions = shape[: axis % len(shape)] + shape[axis % len(shape) + 1 :]
    ignore_index, fraction = IGNORES[ignore]
    if probability_target:
        target = np.moveaxis(rng.dirichlet(np.ones(C), size=positions), -1, axis)
    else:
        target = rng.integers(0, C, size=positions)
        target = np.where(rng.random(positions) < fraction, ignore_index, target)
        if fraction and target.ndim and (target != ignore_index).all():
            target.flat[0] = ignore_index
    weight = rng.uniform(0.2, 2.0, size=C)
    return logits, target, axis, ignore_index, weight


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.25, 1.0])
@pytest.mark.parametrize("ignore", IGNORES)
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_cross_entropy_index_target_equals_torch(
    layout, weighted, ignore, label_smoothing, reduction, to_xp, assert_close, lazy
):
    logits, target, axis, ignore_index, weight = _case(layout, ignore, seed=1)
    options = {"reduction": reduction, "label_smoothing": label_smoothing}
    expected = F.cross_entropy(
        class_first(T(logits), axis),
        T(target),
        weight=T(weight) if weighted else None,
        ignore_index=ignore_index,
        **options,
    )
    actual = lazy(crossent.cross_entropy)(
        to_xp(logits),
        to_xp(target),
        axis=axis,
        weight=to_xp(weight) if weighted else None,
        ignore_index=ignore_index,
        **options,
    )
    assert_close(actual, expected)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.25, 1.0])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_cross_entropy_probability_target_equals_torch(
    layout, weighted, label_smoothing, reduction, to_xp, assert_close, lazy
):
    logits, target, axis, _, weight = _case(layout, "none-ignored", 2, probability_target=True)
    options = {"reduction": reduction, "label_smoothing": label_smoothing}
    expected = F.cross_entropy(
        class_first(T(logits), axis),
        class_first(T(target), axis),
        weight=T(weight) if weighted else None,
        **options,
    )
    actual = lazy(crossent.cross_entropy)(
        to_xp(logits),
        to_xp(target),
        axis=axis,
        weight=to_xp(weight) if weighted else None,
        **options,
    )
    assert_close(actual, expected)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("ignore", IGNORES)
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_nll_loss_equals_torch(layout, weighted, ignore, reduction, to_xp, assert_close, lazy):
    logits, target, axis, ignore_index, weight = _case(layout, ignore, seed=3)
    log_probs = torch.log_softmax(T(logits), dim=axis).numpy()
    expected = F.nll_loss(
        class_first(T(log_probs), axis),
        T(target),
        weight=T(weight) if weighted else None,
        ignore_index=ignore_index,
        reduction=reduction,
    )
    actual = lazy(crossent.nll_loss)(
        to_xp(log_probs),
        to_xp(target),
        axis=axis,
        weight=to_xp(weight) if weighted else None,
        ignore_index=ignore_index,
        reduction=reduction,
    )
    assert_close(actual, expected)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("eps", [None, 1e-7, 0.05])
@pytest.mark.parametrize("ignore", ["none-ignored", "some-ignored"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("layout", ["NC", "NCd1d2"])
@pytest.mark.parametrize("kind", ["indices", "probabilities"])
def test_cross_entropy_from_probs_equals_oracle(
    kind, layout, weighted, ignore, eps, reduction, to_xp, assert_close, lazy
):
    probability_target = kind == "probabilities"
    logits, target, axis, ignore_index, weight = _case(layout, ignore, 4, probability_target)
    probs = torch.softmax(T(logits) * 3, dim=axis).numpy()  # some well below eps
    options = {"eps": eps, "ignore_index": ignore_index, "reduction": reduction}
    expected = oracle.cross_entropy_from_probs(
        T(probs), T(target), axis=axis, weight=T(weight) if weighted else None, **options
    )
    actual = lazy(crossent.cross_entropy_from_probs)(
        to_xp(probs),
        to_xp(target),
        axis=axis,
        weight=to_xp(weight) if weighted else None,
        **options,
    )
    assert_close(actual, expected)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cross_entropy_from_probs_equals_sklearn_log_loss(dtype, to_xp, assert_close):
    from sklearn.metrics import log_loss

    rng = np.random.default_rng(5)
    probs = rng.dirichlet(np.full(4, 0.3), size=50).astype(dtype)
    probs[:3] = np.eye(4, dtype=dtype)[[1, 2, 3]]  # exact 0 and 1: clipped, as sklearn does
    target = rng.integers(0, 4, size=50)
    target[:3] = 0
    expected = log_loss(target, probs, labels=range(4))
    actual = crossent.cross_entropy_from_probs(to_xp(probs), to_xp(target))
    assert_close(actual, expected, dtype=dtype, rtol=1e-10 if dtype == "float64" else 1e-5)


def test_cross_entropy_from_probs_with_soft_targets_equals_sklearn(to_xp, assert_close):
    from sklearn.metrics import log_loss

    rng = np.random.default_rng(6)
    probs = rng.dirichlet(np.ones(3), size=20)
    onehot = np.eye(3)[rng.integers(0, 3, size=20)]
    expected = log_loss(onehot, probs)
    assert_close(crossent.cross_entropy_from_probs(to_xp(probs), to_xp(onehot)), expected)


# --- Beyond torch: soft-capping, the z-loss, sample weights -------------------------------------


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # Dask: 0 / 0
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("ignore", IGNORES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("probability_target", [False, True], ids=["indices", "probabilities"])
def test_softcap_z_loss_and_sample_weight_equal_the_oracle(
    probability_target, layout, ignore, reduction, to_xp, assert_close, lazy
):
    if probability_target and ignore != "none-ignored":
        pytest.skip("no ignore_index with class probabilities")
    logits, target, axis, ignore_index, weight = _case(layout, ignore, 11, probability_target)
    positions = logits.shape[: axis % logits.ndim] + logits.shape[axis % logits.ndim + 1 :]
    s = np.random.default_rng(12).uniform(0.0, 3.0, positions)
    for extra in (
        {"softcap": 1.5},
        {"z_loss": 0.3},
        {"sample_weight": s},
        {"softcap": 2.5, "z_loss": 0.1, "sample_weight": s, "label_smoothing": 0.2},
    ):
        options = {"axis": axis, "ignore_index": ignore_index, "reduction": reduction}
        options.update(weight=weight, **extra)
        torch_options = {k: T(v) if isinstance(v, np.ndarray) else v for k, v in options.items()}
        expected = oracle.cross_entropy(T(logits), T(target), **torch_options)
        ours = {k: to_xp(v) if isinstance(v, np.ndarray) else v for k, v in options.items()}
        actual = lazy(crossent.cross_entropy)(to_xp(logits), to_xp(target), **ours)
        assert_close(actual, expected)


def test_z_loss_is_the_log_normaliser_squared(to_xp, assert_close):
    logits = np.array([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0], [5.0, 5.0, 5.0]])
    target = np.array([0, 2, -100])
    lse = np.log(np.exp(logits).sum(axis=1))
    plain = crossent.cross_entropy(to_xp(logits), to_xp(target), reduction="none")
    with_z = crossent.cross_entropy(to_xp(logits), to_xp(target), reduction="none", z_loss=0.5)
    expected = to_numpy(plain) + 0.5 * lse**2 * np.array([1.0, 1.0, 0.0])  # not where ignored
    assert_close(with_z, expected)


def test_softcap_bounds_the_logits(to_xp, assert_close):
    # a cap of c makes logits of +-1e4 into +-c: the loss of the wrong class is 2c at most
    logits = np.array([[1e4, -1e4], [-1e4, 1e4], [np.inf, -np.inf]])
    target = np.array([1, 0, 1])
    loss = crossent.cross_entropy(to_xp(logits), to_xp(target), softcap=3.0, reduction="none")
    assert_close(loss, np.full(3, 6.0 + np.log1p(np.exp(-6.0))))
    grad = crossent.grad(crossent.cross_entropy)(to_xp(logits), to_xp(target), softcap=3.0)
    assert np.all(np.isfinite(to_numpy(grad)))  # tanh is flat out there: 0, not NaN


@pytest.mark.parametrize("name", ["cross_entropy", "nll_loss", "cross_entropy_from_probs"])
@pytest.mark.parametrize("probability_target", [False, True], ids=["indices", "probabilities"])
def test_sample_weights_count_positions(name, probability_target, to_xp, assert_close):
    """Position n with integer weight k counts as k copies of it; weights of 1 change nothing."""
    if name == "nll_loss" and probability_target:
        pytest.skip("nll_loss takes class indices only")
    rng = np.random.default_rng(13)
    logits = rng.standard_normal((6, 4)) * 2
    pred = np.log(crossent.softmax(logits)) if name == "nll_loss" else logits
    if name == "cross_entropy_from_probs":
        pred = crossent.softmax(logits)
    if probability_target:
        target = rng.dirichlet(np.ones(4), size=6)
    else:
        target = np.array([0, 3, -100, 2, 1, 1])
    counts = np.array([2, 0, 5, 1, 3, 1])
    weight = rng.uniform(0.5, 2.0, 4)
    func = getattr(crossent, name)
    repeated = np.repeat(np.arange(6), counts)
    for reduction in ("mean", "sum"):
        options = {"weight": to_xp(weight), "reduction": reduction}
        expected = func(to_xp(pred[repeated]), to_xp(target[repeated]), **options)
        ours = func(to_xp(pred), to_xp(target), sample_weight=to_xp(counts * 1.0), **options)
        assert_close(ours, to_numpy(expected))
        ones = func(to_xp(pred), to_xp(target), sample_weight=to_xp(np.ones(6)), **options)
        assert_close(ones, to_numpy(func(to_xp(pred), to_xp(target), **options)))


def test_sample_weight_equals_sklearn_log_loss(to_xp, assert_close):
    from sklearn.metrics import log_loss

    rng = np.random.default_rng(14)
    probs = rng.dirichlet(np.full(4, 0.5), size=40)
    target = rng.integers(0, 4, size=40)
    s = rng.uniform(0.0, 4.0, size=40)
    expected = log_loss(target, probs, sample_weight=s, labels=range(4))
    actual = crossent.cross_entropy_from_probs(to_xp(probs), to_xp(target), sample_weight=to_xp(s))
    assert_close(actual, expected)
    logits = np.log(probs) + rng.standard_normal((40, 1))  # the same softmax
    from_logits = crossent.cross_entropy(to_xp(logits), to_xp(target), sample_weight=to_xp(s))
    assert_close(from_logits, expected)


def test_bad_options_are_named(to_xp):
    logits, target = to_xp(np.zeros((3, 4))), to_xp(np.array([0, 1, 2]))
    with pytest.raises(
        ValueError, match=r"softcap must be a positive, finite float or None, got 0"
    ):
        crossent.cross_entropy(logits, target, softcap=0.0)
    with pytest.raises(ValueError, match=r"z_loss must be a finite float >= 0, got -1"):
        crossent.cross_entropy(logits, target, z_loss=-1.0)
    with pytest.raises(TypeError, match=r"z_loss must be a Python float >= 0, got str"):
        crossent.cross_entropy(logits, target, z_loss="0.1")
    with pytest.raises(ValueError, match=r"sample_weight has shape \(4,\), expected \(3,\)"):
        crossent.cross_entropy(logits, target, sample_weight=to_xp(np.ones(4)))
    with pytest.raises(TypeError, match=r"sample_weight"):
        crossent.nll_loss(logits, target, sample_weight=target)
    with pytest.raises(TypeError, match=r"process_group does not take softcap, sample_weight"):
        crossent.cross_entropy(
            logits, target, softcap=1.0, sample_weight=to_xp(np.ones(3)), process_group=object()
        )


# --- Edges -------------------------------------------------------------------------------------


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_extreme_logits(label_smoothing, reduction, to_xp, assert_close):
    logits = np.array(
        [[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4], [1e4, 1e4, -1e4], [-1e4, 0.0, 1e4], [0, 0, 1e-300]]
    )
    target = np.array([0, 1, 2, 0, 2])
    options = {"reduction": reduction, "label_smoothing": label_smoothing}
    expected = F.cross_entropy(T(logits), T(target), **options)
    assert_close(crossent.cross_entropy(to_xp(logits), to_xp(target), **options), expected)
    soft = np.array([[1, 0, 0], [0.5, 0.5, 0], [0, 0.2, 0.8], [0.3, 0.3, 0.4], [0, 0, 1.0]])
    expected = F.cross_entropy(T(logits), T(soft), **options)
    assert_close(crossent.cross_entropy(to_xp(logits), to_xp(soft), **options), expected)


def test_extreme_logits_in_float32(to_xp, assert_close):
    logits = np.array([[1e4, -1e4, 0.0], [-3e4, 3e4, 1.0]], dtype=np.float32)
    target = np.array([1, 1])
    expected = F.cross_entropy(T(logits, torch.float32), T(target), reduction="none")
    actual = crossent.cross_entropy(to_xp(logits), to_xp(target), reduction="none")
    assert_close(actual, expected, dtype="float32", rtol=1e-6)


def test_probabilities_of_exactly_zero_and_one(to_xp, assert_close):
    probs = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    target = np.array([0, 0, 2])
    expected = oracle.cross_entropy_from_probs(T(probs), T(target), reduction="none")
    actual = crossent.cross_entropy_from_probs(to_xp(probs), to_xp(target), reduction="none")
    assert_close(actual, expected)
    assert_close(
        actual,
        [np.finfo(np.float64).eps, -np.log(np.finfo(np.float64).eps), 0.0],
        rtol=1e-6,
        atol=1e-15,
    )


# Dask divides 0 by 0 when it computes, after crossent returns: NumPy warns then
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("name", ["cross_entropy", "nll_loss", "cross_entropy_from_probs"])
def test_every_position_ignored(name, to_xp, assert_close):
    scores = np.full((3, 4), 0.25)
    target = np.full(3, -100)
    func = getattr(crossent, name)
    assert_close(func(to_xp(scores), to_xp(target)), np.nan)  # 0 / 0, as torch
    assert_close(func(to_xp(scores), to_xp(target), reduction="sum"), 0.0)
    assert_close(func(to_xp(scores), to_xp(target), reduction="none"), np.zeros(3))


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_empty_batch_mean_is_nan_as_torch(to_xp, assert_close):
    logits, target = np.zeros((0, 3)), np.zeros(0, dtype=np.int64)
    assert_close(crossent.cross_entropy(to_xp(logits), to_xp(target)), np.nan)
    assert_close(crossent.cross_entropy(to_xp(logits), to_xp(logits)), np.nan)


# --- Worked examples ---------------------------------------------------------------------------


def test_uniform_logits_give_log_of_the_number_of_classes(to_xp, assert_close):
    logits = np.zeros((4, 10))
    assert_close(crossent.cross_entropy(to_xp(logits), to_xp(np.arange(4))), np.log(10))


def test_worked_example_by_hand(to_xp, assert_close):
    # softmax([0, log 3]) = [1/4, 3/4]: losses -log(3/4) and -log(1/4)
    logits = np.array([[0.0, np.log(3.0)], [0.0, np.log(3.0)]])
    target = np.array([1, 0])
    losses = crossent.cross_entropy(to_xp(logits), to_xp(target), reduction="none")
    assert_close(losses, [np.log(4 / 3), np.log(4)], rtol=1e-15)
    # weights 1 and 3: (1 * log(4/3) + 3 * log 4) / (1 + 3)
    weighted = crossent.cross_entropy(to_xp(logits), to_xp(target), weight=to_xp([3.0, 1.0]))
    assert_close(weighted, (np.log(4 / 3) + 3 * np.log(4)) / 4, rtol=1e-15)
    # smoothing 0.5 over 2 classes: the target becomes [0.25, 0.75] for class 1
    smoothed = crossent.cross_entropy(
        to_xp(logits[:1]), to_xp(target[:1]), label_smoothing=0.5, reduction="sum"
    )
    assert_close(smoothed, 0.25 * np.log(4) + 0.75 * np.log(4 / 3), rtol=1e-15)


def test_kl_of_one_hot_is_cross_entropy(to_xp, assert_close):
    rng = np.random.default_rng(7)
    logits = rng.standard_normal((5, 4))
    target = rng.integers(0, 4, 5)
    onehot = np.eye(4)[target]
    log_probs = crossent.log_softmax(to_xp(logits))
    kl = crossent.kl_div(log_probs, to_xp(onehot), reduction="batchmean")
    assert_close(kl, crossent.cross_entropy(to_xp(logits), to_xp(target)))


# --- Dtypes ------------------------------------------------------------------------------------


@pytest.mark.parametrize("target_dtype", ["int8", "int16", "int32", "int64", "uint8"])
def test_any_integer_target_dtype(target_dtype, to_xp, assert_close):
    logits = np.random.default_rng(8).standard_normal((4, 3))
    target = np.array([0, 2, 1, 2])
    expected = F.cross_entropy(T(logits), T(target))
    assert_close(crossent.cross_entropy(to_xp(logits), to_xp(target, target_dtype)), expected)


@pytest.mark.parametrize("name", ["cross_entropy", "nll_loss", "cross_entropy_from_probs"])
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_result_keeps_the_input_dtype(name, dtype, to_xp, assert_close):
    rng = np.random.default_rng(9)
    scores = rng.dirichlet(np.ones(7), size=8)
    if name == "nll_loss":
        scores = np.log(scores)
    target = rng.integers(0, 7, 8)
    inputs = to_xp(scores, dtype)
    # the float32 computation on the same rounded inputs, rounded once to the input dtype
    rounded = to_numpy(inputs).astype(np.float32)
    torch_input = torch.as_tensor(rounded)
    reference = {
        "cross_entropy": lambda: F.cross_entropy(torch_input, T(target)),
        "nll_loss": lambda: F.nll_loss(torch_input, T(target)),
        "cross_entropy_from_probs": lambda: oracle.cross_entropy_from_probs(
            torch_input, T(target), eps=float(torch.finfo(getattr(torch, dtype)).eps)
        ),
    }[name]()
    expected = reference.to(getattr(torch, dtype))
    ulp = torch.finfo(getattr(torch, dtype)).eps
    actual = getattr(crossent, name)(inputs, to_xp(target))
    assert_close(actual, expected, dtype=dtype, rtol=ulp if dtype != "float32" else 1e-6)


# --- Lazy arrays and bad values ----------------------------------------------------------------


def _can_be_eager(xp):
    return not is_dask_namespace(xp)


def _can_be_lazy(xp):
    return is_dask_namespace(xp) or is_jax_namespace(xp)


@pytest.mark.parametrize("name", ["cross_entropy", "nll_loss", "cross_entropy_from_probs"])
@pytest.mark.parametrize("bad_index", [5, -1, -7])
def test_bad_class_index(name, bad_index, xp, to_xp, assert_close, lazy):
    scores, target = np.full((3, 5), 0.2), np.array([0, bad_index, 4])
    func = getattr(crossent, name)
    if _can_be_eager(xp):
        with pytest.raises(ValueError, match=rf"target holds class index {bad_index}, outside"):
            func(to_xp(scores), to_xp(target))
    if _can_be_lazy(xp):
        # values cannot be read before they exist: the loss is NaN, never a plausible number
        good = -0.2 if name == "nll_loss" else np.log(5)
        none = lazy(func)(to_xp(scores), to_xp(target), reduction="none")
        assert_close(none, [good, np.nan, good])
        for reduction in ("mean", "sum"):
            assert_close(lazy(func)(to_xp(scores), to_xp(target), reduction=reduction), np.nan)


@pytest.mark.parametrize("bad", [-0.1, 1.5])
def test_probabilities_outside_the_unit_interval(bad, xp, to_xp, assert_close, lazy):
    probs = np.array([[0.5, 0.5], [bad, 1 - bad]])
    target = np.array([0, 0])
    if _can_be_eager(xp):
        with pytest.raises(ValueError, match=r"probs must hold probabilities in \[0, 1\]"):
            crossent.cross_entropy_from_probs(to_xp(probs), to_xp(target))
    if _can_be_lazy(xp):
        losses = lazy(crossent.cross_entropy_from_probs)(
            to_xp(probs), to_xp(target), reduction="none"
        )
        assert_close(losses, [np.log(2), np.nan])


# --- Properties --------------------------------------------------------------------------------

finite_logits = arrays(np.float64, (4, 5), elements=st.floats(-1e4, 1e4))
targets = arrays(np.int64, (4,), elements=st.integers(0, 4))


@given(logits=finite_logits, target=targets, shift=st.floats(-1e3, 1e3))
def test_shifting_logits_changes_nothing(logits, target, shift, to_xp, assert_close):
    expected = crossent.cross_entropy(to_xp(logits), to_xp(target), reduction="none")
    shifted = crossent.cross_entropy(to_xp(logits + shift), to_xp(target), reduction="none")
    assert_close(shifted, expected, rtol=1e-9, atol=1e-9)


@given(
    logits=finite_logits,
    target=targets,
    smoothing=st.floats(0, 1),
    weight=arrays(np.float64, (5,), elements=st.floats(0, 10)),
)
def test_losses_are_non_negative(logits, target, smoothing, weight, xp, to_xp):
    loss = crossent.cross_entropy(
        to_xp(logits),
        to_xp(target),
        weight=to_xp(weight),
        label_smoothing=smoothing,
        reduction="none",
    )
    assert (to_numpy(loss) >= 0).all()


@given(logits=finite_logits, target=targets)
def test_one_hot_probabilities_equal_class_indices(logits, target, to_xp, assert_close):
    onehot = np.eye(5)[target]
    expected = crossent.cross_entropy(to_xp(logits), to_xp(target), reduction="none")
    actual = crossent.cross_entropy(to_xp(logits), to_xp(onehot), reduction="none")
    assert_close(actual, expected, rtol=1e-12, atol=1e-12)


@given(logits=finite_logits, target=targets, smoothing=st.sampled_from([0.0, 0.3]))
def test_cross_entropy_is_nll_of_log_softmax(logits, target, smoothing, to_xp, assert_close):
    log_probs = crossent.log_softmax(to_xp(logits))
    expected = crossent.nll_loss(log_probs, to_xp(target), reduction="none")
    actual = crossent.cross_entropy(to_xp(logits), to_xp(target), reduction="none")
    assert_close(actual, expected, rtol=1e-12, atol=1e-12)


# --- NaN and inf: as torch propagates them ------------------------------------------------


# Dask computes after crossent returns, outside its silencing of NumPy's warnings
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("generic", [False, True], ids=["kernel", "generic"])
def test_nan_and_inf_logits_as_torch(generic, smoothing, to_xp, assert_close, lazy):
    # a NaN maximum was shifted by 0 and a NaN total logged to -inf: every path must give NaN
    logits = np.array(
        [[0.0, np.nan, 1.0], [0.0, np.inf, 1.0], [0.0, np.inf, 1.0], [0.0, -np.inf, 1.0]] * 2
    )
    target = np.array([0, 0, 1, 1, 0, 2, 1, 2])
    expected = F.cross_entropy(T(logits), T(target), reduction="none", label_smoothing=smoothing)
    func = lazy(crossent.cross_entropy)
    with generic_only() if generic else contextlib.nullcontext():
        actual = func(to_xp(logits), to_xp(target), reduction="none", label_smoothing=smoothing)
    assert_close(actual, expected)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_a_nan_probability_at_the_target_gives_nan(to_xp, assert_close, lazy):
    probs = np.array([[np.nan, 0.5, 0.5], [0.2, 0.3, 0.5]])
    func = lazy(crossent.cross_entropy_from_probs)
    assert_close(
        func(to_xp(probs), to_xp(np.array([0, 1])), reduction="none"), [np.nan, -np.log(0.3)]
    )
    soft = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    assert_close(func(to_xp(probs), to_xp(soft), reduction="none"), [np.nan, -np.log(0.3)])


# --- Class indices of every integer dtype -------------------------------------------------


def test_uint64_indices_that_do_not_fit_int64(xp, to_xp, assert_close, lazy):
    # 2**64 - 100 once wrapped to -100, an ignored position
    logits = np.zeros((3, 3))
    target = np.array([0, 2**64 - 100, 2**63], dtype=np.uint64)
    try:
        indices = to_xp(target)
    except (TypeError, ValueError, OverflowError, RuntimeError) as error:
        pytest.skip(f"{type(xp).__name__} holds no uint64 of this size: {error}")
    if _can_be_eager(xp):
        with pytest.raises(ValueError, match="target holds class index 18446744073709551516"):
            crossent.cross_entropy(to_xp(logits), indices)
    if _can_be_lazy(xp):
        losses = lazy(crossent.cross_entropy)(to_xp(logits), indices, reduction="none")
        assert_close(losses, [np.log(3), np.nan, np.nan])
    fitting = to_xp(np.array([0, 2, 1], dtype=np.uint64))
    assert_close(crossent.cross_entropy(to_xp(logits), fitting), np.log(3))


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("shape", [(0, 2, 3), (2, 0, 3)])
@pytest.mark.parametrize("name", ["cross_entropy", "nll_loss", "cross_entropy_from_probs"])
def test_empty_batch_with_positions_and_class_weights(name, shape, to_xp, assert_close):
    # Dask could not reshape an empty array cut into chunks of 1
    func = getattr(crossent, name)
    scores, target = to_xp(np.zeros(shape)), to_xp(np.zeros(shape[:2], dtype=np.int64))
    weight = to_xp(np.ones(3))
    assert_close(func(scores, target, weight=weight, axis=-1), np.nan)
    assert_close(func(scores, target, weight=weight, reduction="none"), np.zeros(shape[:2]))
    _, gradient = crossent.value_and_grad(func)(scores, target, weight=weight)
    assert_close(gradient, np.zeros(shape))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_half_nll_loss_with_class_and_sample_weights(dtype, reduction, to_xp, assert_close):
    """Both weights at once on half-precision log-probabilities: float32 inside, rounded once
    (torch's half kernel once refused the float32 class weights)."""
    rng = np.random.default_rng(21)
    log_probs = to_xp(np.log(rng.dirichlet(np.ones(4), 6)), dtype)
    target = np.array([0, 1, -100, 3, 2, 1])
    options = {
        "weight": to_xp(rng.uniform(0.2, 2.0, 4), "float32"),
        "sample_weight": to_xp(rng.uniform(0.0, 3.0, 6), "float32"),
        "reduction": reduction,
    }
    found = crossent.nll_loss(log_probs, to_xp(target), **options)
    single = to_xp(to_numpy(log_probs).astype(np.float32), "float32")
    expected = to_numpy(crossent.nll_loss(single, to_xp(target), **options))
    rounded = to_numpy(to_xp(expected, dtype))
    assert_close(found, rounded, dtype=dtype, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["cross_entropy", "cross_entropy_from_probs"])
def test_infinite_sample_weight_of_class_probabilities(name, to_xp, assert_close):
    """``inf * loss``, as with a class index: inf (the weight once went into the target, where
    ``inf * 0`` made NaN)."""
    pred = np.array([[0.0, 0.0]]) if name == "cross_entropy" else np.array([[0.5, 0.5]])
    for target in (np.array([[1.0, 0.0]]), np.array([0])):
        found = getattr(crossent, name)(
            to_xp(pred), to_xp(target), sample_weight=to_xp(np.array([np.inf])), reduction="none"
        )
        assert_close(found, [np.inf])

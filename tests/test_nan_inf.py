"""NaN in, NaN out: a NaN or an infinity anywhere in the input reaches each result as it reaches
torch's, on every backend, eager and lazy; a clamp, a floor or a ``where`` never turns it into
a plausible number.

Where torch raises instead (a NaN probability in ``binary_cross_entropy``) crossent gives NaN;
where crossent refuses a value (a probability outside [0, 1]) it says so on eager arrays and
gives NaN on lazy ones; where it deliberately differs (a zero ``kl_div`` target against a
log-probability of ``-inf`` contributes 0, not NaN; a logit of ``-inf`` in
``binary_cross_entropy_with_logits`` gives the limit, not torch's NaN; an infinite target gives
NaN or an infinity where torch gives an infinity) the expectation says so.
Each deviation is in the table of ``docs/numerics.md``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from array_api_compat import is_dask_namespace, is_jax_namespace, is_torch_namespace
from cases import Case, all_cases
from conftest import to_numpy
from hypothesis import given
from hypothesis import strategies as st
from oracle import T

import crossent

#: Per-position results ("none"), so that each NaN is seen where it lands.
CASES = [case for case in all_cases() if case.options.get("reduction") == "none"]
LOSSES = sorted({case.name for case in CASES})
#: Losses of probabilities: a value outside [0, 1] is refused, not propagated.
PROBABILITIES = {"binary_cross_entropy", "cross_entropy_from_probs"}
SPECIALS = [np.nan, np.inf, -np.inf]


def _lazy_backend(xp):
    return is_dask_namespace(xp) or is_jax_namespace(xp)


def _torch_or_nan(case: Case) -> np.ndarray:
    """torch's per-position losses; NaN where torch raises on a NaN (binary_cross_entropy)."""
    if case.name != "binary_cross_entropy":
        return case.torch_loss(T(case.pred)).numpy()
    nan = np.isnan(case.pred) | np.isnan(case.target)
    cleaned = Case(
        case.name, np.where(nan, 0.5, case.pred), np.where(nan, 0.5, case.target), case.options
    )
    return np.where(nan, np.nan, cleaned.torch_loss(T(cleaned.pred)).numpy())


def _expected(case: Case, xp) -> np.ndarray:
    expected = _torch_or_nan(case)
    if case.name == "binary_cross_entropy_with_logits" and not is_torch_namespace(xp):
        # torch's formula makes inf - inf of a logit of -inf; crossent gives the limit, inf where
        # the target is positive, as optax does (torch tensors get torch's own kernel)
        expected = np.where((case.pred == -np.inf) & (case.target > 0), np.inf, expected)
    if case.name == "kl_div":
        # crossent: a zero target contributes 0 against any prediction but NaN (torch: NaN at -inf)
        absent = case.target == (-np.inf if case.options["log_target"] else 0.0)
        expected = np.where(absent & ~np.isnan(case.pred), 0.0, expected)
    return expected


def _outside_unit_interval(case: Case) -> bool:
    return case.name in PROBABILITIES and bool(
        np.any(np.isinf(case.pred))
        or (case.name == "binary_cross_entropy" and np.any(np.isinf(case.target)))
    )


def _tolerance(case: Case) -> float:
    # torch's binary_cross_entropy_with_logits cancels to 0 below 1e-16 of |x| (test_backends)
    finite = np.abs(case.pred[np.isfinite(case.pred)])
    if case.name == "binary_cross_entropy_with_logits":
        return float(np.finfo(np.float64).eps * finite.max(initial=1.0)) * 4
    return 1e-300


@st.composite
def _cases_with_a_special_value(draw):
    case = draw(st.sampled_from(CASES))
    slots = ["pred"] + (["target"] if case.target.dtype.kind == "f" else [])
    slot = draw(st.sampled_from(slots))
    values = {"pred": case.pred.copy(), "target": case.target.copy()}
    count = draw(st.integers(1, 3))
    for _ in range(count):
        where = draw(st.integers(0, max(0, values[slot].size - 1)))
        values[slot].reshape(-1)[where] = draw(st.sampled_from(SPECIALS))
    return Case(case.name, values["pred"], values["target"], case.options)


# Dask computes after crossent returns, outside its silencing of NumPy's warnings
@pytest.mark.filterwarnings("ignore:(invalid value|divide by zero|overflow) encountered")
@given(case=_cases_with_a_special_value())
def test_nan_and_inf_propagate_as_torch(case, xp, to_xp, assert_close, lazy):
    args, options = case.crossent_args(to_xp)
    func = getattr(crossent, case.name)
    if _outside_unit_interval(case):
        if not is_dask_namespace(xp):
            with pytest.raises(ValueError, match="must hold probabilities in"):
                func(*args, **options)
        if _lazy_backend(xp):
            losses = to_numpy(lazy(func)(*args, **options))
            assert np.isnan(losses).any(), "a value outside [0, 1] gave no NaN"
        return
    expected = _expected(case, xp)
    run = lazy(func) if _lazy_backend(xp) else func
    losses = run(*args, **options)
    if case.target.dtype.kind == "f" and np.isinf(case.target).any():
        # An infinite target (no probability, no label) is garbage in: crossent's sums make
        # inf - inf = NaN where torch's make +-inf. Either way no finite number comes out.
        found = to_numpy(losses)
        assert (~np.isfinite(found) == ~np.isfinite(expected)).all(), (found, expected)
        expected = np.where(np.isfinite(expected), expected, found)
    assert_close(losses, expected, atol=_tolerance(case))
    total = run(*args, **{**options, "reduction": "sum"})
    assert_close(total, np.sum(to_numpy(losses)), rtol=1e-9, atol=_tolerance(case) * 100)


PRIMITIVES = {
    "logsumexp": lambda x: torch.logsumexp(x, dim=-1),
    "softmax": lambda x: torch.softmax(x, dim=-1),
    "log_softmax": lambda x: torch.log_softmax(x, dim=-1),
    "log_sigmoid": F.logsigmoid,
}


@pytest.mark.filterwarnings("ignore:(invalid value|divide by zero|overflow) encountered")
@given(
    name=st.sampled_from(sorted(PRIMITIVES)),
    specials=st.lists(st.tuples(st.integers(0, 14), st.sampled_from(SPECIALS)), max_size=4),
)
def test_nan_and_inf_through_the_primitives_as_torch(
    name, specials, xp, to_xp, assert_close, lazy
):
    x = np.random.default_rng(len(specials)).standard_normal((3, 5)) * 3
    for where, value in specials:
        x.reshape(-1)[where] = value
    func = getattr(crossent, name)
    run = lazy(func) if _lazy_backend(xp) else func
    assert_close(run(to_xp(x)), PRIMITIVES[name](T(x)))


# --- Infinite sample weights: torch's arithmetic of weight * loss ----------------------------


def _infinite_weight_cases() -> list[Case]:
    """Every loss that takes sample weights, with one infinite weight (a kept position's: an
    ignored position's weight is never read) and one of 0."""
    rng = np.random.default_rng(5)
    logits = rng.standard_normal((4, 3)) * 2
    index = np.array([0, 2, -100, 1])
    probs = rng.dirichlet(np.ones(3), 4)
    probs[1, 0] = 0.0  # a zero target beside the infinite weight: inf * 0 in torch's arithmetic
    probs[1] /= probs[1].sum()
    s = np.array([1.0, np.inf, 2.0, 0.0])
    labels = (rng.random((4, 3)) < 0.5) * 1.0
    cases = []
    for reduction in ("none", "sum", "mean"):
        weighted = {"reduction": reduction, "sample_weight": s}
        for target in (index, probs):
            cases.append(Case("cross_entropy", logits, target, weighted))
            cases.append(
                Case("cross_entropy", logits, target, {**weighted, "z_loss": 0.1, "softcap": 3.0})
            )
            cases.append(Case("softmax_focal_loss", logits, target, weighted))
            cases.append(Case("poly1_cross_entropy", logits, target, weighted))
            from_probs = torch.softmax(T(logits), -1).numpy()
            cases.append(Case("cross_entropy_from_probs", from_probs, target, weighted))
        log_probs = torch.log_softmax(T(logits), -1).numpy()
        cases.append(Case("nll_loss", log_probs, index, weighted))
        cases.append(Case("multilabel_soft_margin_loss", logits, labels, weighted))
        elementwise = {**weighted, "sample_weight": np.array([1.0, np.inf, 0.0])}
        cases.append(Case("sigmoid_focal_loss", logits, labels, elementwise))
    return cases


def _same_specials(found: np.ndarray, expected: np.ndarray) -> None:
    """Equal where finite, and the same NaN and signed infinities elsewhere."""
    np.testing.assert_array_equal(np.isnan(found), np.isnan(expected))
    np.testing.assert_array_equal(np.isposinf(found), np.isposinf(expected))
    np.testing.assert_array_equal(np.isneginf(found), np.isneginf(expected))
    finite = np.isfinite(expected)
    np.testing.assert_allclose(found[finite], expected[finite], rtol=1e-10, atol=1e-300)


INFINITE_WEIGHTS = _infinite_weight_cases()


@pytest.mark.filterwarnings("ignore:(invalid value|divide by zero|overflow) encountered")
@pytest.mark.parametrize("case", INFINITE_WEIGHTS, ids=[c.id for c in INFINITE_WEIGHTS])
def test_an_infinite_sample_weight_as_torch_arithmetic(case, xp, to_xp):
    """``s * loss`` reduced, and its gradient, as torch computes them with autograd: an
    infinite weight gives an infinite (or NaN) loss, and the gradient torch's chain rule makes
    of it, on every route."""
    pred = T(case.pred).requires_grad_(True)
    expected = case.torch_loss(pred)
    (expected_grad,) = torch.autograd.grad(expected.sum(), pred)
    args, options = case.crossent_args(to_xp)
    func = getattr(crossent, case.name)
    _same_specials(to_numpy(func(*args, **options)), expected.detach().numpy())
    loss, grad = crossent.value_and_grad(func)(*args, **options)
    _same_specials(to_numpy(loss), expected.detach().numpy())
    _same_specials(to_numpy(grad), expected_grad.numpy())
    if is_torch_namespace(xp) or is_jax_namespace(xp):
        from test_kinks import _autodiff

        _same_specials(to_numpy(_autodiff(xp, func, args, options)), expected_grad.numpy())

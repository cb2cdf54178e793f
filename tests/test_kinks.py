"""Gradients exactly on the kinks and branch points of every loss, on every route: the analytic
gradient (``crossent.value_and_grad``), torch autograd through crossent (its kernels, and the
generic path alone) and ``jax.grad``. Each equals torch's autograd of the oracle there.

Beside a kink every formula agrees; on it, a ``where`` that chooses ``x >= 0`` in one place
and ``x > 0`` in another, a product of 0 and ``-inf`` in the chain rule, or an ``abs`` or a
``max`` whose tie frameworks break differently gives a wrong number, or NaN, at that point
alone: the wrong-signed gradient of ``sigmoid_focal_loss`` at a logit of exactly 0, and the NaN
of ``softmax_focal_loss`` where a row read a ``-inf`` logit, were of that kind.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from array_api_compat import is_jax_namespace, is_torch_namespace
from cases import ALL_LOSSES, Case
from oracle import T

import crossent
from crossent._dispatch import generic_only

inf = np.inf

#: Logits of three classes with every kink of a softmax row: a tie for the maximum, zeros,
#: a -inf logit in a class a kept row does not read, and in class 0, which an ignored row
#: reads; p = 1 and p = 0 to the last bit (+-1e4), and a row where every class is equal.
ROWS = np.array(
    [
        [1.0, 1.0, 0.0],
        [0.0, 0.0, 0.0],
        [-inf, 1.0, 2.0],
        [-inf, 0.5, -1.0],
        [1e4, -1e4, 0.0],
        [0.0, -inf, 3.0],
    ]
)
#: The class each row reads: the tied maximum, any, a kept class beside -inf, ignored (class 0
#: is -inf), p = 1, a class of p = 0 (its logit is -1e4 below the maximum).
ROW_TARGET = np.array([0, 1, 2, -100, 0, 2])
ROW_PROBS = np.array(
    [
        [0.5, 0.5, 0.0],
        [1.0, 0.0, 0.0],
        [0.0, 0.2, 0.8],
        [0.0, 1.0, 0.0],
        [1.0, 0.0, 0.0],
        [0.3, 0.0, 0.7],
    ]
)
#: Probabilities of exactly 0 and 1, and on both clip bounds of eps = 0.1.
PROBS = np.array([[0.0, 1.0, 0.1, 0.9], [1.0, 0.0, 0.5, 0.1]])
PROB_TARGET = np.array([[0.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.5, 1.0]])
#: Logits of exactly 0 beside extreme ones, for the elementwise losses of logits.
LOGITS = np.array([[0.0, 0.0, 0.0, 1e4], [0.0, -1e4, -0.0, 3.0]])
LABELS = np.array([[0.0, 1.0, 0.5, 1.0], [1.0, 0.0, 0.0, 1.0]])


def _kink_cases() -> list[Case]:
    cases = []
    for reduction in ("sum", "mean", "none"):
        r = {"reduction": reduction}
        cases += [
            Case("cross_entropy", ROWS, ROW_TARGET, r),
            Case("cross_entropy", ROWS[:2], ROW_PROBS[:2], r),
            Case("cross_entropy", ROWS[:2], ROW_TARGET[:2], {**r, "softcap": 1.0, "z_loss": 0.1}),
            Case("nll_loss", ROWS, ROW_TARGET, r),
            Case("nll_loss", ROWS, ROW_TARGET, {**r, "sample_weight": np.arange(6.0)}),
            Case("cross_entropy_from_probs", PROBS, np.array([1, 0]), {**r, "eps": 0.1}),
            Case("binary_cross_entropy", PROBS, PROB_TARGET, r),
            Case("binary_cross_entropy", PROBS, PROB_TARGET, {**r, "eps": 0.1}),
            Case("binary_cross_entropy_with_logits", LOGITS, LABELS, r),
            Case(
                "binary_cross_entropy_with_logits",
                LOGITS,
                LABELS,
                {**r, "pos_weight": np.array([2.0, 0.5, 1.0, 3.0])},
            ),
            Case("kl_div", np.log(PROBS[:, 1:3] + 0.25), PROB_TARGET[:, 1:3], r),
            # not at p_t = 1 with gamma < 1: torchvision's literal (1 - p_t)**gamma is NaN there
            # (test_pointwise_variants has crossent's limit)
            Case("sigmoid_focal_loss", LOGITS[:1, :3], LABELS[:1, :3], {**r, "gamma": 0.5}),
            Case("sigmoid_focal_loss", LOGITS, LABELS, {**r, "gamma": 2.0, "alpha": None}),
            Case("sigmoid_focal_loss", LOGITS, LABELS, {**r, "gamma": 0.0}),
            Case("multilabel_soft_margin_loss", LOGITS, LABELS, r),
            Case("entropy", ROWS, None, r),
            Case("entropy", ROWS, None, {**r, "sample_weight": np.arange(6.0)}),
        ]
        for gamma in (0.5, 2.0):
            cases.append(Case("softmax_focal_loss", ROWS, ROW_TARGET, {**r, "gamma": gamma}))
        for epsilon, smoothing in ((1.0, 0.0), (-1.0, 0.2)):
            options = {**r, "epsilon": epsilon, "label_smoothing": smoothing}
            cases.append(
                Case("poly1_cross_entropy", ROWS[[0, 1, 3, 4]], ROW_TARGET[[0, 1, 3, 4]], options)
            )
    return cases


CASES = _kink_cases()


def test_every_loss_has_kink_cases():
    assert {case.name for case in CASES} == set(ALL_LOSSES)


def _oracle(case: Case) -> tuple[np.ndarray, np.ndarray]:
    pred = T(case.pred).requires_grad_(True)
    loss = case.torch_loss(pred)
    (grad,) = torch.autograd.grad(loss.sum(), pred)
    return loss.detach().numpy(), grad.numpy()


def _autodiff(xp, func, args, options):
    if is_torch_namespace(xp):
        pred = args[0].detach().clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(func(pred, *args[1:], **options).sum(), pred)
        return grad
    import jax

    return jax.grad(lambda pred: func(pred, *args[1:], **options).sum())(args[0])


ROUTES = ["value_and_grad", "autodiff", "autodiff of the generic path"]


@pytest.mark.filterwarnings("ignore:(invalid value|divide by zero|overflow) encountered")
@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_gradient_on_the_kinks_equals_the_oracle(case, route, xp, to_xp, assert_close):
    expected_loss, expected_grad = _oracle(case)
    args, options = case.crossent_args(to_xp)
    func = getattr(crossent, case.name)
    if route == "value_and_grad":
        loss, grad = crossent.value_and_grad(func)(*args, **options)
        assert_close(loss, expected_loss, atol=1e-300)
    elif not (is_torch_namespace(xp) or is_jax_namespace(xp)):
        pytest.skip("this backend has no autodiff")
    elif route == "autodiff":
        grad = _autodiff(xp, func, args, options)
    elif case.name == "binary_cross_entropy":
        # autodiff of the generic formula differentiates the floored logarithms (1 at p = 0 and
        # t = 0), torch's backward its own (p - t) / max(p (1 - p), 1e-12) = 0: the JAX and
        # torch kernels and value_and_grad give torch's, the generic path is no user's route
        pytest.skip("the generic formula's autodiff is not torch's backward at p = 0 and 1")
    else:
        with generic_only():
            grad = _autodiff(xp, func, args, options)
    atol = 1e-300
    if case.name == "entropy":
        # torch's gradient of a row of equal logits is p (-log p - H), which rounds to 1e-18
        # where crossent's p (mean of s - s) is exactly 0
        atol = 1e-15 * np.abs(expected_grad[np.isfinite(expected_grad)]).max(initial=0.0)
    assert_close(grad, expected_grad, atol=atol)


@pytest.mark.filterwarnings("ignore:(invalid value|divide by zero|overflow) encountered")
def test_sigmoid_focal_loss_at_a_logit_of_exactly_0(xp, to_xp, assert_close):
    """Zero-initialised heads: torchvision's gradient is +0.2237 for a label of 0, -0.0746 for
    1 (autograd once gave -0.0362 and +0.0121)."""
    x = np.zeros(1)
    for label, expected in ((0.0, 0.22371509635498973), (1.0, -0.07457169878499659)):
        args = (to_xp(x), to_xp(np.array([label])))
        grad = crossent.grad(crossent.sigmoid_focal_loss)(*args, reduction="sum")
        assert_close(grad, [expected], rtol=1e-14)
        if is_torch_namespace(xp) or is_jax_namespace(xp):
            found = _autodiff(xp, crossent.sigmoid_focal_loss, args, {"reduction": "sum"})
            assert_close(found, [expected], rtol=1e-14)


@pytest.mark.filterwarnings("ignore:(invalid value|divide by zero|overflow) encountered")
def test_softmax_focal_loss_of_a_row_that_reads_minus_inf(xp, to_xp, assert_close):
    """A masked class (-inf) read by an ignored row (which reads class 0) gives that row a zero
    gradient, and a kept row whose own class is masked gets cross-entropy's, not NaN."""
    logits = np.array([[-inf, 1.0, 2.0], [0.5, 0.0, -1.0], [-inf, 0.0, 0.0]])
    target = np.array([-100, 1, 0])
    args = (to_xp(logits), to_xp(target))
    options = {"reduction": "sum"}
    softmax = torch.softmax(T(logits), -1).numpy()
    expected = np.zeros((3, 3))
    analytic = crossent.grad(crossent.softmax_focal_loss)(*args, **options)
    assert_close(analytic[0, ...], expected[0])
    assert_close(analytic[2, ...], softmax[2] - np.eye(3)[0])
    if is_torch_namespace(xp) or is_jax_namespace(xp):
        found = _autodiff(xp, crossent.softmax_focal_loss, args, options)
        assert_close(found[0, ...], expected[0])
        assert_close(found[2, ...], softmax[2] - np.eye(3)[0])

"""The generic information measures, each with its gradient from the same pass: the
Kullback-Leibler divergence on a prepared :class:`~._problems.Pointwise`, and the entropy of
categorical distributions on a prepared :class:`Distributions`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from .._typing import Array
from .._validation import (
    check_real_floating,
    check_reduction,
    check_sample_weight,
    get_namespace,
    normalize_axis,
    num_elements,
    shape_str,
)
from ._arrays import is_eager
from ._problems import ClassAxisLast, Pointwise, Problem, Unreduced
from ._stable import mark_bad, stable_max

__all__ = [
    "Distributions",
    "entropy",
    "entropy_pass",
    "entropy_value_and_grad",
    "kl_div",
    "kl_div_pass",
    "kl_div_value_and_grad",
    "prepare_distributions",
]


def kl_div_pass(problem: Pointwise, log_target: bool, *, gradient: bool) -> Unreduced:
    """The elementwise divergence, and with ``gradient`` its derivative with respect to
    ``log_probs``: minus the target probability."""
    xp = problem.xp
    x, t = problem.pred, problem.target
    # A zero target contributes exactly 0. The values under the mask are replaced too, so that
    # no 0 * inf is ever formed: not in the result, not in a gradient, not in a warning.
    absent = (t == -xp.inf) if log_target else (t == 0)
    safe_x = xp.where(absent, 0.0, x)
    if log_target:
        safe_t = xp.where(absent, 0.0, t)
        terms = xp.exp(safe_t) * (safe_t - safe_x)
    else:
        safe_t = xp.where(absent, 1.0, t)
        terms = safe_t * (xp.log(safe_t) - safe_x)
    # ... but a NaN prediction stays NaN there, as torch's 0 * NaN does
    loss = mark_bad(xp, xp.where(absent, 0.0, terms), absent & xp.isnan(x))
    if not gradient:
        return Unreduced(loss)
    probability = xp.exp(safe_t) if log_target else safe_t
    return Unreduced(loss, None, xp.where(absent, 0.0, -probability))


def kl_div(problem: Pointwise, log_target: bool) -> Array:
    return problem.reduce(kl_div_pass(problem, log_target, gradient=False))


def kl_div_value_and_grad(problem: Pointwise, log_target: bool) -> tuple[Array, Array]:
    return problem.value_and_grad(kl_div_pass(problem, log_target, gradient=True))


# --- entropy ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Distributions(ClassAxisLast, Problem):
    """Categorical distributions given by their logits, checked, with the class axis last."""

    #: The logits, class axis last, in the caller's dtype.
    predictions: Array
    #: The caller's class axis, non-negative.
    axis: int
    #: One weight per position, shape ``predictions.shape[:-1]``, in the compute dtype; or
    #: None.
    sample_weight: Array | None = None

    others: ClassVar[tuple[str, ...]] = ("sample_weight",)

    def count(self) -> int:
        return num_elements(self.predictions.shape[:-1])


def prepare_distributions(
    logits: Array, *, axis: object, reduction: object, sample_weight: Array | None
) -> Distributions:
    """Check the arguments of :func:`crossent.entropy` and put them in canonical form."""
    xp = get_namespace(("logits", logits), ("sample_weight", sample_weight))
    check_real_floating(xp, "logits", logits)
    ax = normalize_axis("logits", logits, axis)
    shape = tuple(logits.shape)
    if shape[ax] == 0:
        raise ValueError(f"logits of shape {shape_str(shape)} has no classes along axis {axis}")
    problem = Distributions(
        xp=xp,
        reduction=check_reduction(reduction),
        dtype=logits.dtype,
        eager=is_eager(logits, sample_weight),
        predictions=xp.moveaxis(logits, ax, -1),
        axis=ax,
    )
    if sample_weight is None:
        return problem
    positions = shape[:ax] + shape[ax + 1 :]
    weights = check_sample_weight(
        xp,
        sample_weight,
        positions,
        lambda: f"logits {shape_str(shape)} without its axis {axis}",
        problem.compute_dtype,
    )
    return dataclasses.replace(problem, sample_weight=weights)


def entropy_pass(problem: Distributions, *, gradient: bool) -> Unreduced:
    """The entropy of each position, ``-sum_c p_c log p_c`` with ``p = softmax(logits)``, as a
    sum of terms that are never negative (no cancellation where it is small), and with
    ``gradient`` its derivative ``p_c (-log p_c - H)``. A class of probability exactly 0 (a
    logit of ``-inf``, or one whose exponential underflows) adds 0, as ``0 log 0 = 0`` (double
    where: neither ``0 * inf`` nor its derivative is formed); a row of all ``-inf``, or one
    with ``+inf`` or NaN, gives NaN, as ``torch.distributions.Categorical`` does."""
    xp = problem.xp
    x = xp.astype(problem.predictions, problem.compute_dtype, copy=False)
    shifted = x - stable_max(xp, x, -1)
    exponentials = xp.exp(shifted)
    total = xp.sum(exponentials, axis=-1, keepdims=True)
    probs = exponentials / total  # NaN in a row of all -inf (0 / 0): so is its entropy
    absent = probs == 0.0
    safe_shifted = xp.where(absent, 0.0, shifted)
    loss = xp.sum(xp.where(absent, 0.0, probs * (xp.log(total) - safe_shifted)), axis=-1)
    weights = problem.sample_weight
    denominator = None
    if weights is not None:
        loss = loss * weights
        denominator = xp.sum(weights)
    if not gradient:
        return Unreduced(loss, denominator)
    # -log p_c - H = (the mean of the shifted logits under p) - s_c: no log Z to cancel, and
    # exactly 0 where every class is alike
    mean_shifted = xp.sum(xp.where(absent, 0.0, probs * safe_shifted), axis=-1, keepdims=True)
    d_logits = xp.where(absent, 0.0, probs * (mean_shifted - safe_shifted))
    if weights is not None:
        d_logits = d_logits * weights[..., None]
    return Unreduced(loss, denominator, d_logits)


def entropy(problem: Distributions) -> Array:
    return problem.reduce(entropy_pass(problem, gradient=False))


def entropy_value_and_grad(problem: Distributions) -> tuple[Array, Array]:
    return problem.value_and_grad(entropy_pass(problem, gradient=True))

"""The generic binary losses: cross-entropy of one probability, or one logit, per element,
each with its gradient from the same pass, on a prepared :class:`~._problems.Pointwise`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

from .._typing import Array, Namespace
from .._validation import num_elements, outside_unit_interval
from ._problems import Pointwise, Unreduced
from ._stable import at_least, clip_probs, mark_bad, softplus_pair

__all__ = [
    "GRADIENT_FLOOR",
    "LOG_FLOOR",
    "MultiLabel",
    "binary_cross_entropy",
    "binary_cross_entropy_pass",
    "binary_cross_entropy_slope",
    "binary_cross_entropy_terms",
    "binary_cross_entropy_value_and_grad",
    "binary_cross_entropy_with_logits",
    "binary_cross_entropy_with_logits_pass",
    "binary_cross_entropy_with_logits_value_and_grad",
    "floored_logs",
    "loss_of_logs",
    "multilabel_soft_margin_loss",
    "multilabel_soft_margin_loss_pass",
    "multilabel_soft_margin_loss_value_and_grad",
    "sigmoid_focal_loss",
    "sigmoid_focal_loss_pass",
    "sigmoid_focal_loss_value_and_grad",
    "sigmoid_pair",
]

#: torch clamps each logarithm of binary_cross_entropy at -100, so that a probability of exactly
#: 0 or 1 gives a finite loss.
LOG_FLOOR = -100.0

#: torch's binary_cross_entropy backward divides by ``max(p (1 - p), 1e-12)``, so that the
#: gradient is large but finite at probabilities of exactly 0 and 1. Its 1e-12 is a float32
#: constant: 9.99999996e-13, not the float64 nearest 1e-12.
GRADIENT_FLOOR = 9.999999960041972e-13


# --- binary_cross_entropy ---------------------------------------------------------------------


def floored_logs(xp: Namespace, probs: Array) -> tuple[Array, Array]:
    """``max(log(p), -100)`` and ``max(log(1 - p), -100)`` for ``p`` in [0, 1]; NaN for NaN.

    The double ``where`` keeps the logarithm away from 0, so that autodiff gets a zero
    gradient at ``p = 0`` and ``p = 1``, never ``0 * inf = NaN``. A NaN probability reaches
    the logarithm and stays NaN (``maximum`` propagates it); so does one outside [0, 1], which
    only lazy arrays let through, without a warning from ``log``. ``log1p(-p)``, not
    ``log(1 - p)``: exact for small ``p``, as torch computes it.
    """
    zero, one = probs == 0, probs == 1
    valid = xp.where((probs >= 0) & (probs <= 1), probs, xp.nan)
    log_p = xp.log(xp.where(zero, 1.0, valid))
    log_not_p = xp.log1p(-xp.where(one, 0.0, valid))
    return (
        xp.where(zero, LOG_FLOOR, at_least(xp, log_p, LOG_FLOOR)),
        xp.where(one, LOG_FLOOR, at_least(xp, log_not_p, LOG_FLOOR)),
    )


def loss_of_logs(target: Array, log_p: Array, log_not_p: Array) -> Array:
    """``-(t log p + (1 - t) log(1 - p))`` from the two (floored) logarithms."""
    # written as two subtractions so that a loss of exactly 0 is +0, as torch's, not -0
    return 0.0 - target * log_p - (1.0 - target) * log_not_p


def binary_cross_entropy_terms(xp: Namespace, probs: Array, target: Array) -> Array:
    """The unweighted elementwise loss, torch's floor at -100 included."""
    return loss_of_logs(target, *floored_logs(xp, probs))


def binary_cross_entropy_slope(xp: Namespace, probs: Array, target: Array) -> Array:
    """The derivative of the elementwise loss in ``probs`` as torch's backward computes it:
    ``(p - t) / max(p (1 - p), 1e-12)``, finite at ``p`` of exactly 0 and 1."""
    return (probs - target) / at_least(xp, probs * (1.0 - probs), GRADIENT_FLOOR)


#: How the elementwise loss is computed from ``(xp, probs, target)``; JAX's kernel gives one
#: whose derivative is torch's.
Terms = Callable[[Namespace, Array, Array], Array]


def binary_cross_entropy_pass(
    problem: Pointwise,
    eps: float | None,
    *,
    gradient: bool,
    terms: Terms = binary_cross_entropy_terms,
) -> Unreduced:
    """The elementwise loss, and with ``gradient`` its derivative as torch's backward computes
    it, 0 where ``eps`` clipped ``p``."""
    xp = problem.xp
    probs, inside = (problem.pred, None) if eps is None else clip_probs(xp, problem.pred, eps)
    loss = terms(xp, probs, problem.target)
    grad = None
    if gradient:
        grad = binary_cross_entropy_slope(xp, probs, problem.target)
        if inside is not None:
            grad = xp.where(inside, grad, 0.0)
    if problem.weight is not None:
        loss = loss * problem.weight
        grad = None if grad is None else grad * problem.weight
    if not problem.eager:
        outside = outside_unit_interval(xp, problem.pred, None) | outside_unit_interval(
            xp, problem.target, None
        )
        loss = mark_bad(xp, loss, outside)
        grad = None if grad is None else mark_bad(xp, grad, outside)
    return Unreduced(loss, None, grad)


def binary_cross_entropy(problem: Pointwise, eps: float | None) -> Array:
    return problem.reduce(binary_cross_entropy_pass(problem, eps, gradient=False))


def binary_cross_entropy_value_and_grad(
    problem: Pointwise, eps: float | None
) -> tuple[Array, Array]:
    return problem.value_and_grad(binary_cross_entropy_pass(problem, eps, gradient=True))


# --- binary_cross_entropy_with_logits ---------------------------------------------------------


def binary_cross_entropy_with_logits_pass(problem: Pointwise, *, gradient: bool) -> Unreduced:
    """The elementwise loss, and with ``gradient`` its derivative
    ``w [sigmoid(x) (1 + (q - 1) t) - q t]``; neither overflows for any logit."""
    xp = problem.xp
    x, t = problem.pred, problem.target
    # -log(1 - sigmoid(x)) = softplus(x) and -log(sigmoid(x)) = softplus(-x); exp(-|x|) gives
    # the sigmoid on both sides of 0 without overflow.
    negative_term, positive_term, decay = softplus_pair(xp, x)
    weighted_target = t if problem.pos_weight is None else t * problem.pos_weight
    loss = weighted_target * positive_term + (1.0 - t) * negative_term
    grad = None
    if gradient:
        sigmoid = xp.where(x > 0, 1.0, decay) / (1.0 + decay)  # softplus_pair's branch
        grad = sigmoid * (1.0 - t + weighted_target) - weighted_target
    if problem.weight is not None:
        loss = loss * problem.weight
        grad = None if grad is None else grad * problem.weight
    return Unreduced(loss, None, grad)


def binary_cross_entropy_with_logits(problem: Pointwise) -> Array:
    return problem.reduce(binary_cross_entropy_with_logits_pass(problem, gradient=False))


def binary_cross_entropy_with_logits_value_and_grad(problem: Pointwise) -> tuple[Array, Array]:
    return problem.value_and_grad(binary_cross_entropy_with_logits_pass(problem, gradient=True))


# --- sigmoid_focal_loss -----------------------------------------------------------------------


def sigmoid_pair(xp: Namespace, x: Array) -> tuple[Array, Array, Array, Array]:
    """``softplus(x)``, ``softplus(-x)``, ``sigmoid(x)`` and ``sigmoid(-x)``, each to a few
    units of its own last place for any ``x``: ``sigmoid(-x)`` is not ``1 - sigmoid(x)``, which
    is 0 from ``x = 37`` on."""
    softplus, softplus_of_minus, decay = softplus_pair(xp, x)
    # the same branch as softplus_pair's: at x = 0 exactly, decay is exp(x) there, and only
    # exp(x) / (1 + exp(x)) has the derivative of sigmoid; 1 / (1 + exp(x)) has its negative
    positive = x > 0
    sigmoid = xp.where(positive, 1.0, decay) / (1.0 + decay)
    complement = xp.where(positive, decay, 1.0) / (1.0 + decay)
    return softplus, softplus_of_minus, sigmoid, complement


def _focusing(xp: Namespace, miss: Array, gamma: float) -> Array | None:
    """``miss**gamma`` (``miss = 1 - p_t``), None for ``gamma = 0`` (a factor of 1).

    As ``exp(gamma log(miss))`` with a double ``where`` at 0: autodiff then divides by ``miss``
    (the derivative of ``log``) where ``pow``'s derivative ``gamma miss**(gamma - 1)`` would
    overflow, and gives 0 where ``miss`` is exactly 0, never ``inf * 0``. A NaN stays NaN; a
    negative ``miss`` (a target outside [0, 1]) gives NaN."""
    if gamma == 0.0:
        return None
    zero = miss == 0
    return xp.where(zero, 0.0, xp.exp(gamma * xp.log(xp.where(zero, 1.0, miss))))


def sigmoid_focal_loss_pass(
    problem: Pointwise, alpha: float | None, gamma: float, *, gradient: bool
) -> Unreduced:
    """The elementwise loss ``a_t ce q**gamma`` and with ``gradient`` its derivative.

    With ``s = sigmoid(x)``, ``r = sigmoid(-x)``, the miss ``q = 1 - p_t = t r + (1 - t) s``
    (a sum of two non-negative terms for ``t`` in [0, 1], so it never cancels: exactly ``r``
    or ``s`` for a label) and ``dq/dx = (1 - 2t) s r``,

        d loss / dx = a_t q**gamma [(s - t) + gamma ce (1 - 2t) s r / q].

    ``s r / q`` lies in [0, 1] (``q`` is a mean of ``r`` and ``s``, and ``s r <= min(r, s)``),
    and is 0 where ``q`` is 0 (then ``s r`` is too), so the gradient stays finite where the
    prediction is exactly right, whatever ``gamma``. ``problem.weight`` holds the sample weights:
    ``"mean"`` divides by their sum."""
    xp = problem.xp
    x, t = problem.pred, problem.target
    softplus, softplus_of_minus, sigmoid, complement = sigmoid_pair(xp, x)
    cross_entropy = t * softplus_of_minus + (1.0 - t) * softplus
    miss = t * complement + (1.0 - t) * sigmoid
    focus = _focusing(xp, miss, gamma)
    loss = cross_entropy if focus is None else cross_entropy * focus
    factor = None if alpha is None else alpha * t + (1.0 - alpha) * (1.0 - t)
    if problem.weight is not None:
        factor = problem.weight if factor is None else factor * problem.weight
    grad = None
    if gradient:
        # each term times the focus and the factor, as torch's arithmetic of the product has
        # it: an infinite sample weight gives NaN, not the sign of one term
        scale = focus if factor is None else factor if focus is None else focus * factor
        terms = [(1.0 - t) * sigmoid, -(t * complement)]  # sigmoid(x) - t, exact for labels
        if gamma != 0.0:
            zero = miss == 0
            ratio = xp.where(zero, 0.0, sigmoid * complement / xp.where(zero, 1.0, miss))
            terms.append(gamma * cross_entropy * (1.0 - 2.0 * t) * ratio)
        if scale is not None:
            terms = [scale * term for term in terms]
        grad = terms[0] + terms[1] if len(terms) == 2 else terms[0] + terms[1] + terms[2]
    if factor is not None:
        loss = loss * factor
    denominator = None
    if problem.weight is not None and problem.reduction == "mean":
        denominator = xp.sum(xp.broadcast_to(problem.weight, tuple(x.shape)))
    return Unreduced(loss, denominator, grad)


def sigmoid_focal_loss(problem: Pointwise, alpha: float | None, gamma: float) -> Array:
    return problem.reduce(sigmoid_focal_loss_pass(problem, alpha, gamma, gradient=False))


def sigmoid_focal_loss_value_and_grad(
    problem: Pointwise, alpha: float | None, gamma: float
) -> tuple[Array, Array]:
    return problem.value_and_grad(sigmoid_focal_loss_pass(problem, alpha, gamma, gradient=True))


# --- multilabel_soft_margin_loss --------------------------------------------------------------


@dataclass(frozen=True)
class MultiLabel(Pointwise):
    """One call of a multi-label loss, checked: ``C`` labels on the last axis of ``pred``, and
    one loss per position (the other axes; ``()`` for ``pred`` of shape ``(C,)``)."""

    #: Weights that broadcast to the positions' shape, in the compute dtype; or None.
    sample_weight: Array | None = field(default=None, kw_only=True)

    others: ClassVar[tuple[str, ...]] = ("target", "weight", "pos_weight", "sample_weight")

    def loss_axes(self) -> tuple[int, ...]:
        return (-1,)

    @property
    def num_classes(self) -> int:
        return int(self.pred.shape[-1])

    def count(self) -> int:
        return num_elements(self.pred.shape[:-1])


def multilabel_soft_margin_loss_pass(problem: MultiLabel, *, gradient: bool) -> Unreduced:
    """The loss of each position, the mean over its labels of the (weighted) binary
    cross-entropy with logits, and with ``gradient`` its derivative ``w (sigmoid(x) - t) / C``
    (times the sample weight), as ``(1 - t) sigmoid(x) - t sigmoid(-x)``: exact for labels
    where ``sigmoid(x)`` rounds to 1."""
    xp = problem.xp
    x, t = problem.pred, problem.target
    softplus, softplus_of_minus, sigmoid, complement = sigmoid_pair(xp, x)
    terms = t * softplus_of_minus + (1.0 - t) * softplus
    if problem.weight is not None:
        terms = terms * problem.weight
    loss = xp.sum(terms, axis=-1) / problem.num_classes
    # each term of the gradient times the weights, as torch's arithmetic of the products has
    # it: an infinite weight gives NaN, not the sign of one term
    scale = 1.0 / problem.num_classes
    if problem.weight is not None:
        scale = scale * problem.weight
    if problem.sample_weight is not None:
        loss = loss * problem.sample_weight
        scale = scale * xp.expand_dims(problem.sample_weight, axis=-1)
    grad = None
    if gradient:
        grad = scale * ((1.0 - t) * sigmoid) - scale * (t * complement)
    denominator = None
    if problem.sample_weight is not None and problem.reduction == "mean":
        denominator = xp.sum(xp.broadcast_to(problem.sample_weight, tuple(loss.shape)))
    return Unreduced(loss, denominator, grad)


def multilabel_soft_margin_loss(problem: MultiLabel) -> Array:
    return problem.reduce(multilabel_soft_margin_loss_pass(problem, gradient=False))


def multilabel_soft_margin_loss_value_and_grad(problem: MultiLabel) -> tuple[Array, Array]:
    return problem.value_and_grad(multilabel_soft_margin_loss_pass(problem, gradient=True))

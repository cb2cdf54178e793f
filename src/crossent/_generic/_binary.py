"""The generic binary losses: cross-entropy of one probability, or one logit, per element,
each with its gradient from the same pass, on a prepared :class:`~._problems.Pointwise`."""

from __future__ import annotations

from collections.abc import Callable

from .._typing import Array, Namespace
from .._validation import outside_unit_interval
from ._problems import Pass, Pointwise
from ._stable import at_least, clip_probs, mark_bad, softplus_pair

__all__ = [
    "GRADIENT_FLOOR",
    "LOG_FLOOR",
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
    p: Pointwise,
    eps: float | None,
    *,
    gradient: bool,
    terms: Terms = binary_cross_entropy_terms,
) -> Pass:
    """The elementwise loss, and with ``gradient`` its derivative as torch's backward computes
    it, 0 where ``eps`` clipped ``p``."""
    xp = p.xp
    probs, inside = (p.pred, None) if eps is None else clip_probs(xp, p.pred, eps)
    loss = terms(xp, probs, p.target)
    grad = None
    if gradient:
        grad = binary_cross_entropy_slope(xp, probs, p.target)
        if inside is not None:
            grad = xp.where(inside, grad, 0.0)
    if p.weight is not None:
        loss = loss * p.weight
        grad = None if grad is None else grad * p.weight
    if not p.eager:
        outside = outside_unit_interval(xp, p.pred, None) | outside_unit_interval(
            xp, p.target, None
        )
        loss = mark_bad(xp, loss, outside)
        grad = None if grad is None else mark_bad(xp, grad, outside)
    return Pass(loss, None, grad)


def binary_cross_entropy(p: Pointwise, eps: float | None) -> Array:
    return p.reduce(binary_cross_entropy_pass(p, eps, gradient=False))


def binary_cross_entropy_value_and_grad(p: Pointwise, eps: float | None) -> tuple[Array, Array]:
    return p.value_and_grad(binary_cross_entropy_pass(p, eps, gradient=True))


# --- binary_cross_entropy_with_logits ---------------------------------------------------------


def binary_cross_entropy_with_logits_pass(p: Pointwise, *, gradient: bool) -> Pass:
    """The elementwise loss, and with ``gradient`` its derivative
    ``w [sigmoid(x) (1 + (q - 1) t) - q t]``; neither overflows for any logit."""
    xp = p.xp
    x, t = p.pred, p.target
    # -log(1 - sigmoid(x)) = softplus(x) and -log(sigmoid(x)) = softplus(-x); exp(-|x|) gives
    # the sigmoid on both sides of 0 without overflow.
    negative_term, positive_term, decay = softplus_pair(xp, x)
    weighted_target = t if p.pos_weight is None else t * p.pos_weight
    loss = weighted_target * positive_term + (1.0 - t) * negative_term
    grad = None
    if gradient:
        sigmoid = xp.where(x >= 0, 1.0, decay) / (1.0 + decay)
        grad = sigmoid * (1.0 - t + weighted_target) - weighted_target
    if p.weight is not None:
        loss = loss * p.weight
        grad = None if grad is None else grad * p.weight
    return Pass(loss, None, grad)


def binary_cross_entropy_with_logits(p: Pointwise) -> Array:
    return p.reduce(binary_cross_entropy_with_logits_pass(p, gradient=False))


def binary_cross_entropy_with_logits_value_and_grad(p: Pointwise) -> tuple[Array, Array]:
    return p.value_and_grad(binary_cross_entropy_with_logits_pass(p, gradient=True))

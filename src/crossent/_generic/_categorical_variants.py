"""The generic variants of cross-entropy: the softmax focal loss and the Poly-1 loss, each
with its gradient from the same pass over the logits.

Both read the rows of logits through :func:`~._categorical.row_statistics`, as
cross-entropy does, and their gradients have cross-entropy's shape: a coefficient per
position times the softmax, less a term at the target class (class indices) or a term per
class (class probabilities). ``gamma=0`` and ``epsilon=0`` are cross-entropy itself, by the
same code (:func:`~._categorical.cross_entropy_pass`).
"""

from __future__ import annotations

from .._typing import Array, Namespace
from ._categorical import (
    IndexTerms,
    Picks,
    coefficients,
    cross_entropy_pass,
    is_target_class,
    row_statistics,
    weigh_rows,
)
from ._problems import Classes, Unreduced
from ._stable import mark_bad, safe_log

__all__ = [
    "focal_factors",
    "poly1_cross_entropy",
    "poly1_cross_entropy_pass",
    "poly1_cross_entropy_value_and_grad",
    "softmax_focal_loss",
    "softmax_focal_loss_pass",
    "softmax_focal_loss_value_and_grad",
]


# --- softmax_focal_loss -----------------------------------------------------------------------


def focal_factors(xp: Namespace, log_p: Array, gamma: float) -> tuple[Array, Array]:
    """For log-probabilities ``L`` (any shape), ``(q**gamma L, b)`` with ``q = 1 - exp(L)``:
    the focal term, and ``b = -d(-q**gamma L)/dL = q**gamma (1 - gamma p L / q)``, the factor
    of ``-dL/dx`` in the gradient of the focal term ``-q**gamma L``.

    ``q`` is ``-expm1(L)``, exact for ``p`` near 1. ``q**gamma`` is a double ``where``: at
    ``q = 0`` (``L = 0``) autodiff sees a constant 0, not ``gamma * 0**(gamma - 1) = inf``,
    whose product with ``L = 0`` is NaN; the true limit of the term's derivative there is 0.
    At ``p = 0`` (``L = -inf``, a class whose logit is ``-inf``) the term is ``L`` itself, by a
    double ``where`` too: ``q = 1`` there and ``dq/dL = -p = 0``, but the product rule would
    multiply that 0 by ``L = -inf``, a NaN gradient, also in an ignored row that reads the
    class. ``b`` writes ``q**(gamma - 1) L`` as ``q**gamma (L / q)``, with ``L / q -> -1`` as
    ``q -> 0``, and ``p L / q`` as 0 where ``p = 0`` (where ``p L -> 0``).
    """
    q = -xp.expm1(log_p)
    positive = q > 0
    q_gamma = xp.where(positive, xp.where(positive, q, 1.0) ** gamma, 0.0)
    certain_miss = log_p == -xp.inf
    term = xp.where(certain_miss, log_p, q_gamma * xp.where(certain_miss, 0.0, log_p))
    ratio = xp.where(positive, log_p / xp.where(positive, q, 1.0), -1.0)
    p = xp.exp(log_p)
    slope = xp.where(p == 0, 0.0, p * ratio)
    return term, q_gamma * (1.0 - gamma * slope)


def softmax_focal_loss_pass(problem: Classes, gamma: float, *, gradient: bool) -> Unreduced:
    """Per-position focal loss ``-w (1 - p)**gamma log p``, and with ``gradient`` the gradient
    of its sum, in one pass.

    With class indices the gradient of position n is ``c_n (softmax(x_n) - onehot(y_n))``,
    ``c_n = w_n b(L_{n, y_n})`` (:func:`focal_factors`); with class probabilities (weighted
    ``a_c``) it is ``softmax(x_n) sum_c a_c b_c - a b``. ``gamma = 0`` is cross-entropy's
    pass itself.
    """
    if gamma == 0.0:
        return cross_entropy_pass(problem, 0.0, gradient=gradient)
    xp = problem.xp
    if not problem.index_target:
        a = coefficients(problem, 0.0, None)
        stats = row_statistics(problem, None, None)
        log_norm = safe_log(xp, stats.total)
        assert stats.shifted is not None
        log_p = stats.shifted - log_norm[..., None]
        term, slope = focal_factors(xp, log_p, gamma)
        loss = -xp.sum(a * term, axis=-1)
        weighted = a * slope
        total = xp.sum(weighted, axis=-1)
        loss, total, weighted, denominator = weigh_rows(problem, loss, total, weighted)
        if not gradient:
            return Unreduced(loss, denominator)
        assert stats.exp_shifted is not None
        grad = stats.exp_shifted * (total / stats.total)[..., None] - weighted
        return Unreduced(loss, denominator, grad)

    terms = IndexTerms.of(problem, 0.0)
    picks = terms.picks
    stats = row_statistics(problem, picks.index, None)
    assert stats.shifted_target is not None
    log_norm = safe_log(xp, stats.total)
    log_p = stats.shifted_target - log_norm
    term, slope = focal_factors(xp, log_p, gamma)
    # where, not a product: an ignored position's log p may be -inf or NaN
    loss = mark_bad(xp, xp.where(picks.kept, -picks.weight * term, 0.0), picks.bad)
    if not gradient:
        return Unreduced(loss, terms.weight_sum(problem))
    coefficient = xp.where(picks.kept, picks.weight * slope, 0.0)
    grad = _softmax_less_target(
        problem, stats.exp_shifted, stats.total, coefficient, coefficient, picks
    )
    return Unreduced(loss, terms.weight_sum(problem), grad, picks.kept)


def _softmax_less_target(
    problem: Classes,
    exp_shifted: Array | None,
    total: Array,
    softmax_coefficient: Array,
    target_coefficient: Array,
    picks: Picks,
    smoothing_term: Array | None = None,
) -> Array:
    """``s_n softmax(x_n) - t_n onehot(y_n) (- smoothing_term)``, NaN at bad positions."""
    xp = problem.xp
    assert exp_shifted is not None
    grad = exp_shifted * (softmax_coefficient / total)[..., None]
    if smoothing_term is not None:
        grad = grad - smoothing_term
    grad = xp.where(is_target_class(problem, picks), grad - target_coefficient[..., None], grad)
    return mark_bad(xp, grad, picks.bad_rows())


def softmax_focal_loss(problem: Classes, gamma: float) -> Array:
    return problem.reduce(softmax_focal_loss_pass(problem, gamma, gradient=False))


def softmax_focal_loss_value_and_grad(problem: Classes, gamma: float) -> tuple[Array, Array]:
    return problem.value_and_grad(softmax_focal_loss_pass(problem, gamma, gradient=True))


# --- poly1_cross_entropy ----------------------------------------------------------------------


def poly1_cross_entropy_pass(
    problem: Classes, epsilon: float, smoothing: float, *, gradient: bool
) -> Unreduced:
    """Per-position Poly-1 loss, cross-entropy plus ``epsilon`` times the first term of its
    expansion in ``1 - p``, and with ``gradient`` the gradient of its sum, in one pass.

    Class indices: ``ce_n + epsilon w_n (1 - p_t)``, ``p_t = (1 - eps) p_y + eps / C``; the
    added gradient is ``k_n (softmax(x_n) - onehot(y_n))`` with ``k_n = epsilon (1 - eps) w_n
    p_y``. Class probabilities (``a_c``: the smoothed target times the class and sample
    weights): ``ce_n + epsilon sum_c a_c (1 - p_c)``; the added gradient is
    ``epsilon p (sum_c a_c p_c - a)``. ``epsilon = 0`` is cross-entropy's pass itself.
    """
    if epsilon == 0.0:
        return cross_entropy_pass(problem, smoothing, gradient=gradient)
    xp = problem.xp
    if not problem.index_target:
        a = coefficients(problem, smoothing, None)
        assert a is not None
        assert not isinstance(a, float)
        stats = row_statistics(problem, None, a)
        assert stats.shifted_sum is not None
        assert stats.mass is not None
        log_norm = safe_log(xp, stats.total)
        assert stats.shifted is not None
        log_p = stats.shifted - log_norm[..., None]
        poly = xp.sum(a * -xp.expm1(log_p), axis=-1)
        loss = log_norm * stats.mass - stats.shifted_sum + epsilon * poly
        probs = xp.exp(log_p)
        target_prob = xp.sum(a * probs, axis=-1)
        coefficient = stats.mass + epsilon * target_prob
        loss, coefficient, a, denominator = weigh_rows(problem, loss, coefficient, a)
        if not gradient:
            return Unreduced(loss, denominator)
        grad = probs * coefficient[..., None] - a * (1.0 + epsilon * probs)
        return Unreduced(loss, denominator, grad)

    terms = IndexTerms.of(problem, smoothing)
    picks = terms.picks
    stats = row_statistics(problem, picks.index, terms.class_weights if smoothing > 0.0 else None)
    assert stats.shifted_target is not None
    log_norm = safe_log(xp, stats.total)
    shift = stats.shift[..., 0]
    ce = terms.loss(problem, log_norm, stats.shifted_target, stats.shifted_sum, shift)
    log_p = stats.shifted_target - log_norm
    classes = problem.num_classes
    miss = (1.0 - smoothing) * -xp.expm1(log_p) + smoothing * (classes - 1) / classes
    # where, not a product: an ignored position's log p may be NaN
    loss = ce + xp.where(picks.kept, (epsilon * picks.weight) * miss, 0.0)
    if not gradient:
        return Unreduced(loss, terms.weight_sum(problem))
    k = xp.where(picks.kept, (epsilon * (1.0 - smoothing)) * picks.weight * xp.exp(log_p), 0.0)
    grad = _softmax_less_target(
        problem,
        stats.exp_shifted,
        stats.total,
        terms.softmax_coefficient(problem) + k,
        terms.target_term() + k,
        picks,
        terms.smoothing_term(problem),
    )
    return Unreduced(loss, terms.weight_sum(problem), grad, picks.kept)


def poly1_cross_entropy(problem: Classes, epsilon: float, smoothing: float) -> Array:
    return problem.reduce(poly1_cross_entropy_pass(problem, epsilon, smoothing, gradient=False))


def poly1_cross_entropy_value_and_grad(
    problem: Classes, epsilon: float, smoothing: float
) -> tuple[Array, Array]:
    return problem.value_and_grad(
        poly1_cross_entropy_pass(problem, epsilon, smoothing, gradient=True)
    )

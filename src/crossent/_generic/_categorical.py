"""The generic categorical losses: cross-entropy from logits, NLL of log-probabilities, and
cross-entropy of clipped probabilities, each with its gradient from the same pass.

Every function takes a prepared :class:`~._problems.Classes` (class axis last). The
``*_pass`` functions give the per-position loss and, when asked, the gradient of its sum; the
functions named after a loss reduce it, and are what the dispatcher runs or replaces with a
backend kernel.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from array_api_compat import device

from .._typing import Array, Namespace
from .._validation import num_elements, outside_unit_interval
from ._arrays import take_along_last
from ._problems import Classes, Unreduced
from ._stable import clip_probs, mark_bad, safe_log, stable_max

__all__ = [
    "IndexTerms",
    "Picks",
    "RowStatistics",
    "coefficients",
    "cross_entropy",
    "cross_entropy_from_probs",
    "cross_entropy_from_probs_pass",
    "cross_entropy_from_probs_value_and_grad",
    "cross_entropy_pass",
    "cross_entropy_value_and_grad",
    "is_target_class",
    "nll_loss",
    "nll_loss_pass",
    "nll_loss_value_and_grad",
    "picks_of",
    "picks_of_indices",
    "probability_loss",
    "row_statistics",
    "take_class",
    "weigh_rows",
]


# --- Class indices ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Picks:
    """What an index target picks at each position."""

    #: The target with ignored and out-of-range entries replaced by class 0: safe to gather.
    index: Array
    #: Whether the position counts: its target is not ``ignore_index``.
    kept: Array
    #: The weight of each position: its class's (1 where there is no ``weight``) times its
    #: sample weight (1 where there is no ``sample_weight``); 0 where ignored.
    weight: Array
    #: The sample weight of each kept position (1 without ``sample_weight``), 0 where ignored.
    kept_weight: Array
    #: Positions whose index is neither a class nor ``ignore_index``; None on eager arrays,
    #: where such an index raised. Their loss is NaN.
    bad: Array | None

    def bad_rows(self) -> Array | None:
        """``bad`` broadcast over the class axis."""
        return None if self.bad is None else self.bad[..., None]


def picks_of(problem: Classes) -> Picks:
    return picks_of_indices(
        problem.xp,
        problem.target,
        problem.num_classes,
        problem.weight,
        problem.ignore_index,
        problem.eager,
        problem.compute_dtype,
        problem.sample_weight,
    )


def picks_of_indices(
    xp: Namespace,
    t: Array,
    num_classes: int,
    weight: Array | None,
    ignore_index: int,
    eager: bool,
    dtype: object,
    sample_weight: Array | None = None,
) -> Picks:
    """What the class indices ``t`` pick, over ``num_classes`` classes weighted by ``weight``
    (or None), each position by ``sample_weight`` (or None), in the compute ``dtype``."""
    kept = t != ignore_index
    in_range = (t >= 0) & (t < num_classes)
    # Clamped before gathering: torch's take_along_axis rejects -100, JAX's clips silently.
    index = xp.where(in_range, t, 0)
    if weight is None:
        position_weight = xp.astype(kept, dtype)
    elif num_elements(t.shape) == 0:  # Dask cannot reshape an empty array of several chunks
        position_weight = xp.zeros(tuple(t.shape), dtype=dtype, device=device(t))
    else:
        gathered = xp.take(weight, xp.reshape(index, (-1,)), axis=0)
        position_weight = xp.where(kept, xp.reshape(gathered, tuple(t.shape)), 0.0)
    kept_weight = xp.astype(kept, dtype)
    if sample_weight is not None:
        # where, not a product: an ignored position's sample weight may be inf or NaN
        kept_weight = xp.where(kept, sample_weight, 0.0)
        position_weight = position_weight * kept_weight
    bad = None if eager else kept & ~in_range
    return Picks(index=index, kept=kept, weight=position_weight, kept_weight=kept_weight, bad=bad)


def take_class(xp: Namespace, x: Array, index: Array) -> Array:
    """``x[..., index[...]]``: the entry of each position's class, class axis last."""
    if hasattr(xp, "take_along_axis"):
        return take_along_last(xp, x, index[..., None])[..., 0]
    # Dask has no take_along_axis: select by comparing with the class numbers, chunk by chunk.
    classes = xp.arange(x.shape[-1], dtype=index.dtype, device=device(x))
    return xp.sum(xp.where(index[..., None] == classes, x, 0.0), axis=-1)


def is_target_class(problem: Classes, picks: Picks) -> Array:
    """A boolean of the predictions' shape: whether each class is its position's target.

    A comparison that broadcasts, not a one-hot matrix of floats: JAX fuses it away, and
    elsewhere it is one byte per entry for the length of one expression.
    """
    xp = problem.xp
    classes = xp.arange(problem.local_classes, dtype=picks.index.dtype, device=device(picks.index))
    offset = problem.class_offset
    if not (isinstance(offset, int) and offset == 0):  # a slice of the classes
        classes = classes + offset
    return picks.index[..., None] == classes


# --- cross_entropy ----------------------------------------------------------------------------


def smoothed_targets(xp: Namespace, target: Array, smoothing: float) -> Array:
    """Class probabilities with ``smoothing`` of their mass spread evenly over the classes."""
    if smoothing == 0.0:
        return target
    return target * (1.0 - smoothing) + smoothing / target.shape[-1]


@dataclass(frozen=True)
class IndexTerms:
    """What cross-entropy with class indices needs besides the rows of logits themselves.

    The rows give three numbers per position, however they are read (at once by the generic
    path, block by block by the NumPy kernel): the log normaliser ``log sum_c exp(x_c - m)``,
    the shifted logit of the target ``x_y - m``, and with smoothing ``sum_c w_c (x_c - m)``.
    This class turns them into losses, and gives the coefficients of the gradient.
    """

    picks: Picks
    smoothing: float
    #: ``w``, or 1.0 without class weights.
    class_weights: Array | float
    #: ``sum_c w_c``, or ``C`` without class weights.
    class_weight_sum: Array | float

    @classmethod
    def of(cls, problem: Classes, smoothing: float) -> IndexTerms:
        if problem.weight is None:
            return cls(picks_of(problem), smoothing, 1.0, float(problem.num_classes))
        local = problem.local_weight()
        assert local is not None
        return cls(picks_of(problem), smoothing, local, problem.xp.sum(problem.weight))

    def loss(
        self,
        problem: Classes,
        log_norm: Array,
        shifted_target: Array,
        shifted_sum: Array | None,
        shift: Array | None = None,
    ) -> Array:
        """The loss of each position from its three row statistics (and, for the z-loss, the
        ``shift`` ``m`` of each row, shape of ``log_norm``: ``lse = m + log_norm``)."""
        xp, picks, smoothing = problem.xp, self.picks, self.smoothing
        loss = picks.weight * (log_norm - shifted_target)
        if smoothing > 0.0:
            assert shifted_sum is not None
            smooth = self.class_weight_sum * log_norm - shifted_sum
            if problem.sample_weight is not None:
                smooth = picks.kept_weight * smooth
            loss = (1.0 - smoothing) * loss + (smoothing / problem.num_classes) * smooth
        if problem.z_loss > 0.0:
            assert shift is not None
            lse = shift + log_norm
            loss = loss + problem.z_loss * picks.weight * (lse * lse)
        # where, not a product: an ignored position's nll may be inf, and 0 * inf is NaN.
        return mark_bad(xp, xp.where(picks.kept, loss, 0.0), picks.bad)

    def softmax_coefficient(self, problem: Classes) -> Array:
        """``s_n``, the factor of each position's softmax in its gradient (without the
        z-loss's, :meth:`z_coefficient`)."""
        coefficient = (1.0 - self.smoothing) * self.picks.weight
        if self.smoothing > 0.0:
            share = (self.smoothing / problem.num_classes) * self.class_weight_sum
            coefficient = coefficient + share * self.picks.kept_weight
        return coefficient

    def z_coefficient(self, problem: Classes, lse: Array) -> Array:
        """What the z-loss ``z_loss w_n lse_n**2`` adds to the softmax's factor:
        ``2 z_loss w_n lse_n``, 0 at ignored positions (whose ``lse`` may be inf)."""
        z = (2.0 * problem.z_loss) * self.picks.weight * lse
        return problem.xp.where(self.picks.kept, z, 0.0)

    def target_term(self) -> Array:
        """What the gradient loses at each position's target class: ``(1 - eps) w_y``."""
        return (1.0 - self.smoothing) * self.picks.weight

    def smoothing_term(self, problem: Classes) -> Array | None:
        """What smoothing takes from every class of a kept position: ``(eps / C) w_c``, shaped
        to broadcast against the rows; None without smoothing."""
        if self.smoothing == 0.0:
            return None
        kept = self.picks.kept_weight[..., None]
        return (self.smoothing / problem.num_classes) * self.class_weights * kept

    def weight_sum(self, problem: Classes) -> Array:
        """What ``"mean"`` divides by: the kept positions' total weight."""
        return problem.xp.sum(self.picks.weight)


@dataclass(frozen=True)
class RowStatistics:
    """What cross-entropy reads from each row of logits ``x`` (class axis last), however the
    row is read: at once here, a block of classes at a time by the Dask kernel's one-pass
    reduction.

    ``m`` is the row's :func:`~._stable.stable_max`, and ``a`` the row's weights of the
    shifted sum: the class weights (or 1) with smoothing and class indices, the weighted
    target with class probabilities.
    """

    #: ``m``, the shift, shape ``(..., 1)``.
    shift: Array
    #: ``sum_c exp(x_c - m)``.
    total: Array
    #: ``x_y - m`` for class indices, else None.
    shifted_target: Array | None
    #: ``sum_c a_c (x_c - m)``, or None where no ``a`` was asked for.
    shifted_sum: Array | None
    #: ``sum_c a_c`` for class probabilities, else None.
    mass: Array | None
    #: ``exp(x - m)``, where the reader kept it; None makes the gradient compute it again.
    exp_shifted: Array | None = None
    #: ``x - m``, where the reader kept it. A loss that reads the rows again takes them from
    #: here, not from another ``scores()``: under autodiff each conversion of half-precision
    #: logits rounds its share of the gradient, and the shares would be added rounded.
    shifted: Array | None = None


def row_statistics(
    problem: Classes, index: Array | None, coefficients: Array | float | None
) -> RowStatistics:
    """The :class:`RowStatistics` of ``problem``'s logits, the whole rows at once.

    ``index`` is the class of each position (or None), ``coefficients`` the ``a`` of the shifted
    sum: an array of the logits' shape (class probabilities), of shape ``(C,)`` or a number
    (class weights, all classes weighing the same for a number), or None for no sum.
    """
    xp = problem.xp
    scores = problem.scores()
    shift = stable_max(xp, scores, -1)
    shifted = scores - shift
    exp_shifted = xp.exp(shifted)
    total = xp.sum(exp_shifted, axis=-1)
    shifted_target = shifted_sum = mass = None
    if index is not None:
        # x_y - m, gathered from the logits rather than from x - m: the same subtraction, but
        # XLA then need not write x - m to memory for the gather (three times faster under
        # jax.jit).
        shifted_target = take_class(xp, scores, index) - shift[..., 0]
    if coefficients is not None:
        shifted_sum = xp.sum(shifted * coefficients, axis=-1)
        if not isinstance(coefficients, float) and coefficients.ndim == scores.ndim:
            mass = xp.sum(coefficients, axis=-1)
    return RowStatistics(shift, total, shifted_target, shifted_sum, mass, exp_shifted, shifted)


def coefficients(
    problem: Classes, smoothing: float, terms: IndexTerms | None
) -> Array | float | None:
    """The ``a`` of :class:`RowStatistics` for this call: the smoothed target times the class
    weights with class probabilities, the class weights with class indices and smoothing,
    None with class indices and no smoothing. Never the sample weights: with class
    probabilities they multiply each position's loss and gradient (:func:`weigh_rows`)."""
    if terms is None:
        target = smoothed_targets(problem.xp, problem.target, smoothing)
        return target if problem.weight is None else target * problem.weight
    return terms.class_weights if smoothing > 0.0 else None


def weigh_rows(
    problem: Classes, loss: Array, softmax_coefficient: Array, a: Array
) -> tuple[Array, Array, Array, Array | None]:
    """A position's loss, its softmax's coefficient and its per-class term ``a`` (class
    probabilities) times its sample weight, and what ``"mean"`` divides by (None without
    sample weights: the number of positions).

    The weight multiplies the loss once it is made, and each term of the gradient, as torch's
    arithmetic of ``sample_weight * loss`` has it: an infinite weight gives an infinite loss
    (folded into ``a``, ``0 * inf`` would make it NaN) and a NaN gradient."""
    s = problem.sample_weight
    if s is None:
        return loss, softmax_coefficient, a, None
    return loss * s, softmax_coefficient * s, a * s[..., None], problem.xp.sum(s)


def probability_loss(
    problem: Classes, log_norm: Array, mass: Array, shifted_sum: Array, shift: Array | None = None
) -> Array:
    """The loss of each position with class probabilities from the statistics of its row, as
    :meth:`IndexTerms.loss` with class indices: ``log_norm sum_c a_c - sum_c a_c (x_c - m)``,
    with the z-loss ``z_loss lse**2`` (``shift`` ``m``: ``lse = m + log_norm``), times the
    sample weight once made (as :func:`weigh_rows`)."""
    loss = log_norm * mass - shifted_sum
    if problem.z_loss > 0.0:
        assert shift is not None
        lse = shift + log_norm
        loss = loss + problem.z_loss * (lse * lse)
    return loss if problem.sample_weight is None else loss * problem.sample_weight


def cross_entropy_pass(
    problem: Classes,
    smoothing: float,
    *,
    gradient: bool,
    statistics: Callable[[Classes, Array | None, Array | float | None], RowStatistics] = (
        row_statistics
    ),
) -> Unreduced:
    """Per-position cross-entropy, and with ``gradient`` the gradient of its sum, in one pass.

    The gradient of position n is ``s_n softmax(x_n) - (1 - eps) w_{y_n} onehot(y_n)
    - (eps / C) w``: the softmax comes from the same exponentials as the loss, and the one-hot
    term is a comparison, never a matrix. ``statistics`` reads the rows (:func:`row_statistics`
    by default); everything else is per position, or elementwise for the gradient.
    """
    xp = problem.xp
    terms = IndexTerms.of(problem, smoothing) if problem.index_target else None
    a = coefficients(problem, smoothing, terms)
    stats = statistics(problem, None if terms is None else terms.picks.index, a)
    log_norm = safe_log(xp, stats.total)

    def exp_shifted() -> Array:
        if stats.exp_shifted is not None:
            return stats.exp_shifted
        return xp.exp(problem.scores() - stats.shift)

    lse = None
    if problem.z_loss > 0.0:
        lse = stats.shift[..., 0] + log_norm

    if terms is None:
        assert stats.shifted_sum is not None
        assert stats.mass is not None
        assert a is not None
        loss = probability_loss(
            problem, log_norm, stats.mass, stats.shifted_sum, stats.shift[..., 0]
        )
        coefficient = stats.mass
        if lse is not None:
            coefficient = coefficient + (2.0 * problem.z_loss) * lse
        # the loss has its sample weight already; the gradient's terms get theirs here
        _, coefficient, a, denominator = weigh_rows(problem, loss, coefficient, a)
        if not gradient:
            return Unreduced(loss, denominator)
        grad = exp_shifted() * (coefficient / stats.total)[..., None] - a
        return Unreduced(loss, denominator, _through_softcap(problem, grad))

    picks = terms.picks
    assert stats.shifted_target is not None
    loss = terms.loss(
        problem, log_norm, stats.shifted_target, stats.shifted_sum, stats.shift[..., 0]
    )
    if not gradient:
        return Unreduced(loss, terms.weight_sum(problem))

    coefficient = terms.softmax_coefficient(problem)
    if lse is not None:
        coefficient = coefficient + terms.z_coefficient(problem, lse)
    grad = exp_shifted() * (coefficient / stats.total)[..., None]
    smoothing_term = terms.smoothing_term(problem)
    if smoothing_term is not None:
        grad = grad - smoothing_term
    grad = xp.where(is_target_class(problem, picks), grad - terms.target_term()[..., None], grad)
    grad = _through_softcap(problem, mark_bad(xp, grad, picks.bad_rows()))
    return Unreduced(loss, terms.weight_sum(problem), grad, picks.kept)


def _through_softcap(problem: Classes, grad: Array) -> Array:
    """The gradient with respect to the soft-capped logits, taken back to the logits."""
    derivative = problem.softcap_derivative()
    return grad if derivative is None else grad * derivative


def cross_entropy(problem: Classes, smoothing: float) -> Array:
    return problem.reduce(cross_entropy_pass(problem, smoothing, gradient=False))


def cross_entropy_value_and_grad(problem: Classes, smoothing: float) -> tuple[Array, Array]:
    return problem.value_and_grad(cross_entropy_pass(problem, smoothing, gradient=True))


# --- nll_loss ---------------------------------------------------------------------------------


def nll_loss_pass(problem: Classes, *, gradient: bool) -> Unreduced:
    """Per-position NLL, and with ``gradient`` the gradient of its sum: ``-w_{y_n}`` at the
    target class of each kept position, 0 elsewhere."""
    xp = problem.xp
    picks = picks_of(problem)
    target_log_prob = xp.astype(
        take_class(xp, problem.predictions, picks.index), problem.compute_dtype
    )
    loss = -picks.weight * target_log_prob
    loss = mark_bad(xp, xp.where(picks.kept, loss, 0.0), picks.bad)
    grad = target = None
    if gradient:
        target = is_target_class(problem, picks)
        grad = mark_bad(xp, xp.where(target, -picks.weight[..., None], 0.0), picks.bad_rows())
    return Unreduced(loss, xp.sum(picks.weight), grad, picks.kept, target)


def nll_loss(problem: Classes) -> Array:
    return problem.reduce(nll_loss_pass(problem, gradient=False))


def nll_loss_value_and_grad(problem: Classes) -> tuple[Array, Array]:
    return problem.value_and_grad(nll_loss_pass(problem, gradient=True))


# --- cross_entropy_from_probs -----------------------------------------------------------------


def cross_entropy_from_probs_pass(problem: Classes, eps: float, *, gradient: bool) -> Unreduced:
    """Per-position NLL of clipped probabilities, and with ``gradient`` the gradient of its
    sum: ``-w t / clip(p)`` where ``p`` was not clipped, 0 where it was."""
    xp = problem.xp
    outside = None if problem.eager else outside_unit_interval(xp, problem.predictions, -1)
    if not problem.index_target:
        target = problem.target if problem.weight is None else problem.target * problem.weight
        clipped, inside = clip_probs(xp, problem.scores(), eps)
        absent = target == 0
        terms = xp.where(absent, 0.0, target * _log_where(xp, clipped, ~absent))
        loss = -xp.sum(terms, axis=-1)
        loss, _, target, denominator = weigh_rows(problem, loss, loss, target)
        loss = mark_bad(xp, loss, outside)
        grad = None
        if gradient:
            grad = xp.where(absent | ~inside, 0.0, -target / clipped)
            grad = mark_bad(xp, grad, None if outside is None else outside[..., None])
        return Unreduced(loss, denominator, grad)

    picks = picks_of(problem)
    target_prob = xp.astype(
        take_class(xp, problem.predictions, picks.index), problem.compute_dtype
    )
    clipped, inside = clip_probs(xp, target_prob, eps)
    loss = -picks.weight * _log_where(xp, clipped, picks.kept)
    loss = mark_bad(xp, mark_bad(xp, xp.where(picks.kept, loss, 0.0), picks.bad), outside)
    if not gradient:
        return Unreduced(loss, xp.sum(picks.weight))
    at_target = xp.where(picks.kept & inside, -picks.weight / clipped, 0.0)
    target = is_target_class(problem, picks)
    grad = mark_bad(xp, xp.where(target, at_target[..., None], 0.0), picks.bad_rows())
    outside_rows = None if outside is None else outside[..., None]
    return Unreduced(
        loss, xp.sum(picks.weight), mark_bad(xp, grad, outside_rows), picks.kept, target
    )


def _log_where(xp: Namespace, probs: Array, used: Array) -> Array:
    """``log(probs)`` where ``used``, 0 elsewhere, for probabilities clipped to
    ``[eps, 1 - eps]``.

    A used probability of exactly 0 (only with ``eps=0``) gives ``-inf``, and autodiff its true
    derivative ``1 / 0 = inf``, as the analytic gradient ``-w / p``; elsewhere ``log`` never
    sees the value, so that ``0 * inf`` cannot make a NaN gradient.
    """
    return xp.log(xp.where(used, probs, 1.0))


def cross_entropy_from_probs(problem: Classes, eps: float) -> Array:
    return problem.reduce(cross_entropy_from_probs_pass(problem, eps, gradient=False))


def cross_entropy_from_probs_value_and_grad(problem: Classes, eps: float) -> tuple[Array, Array]:
    return problem.value_and_grad(cross_entropy_from_probs_pass(problem, eps, gradient=True))

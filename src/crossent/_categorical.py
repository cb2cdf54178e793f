"""Categorical losses: cross-entropy from logits, from log-probabilities, from probabilities."""

from __future__ import annotations

from dataclasses import dataclass

from ._classes import (
    Classes,
    Pass,
    Picks,
    bad_rows,
    check_probabilities,
    is_target_class,
    mark_bad,
    picks,
    prepare_classes,
    reduce,
    take_class,
)
from ._delegation import dispatch, public_function
from ._softmax import log_of_sum, stable_max
from ._typing import Array, Namespace
from ._validation import check_eps, check_unit_interval

__all__ = ["cross_entropy", "cross_entropy_from_probs", "nll_loss"]

_SHAPE_NOTES = """
    Notes
    -----
    **Shape.** With ``C`` classes along ``axis``, the *positions* are the shape of the
    predictions without the class axis:

    - predictions: ``(N, C)``, ``(C,)``, or ``(N, C, d1, ..., dK)`` with ``axis=1`` (torch's
      layout); the class axis may be anywhere.
    - target of class indices: the positions, ``(N,)``, ``()`` or ``(N, d1, ..., dK)``.
    - target of class probabilities: the shape of the predictions.
    - output: the positions' shape for ``reduction="none"``; ``()`` otherwise.
"""


@public_function
def cross_entropy(
    logits: Array,
    target: Array,
    *,
    axis: int = -1,
    weight: Array | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> Array:
    r"""Cross-entropy between logits and a target of class indices or class probabilities.

    With class indices :math:`y_n` and class weights :math:`w` (all ones by default), the loss of
    position :math:`n` with smoothing :math:`\varepsilon` over :math:`C` classes is

    .. math::

        \ell_n = (1 - \varepsilon)\, w_{y_n} \left(-\log p_{n, y_n}\right)
                 + \frac{\varepsilon}{C} \sum_c w_c \left(-\log p_{n, c}\right),
        \qquad \log p_{n, c} = x_{n, c} - \operatorname{logsumexp}_k x_{n, k}

    and positions whose target is ``ignore_index`` contribute 0. With class probabilities
    :math:`t_{n, c}`, first smoothed as :math:`(1 - \varepsilon) t + \varepsilon / C`,

    .. math::

        \ell_n = -\sum_c w_c\, t_{n, c} \log p_{n, c}.

    This is ``torch.nn.functional.cross_entropy`` on every backend: its options, its reductions
    and its numbers (see [1]_ for label smoothing).

    Parameters
    ----------
    logits : array
        Unnormalised log-probabilities, real floating.
    target : array
        Class indices (integer dtype), shape of ``logits`` without the class axis; or class
        probabilities (floating dtype), shape of ``logits``.
    axis : int, default -1
        The class axis of ``logits``; ``axis=1`` is torch's ``(N, C, d1, ..., dK)`` layout.
    weight : array, optional
        One non-negative weight per class, shape ``(C,)``.
    ignore_index : int, default -100
        A class index whose positions contribute nothing, to the loss or to the ``"mean"``
        denominator. Not used with class probabilities.
    reduction : {"mean", "sum", "none"}, default "mean"
        ``"none"`` gives one loss per position; ``"sum"`` their sum; ``"mean"`` their sum
        divided by the total weight of the kept positions (by the number of positions for class
        probabilities). Every position ignored gives NaN, as torch does.
    label_smoothing : float in [0, 1], default 0.0
        Mass moved from the target to the uniform distribution over classes.

    Returns
    -------
    array
        Of ``logits``' library, device and dtype; 0-d unless ``reduction="none"``.

    Raises
    ------
    TypeError
        If an argument is not an array of ``logits``' library, or has the wrong dtype.
    ValueError
        If shapes do not fit, ``reduction`` or ``label_smoothing`` is out of its set, the
        arrays are on two devices, or (eager arrays only) a class index is outside ``[0, C)``
        and is not ``ignore_index``. On lazy arrays (JAX under ``jit``, Dask) such a position
        gives NaN instead.
    {shape}
    float16 and bfloat16 are computed in float32 and returned in their own dtype. No one-hot
    matrix is made, and for class indices no full log-softmax either: the loss is the log
    normaliser minus the gathered logit.

    References
    ----------
    .. [1] C. Szegedy, V. Vanhoucke, S. Ioffe, J. Shlens, Z. Wojna, "Rethinking the Inception
       Architecture for Computer Vision", CVPR 2016.

    Examples
    --------
    >>> import numpy as np
    >>> from crossent import cross_entropy
    >>> logits = np.array([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]])
    >>> target = np.array([0, 2])
    >>> cross_entropy(logits, target)
    array(0.17545638)
    >>> cross_entropy(logits, target, reduction="none")
    array([0.2413113 , 0.10960146])
    >>> cross_entropy(logits, np.array([0, -100]))  # the second position is ignored
    array(0.2413113)
    """
    p, options = prepare_cross_entropy(
        logits,
        target,
        axis=axis,
        weight=weight,
        ignore_index=ignore_index,
        reduction=reduction,
        label_smoothing=label_smoothing,
    )
    return dispatch("cross_entropy", _cross_entropy, p, *options)


def prepare_cross_entropy(
    logits: Array,
    target: Array,
    *,
    axis: int,
    weight: Array | None,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
) -> tuple[Classes, tuple[float]]:
    """The checked arguments of :func:`cross_entropy`: the problem and its options."""
    p = prepare_classes(
        "logits",
        logits,
        target,
        axis=axis,
        weight=weight,
        ignore_index=ignore_index,
        reduction=reduction,
        probability_target=True,
    )
    return p, (check_unit_interval("label_smoothing", label_smoothing),)


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

    pick: Picks
    smoothing: float
    #: ``w``, or 1.0 without class weights.
    class_weights: Array | float
    #: ``sum_c w_c``, or ``C`` without class weights.
    class_weight_sum: Array | float

    @classmethod
    def of(cls, p: Classes, smoothing: float) -> IndexTerms:
        if p.weight is None:
            return cls(picks(p), smoothing, 1.0, float(p.num_classes))
        return cls(picks(p), smoothing, p.weight, p.xp.sum(p.weight))

    def loss(self, p: Classes, log_norm: Array, picked: Array, shifted_sum: Array | None) -> Array:
        """The loss of each position from its three row statistics."""
        xp, pick, smoothing = p.xp, self.pick, self.smoothing
        loss = pick.weight * (log_norm - picked)
        if smoothing > 0.0:
            assert shifted_sum is not None
            smooth = self.class_weight_sum * log_norm - shifted_sum
            loss = (1.0 - smoothing) * loss + (smoothing / p.num_classes) * smooth
        # where, not a product: an ignored position's nll may be inf, and 0 * inf is NaN.
        return mark_bad(xp, xp.where(pick.kept, loss, 0.0), pick.bad)

    def softmax_coefficient(self, p: Classes) -> Array:
        """``s_n``, the factor of each position's softmax in its gradient."""
        coefficient = (1.0 - self.smoothing) * self.pick.weight
        if self.smoothing > 0.0:
            kept = p.xp.astype(self.pick.kept, coefficient.dtype)
            share = (self.smoothing / p.num_classes) * self.class_weight_sum
            coefficient = coefficient + share * kept
        return coefficient

    def target_term(self) -> Array:
        """What the gradient loses at each position's target class: ``(1 - eps) w_y``."""
        return (1.0 - self.smoothing) * self.pick.weight

    def smoothing_term(self, p: Classes) -> Array | None:
        """What smoothing takes from every class of a kept position: ``(eps / C) w_c``, shaped
        to broadcast against the rows; None without smoothing."""
        if self.smoothing == 0.0:
            return None
        kept = p.xp.astype(self.pick.kept, p.compute_dtype)[..., None]
        return (self.smoothing / p.num_classes) * self.class_weights * kept


def cross_entropy_pass(p: Classes, smoothing: float, *, gradient: bool) -> Pass:
    """Per-position cross-entropy, and with ``gradient`` the gradient of its sum, in one pass.

    The gradient of position n is ``s_n softmax(x_n) - (1 - eps) w_{y_n} onehot(y_n)
    - (eps / C) w``: the softmax comes from the same exponentials as the loss, and the one-hot
    term is a comparison, never a matrix.
    """
    xp = p.xp
    shift = stable_max(xp, p.scores, -1)
    shifted = p.scores - shift
    exp_shifted = xp.exp(shifted)
    total = xp.sum(exp_shifted, axis=-1)
    log_norm = log_of_sum(xp, total)

    if not p.index_target:
        target = smoothed_targets(xp, p.target, smoothing)
        if p.weight is not None:
            target = target * p.weight
        mass = xp.sum(target, axis=-1)
        loss = log_norm * mass - xp.sum(target * shifted, axis=-1)
        grad = exp_shifted * (mass / total)[..., None] - target if gradient else None
        return Pass(loss, None, grad)

    terms = IndexTerms.of(p, smoothing)
    pick = terms.pick
    shifted_sum = None
    if smoothing > 0.0:
        shifted_sum = xp.sum(shifted * terms.class_weights, axis=-1)
    # x_y - m, gathered from the logits rather than from x - m: the same subtraction, but XLA
    # then need not write x - m to memory for the gather (three times faster under jax.jit).
    picked = take_class(xp, p.scores, pick.index) - shift[..., 0]
    loss = terms.loss(p, log_norm, picked, shifted_sum)
    if not gradient:
        return Pass(loss, xp.sum(pick.weight), None)

    grad = exp_shifted * (terms.softmax_coefficient(p) / total)[..., None]
    smoothing_term = terms.smoothing_term(p)
    if smoothing_term is not None:
        grad = grad - smoothing_term
    grad = xp.where(is_target_class(p, pick), grad - terms.target_term()[..., None], grad)
    return Pass(loss, xp.sum(pick.weight), mark_bad(xp, grad, bad_rows(pick)))


def _cross_entropy(p: Classes, smoothing: float) -> Array:
    return reduce(p, cross_entropy_pass(p, smoothing, gradient=False))


@public_function
def nll_loss(
    log_probs: Array,
    target: Array,
    *,
    axis: int = -1,
    weight: Array | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> Array:
    r"""Negative log-likelihood of class indices under given log-probabilities.

    .. math::

        \ell_n = -w_{y_n} \log p_{n, y_n}

    with positions whose target is ``ignore_index`` contributing 0. This is
    ``torch.nn.functional.nll_loss``; ``nll_loss(log_softmax(x), y) == cross_entropy(x, y)``.

    Parameters
    ----------
    log_probs : array
        Log-probabilities, real floating, for example from :func:`log_softmax`.
    target : array
        Class indices (integer dtype), shape of ``log_probs`` without the class axis.
    axis : int, default -1
        The class axis of ``log_probs``.
    weight : array, optional
        One non-negative weight per class, shape ``(C,)``.
    ignore_index : int, default -100
        A class index whose positions contribute nothing.
    reduction : {"mean", "sum", "none"}, default "mean"
        ``"mean"`` divides the sum by the total weight of the kept positions; every position
        ignored gives NaN.

    Returns
    -------
    array
        Of ``log_probs``' library, device and dtype; 0-d unless ``reduction="none"``.

    Raises
    ------
    TypeError
        If an argument is not an array of ``log_probs``' library, or ``target`` is not integer.
    ValueError
        If shapes do not fit, ``reduction`` is unknown, the arrays are on two devices, or
        (eager arrays only) a class index is outside ``[0, C)`` and is not ``ignore_index``; on
        lazy arrays such a position gives NaN.
    {shape}
    Examples
    --------
    >>> import numpy as np
    >>> from crossent import nll_loss
    >>> log_probs = np.log(np.array([[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]]))
    >>> nll_loss(log_probs, np.array([0, 2]), reduction="none")
    array([0.69314718, 0.22314355])
    """
    p, options = prepare_nll_loss(
        log_probs,
        target,
        axis=axis,
        weight=weight,
        ignore_index=ignore_index,
        reduction=reduction,
    )
    return dispatch("nll_loss", _nll_loss, p, *options)


def prepare_nll_loss(
    log_probs: Array,
    target: Array,
    *,
    axis: int,
    weight: Array | None,
    ignore_index: int,
    reduction: str,
) -> tuple[Classes, tuple[()]]:
    """The checked arguments of :func:`nll_loss`."""
    p = prepare_classes(
        "log_probs",
        log_probs,
        target,
        axis=axis,
        weight=weight,
        ignore_index=ignore_index,
        reduction=reduction,
        probability_target=False,
    )
    return p, ()


def nll_loss_pass(p: Classes, *, gradient: bool) -> Pass:
    """Per-position NLL, and with ``gradient`` the gradient of its sum: ``-w_{y_n}`` at the
    target class of each kept position, 0 elsewhere."""
    xp = p.xp
    pick = picks(p)
    picked = xp.astype(take_class(xp, p.predictions, pick.index), p.compute_dtype)
    loss = -pick.weight * picked
    loss = mark_bad(xp, xp.where(pick.kept, loss, 0.0), pick.bad)
    grad = None
    if gradient:
        grad = xp.where(is_target_class(p, pick), -pick.weight[..., None], 0.0)
        grad = mark_bad(xp, grad, bad_rows(pick))
    return Pass(loss, xp.sum(pick.weight), grad)


def _nll_loss(p: Classes) -> Array:
    return reduce(p, nll_loss_pass(p, gradient=False))


@public_function
def cross_entropy_from_probs(
    probs: Array,
    target: Array,
    *,
    axis: int = -1,
    eps: float | None = None,
    weight: Array | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> Array:
    r"""Cross-entropy of probabilities, clipped away from 0 and 1 as scikit-learn does.

    .. math::

        \ell_n = -w_{y_n} \log \operatorname{clip}(p_{n, y_n}, \epsilon, 1 - \epsilon)

    for class indices, and :math:`-\sum_c w_c\, t_{n, c} \log \operatorname{clip}(p_{n, c})`
    for class probabilities (a zero target contributes 0). With the default ``eps`` and
    ``reduction="mean"`` this equals ``sklearn.metrics.log_loss`` on the same inputs.

    Prefer :func:`cross_entropy` on logits where you have them: clipping biases the loss and
    zeroes its gradient for probabilities below ``eps``.

    Parameters
    ----------
    probs : array
        Probabilities in [0, 1], real floating.
    target : array
        Class indices (integer dtype), shape of ``probs`` without the class axis; or class
        probabilities (floating dtype), shape of ``probs``.
    axis : int, default -1
        The class axis of ``probs``.
    eps : float in [0, 0.5), optional
        Clip probabilities to ``[eps, 1 - eps]``; ``None`` means the machine epsilon of
        ``probs``' dtype (``2.2e-16`` for float64, ``1.2e-7`` for float32).
    weight : array, optional
        One non-negative weight per class, shape ``(C,)``.
    ignore_index : int, default -100
        A class index whose positions contribute nothing. Not used with class probabilities.
    reduction : {"mean", "sum", "none"}, default "mean"
        As in :func:`cross_entropy`.

    Returns
    -------
    array
        Of ``probs``' library, device and dtype; 0-d unless ``reduction="none"``.

    Raises
    ------
    TypeError
        If an argument is not an array of ``probs``' library, or has the wrong dtype.
    ValueError
        If shapes do not fit, an option is out of its set, the arrays are on two devices, or
        (eager arrays only) a probability lies outside [0, 1] or a class index outside
        ``[0, C)``; on lazy arrays such a position gives NaN.
    {shape}
    Examples
    --------
    >>> import numpy as np
    >>> from crossent import cross_entropy_from_probs
    >>> probs = np.array([[0.9, 0.1], [0.2, 0.8], [1.0, 0.0]])
    >>> cross_entropy_from_probs(probs, np.array([0, 1, 1]), reduction="none")
    array([ 0.10536052,  0.22314355, 36.04365339])
    """
    p, options = prepare_cross_entropy_from_probs(
        probs,
        target,
        axis=axis,
        eps=eps,
        weight=weight,
        ignore_index=ignore_index,
        reduction=reduction,
    )
    return dispatch("cross_entropy_from_probs", _cross_entropy_from_probs, p, *options)


def prepare_cross_entropy_from_probs(
    probs: Array,
    target: Array,
    *,
    axis: int,
    eps: float | None,
    weight: Array | None,
    ignore_index: int,
    reduction: str,
) -> tuple[Classes, tuple[float]]:
    """The checked arguments of :func:`cross_entropy_from_probs`; ``eps`` resolved."""
    p = prepare_classes(
        "probs",
        probs,
        target,
        axis=axis,
        weight=weight,
        ignore_index=ignore_index,
        reduction=reduction,
        probability_target=True,
    )
    clip = check_eps(eps)
    if clip is None:
        clip = float(p.xp.finfo(p.dtype).eps)
    if p.eager:
        check_probabilities(p.xp, "probs", p.predictions)
    return p, (clip,)


def clip_probs(xp: Namespace, probs: Array, eps: float) -> tuple[Array, Array]:
    """``clip(probs, eps, 1 - eps)``, and where no clipping happened (bounds included).

    Written as a ``where`` so that autodiff passes the gradient through at the bounds, as
    torch's ``clamp`` does, where JAX's ``clip`` would halve it.
    """
    inside = (probs >= eps) & (probs <= 1.0 - eps)
    return xp.where(inside, probs, xp.clip(probs, eps, 1.0 - eps)), inside


def safe_log(xp: Namespace, x: Array) -> Array:
    """``log(x)`` for ``x >= 0``: ``-inf`` at 0 with a zero gradient there, never NaN."""
    positive = x > 0
    return xp.where(positive, xp.log(xp.where(positive, x, 1.0)), -xp.inf)


def out_of_unit_interval(xp: Namespace, probs: Array, axis: int | None) -> Array:
    """Where ``probs`` (reduced along ``axis``) holds a value outside [0, 1]."""
    outside = (probs < 0) | (probs > 1)
    return outside if axis is None else xp.any(outside, axis=axis)


def cross_entropy_from_probs_pass(p: Classes, eps: float, *, gradient: bool) -> Pass:
    """Per-position NLL of clipped probabilities, and with ``gradient`` the gradient of its
    sum: ``-w t / clip(p)`` where ``p`` was not clipped, 0 where it was."""
    xp = p.xp
    outside = None if p.eager else out_of_unit_interval(xp, p.predictions, -1)
    if not p.index_target:
        target = p.target if p.weight is None else p.target * p.weight
        clipped, inside = clip_probs(xp, p.scores, eps)
        absent = target == 0
        terms = xp.where(absent, 0.0, target * safe_log(xp, clipped))
        loss = mark_bad(xp, -xp.sum(terms, axis=-1), outside)
        grad = None
        if gradient:
            grad = xp.where(absent | ~inside, 0.0, -target / clipped)
            grad = mark_bad(xp, grad, None if outside is None else outside[..., None])
        return Pass(loss, None, grad)

    pick = picks(p)
    picked = xp.astype(take_class(xp, p.predictions, pick.index), p.compute_dtype)
    clipped, inside = clip_probs(xp, picked, eps)
    loss = -pick.weight * safe_log(xp, clipped)
    loss = mark_bad(xp, mark_bad(xp, xp.where(pick.kept, loss, 0.0), pick.bad), outside)
    if not gradient:
        return Pass(loss, xp.sum(pick.weight), None)
    at_target = xp.where(pick.kept & inside, -pick.weight / clipped, 0.0)
    grad = xp.where(is_target_class(p, pick), at_target[..., None], 0.0)
    grad = mark_bad(xp, grad, bad_rows(pick))
    outside_rows = None if outside is None else outside[..., None]
    return Pass(loss, xp.sum(pick.weight), mark_bad(xp, grad, outside_rows))


def _cross_entropy_from_probs(p: Classes, eps: float) -> Array:
    return reduce(p, cross_entropy_from_probs_pass(p, eps, gradient=False))


for _public in (cross_entropy, nll_loss, cross_entropy_from_probs):
    if _public.__doc__:
        _public.__doc__ = _public.__doc__.replace("{shape}", _SHAPE_NOTES)

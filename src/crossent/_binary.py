"""Binary losses: cross-entropy of one probability, or one logit, per element."""

from __future__ import annotations

from ._dispatch import dispatch, public_function
from ._generic import _binary as generic
from ._generic._problems import Pointwise, prepare_pointwise
from ._typing import Array
from ._validation import check_eps, check_probabilities

__all__ = ["binary_cross_entropy", "binary_cross_entropy_with_logits"]


@public_function(generic.binary_cross_entropy)
def binary_cross_entropy(
    probs: Array,
    target: Array,
    *,
    weight: Array | None = None,
    reduction: str = "mean",
    eps: float | None = None,
) -> Array:
    r"""Binary cross-entropy between probabilities and targets, elementwise.

    .. math::

        \ell = -w \left[ t \max(\log p, -100) + (1 - t) \max(\log(1 - p), -100) \right]

    The clamp at -100 is torch's: a probability of exactly 0 or 1 gives a loss of 100, not
    infinity. With ``eps``, probabilities are first clipped to ``[eps, 1 - eps]``, the Keras
    convention (``eps=1e-7``) and that of most from-scratch code.

    This is ``torch.nn.functional.binary_cross_entropy``. Prefer
    :func:`binary_cross_entropy_with_logits` where you have logits: it is exact where the
    sigmoid rounds to 0 or 1.

    Parameters
    ----------
    probs : array
        Probabilities in [0, 1], real floating, any shape.
    target : array
        Targets in [0, 1], shape of ``probs``: floating, or integer or bool labels.
    weight : array, optional
        Weights that broadcast to the shape of ``probs``.
    reduction : {"mean", "sum", "none"}, default "mean"
        ``"mean"`` averages over every element.
    eps : float in [0, 0.5), optional
        Clip probabilities to ``[eps, 1 - eps]`` first; by default they are not clipped.

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
        (eager arrays only) a probability or a target lies outside [0, 1]; on lazy arrays such
        an element gives NaN. A NaN probability or target gives NaN.

    Notes
    -----
    **Shape.** ``probs``: any shape; ``target``: the same; ``weight``: broadcastable to it;
    output: that shape for ``reduction="none"``, ``()`` otherwise.

    Examples
    --------
    >>> import numpy as np
    >>> from crossent import binary_cross_entropy
    >>> probs = np.array([0.9, 0.2, 0.0])
    >>> target = np.array([1.0, 0.0, 1.0])
    >>> binary_cross_entropy(probs, target, reduction="none")
    array([  0.10536052,   0.22314355, 100.        ])
    >>> binary_cross_entropy(probs, target, reduction="none", eps=1e-7)
    array([ 0.10536052,  0.22314355, 16.11809565])
    """
    p, options = prepare_binary_cross_entropy(
        probs, target, weight=weight, reduction=reduction, eps=eps
    )
    return dispatch(p.xp, generic.binary_cross_entropy, p, *options)


def prepare_binary_cross_entropy(
    probs: Array, target: Array, *, weight: Array | None, reduction: str, eps: float | None
) -> tuple[Pointwise, tuple[float | None]]:
    """The checked arguments of :func:`binary_cross_entropy`."""
    p = prepare_pointwise(
        "probs", probs, target, reduction=reduction, weight=weight, label_target=True
    )
    clip = check_eps(eps)
    if p.eager:
        check_probabilities(p.xp, "probs", p.pred)
        check_probabilities(p.xp, "target", p.target)
    return p, (clip,)


@public_function(generic.binary_cross_entropy_with_logits)
def binary_cross_entropy_with_logits(
    logits: Array,
    target: Array,
    *,
    weight: Array | None = None,
    pos_weight: Array | None = None,
    reduction: str = "mean",
) -> Array:
    r"""Binary cross-entropy of the sigmoid of logits, computed stably from the logits.

    With positive-class weight :math:`q` (``pos_weight``, 1 by default),

    .. math::

        \ell = w \left[ q\, t \operatorname{softplus}(-x) + (1 - t) \operatorname{softplus}(x)
               \right],
        \qquad \operatorname{softplus}(x) = \max(x, 0) + \log\left(1 + e^{-|x|}\right)

    which equals :math:`-w [q\, t \log \sigma(x) + (1 - t) \log(1 - \sigma(x))]` and never
    overflows. Both terms are non-negative for targets in [0, 1], so no cancellation occurs.

    This is ``torch.nn.functional.binary_cross_entropy_with_logits`` (the same function, summed
    in a form that keeps small losses exact: where torch gives 0 for ``x = -40, t = 0``, this
    gives ``4.25e-18``).

    Parameters
    ----------
    logits : array
        Real floating, any shape.
    target : array
        Targets in [0, 1], shape of ``logits``: floating, or integer or bool labels.
    weight : array, optional
        Weights that broadcast to the shape of ``logits``.
    pos_weight : array, optional
        Weight of the positive term, broadcast along the last axis: shape ``(C,)`` for ``C``
        labels per example, or any shape that broadcasts to ``logits``.
    reduction : {"mean", "sum", "none"}, default "mean"
        ``"mean"`` averages over every element.

    Returns
    -------
    array
        Of ``logits``' library, device and dtype; 0-d unless ``reduction="none"``.

    Raises
    ------
    TypeError
        If an argument is not an array of ``logits``' library, or has the wrong dtype.
    ValueError
        If shapes do not fit, ``reduction`` is unknown, or the arrays are on two devices.

    Notes
    -----
    **Shape.** ``logits``: any shape, ``(N, C)`` for ``C`` labels per example; ``target``: the
    same; ``weight`` and ``pos_weight``: broadcastable to it; output: that shape for
    ``reduction="none"``, ``()`` otherwise.

    Examples
    --------
    >>> import numpy as np
    >>> from crossent import binary_cross_entropy_with_logits
    >>> logits = np.array([3.0, -1.0, 1e4])
    >>> target = np.array([1.0, 0.0, 0.0])
    >>> binary_cross_entropy_with_logits(logits, target, reduction="none")
    array([4.85873516e-02, 3.13261688e-01, 1.00000000e+04])
    """
    p, options = prepare_binary_cross_entropy_with_logits(
        logits, target, weight=weight, pos_weight=pos_weight, reduction=reduction
    )
    return dispatch(p.xp, generic.binary_cross_entropy_with_logits, p, *options)


def prepare_binary_cross_entropy_with_logits(
    logits: Array,
    target: Array,
    *,
    weight: Array | None,
    pos_weight: Array | None,
    reduction: str,
) -> tuple[Pointwise, tuple[()]]:
    """The checked arguments of :func:`binary_cross_entropy_with_logits`."""
    p = prepare_pointwise(
        "logits",
        logits,
        target,
        reduction=reduction,
        weight=weight,
        pos_weight=pos_weight,
        label_target=True,
    )
    return p, ()
